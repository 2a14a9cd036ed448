"""The auditor's chance level of separation, on a synthetic packet geometry with a known answer.

Two Gaussian classes in a feature space with very unequal scales (as read-out features are:
block states beside head probabilities). An honest read-out (the class-mean difference, whitened)
must clear the chance level computed from its own shuffled weights; its negation and random
read-outs must not. Nothing here is a tuned constant: both sides are computed in the test.
"""

import torch

from student_agent.audit import _dprime, chance_separation


def _geometry(k: int = 6, m: int = 256, dim: int = 120, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-1, 1, dim)  # features differ by two orders of magnitude in spread
    feats, gaps, honest = [], [], []
    for _ in range(k):
        direction = torch.randn(dim, generator=gen) * scales
        labels = torch.rand(m, generator=gen) < 0.4
        x = torch.randn(m, dim, generator=gen) * scales + labels[:, None] * direction * 0.15
        p1, p0 = x[labels].mean(0), x[~labels].mean(0)
        feats.append(x)
        gaps.append(p1 - p0)
        honest.append((p1 - p0) / scales**2)  # LDA with the (diagonal) class covariance
    return torch.stack(feats), torch.stack(honest), torch.stack(gaps)


def test_honest_read_outs_clear_the_chance_level_and_poisoned_ones_do_not():
    feats, honest, gap = _geometry()
    chance = chance_separation(feats, honest, gap)
    assert bool((_dprime(feats, honest, gap) > chance).all())
    assert bool((_dprime(feats, -honest, gap) <= torch.clamp(chance, min=0.0)).all())
    gen = torch.Generator().manual_seed(1)
    caught = 0
    for _ in range(20):
        rnd = torch.randn(honest.shape, generator=gen) * honest.norm(dim=1, keepdim=True) / honest.shape[1] ** 0.5
        caught += int((_dprime(feats, rnd, gap) <= chance).sum())
    assert caught >= 0.9 * 20 * honest.shape[0]


def test_the_chance_level_is_per_concept_and_reproducible():
    feats, honest, gap = _geometry(seed=3)
    a, b = chance_separation(feats, honest, gap, seed=5), chance_separation(feats, honest, gap, seed=5)
    assert torch.equal(a, b) and a.shape == (honest.shape[0],)
    looser = chance_separation(feats, honest, gap, quantile=0.5, seed=5)
    assert bool((looser <= a).all())
