"""What M2KT is measured against, on the same frozen student: linear read-outs and latent translation.

* `fit_readout`: the student's own multi-label logistic read-out on labelled states. With the
  teacher's labels on m anchors it is *KD at equal data*; on n examples it is KD; on ground
  truth it is the student's oracle probe.
* `fit_translation`: ridge or orthogonal Procrustes from the student's states into teacher
  space on the same anchors, then the teacher's read-outs (latent-space translation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LinearReadout", "fit_readout", "fit_translation", "procrustes"]


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


def fit_readout(
    x: Tensor,
    labels: Tensor,
    *,
    l2: float = 1e-2,
    steps: int = 300,
    init: LinearReadout | None = None,
    tolerance: float = 1e-6,
) -> LinearReadout:
    """Balanced logistic regression for every column of ``labels`` ``[N, K]`` (0/1) at once.

    Classes are re-weighted per concept (the measure is balanced accuracy); L2 scales with 1/N
    as in the usual regularised-likelihood form, so small n is not over-fitted. Full-batch L-BFGS.
    ``init`` starts from an earlier solution (a KD curve's previous n): the problem is convex, so
    the optimum is the same and only the number of iterations to reach it shrinks.
    ``tolerance``: stop once no gradient entry exceeds it (the convergence check). Measured on the
    quick digitsum KD curve (n = 64 ... 12,800, 864 features): 1e-6 changes no held-out balanced
    accuracy by more than 0.001 against torch's default 1e-7, and the curve costs a fraction of it.
    """
    mean = x.mean(0)
    std = x.std(0).clamp_min(1e-3) if x.shape[0] > 1 else torch.ones(x.shape[1])
    z = (x - mean) / std
    y = labels.float()
    pos = y.mean(0).clamp(1e-3, 1 - 1e-3)  # [K]
    w_pos, w_neg = 0.5 / pos, 0.5 / (1 - pos)
    weights = y * w_pos + (1 - y) * w_neg  # [N, K]
    if init is None:
        weight = torch.zeros(y.shape[1], z.shape[1], requires_grad=True)
        bias = torch.zeros(y.shape[1], requires_grad=True)
    else:  # the same function of x, re-expressed in this fit's standardization
        raw = init.weight / init.std  # [K, D]
        weight = (raw * std).clone().requires_grad_(True)
        bias = (init.bias - raw @ init.mean + raw @ mean).clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1, max_iter=steps, tolerance_grad=tolerance, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = (F.binary_cross_entropy_with_logits(z @ weight.T + bias, y, reduction="none") * weights).mean()
        loss = loss + l2 * weight.pow(2).sum() / (max(z.shape[0], 1) * y.shape[1])  # l2 per example
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    return LinearReadout(mean, std, weight.detach(), bias.detach())


def fit_translation(student: Tensor, teacher: Tensor, *, method: str = "ridge", l2: float = 1.0) -> nn.Module:
    """A linear map from student features ``[m, D_S]`` to teacher states ``[m, D_T]`` (flattened) fitted
    on the same anchors by ridge or orthogonal Procrustes, in standardized units; the caller applies
    the teacher's read-outs to what it predicts (latent-space translation)."""
    s_mean, s_std = student.mean(0), student.std(0).clamp_min(1e-3)
    t_mean, t_std = teacher.mean(0), teacher.std(0).clamp_min(1e-3)
    xs, xt = (student - s_mean) / s_std, (teacher - t_mean) / t_std
    if method == "ridge":
        a = xs.T @ xs + l2 * torch.eye(xs.shape[1])
        w = torch.linalg.solve(a, xs.T @ xt)  # [D_S, D_T]
    elif method == "procrustes":
        w = procrustes(xs, xt)
    else:
        raise ValueError(f"unknown translation {method!r}: use ridge or procrustes")
    return _Translated(s_mean, s_std, w, t_mean, t_std)


def procrustes(xs: Tensor, xt: Tensor) -> Tensor:
    """Scaled orthogonal Procrustes ``[D_S, D_T]`` from rows ``xs [m, D_S]`` onto rows ``xt [m, D_T]``.

    The rotation is U Vᵀ from the SVD of ``xsᵀ xt``, which has rank ≤ m; it is computed from thin QR
    factors of both sides and an SVD of at most m x m, in O(D m²) instead of a full D x D SVD's O(D³).
    On a model's whole view D is slots x blocks x width (about 14,000 on boolean formulas), where the
    full SVD took minutes per fit and rotated the directions the anchors never span arbitrarily;
    here those map to zero. With D ≤ m it is the classical solution (tested against the full SVD).
    """
    qs, rs = torch.linalg.qr(xs.T)  # [D_S, r], [r, m]
    qt, rt = torch.linalg.qr(xt.T)  # [D_T, r'], [r', m]
    u, _, vh = torch.linalg.svd(rs @ rt.T, full_matrices=False)  # [r, k], [k, r']
    rot = (qs @ u) @ (vh @ qt.T)  # [D_S, D_T]: a partial isometry on the anchors' span
    mapped = xs @ rot
    scaled: Tensor = rot * ((mapped * xt).sum() / mapped.pow(2).sum().clamp_min(1e-9))
    return scaled


class _Translated(nn.Module):
    def __init__(self, s_mean: Tensor, s_std: Tensor, w: Tensor, t_mean: Tensor, t_std: Tensor) -> None:
        super().__init__()
        self.s_mean, self.s_std, self.w, self.t_mean, self.t_std = s_mean, s_std, w, t_mean, t_std

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = ((x - self.s_mean) / self.s_std) @ self.w * self.t_std + self.t_mean
        return out
