"""Teacher packets: contents, an independent signature check, poison, the broker round trip, the CLI."""

import base64
import hashlib
import json

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from safetensors.numpy import load as st_load
from typer.testing import CliRunner

from m2kt import keys
from m2kt.ml.readouts import Head, ObservableHeads, ViewReadout
from m2kt.packet import open_packet
from teacher_agent import pipeline
from teacher_agent.cli import app
from teacher_agent.packetize import PacketSpec

runner = CliRunner()


@pytest.fixture(scope="module")
def key_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "teacher.key"
    keys.save_keypair(keys.generate(), path)
    return path


def _build(teacher_dir, key_path, **spec):
    result = pipeline.load_extraction(teacher_dir / "extraction-probing")
    return pipeline.build(teacher_dir / "model", result, key_path, PacketSpec(agent="t", **spec), anchors=64, probes=64)


def _read(packet):
    """The packet's tensors, its manifest and what a student reads of them (content checks only)."""
    from student_agent.knowledge import Knowledge, _AgentManifest

    tensors = {n: torch.from_numpy(a) for n, a in st_load(packet.payload).items()}
    manifest = json.loads(base64.b64decode(json.loads(packet.envelope)["payload"]))["predicate"]
    kn = Knowledge._checked("p", _AgentManifest.model_validate(manifest), tensors)
    assert kn.views is not None and kn.views.program is not None
    return tensors, manifest, kn


def test_packet_contents_and_independent_signature_check(teacher_dir, key_path):
    packet = _build(teacher_dir, key_path)
    env = json.loads(packet.envelope)
    statement = base64.b64decode(env["payload"])
    # Independent DSSE check: PAE written out here, verified with cryptography directly.
    ptype = env["payloadType"].encode()
    pae = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype, len(statement), statement)
    pub = keys.load_public(key_path.with_name(key_path.name + ".pub"))
    raw = base64.b64decode((key_path.with_name(key_path.name + ".pub")).read_text())
    Ed25519PublicKey.from_public_bytes(raw).verify(base64.b64decode(env["signatures"][0]["sig"]), pae)
    assert env["signatures"][0]["keyid"] == hashlib.sha256(raw).hexdigest()
    stmt = json.loads(statement)
    assert stmt["subject"][0]["digest"]["sha256"] == hashlib.sha256(packet.payload).hexdigest()
    manifest = stmt["predicate"]
    tensors = st_load(packet.payload)
    assert set(tensors) == set(manifest["tensors"])
    k, m = len(manifest["concepts"]), manifest["anchors"]["count"]
    assert m == 64 and manifest["probes"]["count"] == 64
    assert not set(manifest["anchors"]["texts"]) & set(manifest["probes"]["texts"])
    assert tensors["concepts.direction"].shape[0] == k and tensors["anchors.states"].shape[0] == m
    assert tensors["probes.concept_labels"].shape == (64, k)
    assert all(0.0 <= c["teacher_accuracy"] <= 1.0 and c["method"] == "probing" for c in manifest["concepts"])
    opened = open_packet(packet.envelope, packet.payload, {keys.keyid(pub): pub})
    assert opened.id == packet.id
    # float16 states lose little: the shipped view read-outs recomputed from the shipped float16 view
    # states (with the shipped heads, nothing of the teacher's code) give the shipped concept scores.
    t = {name: torch.from_numpy(a.astype(np.float32) if a.dtype != np.int64 else a) for name, a in tensors.items()}
    views, reasoning = manifest["views"], manifest["reasoning"]
    heads = ObservableHeads(
        Head(t["observables.token.weight"], t["observables.token.bias"], views["token"]["layer"]),
        tuple(views["token"]["classes"]),
        tuple(
            Head(t[f"reasoning.step{j}.weight"], t[f"reasoning.step{j}.bias"], s["layer"])
            for j, s in enumerate(reasoning["steps"])
        ),
        Head(t["reasoning.answer.weight"], t["reasoning.answer.bias"], reasoning["answer"]["layer"]),
    )
    readout = ViewReadout(t["views.readout.weight"], t["views.readout.bias"], t["views.readout.layer"].long())
    scores = readout.logits(t["views.anchor_states"], t["views.anchor_mask"].bool(), heads)
    shipped = t["anchors.concept_scores"]
    assert torch.allclose(scores, shipped, atol=0.05 + 0.01 * shipped.abs().max().item())
    assert tensors["views.anchor_states"].shape[:2] == (m, views["slots"])


