"""A real broker over real HTTP for tests: uvicorn in a thread, agents registered through the admin API.

A plain module (not conftest) so test files can import it by one unambiguous name.
"""

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import factory
import httpx
import psycopg
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.main import create_app
from broker.settings import BrokerSettings
from m2kt import keys
from m2kt.client import BrokerClient

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
PG_URL = os.environ.get("M2KT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pg_admin() -> psycopg.Connection:
    from sqlalchemy.engine import make_url

    url = make_url(PG_URL)
    return psycopg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        dbname=url.database,
        autocommit=True,
    )


def pg_url(name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


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
            create_app(settings),
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
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
        factory.AGENTS[body["keyid"]] = name  # packets this key signs name this teacher
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
