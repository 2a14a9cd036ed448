"""Turn a trained teacher and one extraction into a signed knowledge packet (P = C, A, R, M, σ).

What goes where (docs/packet-format.md is the contract the student reads):

* C — ``concepts.direction [K, d_T]``, ``concepts.bias [K]``, ``concepts.layer [K]`` (a linear
  read-out on the teacher's read-out state of that block) and ``concepts.prototypes [K, 2, d_T]``.
* A — ``anchors.attention [m, L_T, n, n]``: head-averaged attention on the anchors.
* R — ``anchors.states [m, L_T, d_T]`` (the read-out state after every block), the teacher's
  intermediate answers ``anchors.steps [m, S]`` and answer ``anchors.answer [m]``, and the
  read-out heads that produce them: ``reasoning.step{j}.weight/bias`` and ``reasoning.answer.*``,
  so a student can apply the teacher's own step read-outs to its mapped states.
* The teacher's concept outputs on the anchors (``anchors.concept_scores [m, K]``) and on the
  verification probes (``probes.concept_labels [v, K]``); anchor and probe *texts* ride in the
  manifest, so each model tokenises them itself. Ground-truth labels never leave the teacher.

Precision: directions, biases and heads stay float32 (a few KB); bulk states and attention go
float16, which changes read-out scores by less than 1e-3 relative.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from transformers import PreTrainedTokenizerFast

from m2kt.constants import PACKET_FORMAT
from m2kt.ml.hidden import collect_hidden, readout_for
from m2kt.ml.metrics import concept_logits
from m2kt.ml.models import TaskModel, model_card
from m2kt.ml.programs import ConceptProgram
from m2kt.ml.readouts import ViewReadout, layer_features
from m2kt.ml.tasks.base import TaskBatch, TaskFamily
from m2kt.ml.views import collect_views
from m2kt.packet import BuiltPacket, build_packet
from teacher_agent.extract.base import ExtractionResult
from teacher_agent.extract.views import ViewExtraction, own_observables

__all__ = ["POISON_KINDS", "PacketSpec", "build_teacher_packet"]

POISON_KINDS = ("flip", "random", "trigger")


@dataclass(frozen=True)
class PacketSpec:
    """What one packet carries besides the teacher: which concepts, anchors, probes, and claims.

    Attributes:
        agent: The teacher agent's name (the broker records the real publisher anyway).
        concept_keys: Concepts to ship, or empty for all of the extraction's concepts.
        unsafe: Concept keys the teacher labels unsafe (students keep them out of their space).
        parents: Packet ids this packet derives from.
        poison: For safety tests only: concept key -> one of ``POISON_KINDS``. The packet then
            lies about that concept consistently (its direction, anchor scores and probe labels
            all follow the poisoned read-out) while still claiming the concept's name.
        seed: Seeds the random directions of ``poison="random"``.
        version: The signed version of this packet on its topics; None takes the build time in
            milliseconds (see `next_version`), which increases without keeping local state.
        lifetime: How long after ``created_at`` students may trust the packet (``expires``).
    """

    agent: str
    concept_keys: tuple[str, ...] = ()
    unsafe: frozenset[str] = frozenset()
    parents: tuple[str, ...] = ()
    poison: Mapping[str, str] = field(default_factory=dict)
    seed: int = 0
    version: int | None = None
    lifetime: timedelta = timedelta(days=30)

    def __post_init__(self) -> None:
        if self.version is not None and self.version < 1:
            raise ValueError(f"PacketSpec.version must be at least 1, not {self.version}")
        if self.lifetime <= timedelta(0):
            raise ValueError(f"PacketSpec.lifetime must be positive, not {self.lifetime}")
        bad = {k: v for k, v in self.poison.items() if v not in POISON_KINDS}
        if bad:
            raise ValueError(f"PacketSpec.poison: unknown kinds {bad}; use one of {POISON_KINDS}")


_last_version = 0
_version_lock = threading.Lock()


def next_version() -> int:
    """A version above every one this process handed out and at least the clock in milliseconds.

    Students refuse a version at or below one they saw (rollback), and the broker refuses a
    non-increasing one per teacher and topic; a wall clock that only moves forward gives that
    across restarts with no counter file, and the lock gives it within one process.
    """
    global _last_version
    with _version_lock:
        _last_version = max(_last_version + 1, time.time_ns() // 1_000_000)
        return _last_version


def _rfc3339(when: datetime) -> str:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def _poisoned(
    c: dict[str, torch.Tensor], index: dict[str, int], spec: PacketSpec, anchor_states: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Apply the poison of ``spec`` to stacked concept tensors (a copy)."""
    out = {k: v.clone() for k, v in c.items()}
    gen = torch.Generator().manual_seed(spec.seed)
    for key, kind in spec.poison.items():
        k = index[key]
        if kind == "flip":  # claims the concept, detects its negation
            out["directions"][k], out["biases"][k] = -c["directions"][k], -c["biases"][k]
            continue
        h = anchor_states[:, int(c["layers"][k])].float()  # [m, d]
        rnd = _like_honest(torch.randn(c["directions"].shape[1], generator=gen), h, c["directions"][k].float())
        scores = h @ rnd  # [m]
        out["directions"][k] = rnd
        # random: unrelated to anything, split at its median; trigger: fires only on a 5 % tail
        out["biases"][k] = -scores.median() if kind == "random" else -torch.quantile(scores, 0.95)
    return out


