"""Bottleneck probing: a linear probe per layer per concept; the best layer wins.

The default extractor when labels exist. For each layer we fit all K concepts
at once as K class-balanced L2-regularised logistic regressions (full-batch
L-BFGS in torch, deterministic), on standardised states. The probe split is cut
into a fitting part and a selection part; the selection part's balanced
accuracy (``layer_scores``) picks each concept's layer, then the probes are
refitted on the whole probe split and mapped back to raw state space so that
``direction . h + bias`` applies to unstandardised states.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from m2kt.ml.metrics import balanced_accuracy
from m2kt.ml.seed import torch_generator
from teacher_agent.extract.base import (
    ExtractionContext,
    ExtractionResult,
    class_prototypes,
    register_extractor,
)

__all__ = ["ProbingExtractor", "fit_logistic", "fit_raw_probe", "split_index"]

logger = logging.getLogger(__name__)


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3, max_iter: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit K class-balanced logistic regressions on shared inputs.

    Balancing the classes makes the probe optimise (a surrogate of) balanced
    accuracy, which is what we report, instead of predicting the majority class.

    Args:
        x: ``[N, d]`` inputs (standardise them first; ``l2`` assumes unit scale).
        y: ``[N, K]`` 0/1 labels.
        l2: Weight-decay strength on the weights (not the bias).
        max_iter: L-BFGS iterations.

    Returns:
        ``w [K, d]`` and ``b [K]``; the logit of concept k is ``x @ w[k] + b[k]``.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"expected x [N, d] and y [N, K], got {tuple(x.shape)} and {tuple(y.shape)}")
    n, d = x.shape
    yf = y.float()
    pos = yf.sum(0).clamp(min=1)  # [K]
    neg = (n - yf.sum(0)).clamp(min=1)  # [K]
    weight = yf * (n / (2 * pos)) + (1 - yf) * (n / (2 * neg))  # [N, K]
    w = torch.zeros(d, y.shape[1], requires_grad=True)
    b = torch.zeros(y.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = x @ w + b  # [N, K]
        loss = (F.binary_cross_entropy_with_logits(logits, yf, reduction="none") * weight).mean(0).sum()
        loss = loss + l2 * w.pow(2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    with torch.enable_grad():
        opt.step(closure)  # type: ignore[no-untyped-call]
    return w.detach().T.contiguous(), b.detach().clone()


def split_index(n: int, holdout_frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(n)`` into ``[n - h]`` fit and ``[h]`` select indices."""
    order = torch.randperm(n, generator=torch_generator(seed, "extract.split"))
    h = max(1, int(n * holdout_frac))
    return order[h:], order[:h]


def _standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[d]`` and std ``[d]`` of ``[N, d]`` inputs (std floored, so dead units stay finite)."""
    return x.mean(0), x.std(0).clamp(min=1e-4)


def fit_raw_probe(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit probes on raw ``[N, d]`` states; return raw-space ``w [K, d]``, ``b [K]``."""
    mu, sd = _standardise(x)
    w, b = fit_logistic((x - mu) / sd, y, l2=l2)
    w_raw = w / sd  # [K, d]
    return w_raw, b - w_raw @ mu


@dataclass
class ProbingExtractor:
    """Linear probes per layer and concept; each concept keeps its best layer.

    Args:
        l2: Probe weight decay (on standardised states).
        select_frac: Share of the probe split used to choose layers.
        views: Also fit read-outs on the whole view (every word slot, the heads' outputs).
    """

    l2: float = 1e-3
    select_frac: float = 0.25
    views: bool = True
    name: str = "probing"

    def extract(self, ctx: ExtractionContext) -> ExtractionResult:
        states, labels = ctx.probe_states, ctx.probe_labels  # [N, L, d], [N, K]
        fit_idx, sel_idx = split_index(len(states), self.select_frac, ctx.seed)
        n_layers = states.shape[1]
        scores = torch.zeros(n_layers, labels.shape[1])  # [L, K]
        for layer in range(n_layers):
            w, b = fit_raw_probe(states[fit_idx, layer], labels[fit_idx], self.l2)
            logits = states[sel_idx, layer] @ w.T + b  # [n_sel, K]
            scores[layer] = balanced_accuracy(logits > 0, labels[sel_idx])
        best = scores.argmax(0)  # [K]
        directions = torch.zeros(labels.shape[1], states.shape[2])  # [K, d]
        biases = torch.zeros(labels.shape[1])
        for layer in torch.unique(best).tolist():
            ks = (best == layer).nonzero().squeeze(1)
            w, b = fit_raw_probe(states[:, layer], labels[:, ks], self.l2)
            directions[ks], biases[ks] = w, b
        protos = torch.stack(
            [class_prototypes(states[:, int(best[k])], labels[:, k : k + 1])[0] for k in range(labels.shape[1])]
        )  # [K, 2, d]
        result = ctx.finish(self.name, best, directions, biases, protos, scores)
        if not self.views:
            return result
        from teacher_agent.extract.views import extract_views

        return dataclasses.replace(result, view=extract_views(ctx, select_frac=self.select_frac))


register_extractor("probing", ProbingExtractor)
