"""`m2kt-teacher run` and `train` from the command line: the broker check first, progress in logs, cleanup."""

import pytest
import torch
from typer.testing import CliRunner

from m2kt import keys
from m2kt.errors import UnknownKey
from m2kt.ml.models import load_pretrained, save_pretrained
from teacher_agent import pipeline
from teacher_agent.cli import app
from teacher_agent.packetize import PacketSpec

runner = CliRunner()


def _run(workdir, broker_url, token, key, name="teacher"):
    env = {"M2KT_TEACHER_KEY": str(key), "M2KT_TEACHER_NAME": name, "M2KT_TEACHER_TOKEN": ""}
    args = ["run", "--workdir", str(workdir), "--broker", broker_url, "--token", token, "--anchors", "64"]
    return runner.invoke(app, args, env=env)


def test_run_checks_broker_and_token_before_training(broker, tmp_path):
    """Each refusal is one line, at once: no model directory, no key, no packet is made."""
    _, student_token = broker.student()
    cases = [
        ("http://127.0.0.1:9", "m2kt_x", "cannot reach the broker"),
        (broker.url, "m2kt_wrong", "refuses this token"),
        (broker.url, student_token, "not a teacher's"),
    ]
    for url, token, message in cases:
        result = _run(tmp_path / "work", url, token, tmp_path / "teacher.key")
        assert result.exit_code == 1, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
        assert not (tmp_path / "work").exists() and not (tmp_path / "teacher.key").exists()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_publishing_topics_keeps_only_packets_the_broker_took(broker, teacher_dir, tmp_path):
    """`run`'s publish step: a refused packet is deleted, not left among the published ones."""
    teacher = broker.teacher("t")
    extraction = pipeline.load_extraction(teacher_dir / "extraction-probing")
    out = tmp_path / "packets"

    def publish(key):
        return pipeline.publish_topics(
            teacher_dir / "model",
            extraction,
            key,
            PacketSpec(agent="t"),
            anchors=32,
            out_dir=out,
            broker_url=broker.url,
            token=teacher.token,
        )

    stranger = tmp_path / "stranger.key"
    keys.save_keypair(keys.generate(), stranger)  # the broker knows no such key: its publish is refused
    with pytest.raises(UnknownKey):
        publish(stranger)
    assert not out.exists() or not any(out.iterdir())

    own = tmp_path / "own.key"
    keys.save_keypair(teacher.key, own)
    done = publish(own)
    assert done and all(now for _, _, now in done)
    with broker.client(teacher.token) as client:
        for _, packet_id, _ in done:
            assert client.get_envelope(packet_id) == (out / f"{packet_id}.envelope.json").read_bytes()
    assert len(list(out.glob("*.envelope.json"))) == len(done) and (out / "published.json").exists()


def test_train_prints_epoch_lines_and_accuracy_when_not_a_terminal(tmp_path):
    args = ["train", "--out", str(tmp_path / "model"), "--hidden", "16", "--layers", "2", "--heads", "2"]
    result = runner.invoke(app, [*args, "--epochs", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert epochs and epochs[0].startswith("epoch 1/2: loss ") and "held-out accuracy" in epochs[0], lines
    (saved,) = [line for line in lines if line.startswith("teacher saved to")]
    assert len(epochs) <= 2 and "held-out accuracy" in saved
    accuracy = float(saved.split("held-out accuracy ")[1].split()[0])
    # two epochs of a d=16 model do not learn the task, and the CLI says so rather than staying quiet
    assert (accuracy < 0.95) == any(line.startswith("warning: the teacher has not learned") for line in lines)


def test_a_restarted_run_reuses_the_saved_extraction_and_recomputes_a_torn_one(teacher_dir, tmp_path, monkeypatch):
    """`run` extracts once per model: a restart loads it; tensors without their JSON were cut short."""
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(teacher_dir / "model", model_dir)
    first = pipeline.saved_extraction(model_dir, "probing")
    assert (model_dir / "extraction-probing.json").exists()

    def no_extract(*_args, **_kwargs):
        raise AssertionError("extracted again although a whole extraction was saved")

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "extract", no_extract)
        again = pipeline.saved_extraction(model_dir, "probing")
    assert [c.key for c in again.concepts] == [c.key for c in first.concepts]
    assert all(torch.equal(a.direction, b.direction) for a, b in zip(again.concepts, first.concepts, strict=True))

    (model_dir / "extraction-probing.json").unlink()  # a crash between the two files
    redone = pipeline.saved_extraction(model_dir, "probing")
    assert (model_dir / "extraction-probing.json").exists()
    assert [c.balanced_accuracy for c in redone.concepts] == [c.balanced_accuracy for c in first.concepts]

    # a model retrained into the same folder (here: its weights moved a little, saved the usual way) is read again
    model, tokenizer = load_pretrained(model_dir)
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(0.05 * torch.randn_like(weight))
    save_pretrained(model, tokenizer, model_dir)
    calls = []
    real_extract = pipeline.extract
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "extract", lambda *a, **k: calls.append(a) or real_extract(*a, **k))
        retrained = pipeline.saved_extraction(model_dir, "probing")
    assert len(calls) == 1
    assert not all(
        torch.equal(a.direction, b.direction) for a, b in zip(retrained.concepts, first.concepts, strict=True)
    )
