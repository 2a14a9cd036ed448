"""Training and evaluation of a TaskModel on a task family's base task.

``train_step`` is one optimiser step and returns the loss; ``fit`` is the loop
around it: a pure learning-rate schedule (linear warm-up, cosine decay), shuffling
from an explicit generator, evaluation under ``torch.inference_mode()`` after each
epoch, and an optional early stop once a target held-out accuracy is reached.
Progress goes to a rich progress bar on stderr (or nowhere) and to a callback;
nothing is printed.

The loss is the answer's cross-entropy plus ``step_weight`` times the mean
cross-entropy of the intermediate steps. The step term is what lets a small
model learn ``a + b*c mod p`` on a CPU in minutes: it gets the chain's
intermediate value as a target instead of having to discover it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import PreTrainedTokenizerFast

from m2kt.fsutil import atomic_write_text
from m2kt.ml.models import ModelConfig, TaskModel, TaskOutput, build_model, save_pretrained
from m2kt.ml.seed import seed_everything, torch_generator
from m2kt.ml.tasks.base import TaskBatch, TaskFamily, get_task
from m2kt.ml.tokenizer import Encoded, encode

__all__ = [
    "run_record",
    "train_and_save",
    "EpochLog",
    "EvalResult",
    "FitResult",
    "TensorTask",
    "TrainConfig",
    "TrainedModel",
    "evaluate",
    "fit",
    "lr_at",
    "majority_accuracy",
    "task_loss",
    "tensorize",
    "train_model",
    "train_step",
    "LEARNED_ACCURACY",
    "not_learned",
]

logger = logging.getLogger(__name__)


# Held-out answer accuracy below which a model has not learned its task: its hidden states then
# do not carry the task's computation, and concepts read from them are not worth transferring.
LEARNED_ACCURACY = 0.95


def not_learned(who: str, accuracy: float) -> str | None:
    """A one-line warning when ``accuracy`` is below :data:`LEARNED_ACCURACY`, else None."""
    if accuracy >= LEARNED_ACCURACY:
        return None
    return (
        f"warning: the {who} has not learned its task (held-out accuracy {accuracy:.3f} < "
        f"{LEARNED_ACCURACY}); retrain it (more epochs, another seed) before trusting what it teaches or learns"
    )


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`fit`; validated at construction.

    Attributes:
        epochs: Passes over the training set (an upper bound with ``target_accuracy``).
        batch_size: Examples per step.
        lr: Peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_frac: Share of all steps spent warming the rate up linearly.
        step_weight: Weight of the intermediate-step loss (0 trains on the answer alone).
        grad_clip: Max global gradient norm (0 disables clipping).
        seed: Seed of the shuffling stream.
        target_accuracy: Stop after the first epoch whose held-out accuracy reaches it (the
            convergence check). There is deliberately no wall-clock budget: a budget made the same
            config give a teacher at 0.996 on a quiet machine and 0.29 on a loaded one.
    """

    epochs: int = 40
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    step_weight: float = 1.0
    grad_clip: float = 1.0
    seed: int = 0
    target_accuracy: float | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"TrainConfig: epochs={self.epochs} and batch_size={self.batch_size} must be >= 1")
        if not (self.lr > 0 and 0 <= self.warmup_frac < 1 and self.step_weight >= 0 and self.grad_clip >= 0):
            raise ValueError(
                f"TrainConfig invalid: lr={self.lr}, warmup_frac={self.warmup_frac}, "
                f"step_weight={self.step_weight}, grad_clip={self.grad_clip}"
            )


@dataclass(frozen=True)
class TensorTask:
    """A TaskBatch as tensors: token ids ``[N, n]``, answers ``[N]``, steps ``[N, S]``."""

    enc: Encoded
    answers: torch.Tensor
    steps: torch.Tensor

    def __len__(self) -> int:
        return len(self.enc)

    def select(self, index: torch.Tensor) -> TensorTask:
        return TensorTask(self.enc.select(index), self.answers[index], self.steps[index])


def tensorize(tokenizer: PreTrainedTokenizerFast, batch: TaskBatch) -> TensorTask:
    """Tokenise a TaskBatch once, so that training loops only index tensors."""
    return TensorTask(
        encode(tokenizer, batch.texts),
        torch.from_numpy(batch.answers.copy()),
        torch.from_numpy(batch.steps.copy()),
    )


