"""Gradient attribution: concept directions from the gradients of the teacher's answer.

We take the gradient of the teacher's own decision (the log-probability of its
predicted answer plus those of its predicted steps) with respect to the
read-out state after every block, ``g [N, L, d]``, next to the states
``h [N, L, d]``. A concept's direction at a layer is the difference of the
class means of an attribution map, computed on the probe split:

* ``grad_x_act``: ``g * h``, gradient x activation, per unit;
* ``grad``: ``g`` alone (which way the decision moves);
* ``saliency``: ``mean|g| * (mean h | y=1 - mean h | y=0)``, the concept's
  prototype difference restricted to the units the decision is sensitive to
  (default: on the demo teachers it beat ``grad_x_act`` by 0.1 or more).

Each direction is read out on the raw state ``h`` with the bias halfway between
the two classes' mean scores; the layer with the best selection-split balanced
accuracy wins, exactly as for probing, so the numbers are comparable.
Integrated gradients would need re-running the upper blocks from interpolated
states at every layer; we use single-point gradients, which cost one backward pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from m2kt.ml.metrics import balanced_accuracy
from m2kt.ml.models import TaskModel, readout_positions
from m2kt.ml.tokenizer import Encoded, encode
from teacher_agent.extract.base import (
    ExtractionContext,
    ExtractionResult,
    class_prototypes,
    register_extractor,
)
from teacher_agent.extract.probing import split_index

__all__ = ["AttributionExtractor", "ATTRIBUTION_MODES", "readout_gradients"]

logger = logging.getLogger(__name__)


def _class_mean_gap(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of ``a [N, d]`` where each concept holds minus where not (``y [N, K]``) -> ``[K, d]``."""
    protos = class_prototypes(a, y)  # [K, 2, d]
    return protos[:, 1] - protos[:, 0]


def _grad_x_act(h: torch.Tensor, g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _class_mean_gap(g * h, y)


def _grad(h: torch.Tensor, g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _class_mean_gap(g, y)


def _saliency(h: torch.Tensor, g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return g.abs().mean(0).unsqueeze(0) * _class_mean_gap(h, y)  # [1, d] * [K, d]


# Each mode maps states h [N, d], gradients g [N, d] and labels y [N, K] to directions [K, d].
ATTRIBUTION_MODES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "grad_x_act": _grad_x_act,
    "grad": _grad,
    "saliency": _saliency,
}


def _decision(model: TaskModel, enc: Encoded) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Sum of the log-probabilities of the model's own predictions, and all block outputs ``[B, n, d]``."""
    out = model.backbone(input_ids=enc.input_ids, attention_mask=enc.attention_mask, output_hidden_states=True)
    pos = readout_positions(enc.attention_mask, model.readout)  # [B]
    rows = torch.arange(len(enc))  # [B]
    logits = [model.head(out.hidden_states[-1][rows, pos])]
    mid = out.hidden_states[model.step_layer][rows, pos]  # [B, d]
    logits += [h(mid) for h in model.step_heads]
    objective = sum(F.log_softmax(lg, -1).max(-1).values.sum() for lg in logits)
    assert isinstance(objective, torch.Tensor)
    return objective, tuple(out.hidden_states[1:])


def _midpoint(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Halfway between the two classes' mean scores: scores, y ``[N, K]`` -> ``[K]``."""
    yf = y.float()
    pos = (scores * yf).sum(0) / yf.sum(0).clamp(min=1)
    neg = (scores * (1 - yf)).sum(0) / (1 - yf).sum(0).clamp(min=1)
    return (pos + neg) / 2


def readout_gradients(model: TaskModel, enc: Encoded, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """States and gradients of the model's decision at the read-out position, per block.

    Returns ``h [N, L, d]`` and ``g [N, L, d]`` (embeddings excluded, as in :mod:`m2kt.ml.hidden`).
    The model's parameters are not updated; its mode is restored.
    """
    was_training = model.training
    model.eval()
    hs, gs = [], []
    with torch.enable_grad():
        for start in range(0, len(enc), batch_size):
            b = enc.select(torch.arange(start, min(start + batch_size, len(enc))))
            objective, layers = _decision(model, b)
            grads = torch.autograd.grad(objective, layers)
            pos = readout_positions(b.attention_mask, model.readout)
            rows = torch.arange(len(b))
            hs.append(torch.stack([h[rows, pos].detach() for h in layers], 1))  # [B, L, d]
            gs.append(torch.stack([g[rows, pos] for g in grads], 1))  # [B, L, d]
    model.train(was_training)
    return torch.cat(hs), torch.cat(gs)


@dataclass
class AttributionExtractor:
    """Concept directions from gradient attribution maps, best layer per concept.

    Args:
        mode: One of :data:`ATTRIBUTION_MODES`.
        select_frac: Share of the probe split used to pick layers and biases' check.
    """

    mode: str = "saliency"
    select_frac: float = 0.25
    name: str = "attribution"

    def __post_init__(self) -> None:
        if self.mode not in ATTRIBUTION_MODES:
            raise ValueError(f"AttributionExtractor.mode must be one of {sorted(ATTRIBUTION_MODES)}, got {self.mode!r}")

    def extract(self, ctx: ExtractionContext) -> ExtractionResult:
        h, g = readout_gradients(ctx.model, encode(ctx.tokenizer, ctx.probe.texts), ctx.batch_size)
        labels = ctx.probe_labels  # [N, K]
        fit_idx, sel_idx = split_index(len(h), self.select_frac, ctx.seed)
        n_layers, d, n_concepts = h.shape[1], h.shape[2], labels.shape[1]
        scores = torch.zeros(n_layers, n_concepts)  # [L, K]
        per_layer_w, per_layer_b = torch.zeros(n_layers, n_concepts, d), torch.zeros(n_layers, n_concepts)
        for layer in range(n_layers):
            w = ATTRIBUTION_MODES[self.mode](h[fit_idx, layer], g[fit_idx, layer], labels[fit_idx])  # [K, d]
            mid = _midpoint(h[fit_idx, layer] @ w.T, labels[fit_idx])  # [K]
            per_layer_w[layer], per_layer_b[layer] = w, -mid
            sel = h[sel_idx, layer] @ w.T - mid  # [n_sel, K]
            scores[layer] = balanced_accuracy(sel > 0, labels[sel_idx])
        best = scores.argmax(0)  # [K]
        ks = torch.arange(n_concepts)
        protos = torch.stack(
            [class_prototypes(h[:, int(best[k])], labels[:, k : k + 1])[0] for k in range(n_concepts)]
        )  # [K, 2, d]
        return ctx.finish(
            f"{self.name}",
            best,
            per_layer_w[best, ks],
            per_layer_b[best, ks],
            protos,
            scores,
            extras={"mode": self.mode},
        )


register_extractor("attribution", AttributionExtractor)
