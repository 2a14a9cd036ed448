"""The measure and the read-out that teacher, student and benchmark share, defined once.

Teacher and student must score a concept the same way by construction: the teacher's
extractors choose read-outs by :func:`balanced_accuracy`, the student's auditor and the
benchmark judge the CAL by it, and :func:`concept_logits` is the read-out a packet ships.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["balanced_accuracy", "concept_logits"]


def balanced_accuracy(pred: Tensor, labels: Tensor) -> Tensor:
    """Mean of the true-positive and true-negative rates, per column.

    pred, labels: ``[N, K]`` (or ``[N]``) of 0/1. Returns ``[K]`` (or ``[]``); a column with
    one class only scores its single rate (its plain accuracy).
    """
    if pred.shape != labels.shape:
        raise ValueError(f"shapes differ: {tuple(pred.shape)} vs {tuple(labels.shape)}")
    p, y = pred.bool(), labels.bool()
    pos, neg = y.sum(0).double(), (~y).sum(0).double()
    tpr = (p & y).sum(0).double() / pos.clamp(min=1)
    tnr = (~p & ~y).sum(0).double() / neg.clamp(min=1)
    both = (pos > 0) & (neg > 0)
    return torch.where(both, (tpr + tnr) / 2, torch.where(pos > 0, tpr, tnr)).float()


def concept_logits(states: Tensor, layers: Tensor, directions: Tensor, biases: Tensor) -> Tensor:
    """K linear concept read-outs, each on its own block: ``states [N, L, d]`` -> logits ``[N, K]``.

    ``layers [K]`` long picks each concept's block; ``directions [K, d]``, ``biases [K]``.
    """
    picked = states[:, layers]  # [N, K, d]
    out: Tensor = (picked * directions.unsqueeze(0)).sum(-1) + biases
    return out
