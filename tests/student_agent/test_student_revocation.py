"""A revoked teacher key takes its CALs out of the student, byte for byte, and the broker hears of it.

A real broker (SQLite and PostgreSQL) serves signed test vectors (tests/factory.py); the admin
revokes the key through the API, and the student learns it on its next sync. Fitting a CAL
needs trained models (tests/student_agent/test_student_live.py pays for them); what matters
here is what the store holds, so `_StubStudent` stages a small reader per packet exactly the way
the agent does (`CheckpointStore.stage`, then `activate`) after the student's own trust checks.
"""

import base64
import json
import threading
import time
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import factory
import pytest
import torch
from brokerkit import Broker
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from m2kt import keys
from m2kt.packet import open_packet
from student_agent.agent import TRUST_REASONS, Outcome, StudentAgent
from student_agent.cal.checkpoint import CheckpointStore
from student_agent.trust import TRUST_FILE, TrustState

TOPIC = "modarith.parity"
BASE = "0" * 64  # a CAL integrated before any of these teachers published


class _Student:
    model = SimpleNamespace(task_spec={"name": "modarith", "params": {"p": 17}})

    def model_card(self) -> dict[str, Any]:
        return {"architecture": "stub"}


def _reader(seq: int) -> dict[str, torch.Tensor]:
    return {"w": torch.full((4,), float(seq))}


class _StubStudent(StudentAgent):
    """Integrates every packet that passes the student's key checks, without fitting a CAL."""

    keep_keyid = True  # False: an index entry written before entries named their key

    def _integrate(self, summary: dict[str, Any]) -> Outcome:
        packet_id, teacher = str(summary["id"]), str(summary["teacher"])
        trusted = self.trust.keys_for(teacher, self.client.get_agent(teacher), self.trusted_keys)
        opened = open_packet(self.client.get_envelope(packet_id), self.client.get_payload(packet_id), trusted)
        entry = {"packet_id": packet_id, "teacher": teacher, "topics": [TOPIC]}
        if self.keep_keyid:
            entry |= {"keyid": opened.keyid, "signers": list(opened.signers), "created_at": opened.manifest.created_at}
        self.store.activate(self.store.stage(entry, _reader(int(summary["seq"]))))
        return Outcome(packet_id, "accepted", "stub integration")


def _publish(broker: Broker, teacher, seed: int) -> str:
    packet_id, envelope, payload = factory.packet(teacher.key, seed=seed, topics=[TOPIC])
    with broker.client(teacher.token) as client:
        client.publish(envelope, payload)
    return packet_id


def _student(broker: Broker, token: str, state_dir, **kwargs: Any) -> _StubStudent:
    agent = _StubStudent(_Student(), broker.client(token), state_dir, **kwargs)  # type: ignore[arg-type]
    if agent.store.current() is None:
        agent.store.activate(agent.store.stage({"packet_id": BASE, "teacher": "earlier"}, _reader(0)))
    return agent


def _sync(agent: StudentAgent) -> list[Outcome]:
    try:
        return agent.catch_up(TOPIC)
    finally:
        agent.client.close()


