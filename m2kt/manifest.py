"""The manifest (the statement's predicate) and the rules of docs/protocol.md §1.

Only the fields the broker checks are modelled; every object allows more keys,
which the agents define (docs/packet-format.md). Types are strict: `"1"` is not
`1` and `true` is not an integer, because a lenient broker would store a
manifest that a strict student then refuses.

`version` and `expires` are optional (docs/protocol-choices.md, "Versions and expiry"): a
v1 teacher that never writes them keeps working, and whoever writes them puts them under the
signature, so neither a broker nor anyone between can change which version a packet claims
to be or how long it may be trusted.
"""

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from m2kt.constants import (
    MAX_CONCEPTS,
    MAX_PARENTS,
    MAX_TOPICS,
    MAX_VERSION,
    PACKET_FORMAT,
    PACKET_ID_PATTERN,
    TOPIC_MAX_LEN,
    TOPIC_RE,
)
from m2kt.constants import TOPIC_PATTERN as _TOPIC
from m2kt.errors import InvalidManifest

__all__ = ["Manifest", "is_topic", "validate_manifest"]

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")

Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")]
PacketId = Annotated[str, StringConstraints(pattern=rf"^{PACKET_ID_PATTERN}$")]
Topic = Annotated[str, StringConstraints(max_length=TOPIC_MAX_LEN, pattern=rf"^{_TOPIC}$")]


def is_topic(value: str) -> bool:
    return len(value) <= TOPIC_MAX_LEN and TOPIC_RE.fullmatch(value) is not None


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class ModelCard(_Open):
    architecture: str
    hidden_size: int
    num_layers: int
    weights_sha256: Hex64


class Teacher(_Open):
    agent: str
    model: ModelCard


class Task(_Open):
    name: str


class Concept(_Open):
    key: str
    name: str
    topic: str


class Anchors(_Open):
    count: int = Field(ge=0)


class TensorEntry(_Open):
    role: str


class Manifest(_Open):
    packet_format: int
    created_at: str
    teacher: Teacher
    task: Task
    topics: list[Topic] = Field(min_length=1, max_length=MAX_TOPICS)
    concepts: list[Concept] = Field(min_length=1, max_length=MAX_CONCEPTS)
    anchors: Anchors
    tensors: dict[str, TensorEntry]
    parents: list[PacketId] = Field(default_factory=list, max_length=MAX_PARENTS)
    version: int | None = Field(default=None, ge=1, le=MAX_VERSION)
    expires: str | None = None

    @property
    def created(self) -> datetime:
        """created_at as an aware datetime (the rules below checked its form)."""
        return _when(self.created_at)

    @property
    def expires_at(self) -> datetime | None:
        """expires as an aware datetime, or None when the packet does not say."""
        return None if self.expires is None else _when(self.expires)

    @model_validator(mode="after")
    def _rules(self) -> "Manifest":
        if self.packet_format != PACKET_FORMAT:
            raise ValueError(f"packet_format must be {PACKET_FORMAT}")
        _check_time("created_at", self.created_at)
        if self.expires is not None:
            _check_time("expires", self.expires)
            if _when(self.expires) <= _when(self.created_at):
                raise ValueError("expires must be later than created_at")
        if len(set(self.topics)) != len(self.topics):
            raise ValueError("topics must not repeat")
        if len(set(self.parents)) != len(self.parents):
            raise ValueError("parents must not repeat")
        keys = [c.key for c in self.concepts]
        if len(set(keys)) != len(keys):
            raise ValueError("concept keys must be unique")
        stray = sorted({c.topic for c in self.concepts} - set(self.topics))
        if stray:
            raise ValueError(f"concepts name topics not in topics: {stray[:5]}")
        return self


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("z", "Z"))


def _check_time(field: str, value: str) -> None:
    if not _RFC3339.fullmatch(value):
        raise ValueError(f"{field} must be RFC 3339 with a timezone")
    try:
        _when(value)
    except ValueError as exc:
        raise ValueError(f"{field} is not a valid date and time") from exc


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "manifest"
    return f"{where}: {err['msg']}"


def validate_manifest(predicate: dict[str, Any]) -> Manifest:
    """Check the manifest rules of docs/protocol.md §1.

    Raises:
        InvalidManifest: naming the first field that breaks a rule.
    """
    try:
        return Manifest.model_validate(predicate)
    except ValidationError as exc:
        raise InvalidManifest(_first_error(exc)) from exc
