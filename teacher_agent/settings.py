"""TeacherSettings: the only place the teacher agent reads its environment (prefix M2KT_TEACHER_)."""

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class TeacherSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="M2KT_TEACHER_", extra="ignore")

    broker_url: str = "http://127.0.0.1:8080"
    token: SecretStr | None = None
    token_file: Path | None = None  # mode 0600; written by `m2kt-teacher enroll`
    admin_token: SecretStr | None = None  # only for `enroll`, only until the token file exists
    key: Path = Path(".m2kt/teacher/teacher.key")
    workdir: Path = Path(".m2kt/teacher")
    name: str = "teacher"
    train_epochs: int = Field(default=80, ge=1)  # `run`: most epochs when no model exists (stops once converged)
