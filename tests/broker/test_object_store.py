"""Blobs on an S3-compatible object store (M2KT_BLOB_URL=s3://...), against moto's real S3-wire server.

* Payloads and envelopes are immutable downloads: strong ETag, `Cache-Control: immutable`,
  `If-None-Match` answered 304, on the file store and the object store alike.
* The object store down, failing between a packet's two PUTs, or the local spool disk full:
  publishes are 503 `unavailable`, no row is written, and the broker recovers when the store does.
* Three broker processes with separate, empty data directories share one PostgreSQL and one
  bucket: what any of them took in, every one serves.
* The orphan sweep (at start, or `m2kt-broker sweep`) takes unreferenced blobs older than the
  grace period and nothing else; a blob written again is young again.
"""

import hashlib
import os
import signal
import subprocess
import sys
import time

import factory
import httpx
import pytest
from brokerkit import ADMIN_TOKEN, Broker, ServerThread, broker_settings, free_port
from s3kit import S3Server, new_bucket
from test_disk_full import _full
from test_events import Subscriber
from test_load import _wait_ready
from test_publish import problem_type
from typer.testing import CliRunner

from broker import cli, storage
from broker.s3store import S3Store
from broker.settings import BrokerSettings
from broker.storage import open_store
from m2kt.client import BrokerClient
from m2kt.errors import ServiceUnavailable
from m2kt.packet import open_packet

IMMUTABLE = "private, max-age=31536000, immutable"


@pytest.fixture
def sqlite_url(sqlite_template, tmp_path):
    target = tmp_path / "broker.db"
    target.write_bytes(sqlite_template.read_bytes())
    return f"sqlite:///{target}"


@pytest.fixture(params=["file", "s3"])
def store_broker(request, sqlite_url, tmp_path):
    overrides = {}
    if request.param == "s3":
        overrides["blob_url"] = request.getfixturevalue("s3_bucket").url
    settings = broker_settings(sqlite_url, tmp_path / "data", **overrides)
    with ServerThread(settings) as server:
        yield Broker(server.url, settings, "sqlite")


def test_blob_urls_are_checked_when_the_broker_starts(tmp_path):
    assert BrokerSettings(data_dir=tmp_path).blob_url == tmp_path.resolve().as_uri()  # the default: files
    assert BrokerSettings(blob_url="s3://my-bucket/some/prefix").blob_url == "s3://my-bucket/some/prefix"
    for bad in ("s3://", "s3://UPPER/x", "gs://bucket/x", "file://relative/dir", "s3://bucket/x?y=1", "/abs/dir"):
        with pytest.raises(ValueError, match="M2KT_BLOB_URL"):
            BrokerSettings(blob_url=bad)


def test_blobs_are_immutable_downloads_with_etags_and_304(store_broker):
    teacher = store_broker.teacher()
    pid, env, payload = factory.packet(teacher.key, topics=["cache.x"])
    with store_broker.http(teacher.token) as http:
        assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
        for which, body in (("payload", payload), ("envelope", env)):
            etag = f'"{hashlib.sha256(body).hexdigest()}"'
            r = http.get(f"/v1/packets/{pid}/{which}")
            assert r.status_code == 200 and r.content == body
            assert r.headers["etag"] == etag and r.headers["cache-control"] == IMMUTABLE
            assert r.headers["content-length"] == str(len(body))
            for header in (etag, f"W/{etag}", f'"{"0" * 64}", {etag}', "*"):
                again = http.get(f"/v1/packets/{pid}/{which}", headers={"If-None-Match": header})
                assert again.status_code == 304 and again.content == b"", header
                assert again.headers["etag"] == etag and again.headers["cache-control"] == IMMUTABLE
            other = http.get(f"/v1/packets/{pid}/{which}", headers={"If-None-Match": f'"{"0" * 64}"'})
            assert other.status_code == 200 and other.content == body
        assert http.get(f"/v1/packets/{'0' * 64}/payload", headers={"If-None-Match": "*"}).status_code == 404


