"""Modular arithmetic chains: ``a + b * c mod p``.

The chain has one intermediate step, ``s1 = b * c mod p``, and the answer is
``(a + s1) mod p``. Concepts are parities, ranges and residues of every value in
the chain (inputs, the step, the answer), comparisons between them, and whether
the final addition wraps around ``p``; the step-level ones are what a student
cannot read off the input tokens.
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import numpy as np

from m2kt.ml.tasks.base import (
    ConceptDef,
    IntArray,
    StepSpec,
    TaskFamily,
    compare_values,
    register_task,
    value_is,
)

__all__ = ["ModArith"]

_VALUES = ("a", "b", "c", "s1", "answer")
_COMPARE = (
    ("a", "b"),
    ("a", "c"),
    ("b", "c"),
    ("a", "s1"),
    ("b", "s1"),
    ("c", "s1"),
    ("s1", "answer"),
    ("a", "answer"),
)


_concept = functools.partial(ConceptDef.of, "modarith")


class ModArith(TaskFamily):
    """``a + b * c mod p`` with ``b * c mod p`` as step 1.

    Args:
        p: The modulus (>= 5); the answer and the step have ``p`` classes. Tokens
            are the numbers ``0..p-1`` and the symbols ``+ *``.
    """

    name = "modarith"

    def __init__(self, p: int = 47) -> None:
        if p < 5:
            raise ValueError(f"ModArith.p must be >= 5, got {p}")
        self.p = p
        self._defs = self._make_concepts()

    def params(self) -> dict[str, Any]:
        return {"p": self.p}

    @property
    def n_classes(self) -> int:
        return self.p

    @property
    def step_specs(self) -> tuple[StepSpec, ...]:
        return (StepSpec("s1", self.p, "b * c mod p"),)

    @property
    def concept_defs(self) -> tuple[ConceptDef, ...]:
        return self._defs

    def vocab(self) -> tuple[str, ...]:
        return tuple(str(i) for i in range(self.p)) + ("+", "*")

    def sample_inputs(self, rng: np.random.Generator, n: int) -> IntArray:
        return rng.integers(0, self.p, size=(n, 3), dtype=np.int64)  # [n, 3] = (a, b, c)

    def values(self, inputs: IntArray) -> dict[str, IntArray]:
        a, b, c = inputs[:, 0], inputs[:, 1], inputs[:, 2]
        s1 = (b * c) % self.p
        return {"a": a, "b": b, "c": c, "s1": s1, "answer": (a + s1) % self.p, "bc": b * c}

    def render(self, inputs: IntArray) -> list[str]:
        return [f"{a} + {b} * {c}" for a, b, c in inputs.tolist()]

    def _make_concepts(self) -> tuple[ConceptDef, ...]:
        p = self.p
        defs: list[ConceptDef] = []
        for v in _VALUES:
            defs += [
                _concept(f"{v}.even", f"{v} is even", "parity", value_is(v, lambda x: x % 2 == 0)),
                _concept(f"{v}.low", f"{v} < {p // 2}", "range", value_is(v, lambda x: x < p // 2)),
                _concept(f"{v}.third_lo", f"{v} < {p // 3}", "range", value_is(v, lambda x: x < p // 3)),
                _concept(f"{v}.third_hi", f"{v} >= {2 * p // 3}", "range", value_is(v, lambda x: x >= 2 * p // 3)),
                _concept(f"{v}.mod3", f"{v} is divisible by 3", "residue", value_is(v, lambda x: x % 3 == 0)),
            ]
        for u, w in _COMPARE:
            defs.append(_concept(f"{u}_lt_{w}", f"{u} < {w}", "compare", compare_values(u, w, operator.lt)))
        defs.append(_concept("wrap", "a + s1 >= p", "carry", lambda x: x["a"] + x["s1"] >= p))
        defs.append(_concept("bc.big", f"b * c >= {p * p // 4}", "range", value_is("bc", lambda x: x >= p * p // 4)))
        return tuple(defs)


register_task(ModArith.name, ModArith)
