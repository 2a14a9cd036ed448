"""kill -9 the broker while publishes are in flight; restart; nothing acknowledged is lost, nothing partial shows."""

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import factory
import httpx
import numpy as np
import pytest
import rfc8785
from brokerkit import ADMIN_TOKEN, free_port
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from m2kt.client import BrokerClient

pytestmark = pytest.mark.slow  # crash tests: they kill and restart broker processes

PUBLISHERS = int(os.environ.get("M2KT_CRASH_PUBLISHERS", "100"))  # concurrent, as the reliability issue asks


def _start(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "broker", "serve", "--port", str(port)]
    with log.open("ab") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        assert proc.poll() is None, log.read_text()[-2000:]
        time.sleep(0.1)
    raise AssertionError("broker did not start")


def _big_packet(key, seed: int):
    rng = np.random.default_rng(seed)
    tensors = {"C": rng.standard_normal((64, 512)).astype(np.float32)}  # 128 KiB: a real write window
    payload = factory.safetensors_bytes(tensors)
    manifest = factory.manifest(["crash.test"], tensors)
    manifest["teacher"] = {**manifest["teacher"], "agent": "crash-teacher"}  # the publisher, as the broker requires
    stmt = factory.statement_bytes(payload, manifest)
    return hashlib.sha256(stmt).hexdigest(), factory.envelope_bytes(stmt, key), payload


@pytest.mark.parametrize("store", ["file", "s3"])
def test_kill_9_during_publishes_loses_nothing_acknowledged(database_url, store, tmp_path, request):
    data = tmp_path / "data"
    env = {
        **os.environ,
        "M2KT_DATABASE_URL": database_url,
        "M2KT_DATA_DIR": str(data),
        "M2KT_ADMIN_TOKEN": ADMIN_TOKEN,
        "M2KT_ORPHAN_GRACE_SECONDS": "0",
        "M2KT_LOG_JSON": "false",
    }
    bucket = None
    if store == "s3":  # the blobs go to the bucket (moto's S3 server); the data directory only spools uploads
        bucket = request.getfixturevalue("s3_bucket")
        env |= {**bucket.server.env, "M2KT_BLOB_URL": bucket.url}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "broker.log"
    proc = _start(env, port, log)
    key = Ed25519PrivateKey.generate()
    with BrokerClient(url, ADMIN_TOKEN) as admin:
        token = admin.create_agent(
            "crash-teacher",
            "teacher",
            factory.base64.b64encode(
                key.public_key().public_bytes(factory.Encoding.Raw, factory.PublicFormat.Raw)
            ).decode(),
        )["token"]
    acked: dict[str, tuple[bytes, bytes]] = {}
    cut_off: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def publisher(worker: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            for i in range(1000):
                if stop.is_set():
                    return
                pid, env_bytes, payload = _big_packet(key, worker * 10_000 + i)
                try:
                    r = http.post("/v1/packets", files=factory.files(env_bytes, payload))
                except httpx.TransportError:
                    with lock:
                        cut_off.append(pid)  # in flight when the broker died
                    return
                if r.status_code == 201:
                    with lock:
                        acked[pid] = (env_bytes, payload)

    threads = [threading.Thread(target=publisher, args=(w,)) for w in range(PUBLISHERS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) >= 20 and cut_off, "the kill must land while publishes are in flight"

    proc = _start(env, port, log)
    try:
        with BrokerClient(url, token) as client:
            listed = list(client.iter_topic_packets("crash.test"))
            for pid, (env_bytes, payload) in acked.items():
                assert client.get_envelope(pid) == env_bytes
                assert client.get_payload(pid) == payload
            # Whatever is visible is whole: its payload matches the digest its statement signs.
            for item in listed:
                stmt = client.get_packet(item["id"])["statement"]
                digest = stmt["subject"][0]["digest"]["sha256"]
                assert hashlib.sha256(client.get_payload(item["id"])).hexdigest() == digest
            seqs = [item["seq"] for item in listed]
            assert seqs == list(range(1, len(seqs) + 1))  # gapless, in order
            entries = list(client.iter_log())
        prev = "0" * 64
        for e in entries:
            unsigned = {k: v for k, v in e.items() if k != "hash"}
            assert hashlib.sha256(bytes.fromhex(prev) + rfc8785.dumps(unsigned)).hexdigest() == e["hash"]
            prev = e["hash"]
        assert sum(e["kind"] == "packet.publish" for e in entries) == len(listed)
        # Start-up swept every temp file and every blob no packet references.
        assert list((data / "tmp").iterdir()) == []
        if bucket is None:
            blobs = {p.name for p in (data / "blobs").rglob("*") if p.is_file()}
        else:
            blobs = {key.rsplit("/", 1)[1] for key in bucket.keys()}
            assert not (data / "blobs").exists()
        assert len(blobs) == 2 * len(listed)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