def test_on_the_object_store_the_data_directory_keeps_no_blob(sqlite_url, s3_bucket, tmp_path):
    settings = broker_settings(sqlite_url, tmp_path / "data", blob_url=s3_bucket.url)
    with ServerThread(settings) as server:
        broker = Broker(server.url, settings, "sqlite")
        teacher = broker.teacher()
        pid, env, payload = factory.packet(teacher.key, topics=["s3.x"])
        with broker.http(teacher.token) as http:
            assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
            assert http.get(f"/v1/packets/{pid}/payload").content == payload
        with httpx.Client(base_url=broker.url, timeout=30) as browser:  # the packet page reads the payload header
            assert browser.post("/dashboard/login", data={"token": teacher.token}).status_code == 303
            page = browser.get(f"/dashboard/packets/{pid}")
            assert page.status_code == 200 and "<td>F16</td><td>[3, 2, 4]</td>" in page.text, page.text[-3000:]
    shas = [hashlib.sha256(b).hexdigest() for b in (env, payload)]
    assert s3_bucket.keys() == sorted(f"packets/blobs/{s[:2]}/{s}" for s in shas)
    assert [p for p in (tmp_path / "data").rglob("*") if p.is_file() and p.suffix != ".db"] == []


def test_object_store_down_is_a_clean_503_and_the_broker_recovers(sqlite_url, tmp_path, monkeypatch):
    s3 = S3Server().start()  # its own server: this test stops it
    try:
        for name, value in s3.env.items():
            monkeypatch.setenv(name, value)
        bucket = new_bucket(s3)
        settings = broker_settings(sqlite_url, tmp_path / "data", blob_url=bucket.url)
        with ServerThread(settings) as server:
            broker = Broker(server.url, settings, "sqlite")
            teacher = broker.teacher()
            first, env1, payload1 = factory.packet(teacher.key, seed=1, topics=["down.x"])
            pid, env, payload = factory.packet(teacher.key, seed=2, topics=["down.x"])
            with broker.http(teacher.token) as http:
                assert http.post("/v1/packets", files=factory.files(env1, payload1)).status_code == 201
                log_before = http.get("/v1/log").json()["items"]
                s3.stop()
                r = http.post("/v1/packets", files=factory.files(env, payload))
                assert r.status_code == 503 and problem_type(r) == "unavailable", r.text
                assert r.headers["retry-after"]
                assert http.get(f"/v1/packets/{pid}").status_code == 404  # no row
                assert [t["packets"] for t in http.get("/v1/topics").json()] == [1]
                assert http.get("/v1/log").json()["items"] == log_before  # no log entry
                assert list((tmp_path / "data" / "tmp").iterdir()) == []  # no spooled upload left
                read = http.get(f"/v1/packets/{first}/payload")
                assert read.status_code == 503 and problem_type(read) == "unavailable"
                # a client that has the payload needs no store to learn it is current
                etag = f'"{hashlib.sha256(payload1).hexdigest()}"'
                assert http.get(f"/v1/packets/{first}/payload", headers={"If-None-Match": etag}).status_code == 304
                s3.start()  # same port, same (in-memory) bucket
                assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
                assert http.get(f"/v1/packets/{pid}/payload").content == payload
                assert http.get(f"/v1/packets/{first}/payload").content == payload1
    finally:
        s3.stop()


def test_a_store_that_breaks_between_the_blobs_leaves_no_row(sqlite_url, s3_bucket, tmp_path, monkeypatch):
    """The envelope's PUT fails after the payload's succeeded: 503, no row; the lone object is an orphan."""
    settings = broker_settings(sqlite_url, tmp_path / "data", blob_url=s3_bucket.url)
    with ServerThread(settings) as server:
        broker = Broker(server.url, settings, "sqlite")
        teacher = broker.teacher()
        pid, env, payload = factory.packet(teacher.key, topics=["half.x"])
        real_put = S3Store._put

        def put_payload_only(self, blob):
            if blob.size != len(payload):
                raise OSError(5, "Input/output error")
            real_put(self, blob)

        monkeypatch.setattr(S3Store, "_put", put_payload_only)
        with broker.http(teacher.token) as http:
            r = http.post("/v1/packets", files=factory.files(env, payload))
            assert r.status_code == 503 and problem_type(r) == "unavailable", r.text
            assert http.get(f"/v1/packets/{pid}").status_code == 404
            monkeypatch.undo()
            sha = hashlib.sha256(payload).hexdigest()
            assert s3_bucket.keys() == [f"packets/blobs/{sha[:2]}/{sha}"]  # unreferenced, for the sweep
            assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
            assert http.get(f"/v1/packets/{pid}/envelope").content == env


