"""Shared fixtures: a real broker over real HTTP, on SQLite and on PostgreSQL.

Every test that takes `broker` runs twice, once per database. PostgreSQL tests
get a fresh database cloned from a migrated template (CREATE DATABASE ...
TEMPLATE), so each test starts empty without paying for migrations each time.
Set M2KT_TEST_PG_URL to point at another server (default: the local one).
"""

import base64
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.db import make_engine
from broker.main import create_app
from broker.migrate import upgrade
from broker.settings import BrokerSettings
from m2kt import keys
from m2kt.client import BrokerClient

PG_URL = os.environ.get("M2KT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
BACKENDS = ["sqlite", "postgresql"]


def _pg_admin() -> psycopg.Connection:
    from sqlalchemy.engine import make_url

    url = make_url(PG_URL)
    return psycopg.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password,
        dbname=url.database, autocommit=True,
    )  # fmt: skip


def _pg_url(name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    name = f"m2kt_tpl_{uuid.uuid4().hex[:10]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(_pg_url(name))
    upgrade(engine)
    engine.dispose()
    yield name
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "broker.db"
        target.write_bytes(template.read_bytes())
        yield f"sqlite:///{target}"
    else:
        yield request.getfixturevalue("pg_database_url")


@pytest.fixture
def pg_database_url(pg_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database, for tests that only make sense there (replicas)."""
    name = f"m2kt_t_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield _pg_url(name)
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """uvicorn serving an app on a free loopback port in a background thread."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_config=None, lifespan="on",
            timeout_graceful_shutdown=1,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("broker did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass
class Teacher:
    name: str
    token: str
    key: Ed25519PrivateKey
    keyid: str


@dataclass
class Broker:
    url: str
    settings: BrokerSettings
    backend: str

    def client(self, token: str | None = None) -> BrokerClient:
        return BrokerClient(self.url, token, retries=0)

    @property
    def admin(self) -> BrokerClient:
        return self.client(ADMIN_TOKEN)

    def teacher(self, name: str | None = None) -> Teacher:
        key = Ed25519PrivateKey.generate()
        name = name or f"teacher-{uuid.uuid4().hex[:8]}"
        with self.admin as admin:
            body = admin.create_agent(name, "teacher", keys.public_to_b64(key.public_key()))
        return Teacher(name, body["token"], key, body["keyid"])

    def student(self, name: str | None = None) -> tuple[str, str]:
        name = name or f"student-{uuid.uuid4().hex[:8]}"
        with self.admin as admin:
            return name, admin.create_agent(name, "student")["token"]

    def http(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def broker_settings(database_url: str, data_dir: Path, **overrides: object) -> BrokerSettings:
    values: dict[str, object] = {
        "database_url": database_url,
        "data_dir": data_dir,
        "admin_token": ADMIN_TOKEN,
        "orphan_grace_seconds": 0,
        "log_json": False,
    }
    values.update(overrides)
    return BrokerSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def broker(database_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Broker]:
    overrides = getattr(request, "param", {}) or {}
    settings = broker_settings(database_url, tmp_path / "data", **overrides)
    with ServerThread(settings) as server:
        yield Broker(server.url, settings, "sqlite" if settings.is_sqlite else "postgresql")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
