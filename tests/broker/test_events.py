"""Server-Sent Events: live delivery, Last-Event-ID replay, keep-alives, replicas on PostgreSQL."""

import asyncio
import json
import queue
import threading
import time

import factory
import httpx
import pytest
from brokerkit import Broker, ServerThread, broker_settings

from broker.events import Broadcaster, notify_payload, topics_of


class Subscriber:
    """Reads one event stream in a thread; `lines` gets every raw line, `events` every parsed event."""

    def __init__(self, url: str, token: str, topic: str, last_event_id: str | None = None) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.events: queue.Queue[dict] = queue.Queue()
        self.opened = threading.Event()
        self._stop = threading.Event()
        headers = {"Authorization": f"Bearer {token}"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self._args = (f"{url}/v1/topics/{topic}/events", headers)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.opened.wait(10), "stream did not open"

    def _run(self) -> None:
        try:
            self._read()
        except httpx.HTTPError:
            if not self._stop.is_set():
                self.events.put({"error": "stream broke"})

    def _read(self) -> None:
        url, headers = self._args
        with httpx.Client(timeout=httpx.Timeout(10, read=30)) as http, http.stream("GET", url, headers=headers) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            event: dict = {}
            for line in r.iter_lines():
                self.lines.put(line)
                if line == ": stream open":
                    self.opened.set()
                if line.startswith("id: "):
                    event["id"] = line[4:]
                elif line.startswith("event: "):
                    event["event"] = line[7:]
                elif line.startswith("data: "):
                    event["data"] = json.loads(line[6:])
                elif line == "" and event:
                    self.events.put(event)
                    event = {}
                if self._stop.is_set():
                    return

    def take(self, n: int, timeout: float = 10) -> list[dict]:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            out.append(self.events.get(timeout=max(0.01, deadline - time.monotonic())))
        return out

    def nothing_more(self, wait: float = 0.5) -> bool:
        try:
            self.events.get(timeout=wait)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self._stop.set()


def _publish(url, teacher, seed, topics):
    pid, env, payload = factory.packet(teacher.key, seed=seed, topics=topics)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {teacher.token}"}) as http:
        r = http.post("/v1/packets", files=factory.files(env, payload))
        assert r.status_code == 201, r.text
        return r.json()


@pytest.mark.parametrize("broker", [{"sse_keepalive_seconds": 0.3}], indirect=True)
def test_live_delivery_replay_and_keepalive(broker):
    teacher = broker.teacher()
    _, student = broker.student()
    before = _publish(broker.url, teacher, 0, ["a.x"])  # published before anyone listened
    sub = Subscriber(broker.url, student, "a.x")
    first = _publish(broker.url, teacher, 1, ["a.x"])
    _publish(broker.url, teacher, 2, ["b.y"])  # another topic: not delivered
    second = _publish(broker.url, teacher, 3, ["a.x", "b.y"])
    got = sub.take(2)
    assert [e["id"] for e in got] == [str(first["seq"]), str(second["seq"])]
    assert all(e["event"] == "packet" for e in got)
    assert got[0]["data"]["id"] == first["id"] and set(got[0]["data"]) == {
        "id",
        "seq",
        "teacher",
        "topics",
        "status",
        "received_at",
        "key_revoked",
    }
    assert sub.nothing_more()
    deadline = time.monotonic() + 5
    comments = []
    while time.monotonic() < deadline and not comments:
        line = sub.lines.get(timeout=5)
        if line.startswith(":") and line != ": stream open":
            comments.append(line)
    assert comments, "no keep-alive comment"
    sub.close()
    # Reconnect having seen only `first`: exactly what came after it, once, in order.
    again = Subscriber(broker.url, student, "a.x", last_event_id=str(first["seq"]))
    replay = again.take(1)
    assert [e["data"]["id"] for e in replay] == [second["id"]]
    third = _publish(broker.url, teacher, 4, ["a.x"])
    assert [e["data"]["id"] for e in again.take(1)] == [third["id"]]
    assert again.nothing_more()
    again.close()
    # From the beginning:
    full = Subscriber(broker.url, student, "a.x", last_event_id="0")
    assert [e["data"]["id"] for e in full.take(4)] == [before["id"], first["id"], second["id"], third["id"]]
    full.close()


def test_students_do_not_see_quarantined_packets_in_streams(broker):
    teacher = broker.teacher()
    _, student = broker.student()
    a = _publish(broker.url, teacher, 1, ["a.x"])
    b = _publish(broker.url, teacher, 2, ["a.x"])
    with broker.admin as admin:
        admin.quarantine(a["id"], "bad")
    sub = Subscriber(broker.url, student, "a.x", last_event_id="0")
    assert [e["data"]["id"] for e in sub.take(1)] == [b["id"]]
    assert sub.nothing_more()
    sub.close()
    sub = Subscriber(broker.url, teacher.token, "a.x", last_event_id="0")
    got = sub.take(2)
    assert [(e["data"]["id"], e["data"]["status"]) for e in got] == [(a["id"], "quarantined"), (b["id"], "published")]
    sub.close()


def test_bad_stream_requests(broker):
    _, student = broker.student()
    with broker.http(student) as http:
        r = http.get("/v1/topics/a.x/events", headers={"Last-Event-ID": "abc"})
        assert r.status_code == 422 and r.json()["type"].endswith("invalid-request")
        assert http.get("/v1/topics/A..B/events").status_code == 404
    with broker.http() as http:
        assert http.get("/v1/topics/a.x/events").status_code == 401


def test_replicas_on_one_postgres_deliver_every_packet(pg_database_url, tmp_path):
    """Two brokers on one database (LISTEN/NOTIFY): publish on either, every subscriber sees all."""
    settings = broker_settings(pg_database_url, tmp_path / "shared-data")
    with ServerThread(settings) as one, ServerThread(settings) as two:
        teacher = Broker(one.url, settings, "postgresql").teacher()
        _, student = Broker(two.url, settings, "postgresql").student()
        subs = [Subscriber(one.url, student, "a.x"), Subscriber(two.url, student, "a.x")]
        urls = [one.url, two.url, one.url, two.url]
        published = [_publish(url, teacher, i, ["a.x"]) for i, url in enumerate(urls)]
        assert [p["seq"] for p in published] == [1, 2, 3, 4]
        for sub in subs:
            assert [e["data"]["id"] for e in sub.take(4)] == [p["id"] for p in published]
            assert sub.nothing_more()
            sub.close()
        with httpx.Client(base_url=two.url, headers={"Authorization": f"Bearer {student}"}) as http:
            assert http.get(f"/v1/packets/{published[0]['id']}/payload").status_code == 200


def test_a_publish_wakes_only_the_streams_of_its_topics(database_url, tmp_path):
    """A stream on another topic is not woken: with 1,000 streams open, waking all of them slowed publishing x39-x160.

    Counted by the broker's own broadcaster (on PostgreSQL its LISTEN thread's wake-ups included), not timed.
    """
    settings = broker_settings(database_url, tmp_path / "data")
    with ServerThread(settings) as server:
        broadcaster = server.server.config.app.state.broadcaster
        if not settings.is_sqlite:  # the LISTEN thread wakes every stream once it connects: let that pass first
            deadline = time.monotonic() + 10
            while broadcaster.generation == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
        broker = Broker(server.url, settings, "sqlite" if settings.is_sqlite else "postgresql")
        teacher = broker.teacher()
        _, student = broker.student()
        here, elsewhere = Subscriber(server.url, student, "wake.here"), Subscriber(server.url, student, "wake.there")
        before = broadcaster.woken.copy()
        published = [_publish(server.url, teacher, i, ["wake.here", "wake.also"]) for i in range(3)]
        assert [e["data"]["id"] for e in here.take(3)] == [p["id"] for p in published]
        assert broadcaster.woken["wake.here"] >= before["wake.here"] + 3
        assert broadcaster.woken["wake.there"] == before["wake.there"]  # never woken
        last = _publish(server.url, teacher, 9, ["wake.there"])  # and it still gets its own topic's packets
        assert [e["data"]["id"] for e in elsewhere.take(1)] == [last["id"]]
        assert broadcaster.woken["wake.there"] > before["wake.there"]
        here.close()
        elsewhere.close()


def test_the_broadcaster_wakes_a_topics_streams_and_those_following_every_topic():
    async def scenario() -> tuple[bool, bool, bool, bool]:
        b = Broadcaster()
        b.attach(asyncio.get_running_loop())
        a, other, everything = b.subscribe("a.x"), b.subscribe("b.y"), b.subscribe()
        b.notify(["a.x", "c.z"])
        await asyncio.sleep(0.01)
        woken = (a.is_set(), other.is_set(), everything.is_set())
        b.unsubscribe(other)
        b.notify()  # no topics named (a quarantine, a lost LISTEN connection): every stream
        await asyncio.sleep(0.01)
        return (*woken, b.streams == 2)

    assert asyncio.run(scenario()) == (True, False, True, True)


def test_notify_payloads_name_their_topics_or_wake_everyone():
    assert topics_of(notify_payload(7, ["b", "a"])) == {"a", "b"}
    assert topics_of(notify_payload(7, None)) is None
    assert topics_of(notify_payload(7, [f"t{i:04d}" + "x" * 600 for i in range(16)])) is None  # too long: all
    for old_or_odd in ("7", "", "[1]", '{"topics": [1]}', '{"topics": "a"}'):
        assert topics_of(old_or_odd) is None
