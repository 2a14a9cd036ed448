"""Measuring transferred concepts against ground truth, for the demo, the benchmark and tests.

The student never sees a concept label while it learns. An evaluator that owns the task
generator does: it labels held-out inputs and scores the student's read-outs on them with
balanced accuracy (the concepts are imbalanced; plain accuracy would reward a constant).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from m2kt.ml.metrics import balanced_accuracy
from m2kt.ml.tasks import TaskBatch, TaskFamily
from student_agent.baselines import LinearReadout, fit_readout
from student_agent.features import Observation
from student_agent.knowledge import Knowledge

__all__ = ["concept_truth", "kd_equal_data", "kd_features", "scores"]


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


def kd_equal_data(kn: Knowledge, anchors: Observation) -> LinearReadout:
    """The KD baseline at equal data: the student's read-out on the packet's m anchors' teacher labels alone."""
    return fit_readout(kd_features(anchors), kn.anchor_scores > 0)