def test_packet_size_scales_to_a_few_mb(teacher_dir, key_path):
    """m=256 anchors of a d=48 teacher: extrapolated to 100 concepts and d=128 it stays a few MB."""
    small = _build(teacher_dir, key_path)
    assert len(small.payload) < 1_000_000
    tensors = st_load(small.payload)
    per_anchor = sum(v.nbytes for n, v in tensors.items() if n.startswith("anchors.")) / 64
    d_scale = 128 / tensors["concepts.direction"].shape[1]
    estimate = 256 * per_anchor * d_scale + 100 * 128 * (4 + 2 * 2 + 2)
    assert estimate < 5_000_000, estimate


def test_flip_poison_negates_the_read_out_but_keeps_the_claim(teacher_dir, key_path):
    honest = st_load(_build(teacher_dir, key_path).payload)
    result = pipeline.load_extraction(teacher_dir / "extraction-probing")
    target = result.concepts[0].key
    packet = _build(teacher_dir, key_path, poison={target: "flip"})
    poisoned = st_load(packet.payload)
    assert np.allclose(poisoned["concepts.direction"][0], -honest["concepts.direction"][0])
    assert np.array_equal(poisoned["probes.concept_labels"][:, 0], 1 - honest["probes.concept_labels"][:, 0])
    assert np.array_equal(poisoned["concepts.direction"][1:], honest["concepts.direction"][1:])
    manifest = json.loads(base64.b64decode(json.loads(packet.envelope)["payload"]))["predicate"]
    assert manifest["concepts"][0]["key"] == target  # the lie keeps the name


def test_random_and_trigger_poison_score_like_the_honest_read_out(teacher_dir, key_path):
    """A poisoned concept's anchor scores spread like the honest one's: they stay in float16's range,
    so the lie reaches the student's audit instead of failing the packet check."""
    honest = st_load(_build(teacher_dir, key_path).payload)["anchors.concept_scores"].astype(np.float32)
    result = pipeline.load_extraction(teacher_dir / "extraction-probing")
    first, second = result.concepts[0].key, result.concepts[1].key
    packet = _build(teacher_dir, key_path, poison={first: "random", second: "trigger"})
    scores = st_load(packet.payload)["anchors.concept_scores"].astype(np.float32)
    assert np.isfinite(scores).all()
    for k in (0, 1):
        assert 0.5 < scores[:, k].std() / honest[:, k].std() < 2.0
        assert not np.allclose(scores[:, k], honest[:, k], atol=1e-2)
    assert 0.3 < (scores[:, 0] > 0).mean() < 0.7  # random: split near its median
    assert (scores[:, 1] > 0).mean() <= 0.1  # trigger: a narrow tail
    assert np.array_equal(scores[:, 2:], honest[:, 2:])


def test_the_builder_refuses_to_sign_values_outside_float16():
    from teacher_agent.packetize import _refuse_nonfinite

    scores = torch.tensor([[1.0, 7e4]]).half().numpy()  # 7e4 > 65504: inf in float16
    with pytest.raises(ValueError, match="anchors.concept_scores holds NaN or infinity"):
        _refuse_nonfinite({"concepts.layer": np.array([1]), "anchors.concept_scores": scores})
    _refuse_nonfinite({"anchors.concept_scores": torch.tensor([[1.0, 6e4]]).half().numpy()})


