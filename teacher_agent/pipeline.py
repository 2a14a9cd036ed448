"""The teacher's steps as library functions: train, extract, build, publish, inspect.

The CLI only parses options and calls these. Every step reads and writes plain
files, so a run can stop after any step and resume: a model directory
(`save_pretrained`), an extraction (`extraction-<method>.safetensors` + `.json`)
and packets (`<id>.envelope.json` + `<id>.payload.safetensors`).

Data splits are a pure function of (task, seed), so each step regenerates the
split it needs instead of shipping data between steps: `train`/`eval` train the
teacher, `probe`/`heldout` fit and score the extractors, `pool` supplies anchors
and verification probes. All are disjoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_file, save_file

from m2kt import keys
from m2kt.client import BrokerClient, PublishResult
from m2kt.constants import MODEL_META_FILE
from m2kt.errors import LocalInputError
from m2kt.fsutil import atomic_path, atomic_write_text
from m2kt.ml.models import ModelConfig, TaskModel, load_pretrained
from m2kt.ml.tasks import SPLIT_SIZES, TaskBatch, TaskFamily, task_from_spec
from m2kt.ml.train import EpochLog, TrainConfig, train_and_save
from m2kt.packet import BuiltPacket, OpenedPacket, open_packet
from teacher_agent.extract import get_extractor
from teacher_agent.extract.base import ConceptDirection, ExtractionContext, ExtractionResult
from teacher_agent.extract.views import view_from, view_meta, view_tensors
from teacher_agent.packetize import PacketSpec, build_teacher_packet

logger = logging.getLogger(__name__)

TEACHER_DEFAULT = ModelConfig(arch="bert", hidden_size=128, num_layers=4, num_heads=4)
# Measured on 2 CPU cores, modarith p=23, 8000 training examples: at lr 7e-4 the default teacher
# (seed 0, 2 threads) reached 0.996 held-out accuracy at epoch 15; at 2e-3 it learned the step
# b*c mod p by epoch 4 but left the answer near chance (0.12 at epoch 41; loss spikes).
DEMO_TRAIN = TrainConfig(epochs=80, batch_size=128, lr=7e-4, target_accuracy=0.99)
SPLITS = SPLIT_SIZES
RUN_FILE = "teacher_run.json"
PROBE_FROM_TRAIN = 4000
# What an extraction file holds; a cached one of another format is extracted again (2: concept programs).
EXTRACTION_FORMAT = 2


def splits(family: TaskFamily, seed: int, sizes: Mapping[str, int] = SPLITS) -> dict[str, TaskBatch]:
    return family.generate_splits(dict(sizes), seed)


@dataclass(frozen=True)
class TrainReport:
    model_dir: Path
    heldout_accuracy: float
    majority_baseline: float
    seconds: float


def train(
    task: str,
    params: Mapping[str, Any],
    out: Path,
    *,
    seed: int = 0,
    model_config: ModelConfig = TEACHER_DEFAULT,
    train_config: TrainConfig = DEMO_TRAIN,
    sizes: Mapping[str, int] = SPLITS,
    progress: bool = False,
    callback: Callable[[EpochLog], None] | None = None,
) -> TrainReport:
    """Train a teacher on a task family and save it (with the seed and splits used) to ``out``.

    ``progress`` shows a rich bar on stderr; ``callback`` gets each epoch's log (the CLI's
    progress lines when stderr is not a terminal).
    """
    run = train_and_save(
        task, params, out, RUN_FILE, seed, model_config, train_config, sizes, progress=progress, callback=callback
    )
    return TrainReport(out, run["heldout_accuracy"], run["majority_baseline"], run["seconds"])


def train_report(model_dir: Path) -> TrainReport:
    """What training measured for the teacher saved in ``model_dir`` (from its run record)."""
    if not (model_dir / RUN_FILE).exists():
        raise LocalInputError(f"{model_dir} is not a teacher directory (no {RUN_FILE}); run `m2kt-teacher train`")
    run = json.loads((model_dir / RUN_FILE).read_text())
    return TrainReport(
        model_dir, float(run["heldout_accuracy"]), float(run["majority_baseline"]), float(run["seconds"])
    )


def check_broker(broker_url: str, token: str) -> None:
    """Raise unless the broker answers and takes ``token`` as a publishing teacher's; changes nothing.

    Raises:
        TransportError: the broker cannot be reached.
        Unauthorized, Forbidden, UnknownKey: the token is unknown, not a teacher's, or its keys are revoked.
    """
    with BrokerClient(broker_url, token) as client:
        client.require_role("teacher")


def load(model_dir: Path) -> tuple[TaskModel, Any, TaskFamily, dict[str, Any]]:
    """Load a teacher directory: model, tokenizer, its task family and the run record."""
    if not (model_dir / RUN_FILE).exists():
        raise LocalInputError(f"{model_dir} is not a teacher directory (no {RUN_FILE}); run `m2kt-teacher train`")
    model, tokenizer = load_pretrained(model_dir)
    run = json.loads((model_dir / RUN_FILE).read_text())
    return model, tokenizer, task_from_spec(model.task_spec), run


def extract(model_dir: Path, method: str, *, options: Mapping[str, Any] | None = None) -> ExtractionResult:
    model, tokenizer, family, run = load(model_dir)
    data = splits(family, int(run["seed"]), run["sizes"])
    probe = probe_data(family, data)
    programs = family.build(np.concatenate([data["train"].inputs, data["probe"].inputs]))
    ctx = ExtractionContext(
        model, tokenizer, family.concept_specs, probe, data["heldout"], seed=run["seed"], programs=programs
    )
    return get_extractor(method, **dict(options or {})).extract(ctx)


def probe_data(family: TaskFamily, data: Mapping[str, TaskBatch]) -> TaskBatch:
    """The probe split plus up to PROBE_FROM_TRAIN of the teacher's own training inputs.

    Read-outs fitted on more examples are better read-outs (issue: the teacher is the ceiling);
    the teacher labels its own inputs with its generator, and the held-out split stays untouched.
    """
    extra = data["train"].inputs[:PROBE_FROM_TRAIN]
    return family.build(np.concatenate([extra, data["probe"].inputs]))


def save_extraction(result: ExtractionResult, path: Path, *, model_sha256: str | None = None) -> Path:
    """``path``.safetensors holds the stacked tensors, ``path``.json the concepts' descriptions
    (and ``model_sha256``, the digest of the model they were read from, where given).

    Each file is replaced atomically and the JSON is written last, so a JSON beside the tensors
    means a whole extraction (what `saved_extraction` relies on after a crash).
    """
    tensors = {k: v.contiguous() for k, v in result.stacked().items()}
    tensors["layer_scores"] = result.layer_scores.contiguous()
    if result.view is not None:
        tensors |= view_tensors(result.view)
    with atomic_path(path.with_suffix(".safetensors")) as tmp:
        save_file(tensors, str(tmp))
    meta: dict[str, Any] = {
        "format": EXTRACTION_FORMAT,
        "method": result.method,
        "concepts": [
            {"key": c.key, "name": c.name, "topic": c.topic, "balanced_accuracy": c.balanced_accuracy}
            for c in result.concepts
        ],
    }
    if result.view is not None:
        meta["view"] = view_meta(result.view)
    if model_sha256 is not None:
        meta["model_sha256"] = model_sha256
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=1))
    return path.with_suffix(".safetensors")


def saved_extraction(model_dir: Path, method: str) -> ExtractionResult:
    """The ``method`` extraction of the model in ``model_dir``, computed once and kept beside the model.

    Extraction reads thousands of states and fits every read-out (minutes on a CPU); a restarted
    `m2kt-teacher run` (a container that restarts, a publish that failed) reuses it. It is a pure
    function of the saved model and its run file, so the cached copy is the same result, as long
    as the model is the one it was read from: a model retrained into the same folder has another
    digest and is extracted again, and so is a file of another EXTRACTION_FORMAT.
    """
    path = model_dir / f"extraction-{method}"
    digest = model_sha256(model_dir)
    meta = path.with_suffix(".json")
    if meta.exists():
        saved = json.loads(meta.read_text())
        if saved.get("model_sha256") == digest and saved.get("format") == EXTRACTION_FORMAT:
            return load_extraction(path)
    result = extract(model_dir, method)
    save_extraction(result, path, model_sha256=digest)
    return result


def model_sha256(model_dir: Path) -> str:
    """sha256 over the names and bytes of every file of the saved model (weights, configs, tokenizer,
    run file), leaving out the extractions kept beside it."""
    digest = hashlib.sha256()
    for file in sorted(model_dir.iterdir()):
        if file.is_file() and not file.name.startswith("extraction-"):
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def load_extraction(path: Path) -> ExtractionResult:
    if not path.with_suffix(".safetensors").exists():
        raise LocalInputError(f"no extraction at {path.with_suffix('.safetensors')}; run `m2kt-teacher extract`")
    t = load_file(str(path.with_suffix(".safetensors")))
    meta = json.loads(path.with_suffix(".json").read_text())
    concepts = tuple(
        ConceptDirection(
            key=c["key"],
            name=c["name"],
            topic=c["topic"],
            layer=int(t["layers"][k]),
            direction=t["directions"][k],
            bias=float(t["biases"][k]),
            prototypes=t["prototypes"][k],
            balanced_accuracy=float(c["balanced_accuracy"]),
            method=meta["method"],
        )
        for k, c in enumerate(meta["concepts"])
    )
    view = view_from(t, meta["view"]) if "view" in meta else None
    return ExtractionResult(meta["method"], concepts, t["layer_scores"], view=view)


def build(
    model_dir: Path,
    extraction: ExtractionResult,
    key_path: Path,
    spec: PacketSpec,
    *,
    anchors: int,
    probes: int = 256,
    topics: Sequence[str] = (),
    cosign: Sequence[Path] = (),
) -> BuiltPacket:
    """Build and sign one packet with ``anchors`` anchors (the data budget) and ``probes`` probes.

    ``cosign``: further private keys that sign it too (a k-of-n teacher).
    """
    if anchors < 1 or probes < 1:
        raise LocalInputError("--anchors and --probes must be at least 1")
    model, tokenizer, family, run = load(model_dir)
    pool = splits(family, int(run["seed"]), run["sizes"])["pool"]
    if anchors + probes > len(pool):
        raise LocalInputError(f"anchors + probes must be at most {len(pool)}")
    if topics:
        chosen = tuple(c.key for c in extraction.concepts if c.topic in set(topics))
        if not chosen:
            raise LocalInputError(f"no concept has a topic in {list(topics)}")
        spec = PacketSpec(**{**spec.__dict__, "concept_keys": chosen})
    key = keys.load_private(key_path)
    return build_teacher_packet(
        model,
        tokenizer,
        family,
        extraction,
        pool.subset(range(anchors)),
        pool.subset(range(anchors, anchors + probes)),
        spec,
        key,
        cosigners=[keys.load_private(p) for p in cosign],
    )


def save_packet(packet: BuiltPacket, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    env, pay = out_dir / f"{packet.id}.envelope.json", out_dir / f"{packet.id}.payload.safetensors"
    env.write_bytes(packet.envelope)
    pay.write_bytes(packet.payload)
    return env, pay


def packet_files(envelope: Path) -> tuple[bytes, bytes]:
    """Read ``<id>.envelope.json`` and the ``<id>.payload.safetensors`` beside it."""
    payload = envelope.with_name(envelope.name.replace(".envelope.json", ".payload.safetensors"))
    try:
        return envelope.read_bytes(), payload.read_bytes()
    except OSError as exc:
        raise LocalInputError(f"cannot read packet files: {exc.strerror}: {exc.filename}") from exc


def publish(envelope: Path, broker_url: str, token: str) -> PublishResult:
    env, pay = packet_files(envelope)
    with BrokerClient(broker_url, token) as client:
        return client.publish(env, pay)


PUBLISHED_FILE = "published.json"


def publish_topics(
    model_dir: Path,
    extraction: ExtractionResult,
    key_path: Path,
    spec: PacketSpec,
    *,
    anchors: int,
    out_dir: Path,
    broker_url: str,
    token: str,
    cosign: Sequence[Path] = (),
) -> list[tuple[str, str, bool]]:
    """Build and publish one packet per topic; a topic this model already published is skipped.

    The record (``out_dir/published.json``, keyed by the model's weights digest, extractor,
    anchors and topic) makes a restarted teacher service idempotent: packets carry their
    creation time, so rebuilding one would publish a new packet with the same knowledge.
    ``out_dir`` keeps only packets the broker took: one whose publish fails is deleted again.

    Returns:
        ``(topic, packet id, published now)`` per topic.
    """
    record_path = out_dir / PUBLISHED_FILE
    record: dict[str, str] = json.loads(record_path.read_text()) if record_path.exists() else {}
    digest = json.loads((model_dir / MODEL_META_FILE).read_text())["weights_sha256"]
    done = []
    for topic in sorted({c.topic for c in extraction.concepts}):
        slot = f"{digest}:{extraction.method}:{anchors}:{topic}"
        if slot in record:
            done.append((topic, record[slot], False))
            continue
        packet = build(model_dir, extraction, key_path, spec, anchors=anchors, topics=(topic,), cosign=cosign)
        envelope, payload = save_packet(packet, out_dir)
        try:
            published = publish(envelope, broker_url, token)
        except BaseException:
            # out_dir holds what was published: a refused packet goes, and the next run rebuilds it.
            envelope.unlink(missing_ok=True)
            payload.unlink(missing_ok=True)
            logger.info("deleted %s: its publish failed", envelope.name)
            raise
        record[slot] = published.id
        atomic_write_text(record_path, json.dumps(record, indent=1))
        done.append((topic, published.id, True))
    return done


def inspect(envelope: Path, public_keys: Sequence[Path]) -> OpenedPacket:
    """Check a packet offline against the given public keys (protocol order of checks)."""
    env, pay = packet_files(envelope)
    trusted = {keys.keyid(k): k for k in (keys.load_public(p) for p in public_keys)}
    return open_packet(env, pay, trusted)


def describe_layers(result: ExtractionResult) -> dict[int, int]:
    """How many concepts each layer carries best (the extraction table's last column)."""
    counts: dict[int, int] = {}
    for c in result.concepts:
        counts[c.layer] = counts.get(c.layer, 0) + 1
    return dict(sorted(counts.items()))


__all__ = [
    "SPLITS",
    "TrainReport",
    "build",
    "check_broker",
    "describe_layers",
    "extract",
    "inspect",
    "load",
    "load_extraction",
    "packet_files",
    "publish",
    "save_extraction",
    "save_packet",
    "saved_extraction",
    "splits",
    "train",
    "train_report",
]