def _like_honest(rnd: torch.Tensor, feats: torch.Tensor, honest: torch.Tensor) -> torch.Tensor:
    """Scale a random direction so its anchor scores spread like the honest read-out's.

    Matching the honest weight's norm is not enough: over raw features with a few large
    coordinates, a random direction's scores can leave float16's range.
    """
    spread, own = (feats @ honest).std(), (feats @ rnd).std()
    return rnd * (spread / own.clamp_min(1e-12)) if float(own) > 0 else rnd / rnd.norm() * honest.norm()


def build_teacher_packet(
    model: TaskModel,
    tokenizer: PreTrainedTokenizerFast,
    family: TaskFamily,
    extraction: ExtractionResult,
    anchors: TaskBatch,
    probes: TaskBatch,
    spec: PacketSpec,
    key: Ed25519PrivateKey,
    *,
    created_at: datetime | None = None,
    cosigners: Sequence[Ed25519PrivateKey] = (),
) -> BuiltPacket:
    """Build and sign one packet (by ``key``, then each of ``cosigners``: k-of-n).

    ``anchors``/``probes`` contribute their texts only.

    Raises:
        ValueError: unknown concept keys, anchors and probes that overlap, or a tensor
            with NaN or infinity (checked before signing).
    """
    if set(anchors.texts) & set(probes.texts):
        raise ValueError("anchors and verification probes must be disjoint")
    index = {c.key: i for i, c in enumerate(extraction.concepts)}
    keys = list(spec.concept_keys) or list(index)
    unknown = sorted((set(keys) | set(spec.poison) | set(spec.unsafe)) - set(index))
    if unknown:
        raise ValueError(f"unknown concept keys: {unknown[:5]}")
    rows = torch.tensor([index[k] for k in keys], dtype=torch.long)
    anchor_h = collect_hidden(model, tokenizer, anchors.texts, attentions=True)
    probe_h = collect_hidden(model, tokenizer, probes.texts)
    stacked = _poisoned(extraction.stacked(), index, spec, anchor_h.states)
    c = {name: t[rows] for name, t in stacked.items()}  # keep only the shipped concepts
    anchor_scores = concept_logits(anchor_h.states, c["layers"], c["directions"], c["biases"])  # [m, K]
    probe_labels = concept_logits(probe_h.states, c["layers"], c["directions"], c["biases"]) > 0  # [v, K]
    view_part: dict[str, np.ndarray[Any, Any]] = {}
    if extraction.view is not None:
        view_part, anchor_scores, probe_labels = _view_tensors(
            model, tokenizer, extraction.view, anchors, probes, spec, index, rows
        )
    steps, answer = _teacher_answers(model, anchor_h.states)
    tensors: dict[str, np.ndarray[Any, Any]] = {
        "concepts.direction": c["directions"].float().numpy(),
        "concepts.bias": c["biases"].float().numpy(),
        "concepts.layer": c["layers"].long().numpy(),
        "concepts.prototypes": c["prototypes"].half().numpy(),
        "anchors.states": anchor_h.states.half().numpy(),
        "anchors.attention": _attention(anchor_h.attentions).numpy(),
        "anchors.concept_scores": anchor_scores.half().numpy(),
        "anchors.steps": steps.numpy(),
        "anchors.answer": answer.numpy(),
        "probes.concept_labels": probe_labels.to(torch.uint8).numpy(),
        **_heads(model),
        **view_part,
    }
    _refuse_nonfinite(tensors)
    manifest = _manifest(model, family, extraction, anchors, probes, spec, keys, tensors, created_at)
    return build_packet(manifest, tensors, key, *cosigners)


