"""Extractors on the tiny teacher: better than controls (shuffled labels, untrained model) and chance."""

import dataclasses

import numpy as np
import pytest
import torch

from m2kt.ml.seed import numpy_rng
from teacher_agent.extract import ExtractionContext, available_extractors, get_extractor
from teacher_agent.extract.base import direction_balanced_accuracy
from teacher_agent.extract.probing import deepest_within_error, first_best

# Concepts about the chain's intermediate values: not readable from any single input token.
DEEP = ("s1.", "answer.", "_s1", "s1_", "_answer", "wrap")


def _ctx(model, tok, tiny_teacher, probe=None):
    return ExtractionContext(
        model,
        tok,
        tiny_teacher.family.concept_specs,
        probe or tiny_teacher.splits["probe"],
        tiny_teacher.splits["heldout"],
        seed=0,
    )


def _deep_mean(result):
    scores = [c.balanced_accuracy for c in result.concepts if any(t in c.key for t in DEEP)]
    assert len(scores) >= 12
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def teacher_ctx(tiny_teacher):
    return _ctx(tiny_teacher.trained.model, tiny_teacher.trained.tokenizer, tiny_teacher)


@pytest.fixture(scope="module")
def probing(teacher_ctx):
    return get_extractor("probing").extract(teacher_ctx)


def test_registry_and_result_shapes(probing, tiny_teacher):
    assert {"probing", "clustering", "attribution"} <= set(available_extractors())
    k, d = len(tiny_teacher.family.concept_specs), 64
    stacked = probing.stacked()
    assert stacked["directions"].shape == (k, d) and stacked["prototypes"].shape == (k, 2, d)
    assert probing.layer_scores.shape == (3, k) and stacked["layers"].max() < 3
    assert [c.key for c in probing.concepts] == [s.key for s in tiny_teacher.family.concept_specs]
    assert all(c.method == "probing" for c in probing.concepts)
    with pytest.raises(KeyError):
        get_extractor("nope")


def test_probes_beat_shuffled_labels_and_an_untrained_model(probing, tiny_teacher):
    probe = tiny_teacher.splits["probe"]
    perm = numpy_rng(0, "test.shuffle").permutation(len(probe))
    shuffled_probe = dataclasses.replace(probe, concepts=probe.concepts[perm])
    shuffled = get_extractor("probing").extract(
        _ctx(tiny_teacher.trained.model, tiny_teacher.trained.tokenizer, tiny_teacher, shuffled_probe)
    )
    untrained = get_extractor("probing").extract(
        _ctx(tiny_teacher.untrained, tiny_teacher.trained.tokenizer, tiny_teacher)
    )
    assert probing.mean_balanced_accuracy > 0.65
    assert probing.mean_balanced_accuracy > shuffled.mean_balanced_accuracy + 0.2
    assert abs(shuffled.mean_balanced_accuracy - 0.5) < 0.06
    assert _deep_mean(probing) > _deep_mean(untrained) + 0.1, (_deep_mean(probing), _deep_mean(untrained))


def test_probe_directions_apply_to_raw_states(probing, teacher_ctx):
    s = probing.stacked()
    again = direction_balanced_accuracy(
        teacher_ctx.heldout_states, teacher_ctx.heldout_labels, s["layers"], s["directions"], s["biases"]
    )
    assert torch.allclose(again, torch.tensor([c.balanced_accuracy for c in probing.concepts]))


@pytest.mark.parametrize("name", ["clustering", "attribution"])
def test_unsupervised_and_gradient_extractors_beat_chance(name, teacher_ctx, tiny_teacher):
    result = get_extractor(name).extract(teacher_ctx)
    shuffled_probe = dataclasses.replace(
        tiny_teacher.splits["probe"], concepts=tiny_teacher.splits["probe"].concepts[numpy_rng(1, "t").permutation(500)]
    )
    control = get_extractor(name).extract(
        _ctx(tiny_teacher.trained.model, tiny_teacher.trained.tokenizer, tiny_teacher, shuffled_probe)
    )
    floor, margin = {"clustering": (0.56, 0.05), "attribution": (0.6, 0.08)}[name]
    assert result.mean_balanced_accuracy > floor
    assert result.mean_balanced_accuracy > control.mean_balanced_accuracy + margin, control.mean_balanced_accuracy
    assert all(c.method == name for c in result.concepts)
    if name == "clustering":
        assert result.extras["clusters"] and all("dominant" in c for c in result.extras["clusters"])


def test_the_deepest_block_within_one_standard_error_is_chosen():
    labels = torch.zeros(200, 3, dtype=torch.long)
    labels[:100] = 1  # 100 per class: one example of a class moves balanced accuracy by 0.005
    scores = torch.tensor(
        [  # [L=3, G=2, K=3]
            [[1.0, 0.90, 0.70], [0.99, 0.90, 0.70]],
            [[0.97, 0.80, 0.69], [0.99, 0.80, 0.71]],
            [[0.90, 0.95, 0.60], [0.80, 0.94, 0.60]],
        ]
    )
    layer, option = deepest_within_error(scores, labels)
    # concept 0: the best is 1.0 on block 0; block 1 reaches 0.99, more than one example below -> block 0
    # concept 1: block 2 is the best -> block 2, option 0
    # concept 2: best 0.71 on block 1 (option 1); block 1 holds the best itself; block 2 is far below
    assert layer.tolist() == [0, 2, 1]
    assert option.tolist() == [0, 0, 1]
    # within one standard error (p(1-p) is large at 0.70): a deeper block a hair below the best wins
    scores[2, 0, 2] = 0.68
    layer, _ = deepest_within_error(scores, labels)
    assert layer.tolist() == [0, 2, 2]


def test_the_first_rule_takes_the_earliest_best_block_for_the_ablation():
    labels = torch.zeros(200, 2, dtype=torch.long)
    labels[:100] = 1
    scores = torch.tensor([[[0.99, 0.80], [0.98, 0.90]], [[0.99, 0.90], [0.995, 0.70]]])  # [L=2, G=2, K=2]
    layer, option = first_best(scores, labels)
    assert layer.tolist() == [1, 0] and option.tolist() == [1, 1]  # concept 1: 0.90 on block 0 comes first
    layer, _ = deepest_within_error(scores, labels)
    assert layer.tolist() == [1, 1]  # the deepest rule takes block 1's equal 0.90
    assert get_extractor("probing_first").layer_rule == "first"
    with pytest.raises(ValueError, match="layer_rule"):
        get_extractor("probing", layer_rule="last")
