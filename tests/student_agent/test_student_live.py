"""The student against a live broker (SQLite and PostgreSQL): subscribe, verify, fit, audit, report."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from brokerkit import Broker

from m2kt import keys
from m2kt.client import BrokerClient
from m2kt.ml.metrics import balanced_accuracy
from m2kt.ml.models import weights_sha256
from m2kt.packet import open_packet
from student_agent.agent import StudentAgent
from student_agent.cal.fit import FitConfig, fit_cal
from student_agent.evaluate import kd_equal_data, kd_features
from student_agent.features import observe
from student_agent.knowledge import Knowledge
from student_agent.query import TransferredConcepts
from teacher_agent import pipeline
from teacher_agent.packetize import PacketSpec

pytestmark = pytest.mark.slow  # trains CALs against a live broker, and runs the agent as a process

# The tests that fit CALs run on one database each, split between the two: what they check is the
# student's side (verify, fit, audit, roll back, resume), which is the same against either; the
# broker's own tests run every endpoint on both. A fit costs tens of seconds, so this halves them.
ON_SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
ON_POSTGRESQL = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

TOPIC = "digitsum.range"


_OPEN: list[BrokerClient] = []


@pytest.fixture(autouse=True)
def _close_clients():
    """The agents' clients close after each test, also when an assertion stopped it early."""
    yield
    while _OPEN:
        _OPEN.pop().close()


def _build(pair, agent: str, key_path: Path, *, anchors: int = 256, seed: int = 0, **spec):
    """An honest packet with the demo's m=256 anchors: with fewer, this small pair's honest transfer
    sits at the auditor's mean-agreement floor (0.600 at m=128), and the tests are about the path."""
    ext = pipeline.load_extraction(pair.extraction)
    return pipeline.build(
        pair.teacher_dir,
        ext,
        key_path,
        PacketSpec(agent=agent, seed=seed, **spec),
        anchors=anchors,
        probes=128,
        topics=[TOPIC],
    )


def _teacher_key(broker: Broker, tmp_path: Path):
    teacher = broker.teacher()
    path = tmp_path / f"{teacher.name}.key"
    keys.save_keypair(teacher.key, path)
    return teacher, path


def _agent(broker: Broker, pair, state_dir: Path, **kwargs) -> tuple[StudentAgent, BrokerClient, str]:
    _, token = broker.student()
    client = broker.client(token)
    _OPEN.append(client)
    return StudentAgent(pair.student, client, state_dir, unlabelled=2000, **kwargs), client, token


def _run_until(agent: StudentAgent, broker: Broker, token: str, n: int, publish=None, timeout: float = 600.0):
    """Run the subscription in a thread until n outcomes; publish() runs once the agent is following.

    ``timeout`` is a deadline for a hang, not a speed check: on a loaded 2-core machine one CAL fit
    takes several times its quiet time."""
    outcomes, failure = [], []

    def target() -> None:
        try:
            agent.run(
                [TOPIC],
                lambda: broker.client(token),
                stop=lambda: len(outcomes) >= n or time.monotonic() > end,
                on_outcome=outcomes.append,
                read_timeout=20,
            )
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            failure.append(exc)

    end = time.monotonic() + timeout
    thread = threading.Thread(target=target)
    thread.start()
    if publish is not None:
        _wait_for_event_stream(broker, thread, end)
        publish()
    thread.join(timeout + 10)
    assert not failure, failure
    assert len(outcomes) == n, f"{len(outcomes)} outcomes of {n} before the timeout"
    return outcomes


def _wait_for_event_stream(broker: Broker, thread: threading.Thread, end: float) -> None:
    """Return once the broker counts an open event stream (its /metrics gauge): the agent is following."""
    with broker.http() as http:
        while time.monotonic() < end:
            if not thread.is_alive():
                return  # it stopped early; the caller reports why
            gauge = re.search(r"^m2kt_event_streams_open (\S+)$", http.get("/metrics").text, re.M)
            if gauge and float(gauge.group(1)) >= 1:
                return
            time.sleep(0.05)
    raise AssertionError("the agent opened no event stream")


