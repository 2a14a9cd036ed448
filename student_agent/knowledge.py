"""A verified packet, read into what the student fits on (docs/packet-format.md).

`open_packet` has already checked the signature, the payload digest and the protocol's
manifest rules; this module checks the agents' part of the contract: the manifest keys the
teacher writes and every tensor's dtype and shape against K, m, v, S, L_T and d_T. A packet
that is signed but inconsistent is refused here with `PacketContentError`, before any training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load as load_safetensors

from m2kt.errors import M2KTError
from m2kt.ml.programs import MAX_WIDTH, ConceptProgram
from m2kt.ml.readouts import Head, ObservableHeads, ViewReadout
from m2kt.packet import OpenedPacket

__all__ = ["ConceptInfo", "Knowledge", "PacketContentError", "ViewKnowledge"]


class PacketContentError(M2KTError, ValueError):
    """A signed packet whose content breaks docs/packet-format.md."""

    slug = "invalid-content"


class _Lax(BaseModel):
    model_config = ConfigDict(extra="allow")


class ConceptInfo(_Lax):
    key: str
    name: str
    topic: str
    layer: int = Field(ge=0)
    teacher_accuracy: float = Field(ge=0.0, le=1.0)
    method: str
    safety: str = Field(pattern="^(safe|unsafe)$")


class _Texts(_Lax):
    count: int = Field(ge=1)
    texts: list[str] = Field(min_length=1)


class _Step(_Lax):
    name: str
    n_classes: int = Field(ge=2)
    layer: int = Field(ge=0)


class _Answer(_Lax):
    n_classes: int = Field(ge=2)
    layer: int = Field(ge=0)


class _Reasoning(_Lax):
    steps: list[_Step]
    answer: _Answer


class _TaskPart(_Lax):
    name: str
    spec: dict[str, Any]


class _TeacherPart(_Lax):
    agent: str
    readout: str = Field(pattern="^(first|last)$")
    model: dict[str, Any]


class _TokenHead(_Lax):
    layer: int = Field(ge=0)
    classes: list[str] = Field(min_length=2)
    accuracy: float = Field(ge=0.0, le=1.0)


class _Program(_Lax):
    layers: int = Field(ge=1, le=8)
    features: Literal["tokens-steps-answer-onehot"]
    accuracy: list[float]


class _ViewsPart(_Lax):
    words: int = Field(ge=1)
    slots: int = Field(ge=2)
    token: _TokenHead
    program: _Program | None = None


class _AgentManifest(_Lax):
    teacher: _TeacherPart
    task: _TaskPart
    concepts: list[ConceptInfo] = Field(min_length=1)
    anchors: _Texts
    probes: _Texts
    reasoning: _Reasoning
    views: _ViewsPart | None = None


@dataclass(frozen=True)
class ViewKnowledge:
    """The view part of a packet (docs/packet-format.md): read-outs on every word slot of the teacher.

    Attributes:
        words: word slots (``S = 1 + words``); anchor_states ``[m, S, L_T, d_T]``, anchor_mask ``[m, S]``;
        heads: the teacher's observable heads (token head on word slots, step and answer heads);
        readout: the concept read-outs on the view (``m2kt.ml.readouts``).
    """

    words: int
    anchor_states: torch.Tensor
    anchor_mask: torch.Tensor
    heads: ObservableHeads
    readout: ViewReadout
    prototypes: torch.Tensor  # [K, 2, D]: mean read-out features where concept k does not / does hold
    program: ConceptProgram | None = None  # each concept from the observables (m2kt.ml.programs)

    @property
    def slots(self) -> int:
        return 1 + self.words


@dataclass(frozen=True)
class Knowledge:
    """Everything one packet teaches, as tensors (float32 unless said).

    Attributes:
        directions ``[K, d_T]``, biases ``[K]``, layers ``[K]`` long: the teacher's concept read-outs.
        prototypes ``[K, 2, d_T]``: mean teacher state where concept k does not / does hold.
        anchor_states ``[m, L_T, d_T]``, anchor_scores ``[m, K]``, anchor_steps ``[m, S]`` long,
        anchor_answer ``[m]`` long; step_heads: ``(weight [C_j, d_T], bias [C_j])`` per step;
        answer_head likewise; probe_labels ``[v, K]`` bool.
    """

    packet_id: str
    teacher: str
    teacher_weights: str
    task_spec: dict[str, Any]
    concepts: tuple[ConceptInfo, ...]
    anchor_texts: tuple[str, ...]
    probe_texts: tuple[str, ...]
    step_layers: tuple[int, ...]
    answer_layer: int
    directions: torch.Tensor
    biases: torch.Tensor
    layers: torch.Tensor
    prototypes: torch.Tensor
    anchor_states: torch.Tensor
    anchor_scores: torch.Tensor
    anchor_steps: torch.Tensor
    anchor_answer: torch.Tensor
    step_heads: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    answer_head: tuple[torch.Tensor, torch.Tensor]
    probe_labels: torch.Tensor
    views: ViewKnowledge | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(c.key for c in self.concepts)

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(sorted({c.topic for c in self.concepts}))

    @property
    def unsafe(self) -> torch.Tensor:
        """``[K]`` bool: concepts the teacher labels unsafe."""
        return torch.tensor([c.safety == "unsafe" for c in self.concepts], dtype=torch.bool)

    @classmethod
    def from_packet(cls, opened: OpenedPacket, payload: bytes) -> Knowledge:
        """Read a verified packet; raise `PacketContentError` on anything inconsistent."""
        try:
            man = _AgentManifest.model_validate(opened.statement.predicate)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise PacketContentError(f"manifest {where}: {err['msg']}") from None
        try:
            t = load_safetensors(payload)
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise PacketContentError(f"payload is not readable safetensors: {exc}") from None
        return cls._checked(opened.id, man, t)

    @classmethod
    def _checked(cls, packet_id: str, man: _AgentManifest, t: dict[str, torch.Tensor]) -> Knowledge:
        k, m, v = len(man.concepts), man.anchors.count, man.probes.count
        if len(man.anchors.texts) != m or len(man.probes.texts) != v:
            raise PacketContentError("anchors/probes: count differs from the number of texts")
        states = _get(t, "anchors.states", ndim=3)
        _, n_layers, d = states.shape
        s = len(man.reasoning.steps)
        want = {
            "concepts.direction": (k, d),
            "concepts.bias": (k,),
            "concepts.layer": (k,),
            "concepts.prototypes": (k, 2, d),
            "anchors.states": (m, n_layers, d),
            "anchors.concept_scores": (m, k),
            "anchors.steps": (m, s),
            "anchors.answer": (m,),
            "probes.concept_labels": (v, k),
            "reasoning.answer.weight": (man.reasoning.answer.n_classes, d),
            "reasoning.answer.bias": (man.reasoning.answer.n_classes,),
        }
        for j, step in enumerate(man.reasoning.steps):
            want[f"reasoning.step{j}.weight"] = (step.n_classes, d)
            want[f"reasoning.step{j}.bias"] = (step.n_classes,)
        for name, shape in want.items():
            got = tuple(_get(t, name).shape)
            if got != shape:
                raise PacketContentError(f"tensor {name}: shape {list(got)}, expected {list(shape)}")
        layers = t["concepts.layer"].long()
        used = [*layers.tolist(), *(st.layer for st in man.reasoning.steps), man.reasoning.answer.layer]
        if any(not 0 <= x < n_layers for x in used):
            raise PacketContentError(f"a concept or head reads a block outside 0..{n_layers - 1}")
        if [c.layer for c in man.concepts] != layers.tolist():
            raise PacketContentError("concepts[].layer differs from the concepts.layer tensor")
        integral = ("concepts.layer", "anchors.steps", "anchors.answer", "probes.concept_labels")
        floats = {name: t[name].float() for name in want if name not in integral}
        bad = [name for name, x in floats.items() if not torch.isfinite(x).all()]
        if bad:
            raise PacketContentError(f"tensor {bad[0]} holds NaN or infinity")
        steps, answer = t["anchors.steps"].long(), t["anchors.answer"].long()
        for j, step in enumerate(man.reasoning.steps):
            if steps.numel() and not 0 <= int(steps[:, j].min()) <= int(steps[:, j].max()) < step.n_classes:
                raise PacketContentError(f"anchors.steps[:, {j}] holds a class outside 0..{step.n_classes - 1}")
        if not 0 <= int(answer.min()) <= int(answer.max()) < man.reasoning.answer.n_classes:
            raise PacketContentError("anchors.answer holds a class outside the answer classes")
        step_heads = tuple((floats[f"reasoning.step{j}.weight"], floats[f"reasoning.step{j}.bias"]) for j in range(s))
        answer_head = (floats["reasoning.answer.weight"], floats["reasoning.answer.bias"])
        views = None
        if man.views is not None:
            heads = ObservableHeads(
                None,
                tuple(man.views.token.classes),
                tuple(Head(w, b, st.layer) for (w, b), st in zip(step_heads, man.reasoning.steps, strict=True)),
                Head(*answer_head, man.reasoning.answer.layer),
            )
            views = _views(man.views, t, heads, k, m, n_layers, d)
        return cls(
            packet_id=packet_id,
            teacher=man.teacher.agent,
            teacher_weights=str(man.teacher.model.get("weights_sha256", "")),
            task_spec=man.task.spec,
            concepts=tuple(man.concepts),
            anchor_texts=tuple(man.anchors.texts),
            probe_texts=tuple(man.probes.texts),
            step_layers=tuple(st.layer for st in man.reasoning.steps),
            answer_layer=man.reasoning.answer.layer,
            directions=floats["concepts.direction"],
            biases=floats["concepts.bias"],
            layers=layers,
            prototypes=floats["concepts.prototypes"],
            anchor_states=floats["anchors.states"],
            anchor_scores=floats["anchors.concept_scores"],
            anchor_steps=steps,
            anchor_answer=answer,
            step_heads=step_heads,
            answer_head=answer_head,
            probe_labels=t["probes.concept_labels"].bool(),
            views=views,
        )


def _views(
    part: _ViewsPart, t: dict[str, torch.Tensor], heads: ObservableHeads, k: int, m: int, n_layers: int, d: int
) -> ViewKnowledge:
    """Check and read the view tensors; ``heads`` carries the step and answer heads already."""
    slots, v = part.slots, len(part.token.classes)
    if slots != 1 + part.words:
        raise PacketContentError("views.slots must be 1 + views.words")
    if not 0 <= part.token.layer < n_layers:
        raise PacketContentError(f"views.token.layer reads a block outside 0..{n_layers - 1}")
    heads = ObservableHeads(
        Head(_get(t, "observables.token.weight"), _get(t, "observables.token.bias"), part.token.layer),
        heads.token_classes,
        heads.steps,
        heads.answer,
    )
    dim = slots * d + heads.feature_dim(slots)
    want = {
        "views.anchor_states": (m, slots, n_layers, d),
        "views.anchor_mask": (m, slots),
        "views.readout.weight": (k, dim),
        "views.readout.bias": (k,),
        "views.readout.layer": (k,),
        "views.prototypes": (k, 2, dim),
        "observables.token.weight": (v, d),
        "observables.token.bias": (v,),
    }
    for name, shape in want.items():
        got = tuple(_get(t, name).shape)
        if got != shape:
            raise PacketContentError(f"tensor {name}: shape {list(got)}, expected {list(shape)}")
    floats = {n: t[n].float() for n in want if n not in ("views.anchor_mask", "views.readout.layer")}
    bad = [n for n, x in floats.items() if not torch.isfinite(x).all()]
    if bad:
        raise PacketContentError(f"tensor {bad[0]} holds NaN or infinity")
    layers = t["views.readout.layer"].long()
    if layers.numel() and not 0 <= int(layers.min()) <= int(layers.max()) < n_layers:
        raise PacketContentError(f"a view read-out reads a block outside 0..{n_layers - 1}")
    heads = ObservableHeads(
        Head(floats["observables.token.weight"], floats["observables.token.bias"], part.token.layer),
        heads.token_classes,
        heads.steps,
        heads.answer,
    )
    readout = ViewReadout(floats["views.readout.weight"], floats["views.readout.bias"], layers)
    mask = t["views.anchor_mask"].bool()
    states = floats["views.anchor_states"] * mask[:, :, None, None]
    program = None if part.program is None else _program(part.program, t, heads, slots, k)
    return ViewKnowledge(part.words, states, mask, heads, readout, floats["views.prototypes"], program)


def _program(part: _Program, t: dict[str, torch.Tensor], heads: ObservableHeads, slots: int, k: int) -> ConceptProgram:
    """Check and read the concept programs: an MLP from the observable features to the K concepts."""
    if len(part.accuracy) != k or not all(0.0 <= a <= 1.0 for a in part.accuracy):
        raise PacketContentError(f"views.program.accuracy must hold {k} accuracies in [0, 1]")
    layers = []
    for i in range(part.layers):
        w = _get(t, f"observables.program.{i}.weight", 2).float()
        b = _get(t, f"observables.program.{i}.bias", 1).float()
        if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
            raise PacketContentError(f"tensor observables.program.{i} holds NaN or infinity")
        layers.append((w, b))
    features = heads.feature_dim(slots)
    if any(int(w.shape[0]) > MAX_WIDTH for w, _ in layers[:-1]):
        raise PacketContentError(f"a concept program layer is wider than {MAX_WIDTH}")
    if int(layers[0][0].shape[1]) != features or int(layers[-1][0].shape[0]) != k:
        raise PacketContentError(f"the concept program must read {features} observable features and give {k} concepts")
    try:
        return ConceptProgram(tuple(layers), torch.tensor(part.accuracy))
    except ValueError as exc:
        raise PacketContentError(str(exc)) from exc


def _get(t: dict[str, torch.Tensor], name: str, ndim: int | None = None) -> torch.Tensor:
    if name not in t:
        raise PacketContentError(f"payload has no tensor {name}")
    if ndim is not None and t[name].ndim != ndim:
        raise PacketContentError(f"tensor {name} has {t[name].ndim} dimensions, expected {ndim}")
    return t[name]
