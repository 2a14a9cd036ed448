"""Measuring transferred concepts against ground truth, for the demo, the benchmark and tests.

The student never sees a concept label while it learns. An evaluator that owns the task
generator does: it labels held-out inputs and scores the student's read-outs on them with
balanced accuracy (the concepts are imbalanced; plain accuracy would reward a constant).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from m2kt.ml.logistic import LinearReadout, fit_logistic
from m2kt.ml.metrics import balanced_accuracy
from m2kt.ml.tasks import TaskBatch, TaskFamily
from student_agent.features import Observation
from student_agent.knowledge import Knowledge

__all__ = ["concept_truth", "kd_equal_data", "kd_features", "kd_readout", "scores"]


def concept_truth(family: TaskFamily, batch: TaskBatch, keys: Sequence[str]) -> Tensor:
    """``[N, K]`` bool: the generator's labels of ``batch`` for the concept ``keys``, in that order."""
    specs = [c.key for c in family.concept_specs]
    missing = [k for k in keys if k not in specs]
    if missing:
        raise ValueError(f"the task family {family.name!r} has no concepts {missing}")
    return torch.as_tensor(batch.concepts[:, [specs.index(k) for k in keys]]).bool()


def scores(logits: Tensor, truth: Tensor) -> Tensor:
    """``[K]`` balanced accuracy of ``logits > 0`` (``[N, K]``) against ``truth``."""
    return balanced_accuracy(logits > 0, truth)


def kd_features(obs: Observation) -> Tensor:
    """What a KD read-out reads: the same student states the CAL reads (every slot of the view when
    the observation has one, else the read-out slot), so that KD and M2KT differ only in the packet."""
    return obs.view_flat.flatten(1) if obs.views is not None else obs.flat


def kd_readout(x: Tensor, labels: Tensor, *, init: LinearReadout | None = None) -> LinearReadout:
    """The student's own read-out on labelled states ``x [N, D]``, ``labels [N, K]``: KD on teacher labels,
    the oracle probe on ground truth. L2 1e-2 scales with 1/N, as in the usual regularised-likelihood
    form, so small n is not over-fitted. ``init``: a KD curve's previous n. ``tolerance`` 1e-6: measured
    on the quick digitsum KD curve (n = 64 ... 12,800, 864 features), it changes no held-out balanced
    accuracy by more than 0.001 against torch's default 1e-7, and the curve costs a fraction of it."""
    return fit_logistic(x, labels, l2=1e-2 / len(x), max_iter=300, tolerance=1e-6, init=init)


def kd_equal_data(kn: Knowledge, anchors: Observation) -> LinearReadout:
    """The KD baseline at equal data: the student's read-out on the packet's m anchors' teacher labels alone."""
    return kd_readout(kd_features(anchors), kn.anchor_scores > 0)
