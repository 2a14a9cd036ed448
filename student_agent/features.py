"""What the frozen student itself computes on a set of texts: its states, its view, its own answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerFast

from m2kt.ml.hidden import collect_hidden
from m2kt.ml.models import TaskModel
from m2kt.ml.views import Views, collect_views

__all__ = ["Observation", "observe"]


@dataclass(frozen=True)
class Observation:
    """states ``[N, L_S, d_S]`` (read-out slot); steps ``[N, S]`` and answer ``[N]``: the student's own
    argmax answers; views: every word slot too (``m2kt.ml.views``), when asked for."""

    states: torch.Tensor
    steps: torch.Tensor
    answer: torch.Tensor
    views: Views | None = None

    @property
    def flat(self) -> torch.Tensor:
        """``[N, L_S * d_S]``: every block's read-out state side by side (the CAL's student side)."""
        return self.states.flatten(1)

    @property
    def view_flat(self) -> torch.Tensor:
        """``[N, S, L_S * d_S]``: the view, every block side by side per slot (zero on empty slots)."""
        if self.views is None:
            raise ValueError("this observation was made without views; pass words= to observe()")
        return self.views.flat()


@torch.inference_mode()
def observe(
    model: TaskModel, tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], words: int | None = None
) -> Observation:
    """Run the frozen student once over ``texts``; with ``words``, also its view of ``1 + words`` slots.

    The heads read the same blocks as in training (slot 0 of a view is the read-out state).
    """
    views = collect_views(model, tokenizer, list(texts), words) if words else None
    states = views.states[:, 0] if views is not None else collect_hidden(model, tokenizer, list(texts)).states
    mid, last = states[:, model.step_layer - 1], states[:, -1]
    steps = [head(mid).argmax(-1) for head in model.step_heads]
    stacked = torch.stack(steps, dim=1) if steps else torch.zeros((states.shape[0], 0), dtype=torch.long)
    return Observation(states, stacked.long(), model.head(last).argmax(-1).long(), views)
