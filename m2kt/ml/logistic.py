"""One class-balanced multi-label logistic regression, for the teacher's probes and the student's read-outs.

The teacher fits its concept probes with it; the student fits its KD baselines and oracle probes
with it; both call :func:`fit_logistic` with their own L2 strength and iteration budget.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LinearReadout", "fit_logistic"]


class LinearReadout(nn.Module):
    """Standardize, then one logistic read-out per concept: ``[N, D] -> [N, K]`` logits."""

    mean: Tensor
    std: Tensor
    weight: Tensor
    bias: Tensor

    def __init__(self, mean: Tensor, std: Tensor, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = ((x - self.mean) / self.std) @ self.weight.T + self.bias
        return out

    def raw(self) -> tuple[Tensor, Tensor]:
        """The same read-out on unstandardized inputs: ``w [K, D]``, ``b [K]`` with logits ``x @ w.T + b``."""
        w = self.weight / self.std
        return w, self.bias - w @ self.mean


def fit_logistic(
    x: Tensor,
    labels: Tensor,
    *,
    l2: float,
    max_iter: int = 100,
    tolerance: float = 1e-7,
    init: LinearReadout | None = None,
    std_floor: float = 1e-3,
) -> LinearReadout:
    """Balanced logistic regression for every column of ``labels`` ``[N, K]`` (0/1) on ``x`` ``[N, D]`` at once.

    Full-batch L-BFGS on standardized ``x`` (std floored at ``std_floor``, so dead units stay finite).
    Objective: the mean over concepts of the class-weighted mean BCE plus ``l2 * ||w_k||^2`` in
    standardized units. Each class weighs half of a concept's loss because balanced accuracy is
    the metric, so a probe cannot win by predicting the majority class. ``l2`` is not scaled by N;
    a caller that wants the regularised-likelihood form (L2 shrinking with 1/N) passes ``l2 / N``.
    ``tolerance``: stop once no gradient entry exceeds it. ``init`` starts from an earlier solution
    (a KD curve's previous n): the problem is convex, so only the number of iterations changes.
    """
    if x.dim() != 2 or labels.dim() != 2 or x.shape[0] != labels.shape[0]:
        raise ValueError(f"expected x [N, D] and labels [N, K], got {tuple(x.shape)} and {tuple(labels.shape)}")
    n = x.shape[0]
    mean = x.mean(0)
    std = x.std(0).clamp_min(std_floor) if n > 1 else torch.ones_like(mean)
    z = (x - mean) / std
    y = labels.to(z.dtype)
    pos = y.sum(0)  # [K]
    weights = y * (n / (2 * pos.clamp_min(1))) + (1 - y) * (n / (2 * (n - pos).clamp_min(1)))  # [N, K]
    if init is None:
        weight = torch.zeros(y.shape[1], z.shape[1], dtype=z.dtype, requires_grad=True)
        bias = torch.zeros(y.shape[1], dtype=z.dtype, requires_grad=True)
    else:  # the same function of x, re-expressed in this fit's standardization
        raw_w, raw_b = init.raw()  # [K, D], [K]
        weight = (raw_w * std).clone().requires_grad_(True)
        bias = (raw_b + raw_w @ mean).clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1, max_iter=max_iter, tolerance_grad=tolerance, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        opt.zero_grad()
        bce = F.binary_cross_entropy_with_logits(z @ weight.T + bias, y, reduction="none")  # [N, K]
        loss = ((bce * weights).mean(0) + l2 * weight.pow(2).sum(1)).mean()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    with torch.enable_grad():  # callers fit under no_grad too
        opt.step(closure)  # type: ignore[no-untyped-call]
    return LinearReadout(mean, std, weight.detach(), bias.detach())
