"""BrokerSettings: the only place the broker reads its environment."""

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from m2kt.constants import DEFAULT_MAX_ENVELOPE_BYTES, DEFAULT_MAX_PAYLOAD_BYTES

_WEAK_TOKENS = {"changethis", "admin", "secret", "password", "changeme"}
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3's bucket naming rules, in short


class BrokerSettings(BaseSettings):
    """Settings from `M2KT_*` variables (docs/protocol.md §3), validated once at start."""

    model_config = SettingsConfigDict(env_prefix="M2KT_", extra="ignore")

    database_url: str = Field(default="", description="SQLAlchemy URL; empty means SQLite in data_dir")
    data_dir: Path = Path(".m2kt")
    # Where payloads and envelopes live: `file:///abs/dir` or `s3://bucket/prefix` (endpoint, region and
    # credentials from the standard AWS_* environment, read by boto3). Empty means files in data_dir.
    blob_url: str = ""
    # How to name the bucket in requests: "path" for most self-hosted stores (MinIO, Ceph), "auto" for AWS.
    blob_s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    admin_token: SecretStr | None = None
    max_payload_bytes: int = Field(default=DEFAULT_MAX_PAYLOAD_BYTES, gt=0)
    max_envelope_bytes: int = Field(default=DEFAULT_MAX_ENVELOPE_BYTES, gt=0)
    # Every request body is limited before any route, dependency or token check reads it (broker/guard.py).
    max_json_body_bytes: int = Field(default=1024 * 1024, gt=0)
    max_report_bytes: int = Field(default=128 * 1024, gt=0)  # detail alone may be 64 KiB
    # Concurrent event streams one token may hold; more are answered 429 with Retry-After.
    max_streams_per_agent: int = Field(default=16, gt=0)
    # Threads that run blocking routes; the database pool is sized to them, so no thread waits on the pool.
    worker_threads: int = Field(default=40, gt=0, le=1000)
    # How long a request waits for a database connection before it is answered 503 with Retry-After.
    pool_timeout_seconds: float = Field(default=10.0, gt=0)
    sse_keepalive_seconds: float = Field(default=15.0, gt=0, le=15.0)
    # Unreferenced blobs younger than this survive start-up: another replica may be mid-publish.
    orphan_grace_seconds: float = Field(default=600.0, ge=0)
    # A new packet's manifest created_at must lie within this many seconds of the broker's clock.
    created_at_window_seconds: float = Field(default=86400.0, gt=0)
    # A dashboard session (server-side, broker/services/dashboard_sessions.py) lasts this long.
    dashboard_session_seconds: int = Field(default=8 * 3600, gt=0)
    log_json: bool = True

    @field_validator("admin_token")
    @classmethod
    def _strong_admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        secret = value.get_secret_value()
        if len(secret) < 16 or secret.lower() in _WEAK_TOKENS:
            raise ValueError("M2KT_ADMIN_TOKEN must be at least 16 characters and not a placeholder")
        return value

    @field_validator("blob_url")
    @classmethod
    def _blob_url_form(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost") or not parts.path.startswith("/") or parts.query or parts.fragment:
                raise ValueError(f"M2KT_BLOB_URL {value!r}: a file URL names an absolute directory: file:///path")
        elif parts.scheme == "s3":
            if not _BUCKET.match(parts.netloc) or parts.query or parts.fragment:
                raise ValueError(f"M2KT_BLOB_URL {value!r}: expected s3://bucket or s3://bucket/prefix")
        else:
            raise ValueError(f"M2KT_BLOB_URL {value!r}: the scheme must be file:// or s3://")
        return value

    @model_validator(mode="after")
    def _default_database(self) -> "BrokerSettings":
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'broker.db'}"
        if not self.blob_url:
            self.blob_url = self.data_dir.as_uri()
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
