"""What the benchmark runs on: task families, teacher/student pairs, and their trained models.

A *setup* is one family and one heterogeneous pair, trained here once and cached under the
work directory (models are fixed across benchmark seeds; a seed redraws the anchors, the
KD samples and the CAL's initialisation). Everything the measurements need that does not
depend on the seed is computed once here: the student's states on the held-out set, on its
unlabelled inputs and on the KD pool, the ground truth, and the teacher's labels.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from m2kt.ml.hidden import collect_hidden
from m2kt.ml.metrics import concept_logits
from m2kt.ml.models import ModelConfig, TaskModel
from m2kt.ml.seed import numpy_rng
from m2kt.ml.tasks import SPLIT_SIZES, TaskBatch, TaskFamily
from m2kt.ml.train import TrainConfig, not_learned
from m2kt.ml.views import collect_views
from student_agent.evaluate import concept_truth, kd_features, kd_readout, scores
from student_agent.features import Observation, observe
from student_agent.model import STUDENT_TRAIN, Student, load_student, train_student
from teacher_agent import pipeline
from teacher_agent.extract.base import ExtractionResult
from teacher_agent.pipeline import DEMO_TRAIN

__all__ = ["FAMILIES", "PAIRS", "QUICK", "Pair", "Profile", "Setup", "prepare", "trained_models"]

logger = logging.getLogger(__name__)
RETRY_RATES = (1.0, 0.4, 2.5)  # the configured rate, then lower, then higher (see _until_learned)


@dataclass(frozen=True)
class Pair:
    """A teacher and a student of different families and widths.

    ``student_train``: the student's own training config where the profile's student config does
    not teach it its task (None: the profile's).
    """

    name: str
    teacher: ModelConfig
    student: ModelConfig
    student_train: TrainConfig | None = None


# Measured on modarith p=23 (FULL sizes, seed 0): GPT-2 d=64 x 3 at the profile's lr 2e-3 stops at
# held-out 0.35 after 80 epochs (1e-3: 0.19); at 5e-3 it learns the step by epoch 20 and the answer
# (0.998) at epoch 90, so it gets a higher rate and room for 160 epochs (the convergence check stops it).
GPT2_TRAIN = TrainConfig(epochs=160, batch_size=128, lr=5e-3, target_accuracy=0.99)
PAIRS = {
    "bert128-llama64": Pair("bert128-llama64", ModelConfig("bert", 128, 4, 4), ModelConfig("llama", 64, 3, 4)),
    "llama96-gpt2-64": Pair(
        "llama96-gpt2-64", ModelConfig("llama", 96, 4, 4), ModelConfig("gpt2", 64, 3, 4), student_train=GPT2_TRAIN
    ),
}
FAMILIES: dict[str, dict[str, Any]] = {"modarith": {"p": 23}, "boolean": {}, "digitsum": {}}


@dataclass(frozen=True)
class Profile:
    """Sizes and budgets of one kind of run (full or quick)."""

    name: str
    sizes: dict[str, int]
    train: TrainConfig  # the teachers'
    student_train: TrainConfig  # the students' (a pair may override it)
    anchors: tuple[int, ...]
    probes: int
    unlabelled: int
    ablation_m: int | None
    kd_max: int = 0  # KD's curve goes up to this many teacher labels where the family has the inputs
    mixed_poison: bool = False  # one safety packet with every poison kind instead of one per kind
    families: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(FAMILIES))
    pairs: tuple[Pair, ...] = tuple(PAIRS.values())


FULL = Profile(
    "full",
    sizes=dict(SPLIT_SIZES),
    # The agents' own defaults: the BERT teacher plateaued at 2e-3 and learns at 7e-4; the Llama
    # student plateaued at 7e-4 (answer 0.12 at epoch 41, step learned) and learns at 3e-3.
    train=DEMO_TRAIN,
    student_train=STUDENT_TRAIN,
    anchors=(16, 32, 64, 128, 256, 512),
    probes=256,
    unlabelled=4000,
    ablation_m=256,
    kd_max=32768,
)
QUICK = Profile(
    "quick",
    sizes={"train": 6000, "eval": 300, "probe": 800, "heldout": 400, "pool": 600},
    # epochs with a convergence check, never the clock
    train=TrainConfig(epochs=60, batch_size=64, lr=3e-3, target_accuracy=0.97),
    student_train=TrainConfig(epochs=60, batch_size=64, lr=3e-3, target_accuracy=0.97),
    anchors=(64, 256),
    probes=128,
    unlabelled=3000,
    ablation_m=None,
    kd_max=12800,  # 256 / 0.02: the curve reaches 50x the largest m (digitsum has 100,000 inputs)
    mixed_poison=True,
    families={"digitsum": {}},
    pairs=(Pair("bert64-llama48", ModelConfig("bert", 64, 3, 4), ModelConfig("llama", 48, 3, 4)),),
)


@dataclass
class Setup:
    """One family x pair, trained, with everything seed-independent precomputed.

    Attributes:
        truth: ``[N_held, K]`` ground truth on the held-out split (neither model trained on it).
        kd_obs / kd_labels: the student's states and the teacher's concept labels ``[N_pool, K]``
            on every non-held-out input (the pool KD draws its n examples from).
        teacher_score / oracle_score: ``[K]`` balanced accuracy of the teacher's own read-outs and
            of the student's probe on ground-truth labels of its whole training split (the ceiling).
    """

    family_name: str
    pair: Pair
    teacher_dir: Path
    extractions: dict[str, ExtractionResult]
    teacher: TaskModel
    tokenizer: Any
    family: TaskFamily
    student: Student
    pool: TaskBatch
    held: TaskBatch
    truth: Tensor
    held_obs: Observation
    eval_obs: Observation
    unlabelled: Observation
    kd_obs: Observation
    kd_labels: Tensor
    teacher_score: Tensor
    oracle_score: Tensor
    groups: list[str]
    seconds: dict[str, float] = field(default_factory=dict)
    task_accuracy: dict[str, float] = field(default_factory=dict)


def _extra_inputs(family: TaskFamily, splits: dict[str, TaskBatch], n: int) -> list[str]:
    """Up to ``n`` more distinct inputs outside every split, for KD's long curve (none if the space is used up).

    modarith p=23 has 12,167 inputs in all and the splits take 12,100 of them; the boolean
    family has far more, so its KD curve reaches 32k labels.
    """
    if n <= 0:
        return []
    taken = {row.tobytes() for b in splits.values() for row in b.inputs}
    rng = numpy_rng(0, "bench.kd_extra")
    found: dict[bytes, np.ndarray[Any, Any]] = {}
    for _ in range(16):
        for row in family.sample_inputs(rng, 2 * n):
            key = row.tobytes()
            if key not in taken:
                found.setdefault(key, row)
        if len(found) >= n:
            break
    if not found:
        return []
    rows = np.stack(list(found.values())[:n])
    logger.info("KD pool: %d extra inputs beyond the splits", len(rows))
    return list(family.build(rows).texts)


def _determined_by(column: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]) -> bool:
    """Whether ``labels`` is a function of ``column`` on these rows (constant per value of it)."""
    order = np.lexsort((labels, column))
    c, y = column[order], labels[order]
    same = c[1:] == c[:-1]
    return bool(np.all(y[1:][same] == y[:-1][same]))


def concept_groups(batch: TaskBatch, labels: np.ndarray[Any, Any]) -> list[str]:
    """Per column of ``labels [N, K]`` (concepts on ``batch``): ``input`` (a property of one input),
    ``step/answer`` (of one step value or the answer) or ``relation`` (anything else: comparisons,
    carries).

    Read off the family's own data, so that any plug-in family gets the per-group breakdown.
    """
    inputs = [batch.inputs[:, j] for j in range(batch.inputs.shape[1])]
    computed = [batch.steps[:, j] for j in range(batch.steps.shape[1])] + [batch.answers]
    groups = []
    for k in range(labels.shape[1]):
        y = labels[:, k]
        if any(_determined_by(x, y) for x in inputs):
            groups.append("input")
        elif any(_determined_by(x, y) for x in computed):
            groups.append("step/answer")
        else:
            groups.append("relation")
    return groups


def teacher_score(extraction: ExtractionResult) -> Tensor:
    """``[K]`` held-out balanced accuracy of the read-outs the packets ship (view read-outs when fitted)."""
    if extraction.view is not None:
        return extraction.view.accuracy.clone()
    return torch.tensor([c.balanced_accuracy for c in extraction.concepts])


def teacher_labels(teacher: TaskModel, tokenizer: Any, extraction: ExtractionResult, texts: list[str]) -> Tensor:
    """``[N, K]`` bool: the teacher's shipped read-outs on ``texts`` (what KD learns from), in chunks."""
    view = extraction.view
    out = []
    for start in range(0, len(texts), 4096):
        chunk = texts[start : start + 4096]
        if view is not None:
            v = collect_views(teacher, tokenizer, chunk, view.words)
            out.append(view.readout.logits(v.states, v.mask, view.heads) > 0)
        else:
            stacked = extraction.stacked()
            states = collect_hidden(teacher, tokenizer, chunk).states
            out.append(concept_logits(states, stacked["layers"], stacked["directions"], stacked["biases"]) > 0)
    return torch.cat(out)


def _until_learned(who: str, config: TrainConfig, train: Callable[[TrainConfig], float]) -> float:
    """Train with ``config``; while the model has not learned its task, retrain at another rate.

    The answer can plateau near chance after the step is learned, and which rate escapes it is a
    property of the model (measured on modarith p=23: BERT d=128 x 4 plateaus at 2e-3 and learns
    at 7e-4; Llama d=64 x 3 plateaus at 7e-4 and learns at 3e-3; GPT-2 d=64 x 3 needs 5e-3).
    A model a plug-in family meets for the first time gets the configured rate, then a lower and
    a higher one. Every attempt runs by epochs with the convergence check; the last attempt's
    model is kept either way, and prepare() warns if it still has not learned.
    """
    accuracy = 0.0
    for attempt, factor in enumerate(RETRY_RATES):
        tried = replace(config, lr=config.lr * factor)
        logger.info("training %s (lr %.1e)", who, tried.lr)
        accuracy = train(tried)
        if not_learned(who, accuracy) is None:
            break
        if attempt + 1 < len(RETRY_RATES):
            then = config.lr * RETRY_RATES[attempt + 1]
            logger.warning("%s: held-out %.3f at lr %.1e; retraining at lr %.1e", who, accuracy, tried.lr, then)
    return accuracy


def trained_models(
    family_name: str,
    params: dict[str, Any],
    pair: Pair,
    profile: Profile,
    root: Path,
    extractors: tuple[str, ...] = ("probing",),
) -> Path:
    """The cache folder of one family x pair: ``teacher/``, ``student/`` and ``extraction-<method>``,
    trained and extracted here unless already there.

    The test suite trains the quick pair through this function once per session, so that the
    student tests and the quick benchmark share one pair.
    """
    base = root / profile.name / f"{family_name}-{pair.name}"
    teacher_dir, student_dir = base / "teacher", base / "student"

    def train_teacher(cfg: TrainConfig) -> float:
        report = pipeline.train(
            family_name, params, teacher_dir, model_config=pair.teacher, train_config=cfg, sizes=profile.sizes
        )
        return report.heldout_accuracy

    def train_student_(cfg: TrainConfig) -> float:
        trained = train_student(
            family_name, params, student_dir, model_config=pair.student, train_config=cfg, sizes=profile.sizes
        )
        return float(trained.run["heldout_accuracy"])

    if not (teacher_dir / pipeline.RUN_FILE).exists():
        _until_learned(f"teacher {pair.teacher.arch} on {family_name}", profile.train, train_teacher)
    if not (student_dir / "student_run.json").exists():
        student_config = pair.student_train or profile.student_train
        _until_learned(f"student {pair.student.arch} on {family_name}", student_config, train_student_)
    for method in extractors:
        path = base / f"extraction-{method}"
        meta = path.with_suffix(".json")
        if not meta.exists() or json.loads(meta.read_text()).get("format") != pipeline.EXTRACTION_FORMAT:
            pipeline.save_extraction(pipeline.extract(teacher_dir, method), path)
    return base


def prepare(
    family_name: str,
    params: dict[str, Any],
    pair: Pair,
    profile: Profile,
    root: Path,
    extractors: tuple[str, ...] = ("probing",),
) -> Setup:
    """Train (or load the cached) teacher and student, extract concepts, precompute states."""
    base = trained_models(family_name, params, pair, profile, root, extractors)
    teacher_dir, student_dir = base / "teacher", base / "student"
    extractions = {method: pipeline.load_extraction(base / f"extraction-{method}") for method in extractors}
    teacher, tokenizer, family, run = pipeline.load(teacher_dir)
    student = load_student(student_dir)
    task_accuracy = {"teacher": float(run["heldout_accuracy"]), "student": float(student.run["heldout_accuracy"])}
    for who, acc in task_accuracy.items():  # a model that has not learned its task holds no concepts worth a ratio
        warning = not_learned(f"{pair.name} {who} on {family_name}", acc)
        if warning:
            logger.warning(warning)
    splits = pipeline.splits(family, int(run["seed"]), run["sizes"])
    probing = extractions["probing"]
    keys = [c.key for c in probing.concepts]
    words = probing.view.words if probing.view is not None else None
    held = splits["heldout"]
    truth = concept_truth(family, held, keys)
    kd_texts = [t for name, b in splits.items() if name != "heldout" for t in b.texts]
    kd_texts += _extra_inputs(family, splits, profile.kd_max - len(kd_texts))
    kd_obs = observe(student.model, student.tokenizer, kd_texts, words)
    kd_labels = teacher_labels(teacher, tokenizer, probing, kd_texts)
    held_obs = observe(student.model, student.tokenizer, held.texts, words)
    train = splits["train"]
    oracle = kd_readout(
        kd_features(observe(student.model, student.tokenizer, train.texts, words)), concept_truth(family, train, keys)
    )
    return Setup(
        family_name=family_name,
        pair=pair,
        teacher_dir=teacher_dir,
        extractions=extractions,
        teacher=teacher,
        tokenizer=tokenizer,
        family=family,
        student=student,
        pool=splits["pool"],
        held=held,
        truth=truth,
        held_obs=held_obs,
        eval_obs=observe(student.model, student.tokenizer, splits["eval"].texts, words),
        unlabelled=observe(student.model, student.tokenizer, train.texts[: profile.unlabelled], words),
        kd_obs=kd_obs,
        kd_labels=kd_labels,
        teacher_score=teacher_score(probing),
        oracle_score=scores(oracle(kd_features(held_obs)), truth),
        groups=concept_groups(train, concept_truth(family, train, keys).numpy()),
        seconds={
            "teacher_train": float(run.get("seconds", 0.0)),
            "student_train": float(student.run.get("seconds", 0.0)),
        },
        task_accuracy=task_accuracy,
    )
