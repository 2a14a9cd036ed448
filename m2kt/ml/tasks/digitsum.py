"""Running sums of five digits: ``d1 d2 d3 d4 d5`` -> ``d1 + ... + d5``.

The chain adds one digit at a time: ``s1 = d1 + d2``, ``s2 = s1 + d3``, ``s3 = s2 + d4``
and the answer ``s3 + d5`` (0..45). Concepts are parities, ranges and residues of every
value in the chain, comparisons between digits and carries (a partial sum passing a ten),
so they spread over the inputs, the three steps and the answer.

Unlike the other two families this one has 100,000 distinct inputs, so a knowledge-
distillation curve can run to tens of thousands of teacher labels even in a small run,
and the answer is a sum that small models learn in a few epochs.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import numpy as np

from m2kt.ml.tasks.base import (
    BoolArray,
    ConceptDef,
    IntArray,
    StepSpec,
    TaskFamily,
    compare_values,
    register_task,
    value_is,
)

__all__ = ["DigitSum"]

_N = 5
_DIGITS = tuple(f"d{i + 1}" for i in range(_N))
_STEPS = ("s1", "s2", "s3")
_COMPARE = (("d1", "d2"), ("d3", "d4"), ("d1", "d5"), ("d2", "d4"))


def _above(threshold: int) -> Callable[[IntArray], BoolArray]:
    def fn(x: IntArray) -> BoolArray:
        return np.asarray(x > threshold, dtype=np.bool_)

    return fn


_concept = functools.partial(ConceptDef.of, "digitsum")


class DigitSum(TaskFamily):
    """Sum five digits left to right; 46 answer classes, three partial sums as steps."""

    name = "digitsum"

    def __init__(self) -> None:
        self._defs = self._make_concepts()

    def params(self) -> dict[str, Any]:
        return {}

    @property
    def n_classes(self) -> int:
        return 9 * _N + 1

    @property
    def step_specs(self) -> tuple[StepSpec, ...]:
        return tuple(StepSpec(s, 9 * (i + 2) + 1, f"d1 + ... + d{i + 2}") for i, s in enumerate(_STEPS))

    @property
    def concept_defs(self) -> tuple[ConceptDef, ...]:
        return self._defs

    def vocab(self) -> tuple[str, ...]:
        return tuple(str(i) for i in range(10))

    def sample_inputs(self, rng: np.random.Generator, n: int) -> IntArray:
        return rng.integers(0, 10, size=(n, _N), dtype=np.int64)

    def values(self, inputs: IntArray) -> dict[str, IntArray]:
        out = {d: inputs[:, i] for i, d in enumerate(_DIGITS)}
        running = inputs.cumsum(axis=1)
        out |= {s: running[:, i + 1] for i, s in enumerate(_STEPS)}
        out["answer"] = running[:, -1]
        out["d3d4"] = inputs[:, 2] + inputs[:, 3]
        return out

    def render(self, inputs: IntArray) -> list[str]:
        return [" ".join(map(str, row)) for row in inputs.tolist()]

    def _make_concepts(self) -> tuple[ConceptDef, ...]:
        defs: list[ConceptDef] = []
        for d in _DIGITS:
            defs += [
                _concept(f"{d}.even", f"{d} is even", "parity", value_is(d, lambda x: x % 2 == 0)),
                _concept(f"{d}.big", f"{d} >= 5", "range", value_is(d, lambda x: x >= 5)),
                _concept(f"{d}.mod3", f"{d} is divisible by 3", "residue", value_is(d, lambda x: x % 3 == 0)),
            ]
        for i, v in enumerate((*_STEPS, "answer")):
            mid = 9 * (i + 2) // 2  # half the largest value of this partial sum
            defs += [
                _concept(f"{v}.even", f"{v} is even", "parity", value_is(v, lambda x: x % 2 == 0)),
                _concept(f"{v}.high", f"{v} > {mid}", "range", value_is(v, _above(mid))),
                _concept(f"{v}.mod3", f"{v} is divisible by 3", "residue", value_is(v, lambda x: x % 3 == 0)),
            ]
        defs.append(_concept("answer.low", "answer < 15", "range", value_is("answer", lambda x: x < 15)))
        defs.append(_concept("answer.top", "answer >= 30", "range", value_is("answer", lambda x: x >= 30)))
        for u, w in _COMPARE:
            defs.append(_concept(f"{u}_lt_{w}", f"{u} < {w}", "compare", compare_values(u, w, operator.lt)))
        defs.append(_concept("s1.carry", "d1 + d2 >= 10", "carry", value_is("s1", lambda x: x >= 10)))
        defs.append(_concept("d3d4.carry", "d3 + d4 >= 10", "carry", value_is("d3d4", lambda x: x >= 10)))
        defs.append(_concept("s2.carry2", "s2 >= 20", "carry", value_is("s2", lambda x: x >= 20)))
        return tuple(defs)


register_task(DigitSum.name, DigitSum)
