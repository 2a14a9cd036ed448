"""The tiny teacher learns its task far beyond the trivial baseline, and the wrappers round-trip."""

import numpy as np
import pytest
import torch

from m2kt.ml.models import load_pretrained, model_card, save_pretrained
from m2kt.ml.train import evaluate, lr_at, tensorize

pytestmark = pytest.mark.slow  # training tests: a teacher trained per session


def test_tiny_teacher_beats_majority_by_a_wide_margin(tiny_teacher):
    final = tiny_teacher.trained.fit.final
    assert final is not None
    assert final.accuracy > tiny_teacher.trained.majority_baseline + 0.3
    assert final.step_accuracy[0] > 0.8  # the step head learned b*c mod p
    # held-out split never used in training or early stopping
    ev = evaluate(tiny_teacher.trained.model, tensorize(tiny_teacher.trained.tokenizer, tiny_teacher.splits["heldout"]))
    assert ev.accuracy > tiny_teacher.trained.majority_baseline + 0.3
    losses = [log.train_loss for log in tiny_teacher.trained.fit.history]
    assert losses[-1] < 0.5 * losses[0]


def test_teacher_save_load_and_card(tiny_teacher, tmp_path):
    model, tok = tiny_teacher.trained.model, tiny_teacher.trained.tokenizer
    save_pretrained(model, tok, tmp_path)
    loaded, _ = load_pretrained(tmp_path)
    card = model_card(loaded)
    assert card == model_card(model)
    assert card["architecture"] == "bert" and card["hidden_size"] == 64 and card["num_layers"] == 3


def test_lr_schedule_is_pure():
    rates = [lr_at(s, 100, 1e-3, 0.1) for s in range(100)]
    assert rates[0] < rates[9] == max(rates) and np.isclose(rates[-1], 1e-4, atol=2e-5)
    assert torch.tensor(rates).diff()[10:].le(0).all()
