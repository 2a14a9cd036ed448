"""TeacherSettings: the only place the teacher agent reads its environment (prefix M2KT_TEACHER_)."""

from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class TeacherSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="M2KT_TEACHER_", extra="ignore")

    broker_url: str = "http://127.0.0.1:8080"
    token: SecretStr | None = None
    key: Path = Path(".m2kt/teacher/teacher.key")
    workdir: Path = Path(".m2kt/teacher")
    name: str = "teacher"
