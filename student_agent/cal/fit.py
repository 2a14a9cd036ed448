"""Fit a Concept Alignment Layer on one packet: the composite loss, on a frozen student.

Default direction, ``student_to_teacher``: ψ maps the student's standardized all-block
read-out states ``[L_S * d_S]`` into the teacher's space ``[L_T * d_T]``, where the packet's
own read-outs apply: concept k is ``w_k · ψ(s)[layer_k] + b_k``. The terms (docs/method.md):

* **geo**: anchor alignment ``‖ψ(s_i) − h_T(x_i)‖²`` (per-feature standardized teacher
  space), the concept read-outs on mapped anchors against the teacher's scores (the part of
  the anchor alignment that lies along the concept directions, as a soft-label BCE), and the
  prototype match (class means of mapped anchors against the shipped prototypes).
* **struct**: the anchors' relational geometry: L1 between cosine-similarity matrices of
  mapped and teacher states. A frozen student's attention cannot move, so this is the
  structure the CAL can affect (docs/method.md).
* **reason**: the teacher's step and answer heads, applied to mapped states, must reproduce
  the teacher's own intermediate answers on the anchors and the *student's* own answers on
  its unlabelled inputs. This is the lever the feasibility run found.
* **safety**: mapped states must not project onto directions of concepts flagged unsafe.

``teacher_to_student`` maps teacher states into student space instead (geo, struct, and the
student's own step heads on mapped anchors for reason) and derives a per-concept read-out in
student space from mapped and real anchors; the benchmark compares both directions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m2kt.ml.seed import torch_generator
from student_agent.cal.config import DIRECTIONS, CALConfig
from student_agent.cal.layers import FORMS, build_cal
from student_agent.cal.losses import composite, geometric_loss, reasoning_loss, relational_loss, safety_loss
from student_agent.features import Observation
from student_agent.knowledge import Knowledge

__all__ = ["FitConfig", "FitResult", "ConceptReader", "fit_cal"]

TERMS = ("geo", "struct", "reason", "safety")


@dataclass(frozen=True)
class FitConfig:
    """How to fit. A zero weight switches its term off.

    Attributes:
        alpha, beta, gamma, lam: weights of L_geo, L_struct, L_reason, L_safety.
        form, direction, hidden, rank, dropout: the CAL (see CALConfig).
        steps: optimiser steps (full batch of anchors + a batch of unlabelled inputs each).
        lr, weight_decay: AdamW.
        unlabelled_batch: unlabelled inputs per step for the reasoning term.
        seed: seeds the CAL's init and the unlabelled batches.
    """

    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    lam: float = 1.0
    form: str = "mlp_skip"
    direction: str = "student_to_teacher"
    hidden: int = 256
    rank: int = 32
    dropout: float = 0.3  # measured: 0.624 -> 0.651 mean balanced accuracy at m=256 (overfitting)
    steps: int = 400
    lr: float = 3e-3
    weight_decay: float = 1e-4
    unlabelled_batch: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma", "lam"):
            if getattr(self, name) < 0 or not math.isfinite(getattr(self, name)):
                raise ValueError(f"FitConfig.{name}={getattr(self, name)} must be a finite number >= 0")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"FitConfig.direction={self.direction!r}: use one of {DIRECTIONS}")
        if self.form not in FORMS:
            raise ValueError(f"FitConfig.form={self.form!r}: use one of {sorted(FORMS)}")
        if self.steps < 1 or self.lr <= 0 or self.unlabelled_batch < 1:
            raise ValueError("FitConfig: steps, lr and unlabelled_batch must be positive")

    @property
    def weights(self) -> dict[str, float]:
        return {"geo": self.alpha, "struct": self.beta, "reason": self.gamma, "safety": self.lam}

    def with_(self, **changes: Any) -> FitConfig:
        return FitConfig(**{**asdict(self), **changes})


class _Standardize(nn.Module):
    mean: Tensor
    std: Tensor

    def __init__(self, x: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", x.mean(0))
        self.register_buffer("std", x.std(0).clamp_min(1e-3))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = (x - self.mean) / self.std
        return out

    def inverse(self, z: Tensor) -> Tensor:
        return z * self.std + self.mean


class ConceptReader(nn.Module):
    """Frozen-student states in, K concept logits out: the fitted, servable result of a packet.

    ``student_to_teacher``: logits = teacher read-outs on ψ(standardized student states).
    ``teacher_to_student``: logits = a linear read-out on standardized student states, derived
    from the CAL during fitting. Everything lives in the state dict (safetensors-able).
    """

    directions: Tensor
    biases: Tensor
    layers: Tensor

    def __init__(self, cal_config: CALConfig, d_student: int, n_layers_t: int, d_t: int, k: int) -> None:
        super().__init__()
        self.cal_config = cal_config
        self.shape_t = (n_layers_t, d_t)
        self.student_norm = _Standardize(torch.zeros(2, d_student))
        self.teacher_norm = _Standardize(torch.zeros(2, n_layers_t * d_t))
        self.cal = build_cal(cal_config)
        self.register_buffer("directions", torch.zeros(k, d_t))
        self.register_buffer("biases", torch.zeros(k))
        self.register_buffer("layers", torch.zeros(k, dtype=torch.long))
        self.readout = nn.Linear(d_student, k)  # used by teacher_to_student only

    @property
    def to_teacher(self) -> bool:
        return self.cal_config.direction == "student_to_teacher"

    def mapped(self, flat: Tensor) -> Tensor:
        """Student ``[N, L_S*d_S]`` -> teacher-space states ``[N, L_T, d_T]`` (student_to_teacher)."""
        z = self.cal(self.student_norm(flat))
        return self.teacher_norm.inverse(z).view(-1, *self.shape_t)

    def forward(self, flat: Tensor) -> Tensor:
        if not self.to_teacher:
            logits: Tensor = self.readout(self.student_norm(flat))
            return logits
        h = self.mapped(flat)  # [N, L_T, d_T]
        picked = h[:, self.layers]  # [N, K, d_T]
        return (picked * self.directions).sum(-1) + self.biases


@dataclass
class FitResult:
    reader: ConceptReader
    seconds: float
    losses: dict[str, float] = field(default_factory=dict)  # last step's terms, unweighted


def _heads_loss(h: Tensor, kn: Knowledge, steps: Tensor, answer: Tensor) -> Tensor:
    terms = [reasoning_loss(h[:, layer], w, b, steps[:, j]) for j, ((w, b), layer) in
             enumerate(zip(kn.step_heads, kn.step_layers, strict=True))]  # fmt: skip
    terms.append(reasoning_loss(h[:, kn.answer_layer], *kn.answer_head, answer))
    return torch.stack(terms).mean()


def _prototype_loss(h: Tensor, kn: Knowledge, labels: Tensor, norm: _Standardize) -> Tensor:
    """Class means of mapped anchors vs the shipped prototypes, in standardized units."""
    std = norm.std.view(*kn.anchor_states.shape[1:])  # [L_T, d_T]
    picked = h[:, kn.layers] / std[kn.layers]  # [m, K, d]
    protos = kn.prototypes / std[kn.layers].unsqueeze(1)  # [K, 2, d]
    total, n = h.new_zeros(()), 0
    for cls in (0, 1):
        mask = (labels == cls).float()  # [m, K]
        count = mask.sum(0)  # [K]
        ok = count > 0
        if ok.any():
            means = (picked * mask.unsqueeze(-1)).sum(0) / count.clamp_min(1).unsqueeze(-1)  # [K, d]
            total = total + (means[ok] - protos[ok, cls]).pow(2).sum(-1).mean()
            n += 1
    return total / max(n, 1)


def fit_cal(
    kn: Knowledge,
    anchors: Observation,
    unlabelled: Observation,
    config: FitConfig | None = None,
    *,
    extra_unsafe: Tensor | None = None,
) -> FitResult:
    """Fit a CAL for one packet. ``anchors``: the student on the packet's anchor texts.

    ``unlabelled``: the student on its own inputs (its own answers, no labels of any kind).
    ``extra_unsafe``: ``[K]`` bool, concepts the auditor flagged, kept out like unsafe ones.
    """
    config = config or FitConfig()
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    m, n_layers_t, d_t = kn.anchor_states.shape
    d_s = anchors.flat.shape[1]
    if anchors.flat.shape[0] != m:
        raise ValueError(f"{anchors.flat.shape[0]} student anchor states for {m} anchors")
    to_teacher = config.direction == "student_to_teacher"
    in_dim, out_dim = (d_s, n_layers_t * d_t) if to_teacher else (n_layers_t * d_t, d_s)
    cal_cfg = CALConfig(form=config.form, direction=config.direction,  # type: ignore[arg-type]
                        in_dim=in_dim, out_dim=out_dim, hidden=config.hidden, rank=config.rank,
                        dropout=config.dropout)  # fmt: skip
    reader = ConceptReader(cal_cfg, d_s, n_layers_t, d_t, len(kn.concepts))
    reader.student_norm = _Standardize(torch.cat([unlabelled.flat, anchors.flat]))
    t_flat = kn.anchor_states.flatten(1)  # [m, L_T*d_T]
    reader.teacher_norm = _Standardize(t_flat)
    reader.directions.copy_(kn.directions)
    reader.biases.copy_(kn.biases)
    reader.layers.copy_(kn.layers)
    unsafe = kn.unsafe if extra_unsafe is None else kn.unsafe | extra_unsafe
    labels = (kn.anchor_scores > 0).long()  # [m, K]
    if to_teacher:
        losses = _fit_to_teacher(reader, kn, anchors, unlabelled, labels, unsafe, config)
    else:
        losses = _fit_to_student(reader, kn, anchors, labels, config)
    reader.eval()
    reader.requires_grad_(False)
    return FitResult(reader, time.perf_counter() - start, losses)


def _optimise(params: list[nn.Parameter], config: FitConfig, loss_fn: Any) -> dict[str, float]:
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    last: dict[str, Tensor] = {}
    for step in range(config.steps):
        for group in opt.param_groups:  # cosine decay: the last steps settle instead of oscillating
            group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        terms = loss_fn(step)
        loss = composite(terms, config.weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        last = terms
    return {k: round(float(v.detach()), 5) for k, v in last.items()}


def _fit_to_teacher(
    reader: ConceptReader,
    kn: Knowledge,
    anchors: Observation,
    unlabelled: Observation,
    labels: Tensor,
    unsafe: Tensor,
    config: FitConfig,
) -> dict[str, float]:
    x_a = reader.student_norm(anchors.flat)  # [m, D_S]
    x_u = reader.student_norm(unlabelled.flat)  # [N, D_S]
    t_a = reader.teacher_norm(kn.anchor_states.flatten(1))  # [m, D_T]
    soft = torch.sigmoid(kn.anchor_scores)  # [m, K]
    gen = torch_generator(config.seed, "cal.unlabelled")
    unsafe_dirs = kn.directions[unsafe]  # [U, d_T]
    unsafe_layers = kn.layers[unsafe]
    centre = kn.anchor_states.mean(0)  # [L_T, d_T]
    reader.train()

    def loss_fn(step: int) -> dict[str, Tensor]:
        z_a = reader.cal(x_a)  # [m, D_T]
        h_a = reader.teacher_norm.inverse(z_a).view_as(kn.anchor_states)  # [m, L_T, d_T]
        scores = (h_a[:, kn.layers] * kn.directions).sum(-1) + kn.biases  # [m, K]
        terms: dict[str, Tensor] = {
            "geo": geometric_loss(z_a, t_a) / z_a.shape[1]
            + F.binary_cross_entropy_with_logits(scores, soft)
            + 0.1 * _prototype_loss(h_a, kn, labels, reader.teacher_norm),
            "struct": relational_loss(z_a, t_a),
        }
        if config.gamma:
            idx = torch.randint(0, x_u.shape[0], (min(config.unlabelled_batch, x_u.shape[0]),), generator=gen)
            h_u = reader.teacher_norm.inverse(reader.cal(x_u[idx])).view(-1, *reader.shape_t)
            terms["reason"] = 0.5 * _heads_loss(h_a, kn, kn.anchor_steps, kn.anchor_answer) + 0.5 * _heads_loss(
                h_u, kn, unlabelled.steps[idx], unlabelled.answer[idx]
            )
        else:
            terms["reason"] = z_a.new_zeros(())
        if config.lam and unsafe_dirs.numel():
            per = [safety_loss(h_a[:, layer] - centre[layer], unsafe_dirs[i : i + 1]) for i, layer in
                   enumerate(unsafe_layers.tolist())]  # fmt: skip
            terms["safety"] = torch.stack(per).mean()
        else:
            terms["safety"] = z_a.new_zeros(())
        return terms

    return _optimise([p for p in reader.cal.parameters()], config, loss_fn)


def _fit_to_student(
    reader: ConceptReader, kn: Knowledge, anchors: Observation, labels: Tensor, config: FitConfig
) -> dict[str, float]:
    """ϕ: teacher -> student space, then a read-out fitted on real and mapped anchors."""
    x_a = reader.student_norm(anchors.flat)  # [m, D_S] standardized student anchors (the target)
    t_a = reader.teacher_norm(kn.anchor_states.flatten(1))  # [m, D_T]
    reader.train()

    def map_loss(step: int) -> dict[str, Tensor]:
        z = reader.cal(t_a)  # [m, D_S]
        return {
            "geo": geometric_loss(z, x_a) / z.shape[1],
            "struct": relational_loss(z, x_a),
            "reason": z.new_zeros(()),
            "safety": z.new_zeros(()),
        }

    losses = _optimise(list(reader.cal.parameters()), config, map_loss)
    with torch.no_grad():
        mapped = reader.cal(t_a)
    feats = torch.cat([x_a, mapped])  # [2m, D_S]
    targets = torch.cat([labels, labels]).float()
    opt = torch.optim.AdamW(reader.readout.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(300):
        loss = F.binary_cross_entropy_with_logits(reader.readout(feats), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    return losses


def state_of(reader: ConceptReader) -> Mapping[str, Tensor]:
    return {k: v.detach().contiguous() for k, v in reader.state_dict().items()}
