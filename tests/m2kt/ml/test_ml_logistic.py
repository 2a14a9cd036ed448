"""fit_logistic: it recovers a linear rule, its raw-space form is the same function, and a warm
start is the same function re-expressed, reaching the cold start's solution."""

import pytest
import torch

from m2kt.ml.logistic import fit_logistic
from m2kt.ml.metrics import balanced_accuracy


def _data(n: int = 400, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Features on different scales and offsets; one rule per concept, one of them noisy and imbalanced."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen, dtype=dtype) * torch.tensor([1.0, 3.0, 0.2, 10.0, 1.0], dtype=dtype)
    x = x + torch.tensor([0.0, -2.0, 5.0, 1.0, 0.5], dtype=dtype)
    noise = torch.randn(n, generator=gen, dtype=dtype)
    y = torch.stack([x[:, 0] > 0.5, (x[:, 1] + 2) / 3 + (x[:, 2] - 5) / 0.2 < 0, x[:, 3] + 5 * noise > 12.0], 1)
    return x, y.long()


def test_fit_logistic_recovers_a_separable_rule():
    x, y = _data()
    readout = fit_logistic(x, y[:, :2], l2=1e-4)
    assert balanced_accuracy(readout(x) > 0, y[:, :2]).min() > 0.95


def test_raw_weights_reproduce_the_readouts_logits():
    x, y = _data(dtype=torch.float64)
    readout = fit_logistic(x, y, l2=1e-3)
    w, b = readout.raw()
    assert w.shape == (3, 5) and b.shape == (3,)
    logits = readout(x)
    assert logits.abs().max() > 1.0  # a fitted read-out, not zeros
    assert torch.allclose(x @ w.T + b, logits, atol=1e-9)


def test_a_warm_start_is_the_same_function_in_the_new_standardization():
    x, y = _data(dtype=torch.float64)
    earlier = fit_logistic(x[:100], y[:100], l2=1e-3)
    # a tolerance no gradient exceeds stops L-BFGS before its first step: what comes back is the start
    start = fit_logistic(x, y, l2=1e-3, init=earlier, tolerance=float("inf"))
    assert not torch.allclose(start.std, earlier.std)  # the two fits standardize differently
    assert torch.allclose(start(x), earlier(x), atol=1e-9)


def test_a_warm_start_reaches_the_cold_solution():
    x, y = _data(dtype=torch.float64)
    cold = fit_logistic(x, y, l2=1e-2)  # strictly convex: one optimum
    earlier = fit_logistic(x[:100], y[:100], l2=1e-2)
    warm = fit_logistic(x, y, l2=1e-2, init=earlier)
    # L-BFGS stops on the loss's relative change (torch's 1e-9), which leaves ~1e-4 in the weights
    assert (warm(x) - earlier(x)).abs().max() > 0.1  # the start was not the solution
    assert (warm(x) - cold(x)).abs().max() < 2e-3
    assert torch.allclose(warm.weight, cold.weight, atol=1e-3)


def test_shapes_are_checked():
    x, y = _data()
    with pytest.raises(ValueError, match="expected x"):
        fit_logistic(x[:-1], y, l2=1e-3)
    with pytest.raises(ValueError, match="expected x"):
        fit_logistic(x, y[:, 0], l2=1e-3)