@ON_POSTGRESQL
def test_a_packet_published_after_subscribing_is_verified_trained_on_and_reported(broker: Broker, pair, tmp_path):
    teacher, key_path = _teacher_key(broker, tmp_path)
    agent, client, token = _agent(broker, pair, tmp_path / "student")
    packet = _build(pair, teacher.name, key_path)
    digest_before = weights_sha256(pair.student.model)

    def publish() -> None:
        with broker.client(teacher.token) as t:
            t.publish(packet.envelope, packet.payload)

    (outcome,) = _run_until(agent, broker, token, 1, publish)
    assert outcome.packet_id == packet.id and outcome.verdict == "accepted", outcome.detail
    assert weights_sha256(pair.student.model) == digest_before  # the backbone stayed frozen
    reports = client.reports(packet.id)
    assert [r["verdict"] for r in reports] == ["accepted"]
    assert reports[0]["student_model"]["weights_sha256"] == digest_before
    assert reports[0]["metrics"]["student_weights_unchanged"] is True
    assert reports[0]["metrics"]["base_task_unchanged"] is True
    known = TransferredConcepts(pair.student, tmp_path / "student")
    (answer,) = known.predict([pair.student.split("heldout").texts[0]])
    assert set(answer.probabilities) == {c.key for c in known.concepts} and len(answer.probabilities) >= 5
    assert all(0.0 <= p <= 1.0 for p in answer.probabilities.values())
    assert agent.state.cursors[TOPIC] >= 1 and agent.state.handled[packet.id]["verdict"] == "accepted"


def test_tampered_and_untrusted_packets_are_rejected_and_nothing_is_trained(broker: Broker, pair, tmp_path):
    teacher, key_path = _teacher_key(broker, tmp_path)
    other, other_key = _teacher_key(broker, tmp_path)
    tampered, untrusted = _build(pair, teacher.name, key_path), _build(pair, other.name, other_key, seed=1)
    with broker.client(teacher.token) as t:
        t.publish(tampered.envelope, tampered.payload)
    with broker.client(other.token) as t:
        t.publish(untrusted.envelope, untrusted.payload)
    # The broker checked the upload; the bytes it serves later are what the student must not trust.
    blob = _payload_blob(broker, tampered.payload)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    agent, client, token = _agent(broker, pair, tmp_path / "student", trusted_keys=(teacher.keyid,))
    outcomes = {o.packet_id: o for o in _run_until(agent, broker, token, 2)}
    assert outcomes[tampered.id].verdict == "rejected" and outcomes[tampered.id].detail.startswith("digest-mismatch")
    assert outcomes[untrusted.id].verdict == "rejected" and outcomes[untrusted.id].detail.startswith("untrusted-key")
    assert all(o.fit_seconds is None for o in outcomes.values())  # nothing was trained
    assert agent.store.current() is None and agent.store.versions() == []
    for packet_id, reason in ((tampered.id, "digest-mismatch"), (untrusted.id, "untrusted-key")):
        (report,) = client.reports(packet_id)
        assert report["verdict"] == "rejected" and report["metrics"]["reason"] == reason


def _payload_blob(broker: Broker, payload: bytes) -> Path:
    import hashlib

    digest = hashlib.sha256(payload).hexdigest()
    (path,) = [p for p in Path(broker.settings.data_dir).rglob("*") if p.is_file() and digest in p.name]
    return path


@ON_SQLITE
def test_a_poisoned_concept_is_caught_and_the_cal_rolled_back_byte_for_byte(broker: Broker, pair, tmp_path):
    teacher, key_path = _teacher_key(broker, tmp_path)
    honest = _build(pair, teacher.name, key_path)
    ext = pipeline.load_extraction(pair.extraction)
    target = max((c for c in ext.concepts if c.topic == TOPIC), key=lambda c: c.balanced_accuracy).key
    poisoned = _build(pair, teacher.name, key_path, anchors=96, poison={target: "flip"})
    agent, client, token = _agent(broker, pair, tmp_path / "student")
    with broker.client(teacher.token) as t:
        t.publish(honest.envelope, honest.payload)
    (first,) = _run_until(agent, broker, token, 1)
    assert first.verdict == "accepted", first.detail
    before = agent.store.files()
    with broker.client(teacher.token) as t:
        t.publish(poisoned.envelope, poisoned.payload)
    (second,) = _run_until(agent, broker, token, 1)
    assert second.verdict == "rolled_back" and second.fit_seconds is not None
    assert {f["concept"] for f in second.findings} == {target}
    assert agent.store.files() == before  # every CAL file byte for byte as before
    (report,) = client.reports(poisoned.id)
    assert report["verdict"] == "rolled_back" and report["safety_findings"][0]["concept"] == target


