"""A task family from outside m2kt, for the plug-in tests: the parity of a few bits.

Loaded by import path (``m2kt_parity_plugin:ParityTask``) with this folder on the path, as a
user's own package would be.
"""

import numpy as np

from m2kt.ml.tasks.base import ConceptDef, StepSpec, TaskFamily, value_is


class ParityTask(TaskFamily):
    """``n_bits`` bits; the step is the parity of the first two, the answer the parity of all."""

    name = "parity3"

    def __init__(self, n_bits: int = 4):
        self.n_bits = n_bits

    def params(self):
        return {"n_bits": self.n_bits}

    @property
    def n_classes(self):
        return 2

    @property
    def step_specs(self):
        return (StepSpec("first2", 2),)

    @property
    def concept_defs(self):
        return tuple(
            ConceptDef.of("parity3", f"b{i}", f"bit {i}", "bits", value_is(f"b{i}", lambda x: x == 1))
            for i in range(self.n_bits)
        )

    def vocab(self):
        return ("0", "1")

    def sample_inputs(self, rng, n):
        return rng.integers(0, 2, size=(n, self.n_bits), dtype=np.int64)

    def values(self, inputs):
        out = {f"b{i}": inputs[:, i] for i in range(self.n_bits)}
        out["first2"] = inputs[:, 0] ^ inputs[:, 1]
        out["answer"] = inputs.sum(1) % 2
        return out

    def render(self, inputs):
        return [" ".join(map(str, row)) for row in inputs.tolist()]


class Shadow(ParityTask):
    """A plug-in that takes a built-in family's name."""

    name = "digitsum"
