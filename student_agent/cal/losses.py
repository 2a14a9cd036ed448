"""The composite loss's terms, as pure functions (tensors in, scalar out).

Loss = α·L_geo + β·L_struct + γ·L_reason + λ·L_safety (docs/method.md). Every term checks
its shapes on entry; the weights live in the fitting code, where 0 switches a term off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _same(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")


def geometric_loss(mapped: Tensor, target: Tensor) -> Tensor:
    """Mean squared distance of mapped states to their targets: ``[m, D]`` x ``[m, D]`` -> ``[]``."""
    _same(mapped, target, "geometric_loss")
    return (mapped - target).pow(2).sum(-1).mean()


def relational_loss(mapped: Tensor, target: Tensor) -> Tensor:
    """L1 gap between the anchors' cosine-similarity matrices.

    With a frozen student, relations between anchors are the structure the CAL can move.
    mapped, target: ``[m, D]``. Returns a scalar.
    """
    _same(mapped, target, "relational_loss")
    a, b = F.normalize(mapped, dim=-1), F.normalize(target, dim=-1)
    return (a @ a.T - b @ b.T).abs().mean()  # [m, m] -> []


def score_margin_loss(mapped: Tensor, target: Tensor) -> Tensor:
    """Smooth L1 of how far mapped concept scores fall short of the teacher's side of zero.

    An anchor must land on the teacher's side of zero, at least min(|target|, 1) past it; beyond
    that margin the teacher's confidence is not copied. Regressing onto the scores themselves
    pulled the map along the read-out directions at the cost of everything else (modular
    arithmetic, Llama96 -> GPT-2 64: input concepts 0.941 -> 0.897 at m = 64).
    mapped, target: ``[m, K]``, in units of each concept's spread. Returns a scalar.
    """
    _same(mapped, target, "score_margin_loss")
    short = F.relu(target.abs().clamp(max=1.0) - torch.sign(target) * mapped)  # [m, K], 0 once on the right side
    return F.smooth_l1_loss(short, torch.zeros_like(short))


def reasoning_loss(mapped_layer: Tensor, weight: Tensor, bias: Tensor, answers: Tensor) -> Tensor:
    """Cross-entropy of the teacher's step read-out applied to mapped states.

    mapped_layer: ``[N, d_T]`` mapped states of the block the head reads; weight ``[C, d_T]``,
    bias ``[C]``: the teacher's head; answers: ``[N]`` class indices it must reproduce.
    """
    if mapped_layer.shape[-1] != weight.shape[1] or weight.shape[0] != bias.shape[0]:
        raise ValueError(f"reasoning_loss: head {tuple(weight.shape)} does not read {tuple(mapped_layer.shape)}")
    if answers.shape != mapped_layer.shape[:1]:
        raise ValueError(f"reasoning_loss: {tuple(answers.shape)} answers for {mapped_layer.shape[0]} states")
    return F.cross_entropy(mapped_layer @ weight.T + bias, answers)  # [N, C] -> []


def safety_loss(mapped_layer: Tensor, unsafe_directions: Tensor) -> Tensor:
    """Mean squared projection of mapped states onto unsafe concept directions (zero when none).

    mapped_layer: ``[N, d]``; unsafe_directions: ``[U, d]``. Returns a scalar.
    """
    if unsafe_directions.numel() == 0:
        return mapped_layer.new_zeros(())
    if unsafe_directions.shape[-1] != mapped_layer.shape[-1]:
        raise ValueError(f"safety_loss: {tuple(unsafe_directions.shape)} vs {tuple(mapped_layer.shape)}")
    units = F.normalize(unsafe_directions, dim=-1)  # [U, d]
    return (mapped_layer @ units.T).pow(2).mean()  # [N, U] -> []


def composite(terms: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """Σ weight·term over the terms with a non-zero weight."""
    unknown = set(weights) - set(terms)
    if unknown:
        raise ValueError(f"weights for unknown terms: {sorted(unknown)}")
    active = [weights[k] * v for k, v in terms.items() if weights.get(k, 0.0) != 0.0]
    if not active:
        raise ValueError("every loss term is switched off")
    return torch.stack(active).sum()
