"""StudentSettings: the only place the student agent reads its environment (prefix M2KT_STUDENT_)."""

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class StudentSettings(BaseSettings):
    """Where the broker is, who the student is, what it trusts and where it keeps its state.

    Lists come from the environment comma-separated (``M2KT_STUDENT_TOPICS=modarith.a,modarith.s1``).
    ``trusted_keys``: keyids the student accepts signatures from; empty means every
    non-revoked key the broker's registry lists for the packet's teacher.
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
    def resolved_model_dir(self) -> Path:
        return self.model_dir or self.state_dir / "model"
