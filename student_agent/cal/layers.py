"""CAL forms, registered by name: a 2-layer MLP with a linear skip, and a low-rank linear map."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from student_agent.cal.config import CALConfig

FORMS: dict[str, Callable[[CALConfig], nn.Module]] = {}


def register_form(name: str, factory: Callable[[CALConfig], nn.Module]) -> None:
    if name in FORMS:
        raise ValueError(f"CAL form {name!r} is already registered")
    FORMS[name] = factory


class MLPWithSkip(nn.Module):
    """y = W_skip x + MLP(x): the skip carries the linear part, the MLP the rest."""

    def __init__(self, cfg: CALConfig) -> None:
        super().__init__()
        self.skip = nn.Linear(cfg.in_dim, cfg.out_dim)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.in_dim, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, cfg.out_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.skip(x) + self.mlp(x)  # [N, in] -> [N, out]
        return out


class LowRankLinear(nn.Module):
    """y = B (A x) + c with A: in -> rank, B: rank -> out."""

    def __init__(self, cfg: CALConfig) -> None:
        super().__init__()
        self.down = nn.Linear(cfg.in_dim, cfg.rank, bias=False)
        self.up = nn.Linear(cfg.rank, cfg.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.up(self.down(x))  # [N, in] -> [N, rank] -> [N, out]
        return out


register_form("mlp_skip", MLPWithSkip)
register_form("lowrank", LowRankLinear)


def build_cal(cfg: CALConfig) -> nn.Module:
    return FORMS[cfg.form](cfg)


def freeze(model: nn.Module) -> nn.Module:
    """The one place a backbone is frozen: no gradients, eval mode (dropout off)."""
    model.requires_grad_(False)
    model.eval()
    return model
