"""A real broker process and signed packets for the benchmarks (`bench/broker_load`, `bench/dashboard_pages`)."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from m2kt import BrokerClient, build_packet, keys
from m2kt.constants import PACKET_FORMAT

PG_ADMIN = os.environ.get("M2KT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def scratch() -> Iterator[Path]:
    """A temporary directory on the repository's disk (not tmpfs): fsync costs what it costs in production."""
    (ROOT / ".m2kt").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / ".m2kt") as tmp:
        yield Path(tmp)


@contextmanager
def database(name: str) -> Iterator[str]:
    if name == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/broker.db"
        return
    import psycopg

    db = f"m2kt_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{db}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{db}" WITH (FORCE)')


@contextmanager
def broker_process(
    database_url: str, data: Path, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[str, str, int]]:
    port, admin = free_port(), secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "M2KT_DATABASE_URL": database_url,
        "M2KT_DATA_DIR": str(data / "broker"),
        "M2KT_ADMIN_TOKEN": admin,
        "M2KT_LOG_JSON": "false",
        "M2KT_SSE_KEEPALIVE_SECONDS": "5",
        **(extra_env or {}),
    }
    with (data / "broker.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "broker", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        with BrokerClient(base, retries=0) as c:
            while not c.ready():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"broker did not start: {(data / 'broker.log').read_text()[-2000:]}")
                time.sleep(0.1)
        yield base, admin, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@contextmanager
def object_store() -> Iterator[tuple[dict[str, str], Any, str]]:
    """moto's S3 server (the dev extra) in this process with a fresh bucket: (broker env, boto3 client, blob URL).

    The broker and the raw path meet the same server, so their ratio compares the two, not moto.
    """
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        raise SystemExit("the object-store cells need boto3 and moto[server] (pip install -e '.[dev]')") from exc
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        env = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": "us-east-1",
        }
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        bucket = f"m2kt-bench-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        yield env, client, f"s3://{bucket}/bench"
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# keyid -> the teacher registered with it: the broker requires a packet's teacher.agent to be its publisher.
_AGENTS: dict[str, str] = {}


def teacher(base: str, admin: str) -> tuple[str, Ed25519PrivateKey]:
    key = keys.generate()
    name = f"bench-{uuid.uuid4().hex[:8]}"
    with BrokerClient(base, admin) as c:
        body = c.create_agent(name, "teacher", keys.public_to_b64(key.public_key()))
    _AGENTS[str(body["keyid"])] = name
    return str(body["token"]), key


def signed_packets(
    key: Ed25519PrivateKey,
    n: int,
    size: int,
    topic: str,
    *,
    first: int = 0,
    created_at: str | None = None,
    parents: list[str] | None = None,
) -> list[tuple[bytes, bytes]]:
    """``n`` distinct (envelope, payload) pairs of about ``size`` bytes; ``first`` numbers them apart across calls.

    ``parents``: packet ids every manifest names as its parents (provenance reads them back).

    All carry one ``created_at`` (default: now): publishers may send them in any order, and the
    broker refuses a packet older than the teacher's newest on its topic (an equal one passes).
    """
    rng = np.random.default_rng((size, n, first))
    agent = _AGENTS.get(keys.keyid(key.public_key()), "bench")
    created_at = created_at or datetime.now(UTC).isoformat(timespec="seconds")
    out = []
    for i in range(first, first + n):
        tensors = {"C": rng.standard_normal(size // 4).astype(np.float32)}
        manifest = {
            "packet_format": PACKET_FORMAT,
            "created_at": created_at,
            "teacher": {
                "agent": agent,
                "model": {
                    "architecture": "x",
                    "hidden_size": 1,
                    "num_layers": 1,
                    "weights_sha256": hashlib.sha256(b"w").hexdigest(),
                },
            },
            "task": {"name": "bench", "i": i},
            "topics": [topic],
            "concepts": [{"key": "c", "name": "c", "topic": topic}],
            "anchors": {"count": 0},
            "tensors": {"C": {"role": "concepts"}},
        }
        if parents is not None:
            manifest["parents"] = parents
        built = build_packet(manifest, tensors, key)
        out.append((built.envelope, built.payload))
    return out