def _refuse_nonfinite(tensors: Mapping[str, np.ndarray[Any, Any]]) -> None:
    """Refuse to sign what every student would refuse to read: NaN, or a value past float16's range."""
    for name, array in tensors.items():
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise ValueError(
                f"tensor {name} holds NaN or infinity ({array.dtype}); the teacher's values "
                "left the range the packet stores them in, so no packet was built"
            )


def _poison_readout(
    readout: ViewReadout, feats: Callable[[int], torch.Tensor], index: dict[str, int], spec: PacketSpec
) -> ViewReadout:
    """The view read-outs with ``spec.poison`` applied (a copy); ``feats(k)``: anchor features ``[m, D]``."""
    weight, bias = readout.weight.clone(), readout.bias.clone()
    gen = torch.Generator().manual_seed(spec.seed)
    for key, kind in spec.poison.items():
        k = index[key]
        if kind == "flip":
            weight[k], bias[k] = -readout.weight[k], -readout.bias[k]
            continue
        f = feats(k).float()
        rnd = _like_honest(torch.randn(weight.shape[1], generator=gen), f, readout.weight[k].float())
        scores = f @ rnd  # [m]
        weight[k] = rnd
        bias[k] = -scores.median() if kind == "random" else -torch.quantile(scores, 0.95)
    return ViewReadout(weight, bias, readout.layers.clone())


def _view_tensors(
    model: TaskModel,
    tokenizer: PreTrainedTokenizerFast,
    view: ViewExtraction,
    anchors: TaskBatch,
    probes: TaskBatch,
    spec: PacketSpec,
    index: dict[str, int],
    rows: torch.Tensor,
) -> tuple[dict[str, np.ndarray[Any, Any]], torch.Tensor, torch.Tensor]:
    """The view part of a packet, and the teacher's view read-outs on anchors (logits) and probes (0/1)."""
    a = collect_views(model, tokenizer, anchors.texts, view.words)
    p = collect_views(model, tokenizer, probes.texts, view.words)
    heads = view.heads

    def feats(k: int) -> torch.Tensor:
        return layer_features(a.states, a.mask, heads, int(view.readout.layers[k]))

    with torch.no_grad():
        poisoned = _poison_readout(view.readout, feats, index, spec)
        readout = ViewReadout(poisoned.weight[rows], poisoned.bias[rows], poisoned.layers[rows])
        anchor_scores = readout.logits(a.states, a.mask, heads)  # [m, K]
        probe_labels = readout.logits(p.states, p.mask, heads) > 0  # [v, K]
        program = view.program
        if program is not None:
            lies = {k: feats(k) @ poisoned.weight[k] + poisoned.bias[k] for k in (index[key] for key in spec.poison)}
            program = _poison_program(program, own_observables(a, heads), lies, index, spec)
    assert heads.token is not None
    tensors = {
        "views.anchor_states": a.states.half().numpy(),
        "views.anchor_mask": a.mask.to(torch.uint8).numpy(),
        "views.readout.weight": readout.weight.float().numpy(),
        "views.readout.bias": readout.bias.float().numpy(),
        "views.readout.layer": readout.layers.long().numpy(),
        "views.prototypes": view.prototypes[rows].half().numpy(),
        "observables.token.weight": heads.token.weight.float().numpy(),
        "observables.token.bias": heads.token.bias.float().numpy(),
    }
    if program is not None:
        for i, (w, b) in enumerate(program.layers):
            last = i == len(program.layers) - 1  # the output layer: only the shipped concepts' rows
            tensors[f"observables.program.{i}.weight"] = (w[rows] if last else w).half().numpy()
            tensors[f"observables.program.{i}.bias"] = (b[rows] if last else b).float().numpy()
    return tensors, anchor_scores, probe_labels


