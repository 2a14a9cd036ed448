"""Read-outs on a view: observable heads and concept read-outs, one definition for teacher and student.

The teacher fits them on its own states and ships them; the student applies the very same
functions to its *mapped* states, so "what the teacher's read-out says" means the same thing
on both sides by construction.

* :class:`ObservableHeads` read what a model computes or perceives and a student can know
  about its own inputs without any label: the token at every word slot (``token`` head),
  each intermediate step and the answer (the model's own heads, at the read-out slot). For a
  text LM the same role is played by the LM head against the next token.
* :class:`ViewReadout` is a concept read-out: per concept k, a linear function of the slot
  states of one block ``layers[k]`` *and* of the observable heads' probabilities. A concept
  such as ``answer < 11`` is not linear in a state that encodes the answer for a 23-way
  softmax, but it is linear in that softmax's probabilities; properties of several inputs
  (``a < b``) are linear in the probabilities of the tokens at their slots.

Feature layout for one block l (``[N, S*d + F]``): the slot states ``states[:, :, l]``
flattened, then the token probabilities of word slots 1..S-1 (``(S-1) * V``), then each step's
probabilities, then the answer's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Head", "ObservableHeads", "ViewReadout"]


@dataclass(frozen=True)
class Head:
    """A linear read-out ``weight [C, d]``, ``bias [C]`` of the state after block ``layer``."""

    weight: Tensor
    bias: Tensor
    layer: int

    def logits(self, states: Tensor) -> Tensor:
        """``[..., L, d]`` -> ``[..., C]`` on block ``layer``."""
        return states[..., self.layer, :] @ self.weight.T + self.bias


@dataclass(frozen=True)
class ObservableHeads:
    """The token head (word slots), the step heads and the answer head (read-out slot)."""

    token: Head | None
    token_classes: tuple[str, ...]
    steps: tuple[Head, ...]
    answer: Head

    def feature_dim(self, slots: int) -> int:
        v = len(self.token_classes) * (slots - 1) if self.token is not None else 0
        return v + sum(int(h.weight.shape[0]) for h in self.steps) + int(self.answer.weight.shape[0])

    def probs(self, states: Tensor, mask: Tensor) -> Tensor:
        """``states [N, S, L, d]``, ``mask [N, S]`` -> ``[N, F]`` head probabilities (zero on empty slots)."""
        parts = []
        if self.token is not None:
            tok = torch.softmax(self.token.logits(states[:, 1:]), -1) * mask[:, 1:, None]  # [N, S-1, V]
            parts.append(tok.flatten(1))
        read = states[:, 0]  # [N, L, d]
        parts += [torch.softmax(h.logits(read), -1) for h in (*self.steps, self.answer)]
        return torch.cat(parts, 1)


@dataclass(frozen=True)
class ViewReadout:
    """K concept read-outs: ``weight [K, S*d + F]``, ``bias [K]``, ``layers [K]`` (the block each reads)."""

    weight: Tensor
    bias: Tensor
    layers: Tensor

    def logits(self, states: Tensor, mask: Tensor, heads: ObservableHeads) -> Tensor:
        """``states [N, S, L, d]`` -> concept logits ``[N, K]`` (differentiable in ``states``)."""
        probs = heads.probs(states, mask)  # [N, F]
        cols, order = [], []
        for layer in torch.unique(self.layers).tolist():
            ks = (self.layers == layer).nonzero().squeeze(1)
            feats = torch.cat([states[:, :, layer].flatten(1), probs], 1)  # [N, S*d + F]
            cols.append(feats @ self.weight[ks].T + self.bias[ks])
            order.append(ks)
        out = torch.cat(cols, 1)  # concepts grouped by layer
        return out[:, torch.argsort(torch.cat(order))]


def layer_features(states: Tensor, mask: Tensor, heads: ObservableHeads, layer: int) -> Tensor:
    """The read-out features of block ``layer``: ``[N, S*d + F]`` (what a ViewReadout row multiplies)."""
    return torch.cat([states[:, :, layer].flatten(1), heads.probs(states, mask)], 1)
