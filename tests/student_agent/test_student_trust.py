"""A dishonest broker cannot turn a student back: each TUF attack is refused, reported and leaves the CAL alone.

The broker here is a real HTTP server (FastAPI under uvicorn) that serves what a compromised
broker could: packets validly signed by the teacher, but old ones as the newest, expired ones,
ones under a revoked key, a payload under another packet's statement, and a key of its own
for the teacher. The student runs unchanged against it; every refusal must be reported with
its reason and the CAL store must stay byte for byte as it was. No packet here is trained on:
the packets are signed test vectors (tests/factory.py) whose content the student refuses
(``invalid-content``) once they passed every trust check, which is what the honest ones show.
"""

import asyncio
import base64
import json
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import factory
import pytest
import torch
import uvicorn
from brokerkit import free_port
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from m2kt import keys
from m2kt.client import BrokerClient
from m2kt.head import TopicHead, build_head
from student_agent.agent import TRUST_REASONS, StudentAgent
from student_agent.trust import TRUST_FILE, TrustState

TOPIC, TEACHER = "modarith.parity", "teacher-a"


def _when(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat(timespec="seconds").replace("+00:00", "Z")


class Packet:
    """One validly signed packet: id, envelope, payload."""

    def __init__(self, key: Ed25519PrivateKey, seed: int, *cosigners: Ed25519PrivateKey, **manifest: Any) -> None:
        manifest.setdefault("teacher", {"agent": TEACHER, "model": factory.manifest()["teacher"]["model"]})
        self.version = manifest.get("version")
        self.id, self.envelope, self.payload = factory.packet(key, seed=seed, **manifest)
        if cosigners:  # the same statement, signed by more keys
            statement = base64.b64decode(json.loads(self.envelope)["payload"])
            self.envelope = factory.envelope_bytes(statement, key, *cosigners)


def _head(key: Ed25519PrivateKey, version: int, topics: dict[str, Packet], *, expires_in: float = 3600) -> bytes:
    """A head signed by the teacher's key (PAE written by tests/factory.py), naming packets by version."""
    now = datetime.now(UTC).replace(microsecond=0)
    named = {t: TopicHead(p.version, p.id) for t, p in topics.items()}
    statement = build_head(TEACHER, version, named, now - timedelta(hours=2), now + timedelta(seconds=expires_in))
    return factory.envelope_bytes(statement, key)


class EvilBroker:
    """The student-facing routes of docs/protocol.md §2, serving whatever the test puts in."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []  # the teacher's registry entry, as the broker claims it
        self.feed: list[dict[str, Any]] = []  # the topic's summaries, as the broker claims them
        self.envelopes: dict[str, bytes] = {}
        self.payloads: dict[str, bytes] = {}
        self.reports: dict[str, dict[str, Any]] = {}
        self.trust_reports: list[dict[str, Any]] = []  # what students told of the teacher, as posted
        self.url = ""
        self.head: bytes | None = None  # the teacher's signed head, as the broker chooses to serve it
        self.threshold = 1  # how many of the teacher's keys must sign, as the broker claims it
        self.app = self._build()

    def key(self, key: Ed25519PrivateKey, *, revoked: bool = False) -> None:
        public = keys.public_to_b64(key.public_key())
        self.keys = [k for k in self.keys if k["public_key"] != public]
        self.keys.append({"keyid": factory.keyid_of(key), "public_key": public, "revoked": revoked})

    def serve(
        self,
        packet: Packet,
        *,
        as_id: str | None = None,
        payload_of: Packet | None = None,
        envelope_of: Packet | None = None,
        topics: list[str] | None = None,
    ) -> str:
        """List ``packet`` as the topic's newest, optionally with pieces of another packet."""
        pid = as_id or packet.id
        self.envelopes[pid] = (envelope_of or packet).envelope
        self.payloads[pid] = (payload_of or packet).payload
        seq = len(self.feed) + 1
        self.feed.append(
            {
                "id": pid,
                "seq": seq,
                "teacher": TEACHER,
                "topics": topics or [TOPIC],
                "status": "published",
                "received_at": _when(),
            }
        )
        return pid

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/agents/{name}")
        def agent(name: str) -> dict[str, Any]:
            return {"name": name, "role": "teacher", "keys": self.keys, "threshold": self.threshold}

        @app.get("/v1/agents/{name}/head")
        def head(name: str) -> Response:
            if self.head is None:
                problem = {
                    "type": "https://m2kt.dev/problems/not-found",
                    "title": "not found",
                    "status": 404,
                    "detail": "no head",
                }
                return JSONResponse(problem, status_code=404, media_type="application/problem+json")
            return Response(self.head, media_type="application/vnd.dsse.envelope.v1+json")

        @app.get("/v1/topics/{topic}/packets")
        def page(topic: str, after: int = 0, limit: int = 100) -> dict[str, Any]:
            items = [s for s in self.feed if s["seq"] > after and topic in s["topics"]][:limit]
            return {"items": items, "next_after": items[-1]["seq"] if items else after}

        @app.get("/v1/packets/{pid}/envelope")
        def envelope(pid: str) -> Response:
            return Response(self.envelopes[pid], media_type="application/vnd.dsse.envelope.v1+json")

        @app.get("/v1/packets/{pid}/payload")
        def payload(pid: str) -> Response:
            return Response(self.payloads[pid], media_type="application/octet-stream")

        @app.get("/v1/topics/{topic}/events")
        async def events(topic: str, request: Request) -> StreamingResponse:
            after = int(request.headers.get("last-event-id", "0"))

            async def stream() -> AsyncIterator[str]:
                for s in [s for s in self.feed if s["seq"] > after and topic in s["topics"]]:
                    yield f"id: {s['seq']}\nevent: packet\ndata: {json.dumps(s)}\n\n"
                for _ in range(10):  # then hold the stream open a while, as a quiet topic does
                    yield ": keep-alive\n\n"
                    await asyncio.sleep(0.1)

            return StreamingResponse(stream(), media_type="text/event-stream")

        @app.post("/v1/agents/{name}/trust-reports")
        async def trust_report(name: str, request: Request) -> JSONResponse:
            self.trust_reports.append({"teacher": name, **await request.json()})
            return JSONResponse({"index": len(self.trust_reports)}, status_code=201)

        @app.post("/v1/packets/{pid}/reports")
        async def report(pid: str, request: Request) -> JSONResponse:
            self.reports[pid] = await request.json()
            return JSONResponse({"id": len(self.reports), "packet": pid}, status_code=201)

        return app


@pytest.fixture
def evil():
    broker = EvilBroker()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(broker.app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the evil broker did not start"
        time.sleep(0.01)
    broker.url = f"http://127.0.0.1:{port}"
    yield broker
    server.should_exit = True
    thread.join(timeout=10)


class _Student:
    """Enough of a student for refusals: nothing is trained on a refused packet."""

    model = SimpleNamespace(task_spec={"name": "modarith", "params": {"p": 17}})

    def model_card(self) -> dict[str, Any]:
        return {"architecture": "stub"}


def _student(evil: EvilBroker, state_dir, **kwargs) -> StudentAgent:
    agent = StudentAgent(_Student(), BrokerClient(evil.url, "student-token", retries=0), state_dir, **kwargs)  # type: ignore[arg-type]
    if agent.store.current() is None:  # a CAL integrated earlier: the bytes every refusal must leave alone
        version = agent.store.stage({"packet_id": "0" * 64, "teacher": TEACHER}, {"w": torch.arange(6.0)})
        agent.store.activate(version)
    return agent


def _handle(agent: StudentAgent) -> dict[str, tuple[str, str]]:
    """Catch up on the topic; packet id -> (verdict, reason)."""
    try:
        return {o.packet_id: (o.verdict, o.metrics.get("reason", "")) for o in agent.catch_up(TOPIC)}
    finally:
        agent.client.close()


def _assert_refused(evil: EvilBroker, outcomes, pid: str, reason: str) -> None:
    assert outcomes[pid] == ("rejected", reason), outcomes
    report = evil.reports[pid]
    assert report["verdict"] == "rejected" and report["metrics"]["reason"] == reason
    assert report["detail"].startswith(reason)
    if reason in TRUST_REASONS:  # told of the teacher too, where the dashboard shows it
        told = [(t["teacher"], t["reason"], t["action"]) for t in evil.trust_reports if t["packet"] == pid]
        assert (TEACHER, reason, "refused") in told, evil.trust_reports


PASSED = ("rejected", "invalid-content")  # through every trust check; its test-vector content is not a real packet


def test_an_older_packet_served_as_the_newest_is_a_rollback(evil, tmp_path):
    key = Ed25519PrivateKey.generate()
    evil.key(key)
    new, old, unversioned = Packet(key, 1, version=2), Packet(key, 2, version=1), Packet(key, 3)
    evil.serve(new)
    evil.serve(old)  # seq above the newest: the broker presents it as the latest
    evil.serve(unversioned)  # from before versions: no signed version to compare, after one was seen
    agent = _student(evil, tmp_path / "student")
    before = agent.store.files()
    outcomes = _handle(agent)
    assert outcomes[new.id] == PASSED
    _assert_refused(evil, outcomes, old.id, "rollback")
    _assert_refused(evil, outcomes, unversioned.id, "rollback")
    assert agent.store.files() == before
    # The memory is on disk: a restarted student still refuses an older version than it saw.
    again = Packet(key, 4, version=2)  # equal to the seen version, but another packet
    evil.serve(again)
    restarted = _student(evil, tmp_path / "student")
    _assert_refused(evil, _handle(restarted), again.id, "rollback")
    assert restarted.store.files() == before
    saved = TrustState.load(tmp_path / "student" / TRUST_FILE)
    assert saved.versions[TEACHER][TOPIC] == {"version": 2, "packet": new.id}


def test_an_expired_packet_is_stale(evil, tmp_path):
    key = Ed25519PrivateKey.generate()
    evil.key(key)
    expired = Packet(key, 1, version=5, created_at=_when(days=-3), expires=_when(days=-1))
    fresh = Packet(key, 2, version=6, expires=_when(days=1))
    evil.serve(expired)
    evil.serve(fresh)
    agent = _student(evil, tmp_path / "student")
    before = agent.store.files()
    outcomes = _handle(agent)
    _assert_refused(evil, outcomes, expired.id, "stale")
    assert outcomes[fresh.id] == PASSED
    assert agent.store.files() == before


def test_a_packet_under_a_revoked_key_is_refused_even_when_the_broker_unrevokes_it(evil, tmp_path):
    key, successor = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    evil.key(key)
    first = Packet(key, 1, version=1)
    evil.serve(first)
    agent = _student(evil, tmp_path / "student")
    before = agent.store.files()
    assert _handle(agent)[first.id] == PASSED  # the key is pinned on first use
    evil.key(key, revoked=True)
    evil.key(successor)
    after_revocation = Packet(key, 2, version=2)
    evil.serve(after_revocation)
    agent = _student(evil, tmp_path / "student", trusted_keys=(factory.keyid_of(successor),))
    _assert_refused(evil, _handle(agent), after_revocation.id, "revoked-key")
    evil.key(key, revoked=False)  # the broker "forgets" the revocation: the student does not
    replayed = Packet(key, 3, version=3)
    evil.serve(replayed)
    agent = _student(evil, tmp_path / "student")
    _assert_refused(evil, _handle(agent), replayed.id, "revoked-key")
    assert agent.store.files() == before
    assert factory.keyid_of(key) in TrustState.load(tmp_path / "student" / TRUST_FILE).revoked


def test_a_payload_or_envelope_of_another_packet_is_mix_and_match(evil, tmp_path):
    key = Ed25519PrivateKey.generate()
    evil.key(key)
    a, b, c, d = (Packet(key, seed, version=seed) for seed in (1, 2, 3, 4))
    evil.serve(a)
    evil.serve(b, payload_of=a)  # b's statement, a's payload
    wrong_envelope = evil.serve(c, envelope_of=a, payload_of=a)  # listed as c, a's envelope and payload served
    other_topic = evil.serve(d, topics=[TOPIC, "modarith.range"])  # d listed under a topic it was not signed for
    agent = _student(evil, tmp_path / "student")
    before = agent.store.files()
    outcomes = _handle(agent)
    assert outcomes[a.id] == PASSED
    _assert_refused(evil, outcomes, b.id, "mix-and-match")
    _assert_refused(evil, outcomes, wrong_envelope, "mix-and-match")
    _assert_refused(evil, outcomes, other_topic, "mix-and-match")
    assert agent.store.files() == before


def test_a_key_the_broker_adds_after_first_use_is_not_trusted(evil, tmp_path):
    key, brokers_own = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    evil.key(key)
    first = Packet(key, 1, version=1)
    evil.serve(first)
    agent = _student(evil, tmp_path / "student")
    before = agent.store.files()
    assert _handle(agent)[first.id] == PASSED
    evil.key(brokers_own)  # a key the broker registered for the teacher itself
    forged = Packet(brokers_own, 2, version=2)
    evil.serve(forged)
    agent = _student(evil, tmp_path / "student")
    _assert_refused(evil, _handle(agent), forged.id, "untrusted-key")
    assert agent.store.files() == before
    pinned = TrustState.load(tmp_path / "student" / TRUST_FILE).pinned[TEACHER]
    assert set(pinned) == {factory.keyid_of(key)}
    assert pinned[factory.keyid_of(key)] == keys.public_to_b64(key.public_key())


def test_a_packet_the_head_names_but_the_broker_does_not_serve_is_withheld(evil, tmp_path):
    key = Ed25519PrivateKey.generate()
    evil.key(key)
    served, held_back = Packet(key, 1, version=1), Packet(key, 2, version=2)
    evil.head = _head(key, 1, {TOPIC: held_back})
    evil.serve(served)  # the newest packet is never listed: a freeze
    agent = _student(evil, tmp_path / "student")
    before = agent.store.files()
    outcomes = _handle(agent)
    assert outcomes[served.id] == PASSED
    _assert_refused(evil, outcomes, held_back.id, "withheld")
    assert not agent.state.is_handled(held_back.id)  # should it come after all, it is handled
    assert agent.store.files() == before


def test_an_older_head_is_a_rollback(evil, tmp_path):
    key = Ed25519PrivateKey.generate()
    evil.key(key)
    a, b = Packet(key, 1, version=1), Packet(key, 2, version=2)
    old_head, new_head = _head(key, 1, {TOPIC: a}), _head(key, 2, {TOPIC: a})
    evil.head = new_head
    evil.serve(a)
    agent = _student(evil, tmp_path / "student")
    before = agent.store.files()
    assert _handle(agent)[a.id] == PASSED
    evil.head = old_head  # validly signed, but older than the head the student saw
    evil.serve(b)
    agent = _student(evil, tmp_path / "student")
    _assert_refused(evil, _handle(agent), b.id, "rollback")
    assert agent.store.files() == before


def test_an_expired_head_makes_the_teacher_stale_until_a_fresh_one(evil, tmp_path):
    key = Ed25519PrivateKey.generate()
    evil.key(key)
    a, b, c = Packet(key, 1, version=1), Packet(key, 2, version=2), Packet(key, 3, version=3)
    evil.head = _head(key, 1, {TOPIC: a}, expires_in=-60)
    evil.serve(a)
    agent = _student(evil, tmp_path / "student")
    before = agent.store.files()
    _assert_refused(evil, _handle(agent), a.id, "stale")
    evil.head = None  # the broker stops serving heads: the last one, expired, still decides
    evil.serve(b)
    agent = _student(evil, tmp_path / "student")
    _assert_refused(evil, _handle(agent), b.id, "stale")
    evil.head = _head(key, 2, {TOPIC: c})  # a fresh head: the teacher is current again
    evil.serve(c)
    agent = _student(evil, tmp_path / "student")
    assert _handle(agent)[c.id] == PASSED
    assert agent.store.files() == before


def test_a_packet_retried_after_a_crash_is_not_its_own_rollback(evil, tmp_path):
    """The version is remembered before the report is acknowledged: the same packet again must pass."""
    key = Ed25519PrivateKey.generate()
    evil.key(key)
    packet = Packet(key, 1, version=4)
    evil.serve(packet)
    agent = _student(evil, tmp_path / "student")
    assert _handle(agent)[packet.id] == PASSED
    agent.state.handled.clear()  # as if the student died before the broker acknowledged the report
    agent.state.cursors.clear()
    agent.state.save()
    restarted = _student(evil, tmp_path / "student")
    assert _handle(restarted)[packet.id] == PASSED


def test_a_malformed_registry_answer_is_a_refusal_not_a_crash(evil, tmp_path):
    key = Ed25519PrivateKey.generate()
    evil.keys = [{"keyid": factory.keyid_of(key), "public_key": "not base64!"}]
    packet = Packet(key, 1, version=1)
    evil.serve(packet)
    agent = _student(evil, tmp_path / "student")
    before = agent.store.files()
    _assert_refused(evil, _handle(agent), packet.id, "untrusted-key")
    assert agent.store.files() == before


def test_a_head_naming_a_packet_the_stream_never_brings_is_withheld(evil, tmp_path):
    """A following student syncs heads while it streams: a packet named after it started is missed too."""
    key = Ed25519PrivateKey.generate()
    evil.key(key)
    served, held_back = Packet(key, 1, version=1), Packet(key, 2, version=2)
    evil.head = _head(key, 1, {TOPIC: served})
    evil.serve(served)
    agent = _student(evil, tmp_path / "student")
    before = agent.store.files()
    outcomes: list[Any] = []

    def withheld() -> bool:
        return any(t["reason"] == "withheld" for t in evil.trust_reports)

    def follow() -> None:
        agent.run(
            [TOPIC],
            lambda: BrokerClient(evil.url, "student-token", retries=0),
            on_outcome=outcomes.append,
            stop=lambda: withheld() or time.monotonic() > deadline,
            read_timeout=2,
            retry_seconds=0.2,
            sync_seconds=0.3,
        )

    deadline = time.monotonic() + 60
    thread = threading.Thread(target=follow)
    thread.start()
    while not outcomes and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [o.packet_id for o in outcomes] == [served.id]
    evil.head = _head(key, 2, {TOPIC: held_back})  # the teacher published v2 and said so; the broker hides v2
    thread.join(timeout=70)
    agent.client.close()
    assert withheld(), evil.trust_reports
    told = next(t for t in evil.trust_reports if t["reason"] == "withheld")
    assert (told["teacher"], told["packet"], told["action"]) == (TEACHER, held_back.id, "refused")
    assert evil.reports[held_back.id]["metrics"]["reason"] == "withheld"
    assert not agent.state.is_handled(held_back.id)
    assert agent.store.files() == before


def test_a_k_of_n_teacher_needs_k_of_its_pinned_keys_and_the_broker_cannot_lower_k(evil, tmp_path):
    a, b, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    evil.key(a)
    evil.key(b)
    evil.threshold = 2
    both, one = Packet(a, 1, b, version=1), Packet(a, 2, version=2)
    twice_by_one = Packet(a, 3, a, version=3)  # the same key twice is one signer
    with_stranger = Packet(a, 4, stranger, version=4)  # a key the student does not trust does not count
    for packet in (both, one, twice_by_one, with_stranger):
        evil.serve(packet)
    agent = _student(evil, tmp_path / "student")
    before = agent.store.files()
    outcomes = _handle(agent)
    assert outcomes[both.id] == PASSED
    for packet in (one, twice_by_one, with_stranger):
        _assert_refused(evil, outcomes, packet.id, "threshold")
    assert agent.trust.thresholds == {TEACHER: 2}
    # A head needs k signers too; and a broker that "lowers" the threshold changes nothing.
    evil.threshold = 1
    statement = base64.b64decode(json.loads(_head(a, 1, {TOPIC: both}))["payload"])
    evil.head = factory.envelope_bytes(statement, a)
    late = Packet(a, 5, b, version=5)
    evil.serve(late)
    agent = _student(evil, tmp_path / "student")
    _assert_refused(evil, _handle(agent), late.id, "threshold")
    evil.head = factory.envelope_bytes(statement, a, b)
    again, lone = Packet(a, 6, b, version=6), Packet(b, 7, version=7)
    evil.serve(again)
    evil.serve(lone)
    agent = _student(evil, tmp_path / "student")
    outcomes = _handle(agent)
    assert outcomes[again.id] == PASSED
    _assert_refused(evil, outcomes, lone.id, "threshold")
    assert agent.store.files() == before
    assert TrustState.load(tmp_path / "student" / TRUST_FILE).thresholds == {TEACHER: 2}


def test_a_student_can_require_k_signers_itself(evil, tmp_path):
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    evil.key(a)
    evil.key(b)  # the registry says threshold 1; the operator wants 2
    one, both = Packet(a, 1, version=1), Packet(a, 2, b, version=2)
    evil.serve(one)
    evil.serve(both)
    agent = _student(evil, tmp_path / "student", min_signers=2)
    outcomes = _handle(agent)
    _assert_refused(evil, outcomes, one.id, "threshold")
    assert outcomes[both.id] == PASSED
