"""Concept programs: each concept as a function of what a model reads and computes.

A concept read-out is linear in one block's slot states, so a concept spread over several words
(a bit and the `not` before it, two literals being equal, a count of ones) adds many slots' small
errors once a student's states are mapped into the teacher's space. The teacher knows more than
where a concept lies: it knows the concept as a function of its *observables*, the token at every
word slot and its own step and answer outputs. A concept program is that function, a small MLP
fitted by the teacher on its own data and validated on held-out inputs. A student has the same
observables for every one of its unlabelled inputs without any label (the tokens it read, its own
step and answer predictions), so the program gives it a target for every concept on thousands of
inputs where the packet gives anchors for m. For a text LM the same role would be played by a
program over the LM head's next-token distribution; our task families are the special case whose
observables are one-hot.

Features (``[N, F]``): one-hot token class at word slots 1..S-1 (zeros where a slot is empty or its
token is not a class), then one-hot of each step's value, then one-hot of the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m2kt.ml.metrics import balanced_accuracy
from m2kt.ml.seed import torch_generator

__all__ = ["MAX_WIDTH", "ConceptProgram", "fit_program", "observable_features"]

HIDDEN = (256, 256)
MAX_WIDTH = 4096  # the widest hidden layer a student accepts from a packet (ours: 256)
MAX_EPOCHS = 200
PATIENCE = 8  # epochs without a better selection loss before the fit stops (a convergence check)
BATCH = 128


@dataclass(frozen=True)
class ConceptProgram:
    """An MLP ``[N, F] -> [N, K]`` concept logits: ``layers`` as ``(weight [out, in], bias [out])``,
    ReLU between them; ``accuracy [K]``: held-out balanced accuracy against the concepts' truth."""

    layers: tuple[tuple[Tensor, Tensor], ...]
    accuracy: Tensor

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("a concept program needs at least one layer")
        for w, b in self.layers:
            if w.dim() != 2 or b.shape != w.shape[:1]:
                raise ValueError(f"concept program: weight {tuple(w.shape)} with bias {tuple(b.shape)}")
        for (w0, _), (w1, _) in zip(self.layers, self.layers[1:], strict=False):
            if w1.shape[1] != w0.shape[0]:
                raise ValueError(f"concept program: a {tuple(w0.shape)} layer cannot feed a {tuple(w1.shape)} one")
        if self.accuracy.shape != (self.concepts,):
            raise ValueError(f"concept program: {tuple(self.accuracy.shape)} accuracies for {self.concepts} concepts")

    @property
    def features(self) -> int:
        return int(self.layers[0][0].shape[1])

    @property
    def concepts(self) -> int:
        return int(self.layers[-1][0].shape[0])

    def logits(self, x: Tensor, chunk: int = 1024) -> Tensor:
        """``[N, F]`` observable features -> ``[N, K]`` concept logits, ``chunk`` rows at a time
        (memory stays ``chunk`` x the widest layer whatever N is)."""
        if x.shape[-1] != self.features:
            raise ValueError(f"concept program reads {self.features} features, got {x.shape[-1]}")
        if x.shape[0] > chunk:
            return torch.cat([self.logits(x[i : i + chunk], chunk) for i in range(0, x.shape[0], chunk)])
        for i, (w, b) in enumerate(self.layers):
            x = x @ w.T + b
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def observable_features(
    tokens: Sequence[Sequence[str]],
    steps: Tensor,
    answer: Tensor,
    classes: Sequence[str],
    step_classes: Sequence[int],
    answer_classes: int,
    slots: int,
) -> Tensor:
    """``[N, F]``: what a model perceives and computes on N inputs, as a concept program reads it.

    ``tokens``: per input, the token at each of the view's ``slots`` (slot 0, the read-out slot, is
    skipped); ``steps [N, J]``, ``answer [N]``: the model's own step and answer predictions."""
    index = {c: i for i, c in enumerate(classes)}
    n = len(tokens)
    if steps.shape != (n, len(step_classes)) or answer.shape != (n,):
        got = f"steps {tuple(steps.shape)}, answer {tuple(answer.shape)}"
        raise ValueError(f"observable_features: {got} for {n} inputs")
    rows, cols = [], []
    for r, row in enumerate(tokens):
        for s, tok in enumerate(row[1:slots]):
            c = index.get(tok) if tok else None
            if c is not None:
                rows.append(r)
                cols.append(s * len(classes) + c)
    onehot = torch.zeros(n, (slots - 1) * len(classes))
    if rows:
        onehot[torch.tensor(rows), torch.tensor(cols)] = 1.0
    parts = [onehot]
    parts += [F.one_hot(steps[:, j].long().clamp(0, c - 1), c).float() for j, c in enumerate(step_classes)]
    parts.append(F.one_hot(answer.long().clamp(0, answer_classes - 1), answer_classes).float())
    return torch.cat(parts, 1)


def fit_program(x: Tensor, y: Tensor, x_held: Tensor, y_held: Tensor, *, seed: int = 0) -> ConceptProgram:
    """Fit on ``x [N, F]``, ``y [N, K]`` (0/1), by epochs until the loss on a selection quarter stops
    improving (the best epoch's weights are kept); score on ``x_held``, ``y_held``."""
    if x.shape[0] != y.shape[0] or x.shape[0] < 8:
        raise ValueError(f"fit_program: {x.shape[0]} inputs for {y.shape[0]} label rows (8 at least)")
    gen = torch_generator(seed, "concept-program")
    perm = torch.randperm(x.shape[0], generator=gen)
    n_sel = max(1, x.shape[0] // 4)
    sel, fit = perm[:n_sel], perm[n_sel:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sizes = (x.shape[1], *HIDDEN, y.shape[1])
        mods = [nn.Linear(a, b) for a, b in zip(sizes, sizes[1:], strict=False)]
    net = nn.Sequential(*[m for lin in mods for m in (lin, nn.ReLU())][:-1])
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    yf = y.float()
    best: tuple[float, list[Tensor]] | None = None
    stale = 0
    with torch.enable_grad():
        for _ in range(MAX_EPOCHS):
            net.train()
            order = fit[torch.randperm(len(fit), generator=gen)]
            for i in range(0, len(order), BATCH):
                b = order[i : i + BATCH]
                loss = F.binary_cross_entropy_with_logits(net(x[b]), yf[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
            with torch.no_grad():
                sel_loss = float(F.binary_cross_entropy_with_logits(net(x[sel]), yf[sel]))
            if best is None or sel_loss < best[0] - 1e-4:
                best, stale = (sel_loss, [p.detach().clone() for p in net.parameters()]), 0
            else:
                stale += 1
                if stale >= PATIENCE:
                    break
    assert best is not None
    params = best[1]
    layers = tuple((params[i], params[i + 1]) for i in range(0, len(params), 2))
    probe = ConceptProgram(layers, torch.zeros(y.shape[1]))
    with torch.no_grad():
        accuracy = balanced_accuracy(probe.logits(x_held) > 0, y_held.bool())
    return ConceptProgram(layers, accuracy.float())
