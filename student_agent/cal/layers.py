"""CAL forms, registered by name: a 2-layer MLP with a linear skip, and a low-rank linear map."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class FormArgs:
    """What a form's factory is built from: the widths and the spec's sizes (no import of the spec)."""

    in_dim: int
    out_dim: int
    hidden: int
    rank: int
    dropout: float


FORMS: dict[str, Callable[[FormArgs], nn.Module]] = {}


def register_form(name: str, factory: Callable[[FormArgs], nn.Module]) -> None:
    """Add a CAL form; ``factory(args)`` returns a module ``[N, in] -> [N, out]`` that also accepts
    ``columns`` (a long index of output columns to compute) as a second argument.

    A form whose class sets ``takes_inputs = True`` also accepts ``inputs=``, a long index of the
    input columns ``x`` holds (the others are zero): a view's word slots leave the read-out slot's
    half of their input at zero, and a first linear layer need not multiply it."""
    if name in FORMS:
        raise ValueError(f"CAL form {name!r} is already registered")
    FORMS[name] = factory


def _linear_in(x: torch.Tensor, layer: nn.Linear, inputs: torch.Tensor | None) -> torch.Tensor:
    """``layer`` on an input that holds only the columns ``inputs`` (the rest zero)."""
    weight = layer.weight if inputs is None else layer.weight[:, inputs]
    return F.linear(x, weight, layer.bias)


class _Dropout(nn.Dropout):
    """Dropout drawing its mask with ``rand`` (CPU: 2.7x faster than ``bernoulli_``, which took 14 %
    of a CAL fit's time on boolean formulas); the same distribution, no parameters, so checkpoints
    saved with ``nn.Dropout`` load unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * (torch.rand_like(x) >= self.p).to(x.dtype) / (1 - self.p)


class MLPWithSkip(nn.Module):
    """y = W_skip x + MLP(x): the skip carries the linear part, the MLP the rest."""

    takes_inputs = True

    def __init__(self, cfg: FormArgs) -> None:
        super().__init__()
        self.skip = nn.Linear(cfg.in_dim, cfg.out_dim)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.in_dim, cfg.hidden), nn.GELU(), _Dropout(cfg.dropout), nn.Linear(cfg.hidden, cfg.out_dim)
        )

    def forward(
        self, x: torch.Tensor, columns: torch.Tensor | None = None, inputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[N, in] -> [N, out]``, or only the output ``columns`` (a long index) when given."""
        first, last = self.mlp[0], self.mlp[3]
        assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear)
        if columns is None and inputs is None:
            out: torch.Tensor = self.skip(x) + self.mlp(x)
            return out
        hidden = self.mlp[2](self.mlp[1](_linear_in(x, first, inputs)))  # [N, hidden]
        skip_w: torch.Tensor = self.skip.weight
        skip_b: torch.Tensor = self.skip.bias
        last_w: torch.Tensor = last.weight
        last_b: torch.Tensor = last.bias
        if columns is not None:
            skip_w, skip_b, last_w, last_b = skip_w[columns], skip_b[columns], last_w[columns], last_b[columns]
        if inputs is not None:
            skip_w = skip_w[:, inputs]
        return F.linear(x, skip_w, skip_b) + F.linear(hidden, last_w, last_b)


class LowRankLinear(nn.Module):
    """y = B (A x) + c with A: in -> rank, B: rank -> out."""

    takes_inputs = True

    def __init__(self, cfg: FormArgs) -> None:
        super().__init__()
        self.down = nn.Linear(cfg.in_dim, cfg.rank, bias=False)
        self.up = nn.Linear(cfg.rank, cfg.out_dim)

    def forward(
        self, x: torch.Tensor, columns: torch.Tensor | None = None, inputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[N, in] -> [N, rank] -> [N, out]`` (or only the output ``columns``)."""
        low = _linear_in(x, self.down, inputs)
        if columns is None:
            out: torch.Tensor = self.up(low)
            return out
        return F.linear(low, self.up.weight[columns], self.up.bias[columns])


class SlotCAL(nn.Module):
    """One CAL shared by every slot of a view: ``[N, S, D] -> [N, S, out]`` (or given output columns).

    Slot i's input is its own state plus a learned slot offset; beside it the read-out slot's own
    state for slot 0 (zero for word slots), then the states of the word slots at ``neighbours``
    (offsets from i; zero where there is no such word slot, and for slot 0).

    Neighbours (off by default): a teacher's state at a word can hold what its model read around
    it (a bidirectional teacher reads what follows), which the student's state at the same word
    need not hold. Measured at quick sizes, one seed, mean balanced accuracy at m = 64 / 256 with
    the words at -1, +1 and +2: boolean formulas BERT64 -> Llama48 0.777 / 0.786 -> 0.789 / 0.813
    and Llama64 -> Llama48 0.767 / 0.789 -> 0.801 / 0.821; digit sums 0.961 / 0.967 -> 0.959 /
    0.967; modular arithmetic 0.944 / 0.952 -> 0.923 / 0.942. Where the student's own state holds
    the word's meaning, the wider input lets the map fit the anchors through other words (anchor
    loss 0.56 -> 0.18 on modarith at m = 64) and generalise worse, as the read-out state did when
    fed to every word slot (modarith, m=64: 0.878 vs 0.926). So it stays a choice, ablated in the
    benchmark (``neighbours``), not the default.
    """

    def __init__(self, inner: nn.Module, slots: int, d_in: int, neighbours: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.inner = inner
        self.neighbours = tuple(neighbours)
        self.slot_offset = nn.Parameter(torch.zeros(slots, d_in))

    def forward(
        self, x: torch.Tensor, columns: torch.Tensor | None = None, slots: torch.Tensor | None = None
    ) -> torch.Tensor:
        n_slots = x.shape[1]
        index = torch.arange(n_slots) if slots is None else slots
        words = index >= 1
        if not getattr(self.inner, "takes_inputs", False) or bool(words.all()) == bool(words.any()):
            return self._slots(x, index, columns)
        # the read-out slot and the word slots apart: the words' read-out half is zero, not multiplied
        out = torch.cat([self._slots(x, index[~words], columns), self._slots(x, index[words], columns)], 1)
        return out[:, torch.argsort(torch.cat([(~words).nonzero(), words.nonzero()]).squeeze(1))]

    def _slots(self, x: torch.Tensor, index: torch.Tensor, columns: torch.Tensor | None) -> torch.Tensor:
        """The inner map on slots ``index``, all word slots or all the read-out slot."""
        n_slots, d = x.shape[1], x.shape[2]
        picked = x[:, index]  # [N, s, D]
        parts = [picked + self.slot_offset[index]]
        read_out = bool((index == 0).all())
        if read_out or not getattr(self.inner, "takes_inputs", False):
            parts.append(picked * (index == 0).to(x.dtype)[None, :, None])  # the read-out slot's second half
        for offset in self.neighbours:
            j = index + offset
            there = ((index >= 1) & (j >= 1) & (j < n_slots)).to(x.dtype)  # [s]: a word slot at i + offset
            parts.append(x[:, j.clamp(0, n_slots - 1)] * there[None, :, None])
        inputs = torch.cat(parts, -1)  # [N, s, (2 + len(neighbours)) * D], or without the zero half
        if len(parts) == 2 + len(self.neighbours):
            out: torch.Tensor = self.inner(inputs, columns) if columns is not None else self.inner(inputs)
            return out
        held = torch.cat([torch.arange(d), torch.arange(2 * d, (2 + len(self.neighbours)) * d)])
        return self.inner(inputs, columns, inputs=held)  # type: ignore[no-any-return]


register_form("mlp_skip", MLPWithSkip)
register_form("lowrank", LowRankLinear)


def build_form(form: str, args: FormArgs) -> nn.Module:
    if form not in FORMS:
        raise ValueError(f"CAL form={form!r}: use one of {sorted(FORMS)}")
    return FORMS[form](args)


def freeze(model: nn.Module) -> nn.Module:
    """The one place a backbone is frozen: no gradients, eval mode (dropout off)."""
    model.requires_grad_(False)
    model.eval()
    return model
