"""Many clients at once on PostgreSQL: every subscriber sees every packet of its topic once, in seq order.

* one broker, 20 concurrent publishers, 100 open event streams;
* three broker *processes* on one database (LISTEN/NOTIFY fan-out), subscribers spread
  across them, publishers on all of them.
Sizes default to the issue's; ``M2KT_LOAD_SCALE`` (a factor) scales them for a longer soak.
"""

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import factory
import httpx
import pytest
from brokerkit import ADMIN_TOKEN, Broker, ServerThread, broker_settings, free_port
from test_events import Subscriber

pytestmark = pytest.mark.slow  # load tests: many publishers and streams against a broker process

SCALE = float(os.environ.get("M2KT_LOAD_SCALE", "1"))
TOPICS = ["load.a", "load.b", "load.c", "load.d", "load.e"]


def _publish_all(url: str, teachers, per_teacher: int) -> list[dict]:
    """Each teacher publishes from its own thread; packet j of teacher i goes to topic (i + j) % 5."""
    published: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(len(teachers))

    def run(i: int, teacher) -> None:
        with httpx.Client(
            base_url=url if isinstance(url, str) else url[i % len(url)],
            headers={"Authorization": f"Bearer {teacher.token}"},
            timeout=60,
        ) as http:
            start.wait()
            for j in range(per_teacher):
                topic = TOPICS[(i + j) % len(TOPICS)]
                _, env, payload = factory.packet(teacher.key, seed=1000 * i + j, topics=[topic])
                r = http.post("/v1/packets", files=factory.files(env, payload))
                with lock:
                    if r.status_code != 201:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                    else:
                        published.append({**r.json(), "topic": topic})

    threads = [threading.Thread(target=run, args=(i, t)) for i, t in enumerate(teachers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[:5]
    return published


def _check(subs: list[tuple[str, Subscriber]], published: list[dict]) -> None:
    seqs = [p["seq"] for p in published]
    assert sorted(seqs) == list(range(1, len(published) + 1))  # no duplicated or lost seq
    by_topic = {t: sorted(p["seq"] for p in published if p["topic"] == t) for t in TOPICS}
    for topic, sub in subs:
        got = sub.take(len(by_topic[topic]), timeout=60)
        assert not any("error" in e for e in got), got[:3]
        got_seqs = [int(e["id"]) for e in got]
        assert got_seqs == by_topic[topic], topic  # exactly once, in seq order
        assert sub.nothing_more(wait=0.2)
        sub.close()


# A token holds at most M2KT_MAX_STREAMS_PER_AGENT (16) streams: the subscribers are several students.
STREAMS_PER_READER = 10


def _readers(broker: Broker, prefix: str, n_subs: int) -> list[str]:
    return [broker.student(f"{prefix}-{k}")[1] for k in range(-(-n_subs // STREAMS_PER_READER))]


def test_20_publishers_and_100_subscribers_on_postgres(pg_database_url, tmp_path):
    n_subs, n_pubs, per = int(100 * SCALE), int(20 * SCALE), 5
    settings = broker_settings(pg_database_url, tmp_path / "data")
    with ServerThread(settings) as server:
        broker = Broker(server.url, settings, "postgresql")
        teachers = [broker.teacher(f"pub-{i}") for i in range(n_pubs)]
        students = _readers(broker, "reader", n_subs)
        subs = [
            (
                TOPICS[i % len(TOPICS)],
                Subscriber(server.url, students[i // STREAMS_PER_READER], TOPICS[i % len(TOPICS)]),
            )
            for i in range(n_subs)
        ]
        published = _publish_all(server.url, teachers, per)
        assert len(published) == n_pubs * per
        _check(subs, published)


def test_three_broker_processes_on_one_postgres(pg_database_url, tmp_path):
    ports = [free_port() for _ in range(3)]
    env = {
        **os.environ,
        "M2KT_DATABASE_URL": pg_database_url,
        "M2KT_DATA_DIR": str(tmp_path / "shared"),
        "M2KT_ADMIN_TOKEN": ADMIN_TOKEN,
        "M2KT_LOG_JSON": "false",
    }
    procs = []
    try:
        for k, port in enumerate(ports):
            cmd = [sys.executable, "-m", "broker", "serve", "--port", str(port)]
            if k:
                cmd.append("--no-migrate")  # the first one migrated; replicas must not race it
            with (tmp_path / f"broker-{k}.log").open("wb") as log:
                procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
            _wait_ready(f"http://127.0.0.1:{port}", procs[-1], tmp_path / f"broker-{k}.log")
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        settings = broker_settings(pg_database_url, tmp_path / "shared")
        broker = Broker(urls[0], settings, "postgresql")
        teachers = [broker.teacher(f"rep-{i}") for i in range(int(6 * SCALE))]
        n_subs = int(30 * SCALE)
        students = _readers(broker, "rep-reader", n_subs)
        subs = [
            (
                TOPICS[i % len(TOPICS)],
                Subscriber(urls[i % 3], students[i // STREAMS_PER_READER], TOPICS[i % len(TOPICS)]),
            )
            for i in range(n_subs)
        ]
        published = _publish_all(urls, teachers, 5)
        assert Counter(p["topic"] for p in published).total() == len(teachers) * 5
        _check(subs, published)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)


def _wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    import time

    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