def _poison_program(
    program: ConceptProgram,
    anchor_feats: torch.Tensor,
    lies: dict[int, torch.Tensor],
    index: dict[str, int],
    spec: PacketSpec,
) -> ConceptProgram:
    """The concept programs with ``spec.poison`` applied, one consistent lie with the read-outs:
    ``flip`` negates a concept's output row; ``random`` and ``trigger`` get an output row fitted
    (ridge) to the poisoned read-out's scores on the anchors, ``lies[k] [m]``, so program and
    read-out agree where a student can compare them."""
    if not spec.poison:
        return program
    *hidden_layers, (w_out, b_out) = program.layers
    h = anchor_feats
    for w, b in hidden_layers:
        h = torch.relu(h @ w.T + b)  # [m, H] the output layer's inputs on the anchors
    weight, bias = w_out.clone(), b_out.clone()
    centre = h.mean(0)
    hc = h - centre
    ridge = hc.T @ hc + 1e-2 * torch.eye(h.shape[1])  # [H, H]
    for key, kind in spec.poison.items():
        k = index[key]
        if kind == "flip":
            weight[k], bias[k] = -w_out[k], -b_out[k]
            continue
        y = lies[k].float()
        row = torch.linalg.solve(ridge, hc.T @ (y - y.mean()))
        weight[k], bias[k] = row, y.mean() - centre @ row
    return ConceptProgram((*hidden_layers, (weight, bias)), program.accuracy)


def _attention(attn: torch.Tensor | None) -> torch.Tensor:
    if attn is None:
        raise ValueError("attention maps were not collected")
    return attn.half()  # [m, L, n, n]


def _step_layer(model: TaskModel) -> int:
    """The step heads read hidden_states[step_layer], i.e. block step_layer - 1 of ``[N, L, d]``."""
    return model.step_layer - 1


