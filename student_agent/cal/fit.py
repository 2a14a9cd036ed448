"""Fit a Concept Alignment Layer on one packet: the composite loss, on a frozen student.

Default direction, ``student_to_teacher``: ψ maps the student's standardized all-block
read-out states ``[L_S * d_S]`` into the teacher's space ``[L_T * d_T]``, where the packet's
own read-outs apply: concept k is ``w_k · ψ(s)[layer_k] + b_k``. The terms (docs/method.md):

* **geo**: anchor alignment ``‖ψ(s_i) − h_T(x_i)‖²`` (per-feature standardized teacher
  space), the concept read-outs on mapped anchors against the teacher's scores (the part of
  the anchor alignment that lies along the concept directions: as a soft-label BCE here, on
  views as the teacher's side with a margin, ``losses.score_margin_loss``), and the
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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m2kt.ml.metrics import balanced_accuracy, concept_logits
from m2kt.ml.programs import observable_features
from m2kt.ml.readouts import Head, ObservableHeads, ViewReadout
from m2kt.ml.seed import torch_generator
from student_agent.cal.config import CALConfig, CALSpec, build_cal
from student_agent.cal.layers import SlotCAL
from student_agent.cal.losses import (
    composite,
    geometric_loss,
    reasoning_loss,
    relational_loss,
    safety_loss,
    score_margin_loss,
)
from student_agent.features import Observation
from student_agent.knowledge import Knowledge

__all__ = ["ConceptReader", "FitConfig", "FittedCAL", "fit_cal"]

TERMS = ("geo", "struct", "reason", "safety")


@dataclass(frozen=True)
class FitConfig:
    """How to fit. A zero weight switches its term off.

    Attributes:
        alpha, beta, gamma, lam: weights of L_geo, L_struct, L_reason, L_safety.
        cal: the CAL's form, direction and sizes (the widths come from the packet at fit time).
        steps: optimiser steps (full batch of anchors + a batch of unlabelled inputs each).
        lr, weight_decay: AdamW.
        unlabelled_batch: unlabelled inputs per step for the reasoning term.
        seed: seeds the CAL's init and the unlabelled batches.
        score_weight: on views, a part of L_geo: the packet's concept read-outs on the mapped
            anchors must land on the teacher's side of zero with a margin of min(|score|, 1),
            in units of each concept's spread over the anchors (smooth L1 of the shortfall;
            `losses.score_margin_loss`). Matching states weighs every teacher feature alike, and
            a relation read out of many slots lies along directions of little variance; this
            weighs the anchors along what is read. Measured (seed 0, full sizes, mean balanced
            accuracy at m = 64 / 256; without the term / regressing onto the scores / the margin):
            boolean formulas BERT128 -> Llama64 0.746 / 0.757, 0.796 / 0.849, 0.808 / 0.859;
            modular arithmetic Llama96 -> GPT-2 64 0.928 / 0.940, 0.904 / 0.936, 0.937 / 0.953
            (the regression cost its input concepts 0.941 -> 0.897 at m = 64: the teacher's
            confidence is not the student's to copy); digit sums BERT128 -> Llama64 0.961 /
            0.969, 0.970 / 0.983, 0.968 / 0.981. The boolean models are a retrain (teacher
            0.936; the regression had measured 0.770 / 0.782 -> 0.813 / 0.857 on the earlier
            ones). Weight 1 is the regression's tuned weight (0.3 and 3 were worse overall
            there), not re-tuned for the margin. Unsafe concepts are left out (safety holds
            them constant).
        program_weight, program_batch, program_accuracy: on views, a part of L_reason: where the
            packet ships concept programs (each concept as a function of the tokens read and the
            step and answer outputs, `m2kt.ml.programs`), the read-outs on ψ(student view) of the
            unlabelled inputs must land on the side the program gives for the student's own
            observables (margin as in score_weight, the program's logit clamped to +-1). Only
            concepts whose program reaches ``program_accuracy`` on the teacher's held-out inputs
            and agrees with the packet's read-out on its anchors (`_program_targets`), and no
            unsafe ones. Measured (quick sizes, seed 0, m = 64 / 256): boolean formulas BERT64 ->
            Llama48 0.787 / 0.829 -> 0.883 / 0.885 (relations 0.673 / 0.737 -> 0.824 / 0.827);
            digit sums 0.958 / 0.962 -> 0.960 / 0.963; a fit costs 4-9 s more. At 0.9 four
            relation programs (0.86-0.88) were left out: 0.855 / 0.867; 0.8 and 0.6 as 0.75.
        program_geo: where the program term is in use, L_geo (the anchors' states and their
            read-out margins) weighs ``alpha * program_geo``. The programs give every held
            concept a target on thousands of unlabelled inputs; holding ψ to the teacher's states
            on m anchors as well fits those anchors and costs held-out accuracy. Measured (full
            sizes, BERT128 -> Llama64, seed 0, m = 64 / 256; L_geo at 1 / 0.1 / 0): boolean
            formulas 0.896 / 0.897, 0.914 at m = 64, 0.926 at m = 64 (relations 0.843 -> 0.888;
            at m = 256 the full benchmark's no_geo ablation gave 0.927 and 0.931 on 2 seeds); modular
            arithmetic 0.968 / 0.976, -, 0.975 / 0.976; digit sums 0.985 / 0.986, 0.988 / 0.987,
            0.988 / 0.988. Without programs L_geo stays at alpha: there it is worth 0.12-0.22.
            At weight 0 the anchors' whole views are not mapped (only what struct, reason and
            safety read), and the reported geo term is 0.
        unlabelled_slots, anchor_rows: what a step costs grows with the view's slots; these cap
            it where views are long and leave short ones as they were (modular arithmetic and
            digit sums keep every slot and 128 anchors). Boolean formulas (26 slots, m = 256,
            seed 0): all 25 word slots and 128 anchors a step 0.857 in ~100 s, 8 word slots 0.856
            in ~75 s, 8 with 78 anchors (these defaults) 0.852 in 56 s, 8 with 64 anchors 0.853
            in 40 s; m = 64 (every anchor each step either way): 0.813 -> 0.812.
    """

    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    lam: float = 1.0
    cal: CALSpec = field(default_factory=CALSpec)
    steps: int = 500
    lr: float = 3e-3
    weight_decay: float = 1e-4
    unlabelled_batch: int = 256  # per step; on views x every word slot (1024 cost 4x for no measured gain)
    seed: int = 0
    views: bool = True  # fit on the packet's views when it has them (every word slot, observable heads)
    anchor_batch: int = 128  # anchors per step on views (all of them when m is smaller)
    score_weight: float = 1.0  # on views, inside geo: mapped anchors on the teacher's side of each read-out
    unlabelled_slots: int = 8  # on views: word slots per unlabelled input and step for the token term
    anchor_rows: int = 2048  # on views: at most this many anchor slots per step (anchors x slots, >= 32 anchors)
    program_weight: float = 1.0  # on views, inside reason: the packet's concept programs on the student's observables
    program_batch: int = 64  # unlabelled inputs a step for the program term (every slot of each is mapped)
    program_accuracy: float = 0.75  # a concept's program is used where its held-out accuracy reaches this
    program_geo: float = 0.0  # on views, L_geo's weight is alpha times this where the program term is in use

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma", "lam", "score_weight", "program_weight", "program_geo"):
            if getattr(self, name) < 0 or not math.isfinite(getattr(self, name)):
                raise ValueError(f"FitConfig.{name}={getattr(self, name)} must be a finite number >= 0")
        sizes = (self.steps, self.unlabelled_batch, self.unlabelled_slots, self.anchor_batch, self.anchor_rows)
        if min(*sizes, self.program_batch) < 1:
            raise ValueError("FitConfig: steps, batch sizes, unlabelled_slots and anchor_rows must be positive")
        if self.lr <= 0:
            raise ValueError("FitConfig: lr must be positive")
        if not 0.0 <= self.program_accuracy <= 1.0:
            raise ValueError(f"FitConfig.program_accuracy={self.program_accuracy} must be in [0, 1]")

    @property
    def weights(self) -> dict[str, float]:
        return {"geo": self.alpha, "struct": self.beta, "reason": self.gamma, "safety": self.lam}


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

    def inverse(self, z: Tensor, slots: Tensor | None = None, columns: Tensor | None = None) -> Tensor:
        return z * self.std + self.mean


class _SlotStandardize(nn.Module):
    """Per-slot standardization of ``[N, S, D]`` (statistics over the rows where a slot is present)."""

    mean: Tensor
    std: Tensor

    def __init__(self, x: Tensor, mask: Tensor) -> None:
        super().__init__()
        w = mask.float().unsqueeze(-1)  # [N, S, 1]
        n = w.sum(0).clamp_min(1)  # [S, 1]
        mean = (x * w).sum(0) / n
        var = ((x - mean) ** 2 * w).sum(0) / n
        self.register_buffer("mean", mean)
        self.register_buffer("std", var.sqrt().clamp_min(1e-3))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = (x - self.mean) / self.std
        return out

    def inverse(self, z: Tensor, slots: Tensor | None = None, columns: Tensor | None = None) -> Tensor:
        mean = self.mean if slots is None else self.mean[slots]
        std = self.std if slots is None else self.std[slots]
        if columns is not None:
            mean, std = mean[..., columns], std[..., columns]
        return z * std + mean


def view_shape(kn: Knowledge) -> dict[str, Any] | None:
    """What a reader needs to rebuild a packet's view read-outs from a checkpoint (JSON)."""
    v = kn.views
    if v is None:
        return None
    h = v.heads
    assert h.token is not None
    return {
        "words": v.words,
        "token_classes": len(h.token_classes),
        "token_layer": h.token.layer,
        "step_classes": [int(x.weight.shape[0]) for x in h.steps],
        "step_layers": [x.layer for x in h.steps],
        "answer_classes": int(h.answer.weight.shape[0]),
        "answer_layer": h.answer.layer,
        "feature_dim": int(v.readout.weight.shape[1]),
    }


class ConceptReader(nn.Module):
    """Frozen-student states in, K concept logits out: the fitted, servable result of a packet.

    ``student_to_teacher``: logits = teacher read-outs on ψ(standardized student states).
    With a packet's views (``views`` shape given), ψ maps every slot of the student's view into
    the teacher's view and the teacher's view read-outs apply (input ``[N, S, L_S*d_S]``);
    otherwise the read-out slot only (input ``[N, L_S*d_S]``).
    ``teacher_to_student``: logits = a linear read-out on standardized student states, derived
    from the CAL during fitting. Everything lives in the state dict (safetensors-able).
    """

    directions: Tensor
    biases: Tensor
    layers: Tensor

    def __init__(
        self,
        cal_config: CALConfig,
        d_student: int,
        n_layers_t: int,
        d_t: int,
        k: int,
        views: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.cal_config = cal_config
        self.shape_t = (n_layers_t, d_t)
        self.views = views
        self.readout = nn.Linear(d_student, k)  # used by teacher_to_student only
        if views is None:
            self.student_norm: _Standardize | _SlotStandardize = _Standardize(torch.zeros(2, d_student))
            self.teacher_norm: _Standardize | _SlotStandardize = _Standardize(torch.zeros(2, n_layers_t * d_t))
            self.cal: nn.Module = build_cal(cal_config)
            self.register_buffer("directions", torch.zeros(k, d_t))
            self.register_buffer("biases", torch.zeros(k))
            self.register_buffer("layers", torch.zeros(k, dtype=torch.long))
            return
        slots = 1 + int(views["words"])
        ones = torch.ones(2, slots, dtype=torch.bool)
        self.student_norm = _SlotStandardize(torch.zeros(2, slots, d_student), ones)
        self.teacher_norm = _SlotStandardize(torch.zeros(2, slots, n_layers_t * d_t), ones)
        self.cal = SlotCAL(build_cal(cal_config), slots, d_student, cal_config.spec.neighbours)
        self.register_buffer("directions", torch.zeros(k, int(views["feature_dim"])))
        self.register_buffer("biases", torch.zeros(k))
        self.register_buffer("layers", torch.zeros(k, dtype=torch.long))
        self.register_buffer("token_weight", torch.zeros(int(views["token_classes"]), d_t))
        self.register_buffer("token_bias", torch.zeros(int(views["token_classes"])))
        for j, c in enumerate(views["step_classes"]):
            self.register_buffer(f"step{j}_weight", torch.zeros(int(c), d_t))
            self.register_buffer(f"step{j}_bias", torch.zeros(int(c)))
        self.register_buffer("answer_weight", torch.zeros(int(views["answer_classes"]), d_t))
        self.register_buffer("answer_bias", torch.zeros(int(views["answer_classes"])))

    @property
    def to_teacher(self) -> bool:
        return self.cal_config.spec.to_teacher

    def input_of(self, obs: Observation) -> Tensor:
        """The tensor this reader reads from an observation: the view, or the read-out states."""
        return obs.view_flat if self.views is not None else obs.flat

    def example_input(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Random input of the right shape (a reload check compares two readers on it)."""
        shape = tuple(self.student_norm.mean.shape)
        return torch.randn(n, *shape, generator=generator)

    def heads(self) -> ObservableHeads:
        """The teacher's observable heads this reader carries (views only)."""
        if self.views is None:
            raise ValueError("this reader has no views")
        v = self.views
        steps = tuple(
            Head(self._buffer(f"step{j}_weight"), self._buffer(f"step{j}_bias"), int(layer))
            for j, layer in enumerate(v["step_layers"])
        )
        return ObservableHeads(
            Head(self._buffer("token_weight"), self._buffer("token_bias"), int(v["token_layer"])),
            tuple(str(i) for i in range(int(v["token_classes"]))),
            steps,
            Head(self._buffer("answer_weight"), self._buffer("answer_bias"), int(v["answer_layer"])),
        )

    def _buffer(self, name: str) -> Tensor:
        value = getattr(self, name)
        assert isinstance(value, Tensor)
        return value

    def mapped(self, x: Tensor) -> Tensor:
        """Student states -> teacher-space states: ``[N, L_T, d_T]``, or ``[N, S, L_T, d_T]`` for views."""
        if self.views is None:
            z = self.cal(self.student_norm(x))
            return self.teacher_norm.inverse(z).view(-1, *self.shape_t)
        mask = slot_mask(x)
        z = self.cal(self.student_norm(x))  # [N, S, L_T*d_T]
        h = self.teacher_norm.inverse(z).view(x.shape[0], x.shape[1], *self.shape_t)
        return h * mask[:, :, None, None]

    def forward(self, x: Tensor) -> Tensor:
        if not self.to_teacher:
            logits: Tensor = self.readout(self.student_norm(x))
            return logits
        h = self.mapped(x)
        if self.views is not None:
            return self.forward_mapped(h, slot_mask(x))
        return concept_logits(h, self.layers, self.directions, self.biases)

    def forward_mapped(self, h: Tensor, mask: Tensor) -> Tensor:
        """Concept logits ``[N, K]`` from teacher-space views ``h [N, S, L_T, d_T]`` (views only)."""
        return ViewReadout(self.directions, self.biases, self.layers).logits(h, mask, self.heads())


def slot_mask(x: Tensor) -> Tensor:
    """``[N, S]``: the slots a view has (an empty slot is all zeros; a real state never is)."""
    return x.ne(0).any(-1)


@dataclass
class FittedCAL:
    """What `fit_cal` made: the fitted reader (CAL + read-outs), how long it took, the last loss terms."""

    reader: ConceptReader
    seconds: float
    losses: dict[str, float] = field(default_factory=dict)  # last step's terms, unweighted


def _heads_loss(h: Tensor, kn: Knowledge, steps: Tensor, answer: Tensor) -> Tensor:
    terms = [
        reasoning_loss(h[:, layer], w, b, steps[:, j])
        for j, ((w, b), layer) in enumerate(zip(kn.step_heads, kn.step_layers, strict=True))
    ]
    terms.append(reasoning_loss(h[:, kn.answer_layer], *kn.answer_head, answer))
    return torch.stack(terms).mean()


def _prototype_loss(h: Tensor, kn: Knowledge, labels: Tensor, norm: _Standardize | _SlotStandardize) -> Tensor:
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
) -> FittedCAL:
    """Fit a CAL for one packet. ``anchors``: the student on the packet's anchor texts.

    ``unlabelled``: the student on its own inputs (its own answers, no labels of any kind).
    ``extra_unsafe``: ``[K]`` bool, concepts the auditor flagged, kept out like unsafe ones.
    """
    config = config or FitConfig()
    start = time.perf_counter()
    m, n_layers_t, d_t = kn.anchor_states.shape
    d_s = anchors.flat.shape[1]
    if anchors.flat.shape[0] != m:
        raise ValueError(f"{anchors.flat.shape[0]} student anchor states for {m} anchors")
    spec = config.cal
    views = view_shape(kn) if spec.to_teacher and config.views else None
    in_dim, out_dim = (d_s, n_layers_t * d_t) if spec.to_teacher else (n_layers_t * d_t, d_s)
    if views is not None:
        in_dim = (2 + len(spec.neighbours)) * d_s  # a slot's state, the read-out slot's, its neighbours
    unsafe = kn.unsafe if extra_unsafe is None else kn.unsafe | extra_unsafe
    fitter = _fit_views if views is not None else FITTERS[spec.direction]
    # A module's init and its dropout draw from torch's global generator and take no other; they
    # draw from a seeded fork of it, so a fit is reproducible and the caller's stream is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        reader = ConceptReader(CALConfig(in_dim, out_dim, spec), d_s, n_layers_t, d_t, len(kn.concepts), views)
        losses = fitter(reader, kn, anchors, unlabelled, unsafe, config)
    reader.eval()
    reader.requires_grad_(False)
    return FittedCAL(reader, time.perf_counter() - start, losses)


def _flat_setup(reader: ConceptReader, kn: Knowledge, anchors: Observation, unlabelled: Observation) -> Tensor:
    """Standardizers and the packet's read-outs for a fit on read-out-slot states; the anchors' labels."""
    reader.student_norm = _Standardize(torch.cat([unlabelled.flat, anchors.flat]))
    reader.teacher_norm = _Standardize(kn.anchor_states.flatten(1))  # [m, L_T*d_T]
    reader.directions.copy_(kn.directions)
    reader.biases.copy_(kn.biases)
    reader.layers.copy_(kn.layers)
    return (kn.anchor_scores > 0).long()  # [m, K]


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
    unsafe: Tensor,
    config: FitConfig,
) -> dict[str, float]:
    labels = _flat_setup(reader, kn, anchors, unlabelled)
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
        scores = concept_logits(h_a, kn.layers, kn.directions, kn.biases)  # [m, K]
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
            per = [
                safety_loss(h_a[:, layer] - centre[layer], unsafe_dirs[i : i + 1])
                for i, layer in enumerate(unsafe_layers.tolist())
            ]
            terms["safety"] = torch.stack(per).mean()
        else:
            terms["safety"] = z_a.new_zeros(())
        return terms

    return _optimise([p for p in reader.cal.parameters()], config, loss_fn)


def token_targets(rows: tuple[tuple[str, ...], ...], classes: tuple[str, ...]) -> Tensor:
    """``[N, S]`` class index of each slot's token in the teacher's token classes; -100 where none."""
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([[index.get(t, -100) if t else -100 for t in row] for row in rows], dtype=torch.long)


def _layer_columns(layers: list[int], d_t: int) -> Tensor:
    return torch.cat([torch.arange(layer * d_t, (layer + 1) * d_t) for layer in layers])


def mapped_view(reader: ConceptReader, x: Tensor, layers: list[int]) -> Tensor:
    """ψ of standardized whole views ``x [B, S, D_S]`` -> ``[B, S, L_T, d_T]``, computed at the
    teacher blocks ``layers`` only and zero at the others (for a term that reads no other)."""
    n_layers_t, d_t = reader.shape_t
    b, slots = x.shape[0], x.shape[1]
    if len(layers) == n_layers_t:
        return reader.teacher_norm.inverse(reader.cal(x)).view(b, slots, n_layers_t, d_t)
    cols = _layer_columns(layers, d_t)
    part = reader.teacher_norm.inverse(reader.cal(x, columns=cols), columns=cols)
    h = part.new_zeros(b, slots, n_layers_t, d_t)
    h[:, :, layers] = part.view(b, slots, len(layers), d_t)
    return h


def _fit_views(
    reader: ConceptReader,
    kn: Knowledge,
    anchors: Observation,
    unlabelled: Observation,
    unsafe: Tensor,
    config: FitConfig,
) -> dict[str, float]:
    """ψ on every slot of the view; the reason term is observable consistency (docs/student.md).

    On the anchors ψ(student view) must match the teacher's view (geo), relations between anchors
    (struct), and the teacher's own step/answer outputs and tokens (reason). On the unlabelled
    inputs, where the student has no teacher output at all, the teacher's heads applied to ψ must
    give what the student knows itself: the token at every word slot and its own step and answer
    predictions. Only the output columns those heads read are computed for unlabelled rows.
    """
    v = kn.views
    if v is None or anchors.views is None or unlabelled.views is None:
        raise ValueError("fitting on views needs a packet with views and observations made with words=")
    xa_raw, xu_raw = anchors.view_flat, unlabelled.view_flat  # [m, S, D_S], [N, S, D_S]
    if xa_raw.shape[1] != v.slots or xu_raw.shape[1] != v.slots:
        raise ValueError(f"the student's views have {xa_raw.shape[1]} slots, the packet's {v.slots}")
    m_a, m_u = slot_mask(xa_raw), slot_mask(xu_raw)
    reader.student_norm = _SlotStandardize(torch.cat([xu_raw, xa_raw]), torch.cat([m_u, m_a]))
    t_flat = v.anchor_states.flatten(2)  # [m, S, L_T*d_T]
    reader.teacher_norm = _SlotStandardize(t_flat, v.anchor_mask)
    heads_t = v.heads
    assert heads_t.token is not None
    reader.directions.copy_(v.readout.weight)
    reader.biases.copy_(v.readout.bias)
    reader.layers.copy_(v.readout.layers)
    copies = {
        "token_weight": heads_t.token.weight,
        "token_bias": heads_t.token.bias,
        "answer_weight": heads_t.answer.weight,
        "answer_bias": heads_t.answer.bias,
    }
    for j, h in enumerate(heads_t.steps):
        copies |= {f"step{j}_weight": h.weight, f"step{j}_bias": h.bias}
    for name, value in copies.items():
        reader._buffer(name).copy_(value)
    heads = reader.heads()
    n_layers_t, d_t = reader.shape_t
    slots = v.slots
    xa, xu = reader.student_norm(xa_raw), reader.student_norm(xu_raw)
    ta = reader.teacher_norm(t_flat)
    both = m_a & v.anchor_mask
    tok_a = token_targets(anchors.views.tokens, heads_t.token_classes)  # [m, S]
    tok_u = token_targets(unlabelled.views.tokens, heads_t.token_classes)  # [N, S]
    tok_layer = heads.token.layer if heads.token is not None else 0
    tok_cols = _layer_columns([tok_layer], d_t)
    read_layers = sorted({h.layer for h in (*heads.steps, heads.answer)})
    read_cols = _layer_columns(read_layers, d_t)
    word_slots, read_slot = torch.arange(1, slots), torch.zeros(1, dtype=torch.long)
    gen = torch_generator(config.seed, "cal.unlabelled")
    ref = v.readout.logits(v.anchor_states, v.anchor_mask, heads_t)  # [m, K] the teacher's own scores
    scale = ref.std(0).clamp_min(1e-3)
    scored = ~unsafe  # an unsafe concept is pushed to a constant (safety), never towards its scores
    programmed, program_targets = _program_targets(kn, anchors, unlabelled, ref, scored, config)  # [K], [N, K]
    m = xa.shape[0]
    batch = min(config.anchor_batch, max(32, config.anchor_rows // slots))  # anchors per step
    reader.train()

    def read_ce(hr: Tensor, steps: Tensor, answer: Tensor, layer_of: dict[int, int]) -> Tensor:
        """CE of the step and answer heads on read-out-slot states ``hr [B, n_layers_used, d]``."""
        terms = [
            F.cross_entropy(hr[:, layer_of[h.layer]] @ h.weight.T + h.bias, steps[:, j])
            for j, h in enumerate(heads.steps)
        ]
        terms.append(
            F.cross_entropy(hr[:, layer_of[heads.answer.layer]] @ heads.answer.weight.T + heads.answer.bias, answer)
        )
        return torch.stack(terms).mean()

    def token_ce(hw: Tensor, targets: Tensor) -> Tensor:
        """CE of the token head on word-slot states ``hw [B, S-1, d]`` against ``targets [B, S-1]``."""
        assert heads.token is not None
        logits = hw @ heads.token.weight.T + heads.token.bias  # [B, S-1, V]
        if not bool((targets >= 0).any()):
            return hw.new_zeros(())
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)

    all_layers = {layer: i for i, layer in enumerate(range(n_layers_t))}
    used = {layer: i for i, layer in enumerate(read_layers)}
    if program_targets is not None:  # the programs hold the concepts; the anchors' states no longer pull ψ
        config = replace(config, alpha=config.alpha * config.program_geo)
    safety = bool(config.lam and unsafe.any())
    # Only what a weighted term reads is mapped: without geo and safety an anchor needs its read-out
    # slot (struct, step and answer heads) and the token head's block at its word slots; the program
    # term needs the blocks its concepts, the token head and the step and answer heads read.
    whole_anchors = bool(config.alpha) or safety
    program_layers = sorted({*v.readout.layers[programmed].tolist(), tok_layer, *read_layers})

    def loss_fn(step: int) -> dict[str, Tensor]:
        a = torch.randperm(m, generator=gen)[:batch] if m > batch else torch.arange(m)
        ha: Tensor | None = None
        if whole_anchors:
            za = reader.cal(xa[a])  # [b, S, L_T*d_T]
            ha = reader.teacher_norm.inverse(za).view(len(a), slots, n_layers_t, d_t) * m_a[a, :, None, None]
            za0, h_read, h_tok = za[:, 0], ha[:, 0], ha[:, 1:, tok_layer]
            geo = (za - ta[a]).pow(2).mean(-1)[both[a]].mean()
        else:  # the read-out slot whole, the word slots at the token head's block: all that is read
            za0 = reader.cal(xa[a], slots=read_slot)[:, 0]  # [b, L_T*d_T]
            h_read = reader.teacher_norm.inverse(za0, slots=read_slot[0]).view(len(a), n_layers_t, d_t)
            zt = reader.cal(xa[a], columns=tok_cols, slots=word_slots)  # [b, S-1, d_T]
            h_tok = reader.teacher_norm.inverse(zt, slots=word_slots, columns=tok_cols) * m_a[a, 1:, None]
            geo = za0.new_zeros(())
        terms: dict[str, Tensor] = {"geo": geo, "struct": relational_loss(za0, ta[a, 0])}
        if ha is not None and config.score_weight and bool(scored.any()):  # the anchors along the read-outs
            got = reader.forward_mapped(ha, m_a[a])[:, scored] / scale[scored]
            margin = score_margin_loss(got, ref[a][:, scored] / scale[scored])
            terms["geo"] = terms["geo"] + config.score_weight * margin
        if config.gamma:
            idx = torch.randint(0, xu.shape[0], (min(config.unlabelled_batch, xu.shape[0]),), generator=gen)
            words = word_slots
            if len(word_slots) > config.unlabelled_slots:  # a fresh random subset of word slots each step
                words = word_slots[torch.randperm(len(word_slots), generator=gen)[: config.unlabelled_slots]]
            zw = reader.cal(xu[idx], columns=tok_cols, slots=words)  # [B, s, d_T]
            hw = reader.teacher_norm.inverse(zw, slots=words, columns=tok_cols)
            zr = reader.cal(xu[idx], columns=read_cols, slots=read_slot)  # [B, 1, n_used*d_T]
            hr = reader.teacher_norm.inverse(zr, slots=read_slot, columns=read_cols).view(-1, len(read_layers), d_t)
            anchor_part = read_ce(h_read, kn.anchor_steps[a], kn.anchor_answer[a], all_layers) + token_ce(
                h_tok, tok_a[a, 1:]
            )
            own_part = read_ce(hr, unlabelled.steps[idx], unlabelled.answer[idx], used)
            own_part = own_part + token_ce(hw, tok_u[idx][:, words])
            terms["reason"] = 0.5 * (anchor_part + own_part)
            if program_targets is not None:  # every concept the programs give, on whole mapped views
                p = torch.randint(0, xu.shape[0], (min(config.program_batch, xu.shape[0]),), generator=gen)
                hu = mapped_view(reader, xu[p], program_layers)
                got_u = reader.forward_mapped(hu * m_u[p, :, None, None], m_u[p])[:, programmed]
                target = program_targets[p][:, programmed]
                terms["reason"] = terms["reason"] + config.program_weight * score_margin_loss(
                    got_u / scale[programmed], target
                )
        else:
            terms["reason"] = za0.new_zeros(())
        if safety:
            assert ha is not None
            logits = reader.forward_mapped(ha, m_a[a])[:, unsafe] / scale[unsafe]  # [b, U] on this step's anchors
            terms["safety"] = (logits - logits.mean(0)).pow(2).mean()
        else:
            terms["safety"] = za0.new_zeros(())
        return terms

    return _optimise([p for p in reader.cal.parameters()], config, loss_fn)


def _program_targets(
    kn: Knowledge, anchors: Observation, unlabelled: Observation, ref: Tensor, scored: Tensor, config: FitConfig
) -> tuple[Tensor, Tensor | None]:
    """Which concepts the program term holds (``[K]`` bool) and their targets ``[N, K]`` on the
    unlabelled inputs: the program's logits on the student's own observables, clamped to +-1.

    A concept is held where its program reaches ``config.program_accuracy`` at the teacher (the
    accuracy the packet reports) and agrees with the packet's own read-out on the anchors (the
    sign of ``ref [m, K]``; the anchors' tokens as the student reads them, the teacher's shipped
    steps and answers) better than chance by two standard errors of a balanced accuracy on those
    anchors: a program that says something else than the read-out it comes with (a lie in one
    of the two, or a broken fit) is left out instead of pulling ψ. The bar is the packet's own
    (0.75 at 16 balanced anchors, 0.63 at 64, 0.56 at 256): honest relation programs agree with
    their read-outs at 0.68-0.75 (boolean formulas, quick sizes), a negated one at 0.55 at most."""
    v = kn.views
    none = torch.zeros_like(scored)
    if v is None or v.program is None or not config.program_weight or not config.gamma:
        return none, None
    if unlabelled.views is None or anchors.views is None:
        return none, None
    program, heads = v.program, v.heads

    def feats(tokens: tuple[tuple[str, ...], ...], steps: Tensor, answer: Tensor) -> Tensor:
        return observable_features(
            tokens,
            steps,
            answer,
            heads.token_classes,
            [int(h.weight.shape[0]) for h in heads.steps],
            int(heads.answer.weight.shape[0]),
            v.slots,
        )

    with torch.no_grad():
        on_anchors = program.logits(feats(anchors.views.tokens, kn.anchor_steps, kn.anchor_answer))  # [m, K]
        agreement = balanced_accuracy(on_anchors > 0, ref > 0)  # [K]
        pos = (ref > 0).sum(0).clamp_min(1).float()
        neg = (ref <= 0).sum(0).clamp_min(1).float()
        chance_bar = 0.5 + 2 * 0.25 * (1 / pos + 1 / neg).sqrt()  # [K] 2 SE of a balanced accuracy at chance
        programmed = scored & (program.accuracy >= config.program_accuracy) & (agreement >= chance_bar)
        if not bool(programmed.any()):
            return none, None
        return programmed, program.logits(feats(unlabelled.views.tokens, unlabelled.steps, unlabelled.answer)).clamp(
            -1.0, 1.0
        )


def _fit_to_student(
    reader: ConceptReader,
    kn: Knowledge,
    anchors: Observation,
    unlabelled: Observation,
    unsafe: Tensor,
    config: FitConfig,
) -> dict[str, float]:
    """ϕ: teacher -> student space, then a read-out fitted on real and mapped anchors."""
    labels = _flat_setup(reader, kn, anchors, unlabelled)
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


Fitter = Callable[[ConceptReader, Knowledge, Observation, Observation, Tensor, FitConfig], dict[str, float]]
# How each direction (student_agent.cal.config.DIRECTIONS) is fitted on read-out-slot states;
# packets with views are fitted by _fit_views (student_to_teacher only).
FITTERS: dict[str, Fitter] = {"student_to_teacher": _fit_to_teacher, "teacher_to_student": _fit_to_student}