@pytest.mark.parametrize("legacy", [False, True], ids=["keyid-in-index", "index-without-keyid"])
def test_a_revoked_key_removes_every_cal_it_signed_as_if_never_integrated(broker, tmp_path, legacy):
    compromised, honest = broker.teacher(), broker.teacher()
    student, token = broker.student()
    first = _publish(broker, compromised, 1)
    other = _publish(broker, honest, 2)  # integrated between the two: it stays
    second = _publish(broker, compromised, 3)
    _StubStudent.keep_keyid = not legacy
    try:
        agent = _student(broker, token, tmp_path / "student")
        assert {o.packet_id: o.verdict for o in _sync(agent)} == {
            first: "accepted",
            other: "accepted",
            second: "accepted",
        }
        assert [e["packet_id"] for e in agent.store.index()["entries"]] == [BASE, first, other, second]
        with broker.admin as admin:
            admin.revoke_key(compromised.name, compromised.keyid)
        agent = _student(broker, token, tmp_path / "student")
        outcomes = _sync(agent)
    finally:
        _StubStudent.keep_keyid = True
    assert sorted((o.packet_id, o.verdict, o.metrics["reason"]) for o in outcomes) == sorted(
        [(first, "removed", "revoked-key"), (second, "removed", "revoked-key")]
    )
    # Byte for byte the store of a student that never integrated the compromised teacher's packets.
    reference = CheckpointStore(tmp_path / "reference")
    reference.activate(reference.stage({"packet_id": BASE, "teacher": "earlier"}, _reader(0)))
    kept = next(e for e in CheckpointStore(tmp_path / "student" / "cal").index()["entries"] if e["packet_id"] == other)
    reference.activate(reference.stage(kept, _reader(2)))
    assert agent.store.files() == reference.files()
    assert agent.state.handled[first]["verdict"] == agent.state.handled[second]["verdict"] == "removed"
    with broker.client(token) as client:
        reports = client.trust_reports(compromised.name)
        assert client.trust_reports(honest.name) == []
    assert sorted((r["packet"], r["reason"], r["action"], r["student"]) for r in reports) == sorted(
        [(first, "revoked-key", "removed", student), (second, "revoked-key", "removed", student)]
    )
    # Another sync removes nothing more and reports nothing twice.
    again = _student(broker, token, tmp_path / "student")
    assert _sync(again) == []
    with broker.client(token) as client:
        assert len(client.trust_reports(compromised.name)) == 2
    saved = TrustState.load(tmp_path / "student" / TRUST_FILE)
    assert set(saved.removed) == {first, second} and all(r["reported"] for r in saved.removed.values())


@pytest.mark.parametrize("after_minutes,removed", [(-5, True), (60, False)], ids=["signed-after", "signed-before"])
def test_revoked_after_keeps_what_the_key_signed_before_it(broker, tmp_path, after_minutes, removed):
    teacher = broker.teacher()
    _, token = broker.student()
    packet = _publish(broker, teacher, 1)
    created = datetime.fromisoformat(factory.CREATED_AT.replace("Z", "+00:00"))
    cutoff = created + timedelta(minutes=after_minutes)
    agent = _student(broker, token, tmp_path / "student", revoked_after=cutoff)
    _sync(agent)
    with broker.admin as admin:
        admin.revoke_key(teacher.name, teacher.keyid)
    agent = _student(broker, token, tmp_path / "student", revoked_after=cutoff)
    outcomes = _sync(agent)
    held = [e["packet_id"] for e in agent.store.index()["entries"]]
    assert (packet not in held) is removed
    assert [o.packet_id for o in outcomes] == ([packet] if removed else [])


def test_a_removal_the_broker_did_not_take_is_reported_on_the_next_sync(broker, tmp_path, monkeypatch):
    teacher = broker.teacher()
    _, token = broker.student()
    packet = _publish(broker, teacher, 1)
    _sync(_student(broker, token, tmp_path / "student"))
    with broker.admin as admin:
        admin.revoke_key(teacher.name, teacher.keyid)
    agent = _student(broker, token, tmp_path / "student")
    monkeypatch.setattr(agent, "_trust_report", lambda *args: False)  # the broker is down for reports
    assert [o.packet_id for o in _sync(agent)] == [packet]
    assert TrustState.load(tmp_path / "student" / TRUST_FILE).removed[packet]["reported"] is False
    agent = _student(broker, token, tmp_path / "student")
    assert _sync(agent) == []
    with broker.client(token) as client:
        assert [r["packet"] for r in client.trust_reports(teacher.name)] == [packet]
    assert "revoked-key" in TRUST_REASONS


