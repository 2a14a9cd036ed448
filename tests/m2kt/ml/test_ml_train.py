"""train_step and fit: a short run on a student-style decoder beats the majority class."""

import pytest
import torch

from m2kt.ml.models import ModelConfig, build_model
from m2kt.ml.seed import seed_everything
from m2kt.ml.tasks import get_task
from m2kt.ml.threads import use_default_threads
from m2kt.ml.train import TrainConfig, evaluate, fit, majority_accuracy, tensorize, train_step


def test_train_step_lowers_the_loss_on_a_fixed_batch():
    use_default_threads()
    fam = get_task("boolean")
    seed_everything(0)
    model, tok = build_model(fam, ModelConfig(arch="gpt2", hidden_size=32, num_layers=2, num_heads=2))
    data = tensorize(tok, fam.generate(64, seed=0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = [train_step(model, opt, data) for _ in range(30)]
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.slow  # trains
def test_short_fit_on_boolean_beats_majority_by_far():
    use_default_threads()
    fam = get_task("boolean")
    splits = fam.generate_splits({"train": 3000, "eval": 500}, seed=1)
    seed_everything(1)
    model, tok = build_model(fam, ModelConfig(arch="llama", hidden_size=64, num_layers=3, num_heads=4))
    train, heldout = tensorize(tok, splits["train"]), tensorize(tok, splits["eval"])
    seen = []
    result = fit(
        model,
        train,
        heldout,
        TrainConfig(epochs=12, batch_size=64, lr=3e-3, target_accuracy=0.95, seed=1),
        callback=seen.append,
    )
    base = majority_accuracy(splits["train"].answers, splits["eval"].answers)
    assert result.final is not None and len(seen) == len(result.history)
    assert result.final.accuracy > base + 0.2, (result.final, base)
    # s1 = l1 o1 l2, the first link of the chain, is learned too (its majority class is near half)
    step_base = majority_accuracy(splits["train"].steps[:, 0], splits["eval"].steps[:, 0])
    assert result.final.step_accuracy[0] > step_base + 0.15, (result.final, step_base)
    assert evaluate(model, heldout).accuracy == pytest.approx(result.final.accuracy)
    assert not model.training


def test_train_config_is_validated():
    with pytest.raises(ValueError):
        TrainConfig(lr=0)
    with pytest.raises(ValueError):
        TrainConfig(epochs=0)


def test_a_model_below_the_learned_bar_gets_a_warning_naming_it():
    from m2kt.ml.train import LEARNED_ACCURACY, not_learned

    assert not_learned("teacher", LEARNED_ACCURACY) is None
    warning = not_learned("teacher", 0.102)
    assert warning is not None and "teacher" in warning and "0.102" in warning
