"""TeacherSettings: the only place the teacher agent reads its environment (prefix M2KT_TEACHER_)."""

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class TeacherSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="M2KT_TEACHER_", extra="ignore")

    broker_url: str = "http://127.0.0.1:8080"
    token: SecretStr | None = None
    token_file: Path | None = None  # mode 0600; written by `m2kt-teacher enroll`
    admin_token: SecretStr | None = None  # only for `enroll`, only until the token file exists
    key: Path = Path(".m2kt/teacher/teacher.key")
    # k-of-n: further private keys that co-sign every packet and head (comma-separated paths)
    cosign_keys: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    workdir: Path = Path(".m2kt/teacher")
    name: str = "teacher"
    train_epochs: int = Field(default=80, ge=1)  # `run`: most epochs when no model exists (stops once converged)

    @field_validator("cosign_keys", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(part.strip()) for part in value.split(",") if part.strip()]
        return value
