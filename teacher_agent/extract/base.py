"""The extractor protocol, its registry, and the result every extractor returns.

Three extractors (probing, clustering, gradient attribution) turn a trained
teacher into per-concept directions in its latent space. They all return an
:class:`ExtractionResult` whose concepts carry a linear read-out
``sigmoid(direction . h[layer] + bias)`` on the teacher's read-out state, class
prototypes, and a held-out balanced accuracy measured the same way for every
method (:func:`direction_balanced_accuracy`), so the three can be compared on
one teacher and any of them can fill a packet's concept tensors.

Data flow: an :class:`ExtractionContext` holds the teacher, the *probe* split
(which extractors may fit on) and the *held-out* split (used only for the
reported accuracy), and computes each split's all-layer states once.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from transformers import PreTrainedTokenizerFast

from m2kt.errors import UnknownName
from m2kt.ml.hidden import collect_hidden
from m2kt.ml.metrics import balanced_accuracy, concept_logits
from m2kt.ml.models import TaskModel
from m2kt.ml.tasks.base import ConceptSpec, TaskBatch

if TYPE_CHECKING:
    from teacher_agent.extract.views import ViewExtraction

__all__ = [
    "ConceptDirection",
    "ExtractionContext",
    "ExtractionResult",
    "Extractor",
    "available_extractors",
    "class_prototypes",
    "direction_balanced_accuracy",
    "get_extractor",
    "register_extractor",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConceptDirection:
    """One concept as found in the teacher's space.

    Attributes:
        key, name, topic: The concept's public description.
        layer: Index into the ``[N, L, d]`` states (embeddings excluded: block ``layer``).
        direction: ``[d]`` read-out weights; positive score means the concept holds.
        bias: Read-out offset.
        prototypes: ``[2, d]`` mean state where the concept does not hold (row 0) / holds (row 1).
        balanced_accuracy: Held-out balanced accuracy of ``direction . h + bias > 0``.
        method: The extractor's registry name.
    """

    key: str
    name: str
    topic: str
    layer: int
    direction: torch.Tensor
    bias: float
    prototypes: torch.Tensor
    balanced_accuracy: float
    method: str


@dataclass(frozen=True)
class ExtractionResult:
    """All concepts one extractor found, plus its per-layer scores for "which layer carries what".

    Attributes:
        method: The extractor's name.
        concepts: One entry per concept, in the family's concept order.
        layer_scores: ``[L, K]`` selection-split balanced accuracy of each layer for each concept.
        extras: Method-specific diagnostics (e.g. the clusters and their dominant properties).
        view: Read-outs on the teacher's whole view (every word slot and its heads), when the
            extractor fitted them (probing does by default); packets then ship these.
    """

    method: str
    concepts: tuple[ConceptDirection, ...]
    layer_scores: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)
    view: ViewExtraction | None = None

    @property
    def mean_balanced_accuracy(self) -> float:
        return float(sum(c.balanced_accuracy for c in self.concepts) / max(1, len(self.concepts)))

    def stacked(self) -> dict[str, torch.Tensor]:
        """Tensors for a packet: directions ``[K, d]``, biases ``[K]``, prototypes ``[K, 2, d]``, layers ``[K]``."""
        return {
            "directions": torch.stack([c.direction for c in self.concepts]),
            "biases": torch.tensor([c.bias for c in self.concepts]),
            "prototypes": torch.stack([c.prototypes for c in self.concepts]),
            "layers": torch.tensor([c.layer for c in self.concepts], dtype=torch.long),
        }


def direction_balanced_accuracy(
    states: torch.Tensor, labels: torch.Tensor, layers: torch.Tensor, directions: torch.Tensor, biases: torch.Tensor
) -> torch.Tensor:
    """Balanced accuracy of K linear read-outs, each on its own layer.

    states: ``[N, L, d]``; labels: ``[N, K]``; layers: ``[K]`` long; directions: ``[K, d]``;
    biases: ``[K]``. Returns ``[K]``.
    """
    return balanced_accuracy(concept_logits(states, layers, directions, biases) > 0, labels)


def class_prototypes(states: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean state per class of K concepts: states ``[N, d]``, labels ``[N, K]`` -> ``[K, 2, d]``."""
    y = labels.float()  # [N, K]
    pos = (y.T @ states) / y.sum(0).clamp(min=1).unsqueeze(1)  # [K, d]
    neg = ((1 - y).T @ states) / (1 - y).sum(0).clamp(min=1).unsqueeze(1)  # [K, d]
    return torch.stack([neg, pos], dim=1)  # [K, 2, d]


