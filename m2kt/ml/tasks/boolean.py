"""Boolean formula evaluation over six literals.

Every formula has the fixed shape ``((l1 o1 l2) o4 (l3 o2 l4)) o5 (l5 o3 l6)``,
where each literal ``li`` is a bit, optionally negated, and each operator is
AND, OR or XOR. A fixed shape gives every example the same four steps
(``s1 = l1 o1 l2``, ``s2``, ``s3``, ``s4 = s1 o4 s2``) and the answer
``s4 o5 s3``, while the operators and negations still vary, so evaluation
has to be learned rather than read off the token positions.
"""

from __future__ import annotations

import functools
import operator

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

__all__ = ["BooleanFormula"]

_OPS = ("and", "or", "xor")
_N_LIT = 6
_N_OP = 5
# Column layout of the raw inputs: bits, negation flags, operators.
_BITS = slice(0, _N_LIT)
_NEGS = slice(_N_LIT, 2 * _N_LIT)
_OPCOLS = slice(2 * _N_LIT, 2 * _N_LIT + _N_OP)


def _apply(op: IntArray, x: IntArray, y: IntArray) -> IntArray:
    """Apply operator codes elementwise: 0 AND, 1 OR, 2 XOR. All arrays ``[N]``."""
    return np.select([op == 0, op == 1], [x & y, x | y], default=x ^ y)


def _is_one(x: IntArray) -> BoolArray:
    return np.asarray(x == 1, dtype=np.bool_)


_concept = functools.partial(ConceptDef.of, "boolean")


class BooleanFormula(TaskFamily):
    """Evaluate ``((l1 o1 l2) o4 (l3 o2 l4)) o5 (l5 o3 l6)``; 2 classes, 4 steps."""

    name = "boolean"

    def __init__(self) -> None:
        self._defs = self._make_concepts()

    @property
    def n_classes(self) -> int:
        return 2

    @property
    def step_specs(self) -> tuple[StepSpec, ...]:
        return (
            StepSpec("s1", 2, "l1 o1 l2"),
            StepSpec("s2", 2, "l3 o2 l4"),
            StepSpec("s3", 2, "l5 o3 l6"),
            StepSpec("s4", 2, "s1 o4 s2"),
        )

    @property
    def concept_defs(self) -> tuple[ConceptDef, ...]:
        return self._defs

    def vocab(self) -> tuple[str, ...]:
        return ("0", "1", "not", "(", ")") + _OPS

    def sample_inputs(self, rng: np.random.Generator, n: int) -> IntArray:
        bits = rng.integers(0, 2, size=(n, 2 * _N_LIT), dtype=np.int64)  # [n, 12] bits then negations
        ops = rng.integers(0, len(_OPS), size=(n, _N_OP), dtype=np.int64)  # [n, 5]
        return np.concatenate([bits, ops], axis=1)  # [n, 17]

    def values(self, inputs: IntArray) -> dict[str, IntArray]:
        lits = inputs[:, _BITS] ^ inputs[:, _NEGS]  # [N, 6]
        ops = inputs[:, _OPCOLS]  # [N, 5]
        s1 = _apply(ops[:, 0], lits[:, 0], lits[:, 1])
        s2 = _apply(ops[:, 1], lits[:, 2], lits[:, 3])
        s3 = _apply(ops[:, 2], lits[:, 4], lits[:, 5])
        s4 = _apply(ops[:, 3], s1, s2)
        out = {"s1": s1, "s2": s2, "s3": s3, "s4": s4, "answer": _apply(ops[:, 4], s4, s3)}
        out["ones"] = lits.sum(axis=1)
        out["negs"] = inputs[:, _NEGS].sum(axis=1)
        out["bits_parity"] = inputs[:, _BITS].sum(axis=1) % 2
        for i in range(_N_LIT):
            out[f"l{i + 1}"] = lits[:, i]
            out[f"v{i + 1}"] = inputs[:, i]
        for j in range(_N_OP):
            out[f"o{j + 1}"] = ops[:, j]
        return out

    def render(self, inputs: IntArray) -> list[str]:
        texts = []
        for row in inputs.tolist():
            lit = [("not " if row[_N_LIT + i] else "") + str(row[i]) for i in range(_N_LIT)]
            op = [_OPS[k] for k in row[2 * _N_LIT :]]
            texts.append(
                f"( ( {lit[0]} {op[0]} {lit[1]} ) {op[3]} ( {lit[2]} {op[1]} {lit[3]} ) ) "
                f"{op[4]} ( {lit[4]} {op[2]} {lit[5]} )"
            )
        return texts

    def _make_concepts(self) -> tuple[ConceptDef, ...]:
        defs: list[ConceptDef] = []
        for i in range(1, _N_LIT + 1):
            defs.append(_concept(f"v{i}", f"bit {i} is 1", "input", value_is(f"v{i}", _is_one)))
            defs.append(_concept(f"l{i}", f"literal {i} is true", "literal", value_is(f"l{i}", _is_one)))
        for s in ("s1", "s2", "s3", "s4", "answer"):
            defs.append(_concept(f"{s}.true", f"{s} is true", "step", value_is(s, _is_one)))
        for u, w in (
            ("s1", "s2"),
            ("s1", "s3"),
            ("s2", "s3"),
            ("s4", "s3"),
            ("l1", "l2"),
            ("l3", "l4"),
            ("l5", "l6"),
        ):
            defs.append(_concept(f"{u}_eq_{w}", f"{u} == {w}", "compare", compare_values(u, w, operator.eq)))
        defs += [
            _concept("ones.ge3", "at least 3 true literals", "count", lambda x: x["ones"] >= 3),
            _concept("ones.ge4", "at least 4 true literals", "count", lambda x: x["ones"] >= 4),
            _concept("ones.le2", "at most 2 true literals", "count", lambda x: x["ones"] <= 2),
            _concept("negs.ge3", "at least 3 negations", "count", lambda x: x["negs"] >= 3),
            _concept(
                "steps.majority",
                "at least 2 of s1..s3 true",
                "count",
                lambda x: x["s1"] + x["s2"] + x["s3"] >= 2,
            ),
            _concept("ones.odd", "odd number of true literals", "parity", lambda x: x["ones"] % 2 == 1),
            _concept("bits.odd", "odd number of 1 bits", "parity", lambda x: x["bits_parity"] == 1),
            _concept("o4.xor", "operator 4 is xor", "op", lambda x: x["o4"] == 2),
            _concept("o5.and", "operator 5 is and", "op", lambda x: x["o5"] == 0),
        ]
        return tuple(defs)


register_task(BooleanFormula.name, BooleanFormula)