def test_a_full_spool_disk_on_the_object_store_is_a_clean_503(sqlite_url, s3_bucket, tmp_path, monkeypatch):
    """With blobs in a bucket the upload still spools to the local disk: full, it is 503 and nothing anywhere."""
    settings = broker_settings(sqlite_url, tmp_path / "data", blob_url=s3_bucket.url)
    with ServerThread(settings) as server:
        broker = Broker(server.url, settings, "sqlite")
        teacher = broker.teacher()
        pid, env, payload = factory.packet(teacher.key, topics=["full.x"])
        original = storage.BlobStore.spool
        monkeypatch.setattr(storage.BlobStore, "spool", lambda self: _full(original(self)))
        with broker.http(teacher.token) as http:
            r = http.post("/v1/packets", files=factory.files(env, payload))
            assert r.status_code == 503 and problem_type(r) == "unavailable", r.text
            assert "No space left on device" in r.json()["detail"]
            monkeypatch.undo()
            assert http.get(f"/v1/packets/{pid}").status_code == 404
            assert s3_bucket.keys() == [] and list((tmp_path / "data" / "tmp").iterdir()) == []
            assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201


def _read(store, sha: str) -> bytes:
    return b"".join(store.stream(sha))


def _put(store, data: bytes) -> str:
    blob = store.spool_bytes(data)
    store.commit_all([blob])
    return blob.sha256


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_the_orphan_sweep_takes_old_unreferenced_blobs_only(kind, tmp_path, request):
    blob_url = request.getfixturevalue("s3_bucket").url if kind == "s3" else ""
    store = open_store(BrokerSettings(data_dir=tmp_path / "data", blob_url=blob_url))
    old_orphan = _put(store, b"old orphan")
    old_kept = _put(store, b"old but referenced")
    time.sleep(2.1)  # S3 keeps LastModified to the second
    split = time.time() - 1
    young_orphan = _put(store, b"young orphan")
    stale_spool = store.spool_bytes(b"an upload a crash cut off")
    stale_spool.sync()
    referenced = lambda: {old_kept}  # noqa: E731
    assert store.sweep(referenced, grace_seconds=600) == 0  # everything is young for the default grace
    assert store.sweep(referenced, grace_seconds=time.time() - split) == 1  # only the old orphan
    assert _read(store, old_kept) == b"old but referenced" and _read(store, young_orphan) == b"young orphan"
    with pytest.raises(ServiceUnavailable):
        _read(store, old_orphan)
    assert store.sweep(referenced, grace_seconds=0) == 2  # the young orphan and the stale spool file
    assert _read(store, old_kept) == b"old but referenced"
    assert not stale_spool.path.exists()


