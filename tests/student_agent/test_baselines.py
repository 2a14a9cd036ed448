"""The translation baselines: Procrustes from thin factors is the classical solution where that is
defined, and stays on the anchors' span where the anchors are fewer than the dimensions."""

import torch

from student_agent.baselines import fit_translation, procrustes


def _classical(xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """The textbook form: a full SVD of xsᵀ xt (equal widths), scaled by least squares."""
    u, _, vh = torch.linalg.svd(xs.T @ xt)
    rot = u @ vh
    return rot * ((xs @ rot * xt).sum() / (xs @ rot).pow(2).sum())


def test_procrustes_is_the_classical_solution_when_the_anchors_span_the_space():
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(200, 12, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    xt = 2.5 * xs @ q + 0.01 * torch.randn(200, 12, generator=g, dtype=torch.float64)
    w = procrustes(xs, xt)
    assert torch.allclose(w, _classical(xs, xt), atol=1e-10)
    assert torch.allclose(w / 2.5, q, atol=1e-3)  # it recovers the rotation and the scale


def test_with_fewer_anchors_than_dimensions_the_map_stays_on_their_span():
    g = torch.Generator().manual_seed(1)
    m, d_s, d_t = 20, 300, 500
    xs = torch.randn(m, d_s, generator=g, dtype=torch.float64)
    xt = torch.randn(m, d_t, generator=g, dtype=torch.float64)
    w = procrustes(xs, xt)
    # a partial isometry (up to its scale) on the anchors' span: the anchors keep their geometry
    mapped = xs @ w
    s = mapped.norm() / xs.norm()
    assert torch.allclose(mapped @ mapped.T, s**2 * (xs @ xs.T), atol=1e-8)
    # a direction the anchors never span maps to zero instead of being rotated somewhere arbitrary
    off = torch.randn(d_s, generator=g, dtype=torch.float64)
    off -= xs.T @ torch.linalg.lstsq(xs.T, off).solution
    assert (off @ w).norm() < 1e-8 * off.norm() * w.norm()
    # and it is no worse on the anchors than the padded full-SVD solution it replaces
    d = max(d_s, d_t)
    padded = _classical(torch.nn.functional.pad(xs, (0, d - d_s)), torch.nn.functional.pad(xt, (0, d - d_t)))
    assert (mapped - xt).norm() <= (xs @ padded[:d_s, :d_t] - xt).norm() + 1e-9


def test_fit_translation_maps_held_out_rows_through_standardized_units():
    g = torch.Generator().manual_seed(2)
    xs = torch.randn(300, 16, generator=g) * 3 + 1
    xt = torch.cat([xs, -xs], 1) * 0.5
    for method in ("ridge", "procrustes"):
        tr = fit_translation(xs[:200], xt[:200], method=method)
        err = (tr(xs[200:]) - xt[200:]).pow(2).mean() / xt[200:].var()
        assert err < 0.05, (method, float(err))
