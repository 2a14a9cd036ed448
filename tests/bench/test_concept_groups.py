"""The benchmark's per-group breakdown is read off a family's own data, so any plug-in family gets it."""

import numpy as np

from bench.transfer.setups import concept_groups
from m2kt.ml.tasks import get_task
from student_agent.evaluate import concept_truth


def _groups(name, **params):
    fam = get_task(name, **params)
    batch = fam.generate(6000, seed=0)
    keys = [c.key for c in fam.concept_specs]
    return dict(zip(keys, concept_groups(batch, concept_truth(fam, batch, keys).numpy()), strict=True))


def test_digitsum_concepts_fall_into_input_step_and_relation_groups():
    g = _groups("digitsum")
    assert g["digitsum.d2.even"] == "input" and g["digitsum.d5.mod3"] == "input"
    assert g["digitsum.s2.high"] == "step/answer" and g["digitsum.answer.low"] == "step/answer"
    assert g["digitsum.d1_lt_d2"] == "relation" and g["digitsum.d3d4.carry"] == "relation"


def test_modarith_steps_and_relations_are_told_apart():
    g = _groups("modarith", p=23)
    assert g["modarith.b.mod3"] == "input" and g["modarith.s1.low"] == "step/answer"
    assert g["modarith.wrap"] == "relation" and g["modarith.a_lt_s1"] == "relation"


def test_a_label_that_varies_within_one_input_value_is_not_that_inputs():
    fam = get_task("digitsum")
    batch = fam.generate(2000, seed=1)
    noise = np.random.default_rng(0).integers(0, 2, size=(2000, 1))
    assert concept_groups(batch, noise) == ["relation"]
