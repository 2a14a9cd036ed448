"""What the frozen student itself computes on a set of texts: all-block states and its own answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerFast

from m2kt.ml.hidden import collect_hidden
from m2kt.ml.models import TaskModel

__all__ = ["Observation", "observe"]


@dataclass(frozen=True)
class Observation:
    """states ``[N, L_S, d_S]``; steps ``[N, S]`` and answer ``[N]``: the student's own argmax answers."""

    states: torch.Tensor
    steps: torch.Tensor
    answer: torch.Tensor

    @property
    def flat(self) -> torch.Tensor:
        """``[N, L_S * d_S]``: every block's read-out state side by side (the CAL's student side)."""
        return self.states.flatten(1)


@torch.inference_mode()
def observe(model: TaskModel, tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> Observation:
    """Run the frozen student once over ``texts``; its heads read the same blocks as in training."""
    states = collect_hidden(model, tokenizer, list(texts)).states  # [N, L, d]
    mid, last = states[:, model.step_layer - 1], states[:, -1]
    steps = [head(mid).argmax(-1) for head in model.step_heads]
    stacked = torch.stack(steps, dim=1) if steps else torch.zeros((states.shape[0], 0), dtype=torch.long)
    return Observation(states, stacked.long(), model.head(last).argmax(-1).long())