def lr_at(step: int, total: int, base_lr: float, warmup_frac: float) -> float:
    """Learning rate at ``step`` of ``total``: linear warm-up, then cosine decay to 10 %."""
    warmup = max(1, int(total * warmup_frac))
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def task_loss(out: TaskOutput, answers: torch.Tensor, steps: torch.Tensor, step_weight: float) -> torch.Tensor:
    """Answer cross-entropy plus ``step_weight`` x the mean step cross-entropy.

    answers: ``[B]``; steps: ``[B, S]`` matching ``out.step_logits``. Returns a scalar.
    """
    if steps.shape[1] != len(out.step_logits):
        raise ValueError(f"{steps.shape[1]} step targets for {len(out.step_logits)} step heads")
    loss = F.cross_entropy(out.logits, answers)
    if step_weight > 0 and out.step_logits:
        step_ce = torch.stack([F.cross_entropy(lg, steps[:, s]) for s, lg in enumerate(out.step_logits)])
        loss = loss + step_weight * step_ce.mean()
    return loss


def train_step(
    model: TaskModel,
    optimizer: torch.optim.Optimizer,
    batch: TensorTask,
    *,
    step_weight: float = 1.0,
    grad_clip: float = 1.0,
) -> float:
    """One optimiser step on ``batch``; returns the loss before the step.

    The model must already be in train mode; the learning rate is whatever the
    optimiser's param groups hold (set by the caller's schedule).
    """
    out = model(batch.enc.input_ids, batch.enc.attention_mask)
    loss = task_loss(out, batch.answers, batch.steps, step_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return float(loss.item())


@dataclass(frozen=True)
class EvalResult:
    """Held-out accuracy of the answer and of each step head."""

    accuracy: float
    step_accuracy: tuple[float, ...]
    n: int


def evaluate(model: TaskModel, data: TensorTask, batch_size: int = 512) -> EvalResult:
    """Accuracy of ``model`` on ``data`` under ``inference_mode``; restores the model's mode."""
    was_training = model.training
    model.eval()
    correct = torch.zeros(1 + data.steps.shape[1], dtype=torch.long)
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            b = data.select(torch.arange(start, min(start + batch_size, len(data))))
            out = model(b.enc.input_ids, b.enc.attention_mask)
            hits = [(out.logits.argmax(-1) == b.answers).sum()]
            hits += [(lg.argmax(-1) == b.steps[:, s]).sum() for s, lg in enumerate(out.step_logits)]
            correct += torch.stack(hits).long()
    model.train(was_training)
    acc = (correct.double() / max(1, len(data))).tolist()
    return EvalResult(accuracy=acc[0], step_accuracy=tuple(acc[1:]), n=len(data))


def majority_accuracy(train_answers: np.ndarray, eval_answers: np.ndarray) -> float:
    """Accuracy of always predicting the training set's most frequent answer (the trivial baseline)."""
    values, counts = np.unique(train_answers, return_counts=True)
    return float(np.mean(eval_answers == values[np.argmax(counts)]))


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    train_loss: float
    eval: EvalResult
    seconds: float


@dataclass
class FitResult:
    """What :func:`fit` did: per-epoch logs, the final held-out result, and wall-clock seconds."""

    history: list[EpochLog] = field(default_factory=list)
    final: EvalResult | None = None
    seconds: float = 0.0


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=Console(stderr=True),
        disable=not enabled,
        transient=True,
    )


def fit(
    model: TaskModel,
    train: TensorTask,
    heldout: TensorTask,
    config: TrainConfig,
    *,
    progress: bool = False,
    callback: Callable[[EpochLog], None] | None = None,
) -> FitResult:
    """Train ``model`` on ``train`` with AdamW; evaluate on ``heldout`` after every epoch.

    Args:
        model: The model to train in place.
        train: Training examples (see :func:`tensorize`).
        heldout: Examples used only for evaluation and early stopping.
        config: Hyper-parameters, including the shuffling seed.
        progress: Show a rich progress bar on stderr.
        callback: Called with each epoch's log (e.g. by a CLI or a benchmark).

    Returns:
        The history and the final held-out :class:`EvalResult`.
    """
    gen = torch_generator(config.seed, "train.shuffle")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    per_epoch = math.ceil(len(train) / config.batch_size)
    total = per_epoch * config.epochs
    result, step, start = FitResult(), 0, time.perf_counter()
    model.train()
    with _progress(progress) as bar:
        task = bar.add_task("train", total=total, status="")
        for epoch in range(config.epochs):
            order = torch.randperm(len(train), generator=gen)  # [N]
            losses = []
            for i in range(per_epoch):
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, total, config.lr, config.warmup_frac)
                batch = train.select(order[i * config.batch_size : (i + 1) * config.batch_size])
                losses.append(
                    train_step(model, optimizer, batch, step_weight=config.step_weight, grad_clip=config.grad_clip)
                )
                step += 1
                bar.advance(task)
            ev = evaluate(model, heldout)
            log = EpochLog(epoch, float(np.mean(losses)), ev, time.perf_counter() - start)
            result.history.append(log)
            bar.update(task, status=f"loss {log.train_loss:.3f} acc {ev.accuracy:.3f}")
            logger.info(
                "epoch %d loss %.4f heldout acc %.4f steps %s (%.1fs)",
                epoch,
                log.train_loss,
                ev.accuracy,
                [round(a, 3) for a in ev.step_accuracy],
                log.seconds,
            )
            if callback is not None:
                callback(log)
            if config.target_accuracy is not None and ev.accuracy >= config.target_accuracy:
                break
    model.eval()
    result.final = result.history[-1].eval
    result.seconds = time.perf_counter() - start
    return result


