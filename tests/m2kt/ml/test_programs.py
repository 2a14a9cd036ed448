"""Concept programs: the observable features, the fit against baselines fitted in the same test, checks."""

import pytest
import torch

from m2kt.ml.logistic import fit_logistic
from m2kt.ml.metrics import balanced_accuracy
from m2kt.ml.programs import ConceptProgram, fit_program, observable_features

CLASSES = ("[CLS]", "0", "1", "not", "and", "or")


def _inputs(n: int, seed: int) -> tuple[list[list[str]], torch.Tensor, torch.Tensor]:
    """Views of 5 slots (read-out slot + 4 words): an optional `not`, a bit, an op, a bit."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        neg = bool(torch.randint(0, 2, (1,), generator=g))
        a, b = (str(int(v)) for v in torch.randint(0, 2, (2,), generator=g))
        op = ("and", "or")[int(torch.randint(0, 2, (1,), generator=g))]
        rows.append(["[CLS]", "not" if neg else "", a, op, b])
    steps = torch.randint(0, 3, (n, 1), generator=g)
    answer = torch.randint(0, 2, (n,), generator=g)
    return rows, steps, answer


def _features(rows, steps, answer):
    return observable_features(rows, steps, answer, CLASSES, [3], 2, 5)


def _truth(rows: list[list[str]], steps: torch.Tensor) -> torch.Tensor:
    """literal = bit xor not (not linear in one-hot tokens); the step's value; the op."""
    lit = [(r[2] == "1") != (r[1] == "not") for r in rows]
    op = [r[3] == "and" for r in rows]
    return torch.tensor([lit, (steps[:, 0] == 2).tolist(), op], dtype=torch.float32).T


def test_features_are_one_hot_per_slot_then_steps_then_answer():
    rows = [["[CLS]", "not", "1", "and", "zz"]]
    x = _features(rows, torch.tensor([[2]]), torch.tensor([1]))
    v = len(CLASSES)
    assert x.shape == (1, 4 * v + 3 + 2)
    assert x[0, : 4 * v].nonzero().squeeze(1).tolist() == [CLASSES.index("not"), v + 2, 2 * v + 4]  # zz: no class
    assert x[0, 4 * v :].tolist() == [0, 0, 1, 0, 1]
    with pytest.raises(ValueError, match="steps"):
        observable_features(rows, torch.tensor([2]), torch.tensor([1]), CLASSES, [3], 2, 5)


def test_a_program_learns_what_a_linear_read_out_of_the_same_features_cannot():
    rows, steps, answer = _inputs(3000, 0)
    held_rows, held_steps, held_answer = _inputs(1000, 1)
    x, y = _features(rows, steps, answer), _truth(rows, steps)
    xh, yh = _features(held_rows, held_steps, held_answer), _truth(held_rows, held_steps)
    program = fit_program(x, y, xh, yh, seed=0)
    assert torch.allclose(program.accuracy, balanced_accuracy(program.logits(xh) > 0, yh.bool()))
    linear = balanced_accuracy(fit_logistic(x, y, l2=1e-3)(xh) > 0, yh.bool())
    shuffled = fit_program(x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(2))], xh, yh)
    # the xor: a linear read-out of one-hot tokens is at chance, the program is not
    assert float(program.accuracy[0]) > float(linear[0]) + 0.3
    assert float(program.accuracy[0]) > float(shuffled.accuracy[0]) + 0.3
    assert (program.accuracy[1:] >= linear[1:] - 0.02).all()  # and no worse where linear suffices
    again = fit_program(x, y, xh, yh, seed=0)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(program.layers, again.layers, strict=True))


def test_a_program_checks_its_shapes():
    w1, b1, w2, b2 = torch.zeros(4, 6), torch.zeros(4), torch.zeros(3, 4), torch.zeros(3)
    program = ConceptProgram(((w1, b1), (w2, b2)), torch.ones(3))
    assert program.logits(torch.zeros(2, 6)).shape == (2, 3)
    with pytest.raises(ValueError, match="reads 6 features"):
        program.logits(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="cannot feed"):
        ConceptProgram(((w1, b1), (torch.zeros(3, 5), b2)), torch.ones(3))
    with pytest.raises(ValueError, match="accuracies"):
        ConceptProgram(((w1, b1), (w2, b2)), torch.ones(2))
    with pytest.raises(ValueError, match="bias"):
        ConceptProgram(((w1, torch.zeros(5)), (w2, b2)), torch.ones(3))


def test_logits_in_chunks_are_the_logits():
    g = torch.Generator().manual_seed(0)
    first = (torch.randn(8, 6, generator=g), torch.randn(8, generator=g))
    layers = (first, (torch.randn(3, 8, generator=g), torch.zeros(3)))
    program = ConceptProgram(layers, torch.ones(3))
    x = torch.randn(50, 6, generator=g)
    # float32 rounding differs with the batch a matmul kernel gets (and with the thread count)
    assert torch.allclose(program.logits(x, chunk=7), program.logits(x, chunk=1000), rtol=1e-5, atol=1e-5)