@pytest.mark.slow  # three broker processes
def test_three_replicas_with_empty_data_dirs_share_one_bucket(pg_database_url, s3_bucket, tmp_path):
    """Replicas as on three hosts: one PostgreSQL, one bucket, nothing shared on disk.

    Every packet published to any replica is listed, streamed (SSE), read and verified from every other.
    """
    ports = [free_port() for _ in range(3)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    procs = []
    try:
        for k, port in enumerate(ports):
            env = {
                **os.environ,
                **s3_bucket.server.env,
                "M2KT_DATABASE_URL": pg_database_url,
                "M2KT_DATA_DIR": str(tmp_path / f"host-{k}"),
                "M2KT_BLOB_URL": s3_bucket.url,
                "M2KT_ADMIN_TOKEN": ADMIN_TOKEN,
                "M2KT_LOG_JSON": "false",
            }
            cmd = [sys.executable, "-m", "broker", "serve", "--port", str(port)]
            if k:
                cmd.append("--no-migrate")  # the first one migrated; replicas must not race it
            with (tmp_path / f"broker-{k}.log").open("wb") as log:
                procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
            _wait_ready(urls[k], procs[-1], tmp_path / f"broker-{k}.log")
        broker = Broker(urls[0], broker_settings(pg_database_url, tmp_path / "unused"), "postgresql")
        teacher = broker.teacher()
        _, student = broker.student()
        subs = [Subscriber(url, student, "replica.x") for url in urls]
        published = {}  # packet id -> (envelope, payload)
        for k, url in enumerate(urls * 2):
            pid, env, payload = factory.packet(teacher.key, seed=k, topics=["replica.x"])
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {teacher.token}"}) as http:
                assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
            published[pid] = (env, payload)
        trusted = {teacher.keyid: teacher.key.public_key()}
        for url, sub in zip(urls, subs, strict=True):
            events = sub.take(len(published), timeout=30)
            assert {e["data"]["id"] for e in events} == set(published), url
            sub.close()
            with BrokerClient(url, student, retries=0) as client:
                assert {p["id"] for p in client.iter_topic_packets("replica.x")} == set(published)
                for pid, (env, payload) in published.items():
                    got_env, got_payload = client.get_envelope(pid), client.get_payload(pid)
                    assert (got_env, got_payload) == (env, payload)
                    assert open_packet(got_env, got_payload, trusted).id == pid  # signature and digest verify
        assert len(s3_bucket.keys()) == 2 * len(published)
        for k in range(3):  # each host's directory holds no blob: the bucket has them all
            assert [p for p in (tmp_path / f"host-{k}").rglob("*") if p.is_file()] == []
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_a_blob_written_again_is_young_again(kind, tmp_path, request):
    """A publish adopting an old orphan (same bytes) renews it, so a sweep by age leaves it to the commit."""
    blob_url = request.getfixturevalue("s3_bucket").url if kind == "s3" else ""
    store = open_store(BrokerSettings(data_dir=tmp_path / "data", blob_url=blob_url))
    sha = _put(store, b"an orphan a retry adopts")
    time.sleep(2.1)
    split = time.time() - 1
    assert _put(store, b"an orphan a retry adopts") == sha
    assert store.sweep(lambda: set(), grace_seconds=time.time() - split) == 0
    assert _read(store, sha) == b"an orphan a retry adopts"


def test_the_sweep_command_takes_orphans_beside_a_serving_broker(sqlite_url, s3_bucket, tmp_path):
    settings = broker_settings(sqlite_url, tmp_path / "data", blob_url=s3_bucket.url)
    with ServerThread(settings) as server:
        broker = Broker(server.url, settings, "sqlite")
        teacher = broker.teacher()
        pid, env, payload = factory.packet(teacher.key, topics=["sweep.x"])
        with broker.http(teacher.token) as http:
            assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
        orphan = _put(open_store(settings), b"the blob of a publish whose commit failed")
        assert len(s3_bucket.keys()) == 3
        cli_env = {
            "M2KT_DATABASE_URL": sqlite_url,
            "M2KT_DATA_DIR": str(tmp_path / "cli"),
            "M2KT_BLOB_URL": s3_bucket.url,
            "M2KT_LOG_JSON": "false",
        }
        young = CliRunner().invoke(cli.app, ["sweep"], env=cli_env)  # the default grace: 600 s
        assert young.exit_code == 0 and "removed 0" in young.output, young.output
        result = CliRunner().invoke(cli.app, ["sweep"], env={**cli_env, "M2KT_ORPHAN_GRACE_SECONDS": "0"})
        assert result.exit_code == 0 and "removed 1" in result.output, result.output
        assert all(orphan not in key for key in s3_bucket.keys()) and len(s3_bucket.keys()) == 2
        with broker.http(teacher.token) as http:
            assert http.get(f"/v1/packets/{pid}/payload").content == payload