@dataclass
class ExtractionContext:
    """The teacher and the two splits an extractor works on; states are computed once, lazily.

    Attributes:
        model: The trained teacher.
        tokenizer: Its tokenizer.
        concepts: The family's concept specs (column order of the label matrices).
        probe: Examples extractors may fit on (concept labels included).
        heldout: Examples used only to report balanced accuracy.
        seed: Seed for any randomness an extractor needs.
        batch_size: Forward-pass batch size.
        programs: Examples the concept programs fit on (the teacher's own inputs; default: ``probe``).
            A program reads one-hot observables, not states, so more inputs cost little and help
            (boolean formulas, quick sizes: 0.949 on 4,800 inputs, 0.959 on 10,800).
    """

    model: TaskModel
    tokenizer: PreTrainedTokenizerFast
    concepts: tuple[ConceptSpec, ...]
    probe: TaskBatch
    heldout: TaskBatch
    seed: int = 0
    batch_size: int = 256
    programs: TaskBatch | None = None

    @functools.cached_property
    def probe_states(self) -> torch.Tensor:
        """``[N_probe, L, d]`` read-out states of the probe split."""
        return collect_hidden(self.model, self.tokenizer, self.probe.texts, batch_size=self.batch_size).states

    @functools.cached_property
    def heldout_states(self) -> torch.Tensor:
        """``[N_heldout, L, d]`` read-out states of the held-out split."""
        return collect_hidden(self.model, self.tokenizer, self.heldout.texts, batch_size=self.batch_size).states

    @property
    def probe_labels(self) -> torch.Tensor:
        return torch.from_numpy(self.probe.concepts.copy())  # [N_probe, K]

    @property
    def heldout_labels(self) -> torch.Tensor:
        return torch.from_numpy(self.heldout.concepts.copy())  # [N_heldout, K]

    def finish(
        self,
        method: str,
        layers: torch.Tensor,
        directions: torch.Tensor,
        biases: torch.Tensor,
        prototypes: torch.Tensor,
        layer_scores: torch.Tensor,
        extras: dict[str, Any] | None = None,
    ) -> ExtractionResult:
        """Score K read-outs on the held-out split and package them as an :class:`ExtractionResult`.

        layers ``[K]``, directions ``[K, d]``, biases ``[K]``, prototypes ``[K, 2, d]``, layer_scores ``[L, K]``.
        """
        bacc = direction_balanced_accuracy(self.heldout_states, self.heldout_labels, layers, directions, biases)
        concepts = tuple(
            ConceptDirection(
                key=s.key,
                name=s.name,
                topic=s.topic,
                layer=int(layers[k]),
                direction=directions[k].detach().clone(),
                bias=float(biases[k]),
                prototypes=prototypes[k].detach().clone(),
                balanced_accuracy=float(bacc[k]),
                method=method,
            )
            for k, s in enumerate(self.concepts)
        )
        result = ExtractionResult(method, concepts, layer_scores.detach().clone(), extras or {})
        logger.info(
            "%s: mean held-out balanced accuracy %.3f over %d concepts",
            method,
            result.mean_balanced_accuracy,
            len(concepts),
        )
        return result


class Extractor(Protocol):
    """Anything that turns a teacher and its probe data into concept directions."""

    name: str

    def extract(self, ctx: ExtractionContext) -> ExtractionResult:
        """Find one direction per concept of ``ctx.concepts``; report held-out accuracy via ``ctx.finish``."""
        ...


ExtractorFactory = Callable[..., Extractor]
_REGISTRY: dict[str, ExtractorFactory] = {}


def register_extractor(name: str, factory: ExtractorFactory) -> None:
    """Register (or replace) an extractor factory under ``name``."""
    _REGISTRY[name] = factory


def get_extractor(name: str, **options: Any) -> Extractor:
    """Build a registered extractor, e.g. ``get_extractor("probing", l2=1e-3)``."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise UnknownName(f"unknown extractor {name!r}; known: {sorted(_REGISTRY)}") from None
    return factory(**options)


def available_extractors() -> list[str]:
    """Names of the registered extractors."""
    return sorted(_REGISTRY)