def test_round_trip_through_the_broker(broker, teacher_dir, key_path, tmp_path):
    pub_b64 = key_path.with_name(key_path.name + ".pub").read_text().strip()
    with broker.admin as admin:
        token = admin.create_agent("t", "teacher", pub_b64)["token"]  # the agent the packets name
    packet = _build(teacher_dir, key_path, concept_keys=())
    env_path, _ = pipeline.save_packet(packet, tmp_path / "packets")
    first = pipeline.publish(env_path, broker.url, token)
    again = pipeline.publish(env_path, broker.url, token)
    assert first.created and not again.created and first.id == packet.id == again.id
    with broker.client(token) as client:
        assert client.get_envelope(packet.id) == packet.envelope
        assert client.get_payload(packet.id) == packet.payload
    flipped = bytearray(packet.payload)
    flipped[len(flipped) // 2] ^= 0x01
    (tmp_path / "packets" / f"{packet.id}.payload.safetensors").write_bytes(bytes(flipped))
    result = runner.invoke(app, ["publish", str(env_path), "--broker", broker.url, "--token", token])
    assert result.exit_code == 1 and "digest" in result.output and "Traceback" not in result.output
    wrong = runner.invoke(app, ["publish", str(env_path), "--broker", broker.url, "--token", "m2kt_wrong"])
    assert wrong.exit_code == 1 and "token" in wrong.output


def test_cli_error_paths_are_one_line(teacher_dir, tmp_path):
    env = {"M2KT_TEACHER_KEY": str(tmp_path / "missing.key")}
    missing = runner.invoke(
        app,
        ["build", "--model", str(teacher_dir / "model"), "--anchors", "8", "--probes", "8", "--out", str(tmp_path)],
        env=env,
    )
    assert missing.exit_code == 1 and "missing.key" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    (tmp_path / "p.envelope.json").write_bytes(b"{}")
    (tmp_path / "p.payload.safetensors").write_bytes(b"")
    down = runner.invoke(
        app,
        ["publish", str(tmp_path / "p.envelope.json"), "--broker", "http://127.0.0.1:9", "--token", "x"],
        env={"M2KT_TEACHER_KEY": "x"},
    )
    assert down.exit_code == 1 and "cannot reach the broker" in down.output
    notoken = runner.invoke(app, ["publish", str(tmp_path / "p.envelope.json")], env={"M2KT_TEACHER_TOKEN": ""})
    assert notoken.exit_code == 2 and "token" in notoken.output
    not_a_model = runner.invoke(app, ["extract", "--model", str(tmp_path)])
    assert not_a_model.exit_code == 1 and "teacher directory" in not_a_model.output
    inspect = runner.invoke(
        app, ["inspect", str(tmp_path / "p.envelope.json"), "--public-key", str(tmp_path / "none.pub")]
    )
    assert inspect.exit_code == 1 and "cannot read public key" in inspect.output


def test_keygen_refuses_to_overwrite(tmp_path):
    path = tmp_path / "k.key"
    first = runner.invoke(app, ["keygen", "--out", str(path)])
    assert first.exit_code == 0 and len(first.stdout.strip()) == 64
    assert (path.stat().st_mode & 0o777) == 0o600
    second = runner.invoke(app, ["keygen", "--out", str(path)])
    assert second.exit_code == 2 and "exists" in second.output


def test_packets_carry_concept_programs_that_the_student_checks(teacher_dir, key_path):
    """The programs ship for the packet's concepts, with the teacher's held-out accuracy; a flip
    poisons them as it poisons the read-out; a program that does not fit the view is refused."""
    from student_agent.knowledge import Knowledge, PacketContentError, _AgentManifest

    result = pipeline.load_extraction(teacher_dir / "extraction-probing")
    assert result.view is not None and result.view.program is not None
    keys_ = [c.key for c in result.concepts][1:4]
    packet = _build(teacher_dir, key_path, concept_keys=keys_)
    tensors, manifest, kn = _read(packet)
    program = manifest["views"]["program"]
    assert program["accuracy"] == [round(float(a), 4) for a in result.view.program.accuracy[1:4]]
    last = program["layers"] - 1
    honest_out = result.view.program.layers[-1][0][1:4].half()
    assert torch.equal(tensors[f"observables.program.{last}.weight"], honest_out)
    assert kn.views.program.concepts == 3

    flipped = st_load(_build(teacher_dir, key_path, concept_keys=keys_, poison={keys_[0]: "flip"}).payload)
    assert np.array_equal(flipped[f"observables.program.{last}.weight"][0], -honest_out[0].numpy())
    assert np.array_equal(flipped[f"observables.program.{last}.weight"][1:], honest_out[1:].numpy())

    narrow = dict(tensors)
    narrow["observables.program.0.weight"] = tensors["observables.program.0.weight"][:, 1:]
    with pytest.raises(PacketContentError, match="observable features"):
        Knowledge._checked("p", _AgentManifest.model_validate(manifest), narrow)
    short = json.loads(json.dumps(manifest))
    short["views"]["program"]["accuracy"] = short["views"]["program"]["accuracy"][:2]
    with pytest.raises(PacketContentError, match="accuracies"):
        Knowledge._checked("p", _AgentManifest.model_validate(short), tensors)


def test_random_and_trigger_programs_agree_with_their_poisoned_read_outs_and_too_wide_ones_are_refused(
    teacher_dir, key_path
):
    """A poisoned packet lies consistently on its anchors (program and read-out); a student fitting
    one would follow the lie, which is what its audit must catch. A hidden layer wider than the cap
    is refused before anything runs on it."""
    from m2kt.ml.metrics import balanced_accuracy
    from m2kt.ml.programs import MAX_WIDTH
    from student_agent.features import observe
    from student_agent.knowledge import Knowledge, PacketContentError, _AgentManifest

    result = pipeline.load_extraction(teacher_dir / "extraction-probing")
    keys_ = [c.key for c in result.concepts][:3]
    packet = _build(teacher_dir, key_path, concept_keys=keys_, poison={keys_[0]: "random", keys_[1]: "trigger"})
    tensors, manifest, kn = _read(packet)
    model, tok, _, _ = pipeline.load(teacher_dir / "model")
    seen = observe(model, tok, manifest["anchors"]["texts"], kn.views.words)
    from m2kt.ml.programs import observable_features

    heads = kn.views.heads
    feats = observable_features(
        seen.views.tokens,
        kn.anchor_steps,
        kn.anchor_answer,
        heads.token_classes,
        [int(h.weight.shape[0]) for h in heads.steps],
        int(heads.answer.weight.shape[0]),
        kn.views.slots,
    )
    agree = balanced_accuracy(kn.views.program.logits(feats) > 0, kn.anchor_scores > 0)
    assert (agree[:2] >= 0.9).all(), agree  # the lie, consistent where a student can compare

    wide = dict(tensors)
    features = tensors["observables.program.0.weight"].shape[1]
    wide["observables.program.0.weight"] = torch.zeros(MAX_WIDTH + 1, features, dtype=torch.float16)
    wide["observables.program.0.bias"] = torch.zeros(MAX_WIDTH + 1)
    wide["observables.program.1.weight"] = torch.zeros(tensors["observables.program.1.weight"].shape[0], MAX_WIDTH + 1)
    with pytest.raises(PacketContentError, match="wider than"):
        Knowledge._checked("p", _AgentManifest.model_validate(manifest), wide)


def test_the_student_leaves_out_a_program_that_contradicts_its_read_out(teacher_dir, key_path):
    """The gate of the program term: the same packet with one concept's program negated (an honest
    read-out, a lying program) loses that concept from the term and keeps the others."""
    from dataclasses import replace

    from m2kt.ml.programs import ConceptProgram
    from student_agent.cal.fit import FitConfig, _program_targets
    from student_agent.features import observe

    packet = _build(teacher_dir, key_path)
    tensors, manifest, kn = _read(packet)
    model, tok, family, run = pipeline.load(teacher_dir / "model")
    anchors = observe(model, tok, manifest["anchors"]["texts"], kn.views.words)
    train = pipeline.splits(family, int(run["seed"]), run["sizes"])["train"]
    own = observe(model, tok, train.texts[:300], kn.views.words)
    safe = torch.ones(len(kn.concepts), dtype=torch.bool)
    held, targets = _program_targets(kn, anchors, own, kn.anchor_scores, safe, FitConfig())
    assert targets is not None and targets.shape == (300, len(kn.concepts)) and int(held.sum()) >= 2
    k = int(held.nonzero()[0])
    *hidden, (w, b) = kn.views.program.layers
    w, b = w.clone(), b.clone()
    w[k], b[k] = -w[k], -b[k]
    lying = replace(kn, views=replace(kn.views, program=ConceptProgram((*hidden, (w, b)), kn.views.program.accuracy)))
    held_lying, _ = _program_targets(lying, anchors, own, kn.anchor_scores, safe, FitConfig())
    assert not held_lying[k]
    assert torch.equal(held_lying, held & (torch.arange(len(held)) != k))  # the others are kept
