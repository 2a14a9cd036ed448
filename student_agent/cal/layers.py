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
    ``columns`` (a long index of output columns to compute) as a second argument."""
    if name in FORMS:
        raise ValueError(f"CAL form {name!r} is already registered")
    FORMS[name] = factory


class MLPWithSkip(nn.Module):
    """y = W_skip x + MLP(x): the skip carries the linear part, the MLP the rest."""

    def __init__(self, cfg: FormArgs) -> None:
        super().__init__()
        self.skip = nn.Linear(cfg.in_dim, cfg.out_dim)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.in_dim, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, cfg.out_dim)
        )

    def forward(self, x: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, in] -> [N, out]``, or only the output ``columns`` (a long index) when given."""
        if columns is None:
            out: torch.Tensor = self.skip(x) + self.mlp(x)
            return out
        hidden = self.mlp[2](self.mlp[1](self.mlp[0](x)))  # [N, hidden]
        last = self.mlp[3]
        assert isinstance(last, nn.Linear)
        return F.linear(x, self.skip.weight[columns], self.skip.bias[columns]) + F.linear(
            hidden, last.weight[columns], last.bias[columns]
        )


class LowRankLinear(nn.Module):
    """y = B (A x) + c with A: in -> rank, B: rank -> out."""

    def __init__(self, cfg: FormArgs) -> None:
        super().__init__()
        self.down = nn.Linear(cfg.in_dim, cfg.rank, bias=False)
        self.up = nn.Linear(cfg.rank, cfg.out_dim)

    def forward(self, x: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, in] -> [N, rank] -> [N, out]`` (or only the output ``columns``)."""
        if columns is None:
            out: torch.Tensor = self.up(self.down(x))
            return out
        return F.linear(self.down(x), self.up.weight[columns], self.up.bias[columns])


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
        picked = x[:, index]  # [N, s, D]
        own = picked * (index == 0).to(x.dtype)[None, :, None]  # the read-out slot's second half
        parts = [picked + self.slot_offset[index], own]
        for offset in self.neighbours:
            j = index + offset
            there = ((index >= 1) & (j >= 1) & (j < n_slots)).to(x.dtype)  # [s]: a word slot at i + offset
            parts.append(x[:, j.clamp(0, n_slots - 1)] * there[None, :, None])
        inputs = torch.cat(parts, -1)  # [N, s, (2 + len(neighbours)) * D]
        out: torch.Tensor = self.inner(inputs, columns) if columns is not None else self.inner(inputs)
        return out


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
