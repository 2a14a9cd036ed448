"""Latent translation: what M2KT is measured against besides KD, on the same frozen student.

* `fit_translation`: ridge or orthogonal Procrustes from the student's states into teacher
  space on the same anchors, then the teacher's read-outs (latent-space translation).

KD, the student's own logistic read-out on labelled states (teacher labels on m anchors: *KD at
equal data*; on n examples: KD; on ground truth: the student's oracle probe), is
`student_agent.evaluate.kd_readout`, on `m2kt.ml.logistic.fit_logistic`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["fit_translation", "procrustes"]


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
