"""StudentSettings: the only place the student agent reads its environment (prefix M2KT_STUDENT_)."""

from datetime import datetime
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class StudentSettings(BaseSettings):
    """Where the broker is, who the student is, what it trusts and where it keeps its state.

    Lists come from the environment comma-separated (``M2KT_STUDENT_TOPICS=modarith.a,modarith.s1``).
    ``trusted_keys``: keyids the student accepts signatures from; empty means every
    non-revoked key the broker's registry lists for the packet's teacher.
    ``revoked_after``: when a teacher's key is revoked, the CALs of packets it signed are removed:
    ``all`` (the default), or only those whose signed ``created_at`` is at or after this RFC 3339
    time (the moment the key is known to have been safe until).
    ``min_signers``: how many distinct trusted keys of a teacher must sign each packet and head,
    whatever threshold the registry lists (the student holds to the higher of the two).
    """

    model_config = SettingsConfigDict(env_prefix="M2KT_STUDENT_", extra="ignore")

    broker_url: str = "http://127.0.0.1:8080"
    token: SecretStr | None = None
    token_file: Path | None = None  # mode 0600; written by `m2kt-student enroll`
    admin_token: SecretStr | None = None  # only for `enroll`, only until the token file exists
    name: str = "student"
    state_dir: Path = Path(".m2kt/student")
    model_dir: Path | None = None
    topics: Annotated[list[str], NoDecode] = Field(default_factory=list)
    trusted_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    revoked_after: str = "all"
    min_signers: int = 1  # distinct trusted keys on every packet and head, at least
    unlabelled: int = 4000
    # The CAL and its loss (student_agent.cal.fit.FitConfig); a zero weight switches a term off.
    alpha: float = Field(default=1.0, ge=0)
    beta: float = Field(default=1.0, ge=0)
    gamma: float = Field(default=1.0, ge=0)
    lam: float = Field(default=1.0, ge=0)
    cal_form: str = "mlp_skip"
    cal_direction: str = "student_to_teacher"

    @field_validator("topics", "trusted_keys", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def revoked_cutoff(self) -> datetime | None:
        """``revoked_after`` as a time; None for ``all``.

        Raises:
            ValueError: neither ``all`` nor an RFC 3339 time with its timezone (one line, for the CLI).
        """
        if self.revoked_after == "all":
            return None
        try:
            when = datetime.fromisoformat(self.revoked_after.replace("Z", "+00:00"))
        except ValueError:
            when = None
        if when is None or when.tzinfo is None:
            raise ValueError(
                f"M2KT_STUDENT_REVOKED_AFTER must be 'all' or an RFC 3339 time with its timezone, "
                f"not {self.revoked_after!r}"
            )
        return when

    @property
    def resolved_model_dir(self) -> Path:
        return self.model_dir or self.state_dir / "model"
