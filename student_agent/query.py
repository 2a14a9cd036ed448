"""Use what was learned: the transferred concepts' probabilities for any input texts.

The frozen student computes its states once; every integrated packet's CAL and read-outs
(the current checkpoint version) turn them into concept probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from m2kt.errors import LocalInputError
from student_agent.agent import CAL_DIR, load_reader
from student_agent.cal.checkpoint import CheckpointStore
from student_agent.cal.fit import ConceptReader
from student_agent.features import Observation, observe
from student_agent.model import Student

__all__ = ["ConceptAnswer", "KnownConcept", "TransferredConcepts"]


@dataclass(frozen=True)
class KnownConcept:
    key: str
    name: str
    topic: str
    teacher: str
    packet_id: str


@dataclass(frozen=True)
class ConceptAnswer:
    text: str
    probabilities: dict[str, float]  # concept key -> P(concept holds)


class TransferredConcepts:
    """The student plus every CAL of its current checkpoint version."""

    def __init__(self, student: Student, state_dir: Path) -> None:
        self.student = student
        self.store = CheckpointStore(state_dir / CAL_DIR)
        self.version = self.store.current()
        self._readers: list[tuple[dict[str, Any], ConceptReader]] = [
            (entry, load_reader(self.store, entry)) for entry in self.store.index()["entries"]
        ]

    @property
    def concepts(self) -> list[KnownConcept]:
        """Later packets override earlier ones that taught the same concept key."""
        found: dict[str, KnownConcept] = {}
        for entry, _ in self._readers:
            for c in entry["concepts"]:
                if c["key"] in entry.get("excluded", ()):
                    continue
                found[c["key"]] = KnownConcept(c["key"], c["name"], c["topic"], entry["teacher"], entry["packet_id"])
        return list(found.values())

    @torch.inference_mode()
    def predict(self, texts: Sequence[str], topics: Sequence[str] = ()) -> list[ConceptAnswer]:
        if not self._readers:
            raise LocalInputError("nothing integrated yet: no packet has been accepted")
        if not texts:
            return []
        seen: dict[int | None, Observation] = {}
        probs: dict[str, torch.Tensor] = {}
        for entry, reader in self._readers:
            words = None if reader.views is None else int(reader.views["words"])
            if words not in seen:
                try:
                    seen[words] = observe(self.student.model, self.student.tokenizer, list(texts), words)
                except (ValueError, KeyError) as exc:
                    raise LocalInputError(f"the student cannot read these texts: {exc}") from None
            p = torch.sigmoid(reader(reader.input_of(seen[words])))  # [N, K]
            for k, c in enumerate(entry["concepts"]):
                if c["key"] in entry.get("excluded", ()):
                    continue
                if not topics or c["topic"] in topics:
                    probs[c["key"]] = p[:, k]
        return [ConceptAnswer(t, {k: round(float(v[i]), 4) for k, v in probs.items()}) for i, t in enumerate(texts)]