def test_a_following_student_removes_the_cals_of_a_key_revoked_while_it_runs(broker, tmp_path):
    teacher = broker.teacher()
    _, token = broker.student()
    packet = _publish(broker, teacher, 1)
    agent = _student(broker, token, tmp_path / "student")
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + 60

    def held() -> list[str]:
        return [e["packet_id"] for e in agent.store.index()["entries"]]

    def follow() -> None:
        agent.run(
            [TOPIC],
            lambda: broker.client(token),
            on_outcome=outcomes.append,
            read_timeout=2,
            stop=lambda: packet in agent.trust.removed or time.monotonic() > deadline,
            sync_seconds=0.3,
        )

    thread = threading.Thread(target=follow)
    thread.start()
    while not outcomes and time.monotonic() < deadline:
        time.sleep(0.05)
    assert packet in held()
    with broker.admin as admin:
        admin.revoke_key(teacher.name, teacher.keyid)
    thread.join(timeout=70)
    agent.client.close()
    assert held() == [BASE] and agent.trust.removed[packet]["reported"] is True
    with broker.client(token) as client:
        assert [r["action"] for r in client.trust_reports(teacher.name)] == ["removed"]


@pytest.mark.parametrize("threshold,removed", [(1, False), (2, True)], ids=["1-of-2", "2-of-2"])
def test_a_cal_stays_while_enough_unrevoked_keys_signed_it(broker, tmp_path, threshold, removed):
    teacher, second = broker.teacher(), Ed25519PrivateKey.generate()
    _, token = broker.student()
    with broker.admin as admin:
        admin.add_key(teacher.name, keys.public_to_b64(second.public_key()))
    with broker.http(broker.settings.admin_token.get_secret_value()) as http:
        assert http.put(f"/v1/agents/{teacher.name}/threshold", json={"threshold": threshold}).status_code == 200
    packet_id, envelope, payload = factory.packet(teacher.key, seed=1, topics=[TOPIC])
    envelope = factory.envelope_bytes(base64.b64decode(json.loads(envelope)["payload"]), teacher.key, second)
    with broker.client(teacher.token) as client:
        client.publish(envelope, payload)
    _sync(_student(broker, token, tmp_path / "student"))
    with broker.admin as admin:
        admin.revoke_key(teacher.name, teacher.keyid)  # the second key was never revoked
    agent = _student(broker, token, tmp_path / "student")
    outcomes = _sync(agent)
    assert (packet_id not in [e["packet_id"] for e in agent.store.index()["entries"]]) is removed
    assert [o.packet_id for o in outcomes] == ([packet_id] if removed else [])


def _store_with(root, packets: dict[str, int]) -> CheckpointStore:
    store = CheckpointStore(root)
    for packet_id, seq in packets.items():
        store.activate(store.stage({"packet_id": packet_id, "teacher": "t"}, _reader(seq)))
    return store


@pytest.mark.parametrize("step", ["rmtree", "unlink"], ids=["before-the-rewrite", "before-the-readers-go"])
def test_a_removal_cut_short_by_a_crash_is_finished_on_restart(tmp_path, monkeypatch, step):
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    store = _store_with(tmp_path / "cal", {a: 1, b: 2, c: 3})
    expected = _store_with(tmp_path / "expected", {a: 1, c: 3}).files()

    def crash(*args: Any, **kwargs: Any) -> None:
        raise OSError("power cut")

    target = "student_agent.cal.checkpoint.shutil.rmtree" if step == "rmtree" else "pathlib.Path.unlink"
    monkeypatch.setattr(target, crash)
    with pytest.raises(OSError):
        store.remove([b])
    monkeypatch.undo()
    assert (tmp_path / "cal" / "removing.json").exists()
    CheckpointStore(tmp_path / "cal").sweep()  # what the agent does when it starts
    assert CheckpointStore(tmp_path / "cal").files() == expected
    assert CheckpointStore(tmp_path / "cal").remove([b]) == []