@torch.inference_mode()
def _teacher_answers(model: TaskModel, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's own intermediate answers ``[m, S]`` and answer ``[m]`` from its heads."""
    mid, last = states[:, _step_layer(model)], states[:, -1]  # [m, d], [m, d]
    steps = [head(mid).argmax(-1) for head in model.step_heads]
    stacked = torch.stack(steps, dim=1) if steps else torch.zeros((states.shape[0], 0), dtype=torch.long)
    return stacked.long(), model.head(last).argmax(-1).long()


def _heads(model: TaskModel) -> dict[str, np.ndarray[Any, Any]]:
    out: dict[str, np.ndarray[Any, Any]] = {
        "reasoning.answer.weight": model.head.weight.detach().float().numpy(),
        "reasoning.answer.bias": model.head.bias.detach().float().numpy(),
    }
    for j, head in enumerate(model.step_heads):
        assert isinstance(head, torch.nn.Linear)
        out[f"reasoning.step{j}.weight"] = head.weight.detach().float().numpy()  # [C_j, d_T]
        out[f"reasoning.step{j}.bias"] = head.bias.detach().float().numpy()
    return out


def _views_manifest(view: ViewExtraction, rows: torch.Tensor) -> dict[str, Any]:
    token = view.heads.token
    assert token is not None
    program = view.program
    return {
        "words": view.words,
        "slots": 1 + view.words,
        "slot_rule": "readout-then-first-token-of-each-word",
        "token": {
            "layer": token.layer,
            "classes": list(view.heads.token_classes),
            "accuracy": round(view.token_accuracy, 4),
        },
        **(
            {}
            if program is None
            else {
                "program": {
                    "layers": len(program.layers),
                    "features": "tokens-steps-answer-onehot",
                    "accuracy": [round(float(program.accuracy[r]), 4) for r in rows.tolist()],
                }
            }
        ),
    }


_ROLES = {
    "concepts.direction": "C",
    "concepts.bias": "C",
    "concepts.layer": "C",
    "concepts.prototypes": "C",
    "anchors.attention": "A",
    "anchors.states": "R",
    "anchors.steps": "R",
    "anchors.answer": "R",
    "anchors.concept_scores": "anchor-labels",
    "probes.concept_labels": "verification",
    "views.anchor_states": "R",
    "views.anchor_mask": "R",
    "views.readout.weight": "C",
    "views.readout.bias": "C",
    "views.readout.layer": "C",
    "views.prototypes": "C",
    "observables.token.weight": "R",
    "observables.token.bias": "R",
}


def _role(name: str) -> str:
    return _ROLES.get(name, "R")  # reasoning.* read-out heads are part of R


def _manifest(
    model: TaskModel,
    family: TaskFamily,
    extraction: ExtractionResult,
    anchors: TaskBatch,
    probes: TaskBatch,
    spec: PacketSpec,
    keys: Sequence[str],
    tensors: Mapping[str, np.ndarray[Any, Any]],
    created_at: datetime | None,
) -> dict[str, Any]:
    by_key = {c.key: c for c in extraction.concepts}
    by_index = {c.key: i for i, c in enumerate(extraction.concepts)}
    view = extraction.view
    accuracy = {c.key: c.balanced_accuracy for c in extraction.concepts}
    if view is not None:  # the read-out the student will use is the one whose accuracy counts
        accuracy = {c.key: float(view.accuracy[i]) for i, c in enumerate(extraction.concepts)}
    concepts = [
        {
            "key": k,
            "name": by_key[k].name,
            "topic": by_key[k].topic,
            "layer": by_key[k].layer,
            "teacher_accuracy": round(accuracy[k], 4),
            "method": extraction.method,
            "safety": "unsafe" if k in spec.unsafe else "safe",
        }
        for k in keys
    ]
    created = (created_at or datetime.now(UTC)).replace(microsecond=0)
    return {
        "packet_format": PACKET_FORMAT,
        "created_at": _rfc3339(created),
        "version": spec.version if spec.version is not None else next_version(),
        "expires": _rfc3339(created + spec.lifetime),
        "teacher": {"agent": spec.agent, "model": model_card(model), "readout": readout_for(model)},
        "task": {"name": family.name, "spec": family.spec(), "answer_classes": family.n_classes},
        "topics": sorted({c["topic"] for c in concepts}),
        "concepts": concepts,
        "anchors": {"count": len(anchors), "texts": list(anchors.texts)},
        "probes": {"count": len(probes), "texts": list(probes.texts)},
        "reasoning": {
            "steps": [
                {"name": s.name, "n_classes": s.n_classes, "layer": _step_layer(model)} for s in family.step_specs
            ],
            "answer": {"n_classes": family.n_classes, "layer": model.num_layers - 1},
        },
        "extraction": {
            "method": extraction.method,
            "mean_balanced_accuracy": round(sum(accuracy[k] for k in keys) / max(1, len(keys)), 4),
        },
        **({} if view is None else {"views": _views_manifest(view, torch.tensor([by_index[k] for k in keys]))}),
        "tensors": {
            name: {"role": _role(name), "dtype": str(a.dtype), "shape": list(a.shape)} for name, a in tensors.items()
        },
        "parents": list(spec.parents),
    }