@dataclass(frozen=True)
class TrainedModel:
    """A model trained by :func:`train_model`, its tokenizer, and what the training measured."""

    model: TaskModel
    tokenizer: PreTrainedTokenizerFast
    fit: FitResult
    majority_baseline: float
    heldout: EvalResult | None = None  # measured once, after training, on a split it never saw


def train_model(
    family: TaskFamily,
    train: TaskBatch,
    eval_split: TaskBatch,
    *,
    heldout: TaskBatch | None = None,
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    progress: bool = False,
    callback: Callable[[EpochLog], None] | None = None,
) -> TrainedModel:
    """Build a model for ``family`` from a config (seeded init) and fit it: the one-call path for agents.

    ``eval_split`` is the convergence check's (evaluated every epoch, so training has seen its
    score); ``heldout``, when given, is measured once at the end: the accuracy to report.
    The init seed is ``train_config.seed``; weights come from torch's global generator,
    which :func:`m2kt.ml.seed.seed_everything` sets here.
    """
    cfg = train_config or TrainConfig()
    seed_everything(cfg.seed)
    model, tok = build_model(family, model_config)
    result = fit(model, tensorize(tok, train), tensorize(tok, eval_split), cfg, progress=progress, callback=callback)
    measured = evaluate(model, tensorize(tok, heldout)) if heldout is not None else None
    scored = heldout if heldout is not None else eval_split
    return TrainedModel(model, tok, result, majority_accuracy(train.answers, scored.answers), measured)


def run_record(trained: TrainedModel, seed: int, sizes: Mapping[str, int]) -> dict[str, Any]:
    """What a model directory's run file records, for teacher and student alike.

    ``heldout_accuracy`` is measured on the held-out split, which neither training nor the
    convergence check saw; ``eval_accuracy`` is the convergence check's last score.
    """
    final, heldout = trained.fit.final, trained.heldout
    if final is None or heldout is None:
        raise ValueError("a run record needs a model trained with a held-out split and at least one evaluation")
    return {
        "seed": seed,
        "sizes": dict(sizes),
        "heldout_accuracy": round(float(heldout.accuracy), 4),
        "step_accuracy": [round(float(a), 4) for a in heldout.step_accuracy],
        "eval_accuracy": round(float(final.accuracy), 4),
        "epochs": len(trained.fit.history),
        "majority_baseline": round(float(trained.majority_baseline), 4),
        "seconds": round(float(trained.fit.seconds), 1),
    }


def train_and_save(
    task: str,
    params: Mapping[str, Any],
    out: Path,
    run_file: str,
    seed: int,
    model_config: ModelConfig,
    train_config: TrainConfig,
    sizes: Mapping[str, int],
    *,
    progress: bool = False,
    callback: Callable[[EpochLog], None] | None = None,
) -> dict[str, Any]:
    """Train a model on ``task``'s splits for ``seed`` and save it, with its run record, to ``out``.

    The teacher's and the student's training are this one path: `train` and `eval` train the
    model, `heldout` is measured once at the end, and ``out / run_file`` records the seed and the
    split sizes, so any split can be regenerated later instead of stored.
    """
    family = get_task(task, **params)
    data = family.generate_splits(dict(sizes), seed)
    trained = train_model(
        family,
        data["train"],
        data["eval"],
        heldout=data["heldout"],
        model_config=model_config,
        train_config=replace(train_config, seed=seed),
        progress=progress,
        callback=callback,
    )
    save_pretrained(trained.model, trained.tokenizer, out)
    run = run_record(trained, seed, sizes)
    atomic_write_text(out / run_file, json.dumps(run, indent=1))
    return run
