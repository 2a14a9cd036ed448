"""Task families: determinism, labels recomputed independently, disjoint splits, the registry."""

import re
import sys
import types
from importlib import metadata

import numpy as np
import pytest

from m2kt.ml.tasks import BooleanFormula, DigitSum, ModArith, available_tasks, get_task, task_from_spec
from m2kt.ml.tasks import base as task_base

TOPIC = re.compile(r"^[a-z0-9]+(\.[a-z0-9_-]+)*$")


@pytest.mark.parametrize("name", ["modarith", "boolean", "digitsum"])
def test_family_is_deterministic_and_well_formed(name):
    fam = get_task(name)
    a, b, c = fam.generate(300, seed=5), fam.generate(300, seed=5), fam.generate(300, seed=6)
    assert a.texts == b.texts and np.array_equal(a.concepts, b.concepts)
    assert a.texts != c.texts
    specs = fam.concept_specs
    assert len(specs) >= 32 and len({s.key for s in specs}) == len(specs)
    assert all(TOPIC.match(s.topic) for s in specs)
    assert a.concepts.shape == (300, len(specs)) and set(np.unique(a.concepts)) <= {0, 1}
    assert a.steps.shape == (300, len(fam.step_specs))
    for s, spec in enumerate(fam.step_specs):
        assert 0 <= a.steps[:, s].min() and a.steps[:, s].max() < spec.n_classes
    assert set(" ".join(a.texts).split()) <= set(fam.vocab())
    # every concept is non-trivial on a decent sample
    rates = fam.generate(4000, seed=1).concepts.mean(0)
    assert rates.min() > 0.1 and rates.max() < 0.9


def test_modarith_labels_match_an_independent_computation():
    fam = ModArith(p=23)
    batch = fam.generate(500, seed=3)
    col = {s.key: i for i, s in enumerate(fam.concept_specs)}
    for text, ans, steps, labels in zip(batch.texts, batch.answers, batch.steps, batch.concepts, strict=True):
        a, plus, b, times, c = text.split()
        a, b, c = int(a), int(b), int(c)
        assert (plus, times) == ("+", "*")
        s1 = (b * c) % 23
        assert steps.tolist() == [s1] and ans == (a + s1) % 23
        assert labels[col["modarith.s1.even"]] == (s1 % 2 == 0)
        assert labels[col["modarith.answer.mod3"]] == (ans % 3 == 0)
        assert labels[col["modarith.a_lt_s1"]] == (a < s1)
        assert labels[col["modarith.wrap"]] == (a + s1 >= 23)
        assert labels[col["modarith.c.third_hi"]] == (c >= 15)


def test_digitsum_labels_match_an_independent_computation():
    fam = DigitSum()
    batch = fam.generate(500, seed=4)
    col = {s.key: i for i, s in enumerate(fam.concept_specs)}
    for text, ans, steps, labels in zip(batch.texts, batch.answers, batch.steps, batch.concepts, strict=True):
        d = [int(t) for t in text.split()]
        assert len(d) == 5 and all(0 <= x <= 9 for x in d)
        partial = [sum(d[: i + 1]) for i in range(5)]
        assert steps.tolist() == partial[1:4] and ans == partial[4]
        assert labels[col["digitsum.d3.mod3"]] == (d[2] % 3 == 0)
        assert labels[col["digitsum.s2.high"]] == (partial[2] > 13)
        assert labels[col["digitsum.answer.even"]] == (ans % 2 == 0)
        assert labels[col["digitsum.d2_lt_d4"]] == (d[1] < d[3])
        assert labels[col["digitsum.d3d4.carry"]] == (d[2] + d[3] >= 10)
    assert len(fam.concept_specs) >= 32 and fam.n_classes == 46


def _eval_formula(tokens):
    """Evaluate the rendered formula with a tiny recursive-descent parser (independent of the family)."""
    ops = {"and": lambda x, y: x and y, "or": lambda x, y: x or y, "xor": lambda x, y: x != y}
    pos = 0
    trace = []

    def atom():
        nonlocal pos
        if tokens[pos] == "(":
            pos += 1
            left = atom()
            op = tokens[pos]
            pos += 1
            right = atom()
            assert tokens[pos] == ")"
            pos += 1
            trace.append(ops[op](left, right))
            return trace[-1]
        neg = tokens[pos] == "not"
        pos += neg
        val = tokens[pos] == "1"
        pos += 1
        return val != neg

    left = atom()
    op = tokens[pos]
    pos += 1
    right = atom()
    return ops[op](left, right), trace


def test_boolean_answers_and_steps_match_a_parser():
    fam = BooleanFormula()
    batch = fam.generate(400, seed=9)
    for text, ans, steps in zip(batch.texts, batch.answers, batch.steps, strict=True):
        value, trace = _eval_formula(text.split())
        # parser order: s1, s2, s4 (inner group closes), then s3
        s1, s2, s4, s3 = trace
        assert int(value) == ans and steps.tolist() == [int(s1), int(s2), int(s3), int(s4)]


def test_splits_are_disjoint_and_deterministic():
    fam = ModArith(p=11)
    sp = fam.generate_splits({"train": 600, "eval": 300}, seed=2)
    again = fam.generate_splits({"train": 600, "eval": 300}, seed=2)
    assert sp["train"].texts == again["train"].texts
    rows = {t for s in sp.values() for t in s.texts}
    assert len(rows) == 900
    with pytest.raises(ValueError):
        fam.generate_splits({"all": 11**3 + 1}, seed=0)


def test_third_party_family_by_import_path_and_entry_point(monkeypatch, plugins):
    from m2kt_parity_plugin import ParityTask

    fam = get_task("m2kt_parity_plugin:ParityTask", n_bits=5)
    assert isinstance(fam, ParityTask) and fam.n_bits == 5
    batch = fam.generate(50, seed=0)
    assert np.array_equal(batch.answers, batch.inputs.sum(1) % 2)
    assert isinstance(task_from_spec(fam.spec()), ParityTask)

    module = types.ModuleType("m2kt_plugin_demo")
    module.Family = ParityTask
    monkeypatch.setitem(sys.modules, "m2kt_plugin_demo", module)
    ep = metadata.EntryPoint(name="parity-plugin", value="m2kt_plugin_demo:Family", group=task_base.ENTRY_POINT_GROUP)
    real = metadata.entry_points

    def fake_entry_points(**kw):
        if kw.get("group") == task_base.ENTRY_POINT_GROUP:
            return metadata.EntryPoints([ep])
        return real(**kw)

    monkeypatch.setattr(task_base.importlib.metadata, "entry_points", fake_entry_points)
    assert "parity-plugin" in available_tasks()
    assert get_task("parity-plugin", n_bits=3).n_bits == 3
    with pytest.raises(KeyError):
        get_task("no-such-family")
    with pytest.raises(TypeError):
        get_task("collections:OrderedDict")
