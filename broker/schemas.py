"""Request and response models of the `/v1` API; ORM rows never leave the broker."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_THRESHOLD = 16  # k of a k-of-n teacher: more keys than anyone registers

Verdict = Literal["accepted", "rolled_back", "rejected"]
# What a student refused (or removed) of a teacher because of what it trusted before (student_agent.trust).
TrustReason = Literal["rollback", "stale", "withheld", "revoked-key", "mix-and-match"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class AgentIn(_In):
    name: str = Field(max_length=64)
    role: Literal["teacher", "student"]
    public_key: str | None = Field(default=None, max_length=64)


class KeyIn(_In):
    public_key: str = Field(max_length=64)


class ReportIn(_In):
    verdict: Verdict
    metrics: dict[str, Any] = Field(default_factory=dict)
    student_model: dict[str, Any] = Field(default_factory=dict)
    safety_findings: list[Any] = Field(default_factory=list)
    detail: str = Field(default="", max_length=65536)


class TrustReportIn(_In):
    reason: TrustReason
    action: Literal["refused", "removed"] = "refused"
    packet: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    detail: str = Field(default="", max_length=4096)


class QuarantineIn(_In):
    reason: str = Field(min_length=1, max_length=4096)


class AgentCreated(BaseModel):
    name: str
    role: str
    token: str
    keyid: str | None


class TokenOut(BaseModel):
    name: str
    role: str
    token: str


class TokenRevoked(BaseModel):
    name: str
    revoked: bool


class KeyOut(BaseModel):
    keyid: str
    public_key: str
    revoked: bool


class AgentOut(BaseModel):
    name: str
    role: str
    keys: list[KeyOut]
    threshold: int | None = Field(
        default=None, description="teachers only: how many of its keys must sign each packet and head"
    )


class ThresholdIn(_In):
    threshold: int = Field(ge=1, le=MAX_THRESHOLD)


class Published(BaseModel):
    id: str
    seq: int
    topics: list[str]
    created: bool


class HeadStored(BaseModel):
    """The answer to a teacher's head (m2kt.head); ``stored`` is false when it was the stored one already."""

    teacher: str
    version: int
    expires: str
    stored: bool


class PacketSummary(BaseModel):
    id: str
    seq: int
    teacher: str
    topics: list[str]
    status: Literal["published", "quarantined"]
    received_at: str
    key_revoked: bool = Field(description="the signing key was revoked after the packet was published")


class ReportCounts(BaseModel):
    count: int
    accepted: int
    rolled_back: int
    rejected: int


class PacketOut(PacketSummary):
    statement: dict[str, Any]
    reports: ReportCounts


class TopicOut(BaseModel):
    topic: str
    packets: int
    last_seq: int


class PacketPage(BaseModel):
    items: list[PacketSummary]
    next_after: int


class LogEntryOut(BaseModel):
    index: int
    kind: str
    subject: str
    body_sha256: str
    prev_hash: str
    hash: str
    at: str


class LogPage(BaseModel):
    items: list[LogEntryOut]
    next_after: int


class ReportOut(BaseModel):
    id: int
    packet: str
    student: str
    verdict: Verdict
    metrics: dict[str, Any]
    student_model: dict[str, Any]
    safety_findings: list[Any]
    detail: str
    created_at: str


class QuarantineOut(BaseModel):
    id: str
    status: Literal["published", "quarantined"]
    reason: str | None


class ProvenanceKey(BaseModel):
    keyid: str
    public_key: str
    revoked: bool


class ProvenanceParent(BaseModel):
    id: str
    known: bool
    teacher: str | None


class ProvenanceOut(BaseModel):
    id: str
    seq: int
    teacher: str
    key: ProvenanceKey
    parents: list[ProvenanceParent]
    log: list[LogEntryOut]
    bodies: dict[str, Any] = Field(description="log index -> the body whose sha256 is body_sha256")


class TrustReportOut(BaseModel):
    """One student's trust report on a teacher, as its event-log entry keeps it."""

    index: int = Field(description="the event-log entry that holds the report")
    teacher: str
    student: str
    reason: TrustReason
    action: Literal["refused", "removed"]
    packet: str | None
    detail: str
    at: str


class TopicVersions(BaseModel):
    topic: str
    packets: int
    latest_version: int | None = Field(description="the highest signed version this broker has on the topic")
    head_version: int | None = Field(description="the version the teacher's current head names, if any")
    head_packet: str | None


class TrustKeyOut(KeyOut):
    created_at: str
    revoked_at: str | None


class TeacherHeadOut(BaseModel):
    version: int
    expires: str
    expired: bool
    received_at: str


class TrustReportCount(BaseModel):
    student: str
    reason: TrustReason
    action: Literal["refused", "removed"]
    reports: int
    last_at: str


class TeacherTrustOut(BaseModel):
    """Per teacher: its head, its versions per topic, its keys and what students reported of it."""

    teacher: str
    threshold: int = Field(description="how many of its keys must sign each packet and head")
    head: TeacherHeadOut | None
    topics: list[TopicVersions]
    keys: list[TrustKeyOut]
    revoked_keys: list[str]
    reports: list[TrustReportCount]