@ON_POSTGRESQL
def test_kill_mid_stream_and_restart_handles_every_packet_exactly_once(broker: Broker, pair, tmp_path):
    teacher, key_path = _teacher_key(broker, tmp_path)
    packets = [_build(pair, teacher.name, key_path, anchors=64 + 16 * i) for i in range(3)]  # 1 done, 2 in flight
    _, token = broker.student()
    env = {
        **os.environ,
        "M2KT_STUDENT_BROKER_URL": broker.url,
        "M2KT_STUDENT_TOKEN": token,
        "M2KT_STUDENT_STATE_DIR": str(tmp_path / "student"),
        "M2KT_STUDENT_MODEL_DIR": str(pair.student.path),
        "M2KT_STUDENT_TOPICS": TOPIC,
        "M2KT_STUDENT_UNLABELLED": "1000",
    }
    cmd = [sys.executable, "-m", "student_agent", "run"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        with broker.client(teacher.token) as t:
            for p in packets:
                t.publish(p.envelope, p.payload)
        line = first.stdout.readline()  # the first packet's result: kill while the rest are in flight
        assert line.startswith("packet "), line
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        first.stdout.close()
    second = subprocess.run([*cmd, "--idle-exit", "15"], env=env, capture_output=True, text=True, timeout=1200)
    assert second.returncode == 0, second.stderr[-2000:]
    from student_agent.cal.checkpoint import CheckpointStore
    from student_agent.state import StudentState

    state = StudentState.load(tmp_path / "student" / "state.json")
    assert set(state.handled) == {p.id for p in packets}
    with broker.client(token) as client:
        for p in packets:
            assert len(client.reports(p.id)) == 1, p.id
        assert state.cursors[TOPIC] == max(int(client.get_packet(p.id)["seq"]) for p in packets)
    integrated = [e["packet_id"] for e in CheckpointStore(tmp_path / "student" / "cal").index()["entries"]]
    assert len(integrated) == len(set(integrated))
    assert {p.id for p in packets if state.handled[p.id]["verdict"] == "accepted"} == set(integrated)


@pytest.mark.parametrize("anchors", [256])
def test_transfer_beats_kd_at_equal_data_on_the_same_student(pair, tmp_path, anchors):
    key = keys.load_public(pair.key_path.with_name("teacher.key.pub"))
    ext = pipeline.load_extraction(pair.extraction)
    packet = pipeline.build(pair.teacher_dir, ext, pair.key_path, PacketSpec(agent="t"), anchors=anchors, probes=128)
    kn = Knowledge.from_packet(open_packet(packet.envelope, packet.payload, {keys.keyid(key): key}), packet.payload)
    student = pair.student
    held = student.split("heldout")  # disjoint from anchors, probes and both models' training data
    specs = [c.key for c in student.family.concept_specs]
    truth = torch.as_tensor(held.concepts[:, [specs.index(k) for k in kn.keys]]).bool()
    assert kn.views is not None  # the teacher's extraction fits view read-outs by default
    words = kn.views.words
    anchors_obs = observe(student.model, student.tokenizer, kn.anchor_texts, words)
    held_obs = observe(student.model, student.tokenizer, held.texts, words)
    unlabelled = observe(student.model, student.tokenizer, student.split("train").texts, words)
    rng_before = torch.random.get_rng_state()
    fitted = fit_cal(kn, anchors_obs, unlabelled)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # init and dropout drew from a seeded fork
    m2kt = float(balanced_accuracy(fitted.reader(fitted.reader.input_of(held_obs)) > 0, truth).mean())
    # KD reads the same student view, from the same m anchors' teacher labels alone
    kd = kd_equal_data(kn, anchors_obs)
    kd_equal = float(balanced_accuracy(kd(kd_features(held_obs)) > 0, truth).mean())
    chance = float(balanced_accuracy(torch.zeros_like(truth), truth).mean())
    assert m2kt > kd_equal > chance, (m2kt, kd_equal)


def test_the_safety_term_fits_on_views_when_anchors_outnumber_a_batch(pair):
    """Concepts marked unsafe, and more anchors than one optimiser step takes: the safety term must
    read the mask of the step's own anchors (it once took every anchor's and failed on shape)."""
    key = keys.load_public(pair.key_path.with_name("teacher.key.pub"))
    ext = pipeline.load_extraction(pair.extraction)
    unsafe = frozenset(c.key for c in ext.concepts[:2])
    packet = pipeline.build(
        pair.teacher_dir, ext, pair.key_path, PacketSpec(agent="t", unsafe=unsafe), anchors=160, probes=64
    )
    kn = Knowledge.from_packet(open_packet(packet.envelope, packet.payload, {keys.keyid(key): key}), packet.payload)
    assert kn.views is not None and int(kn.unsafe.sum()) == 2
    student = pair.student
    anchors = observe(student.model, student.tokenizer, kn.anchor_texts, kn.views.words)
    unlabelled = observe(student.model, student.tokenizer, student.split("train").texts[:512], kn.views.words)
    config = FitConfig(steps=20, anchor_batch=64)
    assert len(kn.anchor_texts) > config.anchor_batch
    fitted = fit_cal(kn, anchors, unlabelled, config)
    assert fitted.losses["safety"] > 0 and torch.isfinite(torch.tensor(fitted.losses["safety"]))


def test_the_anchor_scores_pull_the_mapped_anchors_towards_the_teachers_concept_scores(pair):
    """geo's score part: with it the concept read-outs on the mapped anchors agree with the teacher's
    own scores on more (anchor, concept) pairs than the same fit on states alone. Without the
    concept programs: where they are in use, geo is weighted down (FitConfig.program_geo)."""
    key = keys.load_public(pair.key_path.with_name("teacher.key.pub"))
    ext = pipeline.load_extraction(pair.extraction)
    packet = pipeline.build(pair.teacher_dir, ext, pair.key_path, PacketSpec(agent="t"), anchors=128, probes=64)
    kn = Knowledge.from_packet(open_packet(packet.envelope, packet.payload, {keys.keyid(key): key}), packet.payload)
    assert kn.views is not None
    student = pair.student
    anchors = observe(student.model, student.tokenizer, kn.anchor_texts, kn.views.words)
    unlabelled = observe(student.model, student.tokenizer, student.split("train").texts[:512], kn.views.words)
    agreement = {}
    for weight in (0.0, 1.0):
        fitted = fit_cal(kn, anchors, unlabelled, FitConfig(steps=150, score_weight=weight, program_weight=0.0))
        logits = fitted.reader(fitted.reader.input_of(anchors))
        agreement[weight] = float(((logits > 0) == (kn.anchor_scores > 0)).float().mean())
    assert agreement[1.0] > agreement[0.0], agreement


def test_a_fit_maps_only_what_its_weighted_terms_read(pair):
    """Where the concept programs are in use and geo is off, the anchors are mapped at the read-out
    slot and the token head's block only, and the unlabelled views at the blocks the programs'
    concepts and the heads read. The same fit with geo at a negligible weight maps everything:
    the terms the two fits share and the programmed concepts' read-outs must come out the same."""
    key = keys.load_public(pair.key_path.with_name("teacher.key.pub"))
    ext = pipeline.load_extraction(pair.extraction)
    packet = pipeline.build(pair.teacher_dir, ext, pair.key_path, PacketSpec(agent="t"), anchors=128, probes=64)
    kn = Knowledge.from_packet(open_packet(packet.envelope, packet.payload, {keys.keyid(key): key}), packet.payload)
    assert kn.views is not None and kn.views.program is not None
    student = pair.student
    anchors = observe(student.model, student.tokenizer, kn.anchor_texts, kn.views.words)
    unlabelled = observe(student.model, student.tokenizer, student.split("train").texts[:512], kn.views.words)
    held = observe(student.model, student.tokenizer, student.split("heldout").texts[:256], kn.views.words)
    fits = {geo: fit_cal(kn, anchors, unlabelled, FitConfig(steps=40, program_geo=geo)) for geo in (0.0, 1e-12)}
    assert fits[0.0].losses["geo"] == 0.0 < fits[1e-12].losses["geo"], "the restricted path did not run"
    for term in ("struct", "reason"):
        assert fits[0.0].losses[term] == pytest.approx(fits[1e-12].losses[term], rel=1e-3), term
    logits = {geo: f.reader(f.reader.input_of(held)) for geo, f in fits.items()}
    read = kn.views.program.accuracy >= FitConfig().program_accuracy
    assert torch.allclose(logits[0.0][:, read], logits[1e-12][:, read], atol=1e-2), "programmed read-outs differ"
