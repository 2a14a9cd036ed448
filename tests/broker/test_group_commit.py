"""Publishes waiting for the writers' lock commit together: one transaction, each its own outcome."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import factory
import httpx
import pytest

from broker.services.eventlog import verify_chain
from broker.services.publish import GroupCommit, PublishOutcome, _Pending
from m2kt.errors import Conflict


def _pending(name: str) -> _Pending:
    return _Pending(opened=name, teacher=None, topics=[], created=None, payload=None, envelope=None)  # type: ignore[arg-type]


def test_publishes_queued_behind_a_commit_are_written_together_and_each_gets_its_own_outcome():
    group = GroupCommit()
    batches: list[list[str]] = []
    first_running, release = threading.Event(), threading.Event()

    def write(batch):
        batches.append([p.opened for p in batch])
        if len(batches) == 1:
            first_running.set()
            assert release.wait(5)
        return [
            Conflict("no") if p.opened == "bad" else PublishOutcome(p.opened, i, [], True) for i, p in enumerate(batch)
        ]

    def submit(name):
        try:
            return group.commit(_pending(name), write)
        except Conflict as exc:
            return exc

    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(submit, "a")
        assert first_running.wait(5)
        rest = {name: pool.submit(submit, name) for name in ("b", "c", "bad", "d", "e")}
        deadline = time.monotonic() + 5
        while len(group._queue) < 5 and time.monotonic() < deadline:  # all five queued behind the running commit
            time.sleep(0.01)
        release.set()
        results = {name: f.result(5) for name, f in rest.items()}
    assert first.result(5).id == "a"
    assert batches[0] == ["a"] and sorted(batches[1]) == ["b", "bad", "c", "d", "e"] and len(batches) == 2
    assert isinstance(results.pop("bad"), Conflict)
    assert {name: r.id for name, r in results.items()} == {n: n for n in results}


def test_a_failed_commit_fails_every_publish_in_it():
    group = GroupCommit()

    def write(batch):
        raise OSError("the database went away")

    with pytest.raises(OSError):
        group.commit(_pending("a"), write)
    assert group.commit(_pending("b"), lambda batch: [PublishOutcome("b", 1, [], True)]).seq == 1  # the next one runs


def test_concurrent_publishes_get_gapless_seqs_one_chain_and_a_repeat_its_first_seq(broker):
    teacher = broker.teacher()
    packets = [factory.packet(teacher.key, seed=i, topics=["group.a", f"group.{i % 3}"]) for i in range(24)]
    packets.append(packets[5])  # the same packet twice, possibly in one batch

    def publish(item):
        _pid, env, payload = item
        with httpx.Client(base_url=broker.url, headers={"Authorization": f"Bearer {teacher.token}"}) as http:
            r = http.post("/v1/packets", files=factory.files(env, payload))
            assert r.status_code in (200, 201), r.text
            return r.json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(publish, packets))
    created = [a for a in answers if a["created"]]
    assert sorted(a["seq"] for a in created) == list(range(1, 25))
    repeats = [a for a in answers if a["id"] == packets[5][0]]
    assert len(repeats) == 2 and repeats[0]["seq"] == repeats[1]["seq"] and sum(a["created"] for a in repeats) == 1
    with broker.client(teacher.token) as client:
        entries = list(client.iter_log())
        assert [p["seq"] for p in client.iter_topic_packets("group.a")] == list(range(1, 25))
    verify_chain(entries)
    assert [e["subject"] for e in entries if e["kind"] == "packet.publish"] == [
        a["id"] for a in sorted(created, key=lambda a: a["seq"])
    ]
