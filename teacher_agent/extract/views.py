"""Concept read-outs on the teacher's whole view (every word slot, every block, its heads' outputs).

Measured on modarith p=23, BERT d=128 x 4 (held-out balanced accuracy over 35 concepts):
the read-out-position probes score 0.80 (inputs 0.78: ``b`` and ``c`` live at their own
positions, not at ``[CLS]``; answer ranges 0.65: ``answer < 11`` is not linear in a state
built for a 23-way softmax). Probes on the slot states of one block reach 0.96, and with
the observable heads' probabilities as features too, 0.998. The packet ships these
read-outs and the heads, so a student reads concepts exactly as the teacher does.

Per concept the block and the L2 strength are chosen on a selection part of the probe data,
then refitted on all of it; accuracy is reported on the held-out split only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast

from m2kt.ml.logistic import fit_logistic
from m2kt.ml.metrics import balanced_accuracy
from m2kt.ml.models import TaskModel
from m2kt.ml.programs import ConceptProgram, fit_program, observable_features
from m2kt.ml.readouts import Head, ObservableHeads, ViewReadout, layer_features
from m2kt.ml.views import Views, collect_views, word_count
from teacher_agent.extract.base import ExtractionContext, class_prototypes
from teacher_agent.extract.probing import LayerRule, deepest_within_error, split_index

__all__ = ["ViewExtraction", "extract_views", "model_heads"]

logger = logging.getLogger(__name__)

L2_GRID = (1e-4, 1e-3, 1e-2)
TOKEN_ROWS = 20_000  # word-slot states the token head is fitted on (plenty for a vocabulary of tens)


@dataclass(frozen=True)
class ViewExtraction:
    """What the packet ships for view read-outs, with the teacher's own held-out scores.

    Attributes:
        words: Word slots per view (``S = 1 + words``).
        heads: The observable heads (token head fitted here; step and answer heads are the model's).
        readout: The concept read-outs, in the family's concept order.
        accuracy: ``[K]`` held-out balanced accuracy of ``readout``.
        token_accuracy: Held-out accuracy of the token head on word slots.
        prototypes: ``[K, 2, D]`` mean read-out features (of concept k's block) where concept k does
            not / does hold, from ground truth on the probe data: what an auditor checks a read-out
            against (a negated or random read-out does not separate them).
        program: each concept as a function of the teacher's observables (``m2kt.ml.programs``),
            with its held-out accuracy; None in extractions written before programs.
    """

    words: int
    heads: ObservableHeads
    readout: ViewReadout
    accuracy: torch.Tensor
    token_accuracy: float
    prototypes: torch.Tensor
    program: ConceptProgram | None = None


def model_heads(model: TaskModel) -> tuple[tuple[Head, ...], Head]:
    """The model's own step heads (block ``step_layer``) and answer head (last block) as :class:`Head`s."""
    steps = tuple(
        Head(h.weight.detach().clone(), h.bias.detach().clone(), model.step_layer - 1)
        for h in model.step_heads
        if isinstance(h, torch.nn.Linear)
    )
    answer = Head(model.head.weight.detach().clone(), model.head.bias.detach().clone(), model.num_layers - 1)
    return steps, answer


def _token_targets(views: Views, classes: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Word-slot rows ``[R, L, d]`` and their token class ``[R]``."""
    rows, targets = [], []
    for n, names in enumerate(views.tokens):
        for s in range(1, views.slots):
            if views.mask[n, s] and names[s] in classes:
                rows.append((n, s))
                targets.append(classes[names[s]])
    idx = torch.tensor(rows, dtype=torch.long).reshape(-1, 2)
    return views.states[idx[:, 0], idx[:, 1]], torch.tensor(targets, dtype=torch.long)


def _fit_softmax(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS: ``x [R, d]``, ``y [R]`` -> ``W [C, d]``, ``b [C]``."""
    mu, sd = x.mean(0), x.std(0).clamp(min=1e-4)
    z = (x - mu) / sd
    w = torch.zeros(n_classes, x.shape[1], requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y) + l2 * w.pow(2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    with torch.enable_grad():
        opt.step(closure)  # type: ignore[no-untyped-call]
    w_raw = w.detach() / sd
    return w_raw, b.detach() - w_raw @ mu


def _token_head(fit: Views, held: Views, classes: tuple[str, ...]) -> tuple[Head, float]:
    """The token head on the block that decodes word-slot tokens best on held-out views (ties: lowest)."""
    index = {c: i for i, c in enumerate(classes)}
    x, y = _token_targets(fit, index)
    x, y = x[:TOKEN_ROWS], y[:TOKEN_ROWS]
    hx, hy = _token_targets(held, index)
    best: tuple[float, Head] | None = None
    for layer in range(x.shape[1]):
        w, b = _fit_softmax(x[:, layer], y, len(classes))
        acc = float(((hx[:, layer] @ w.T + b).argmax(-1) == hy).float().mean()) if len(hy) else 0.0
        if best is None or acc > best[0] + 1e-9:
            best = (acc, Head(w, b, layer))
    assert best is not None
    return best[1], best[0]


def own_observables(views: Views, heads: ObservableHeads) -> torch.Tensor:
    """``[N, F]`` observable features of a model's own views: the tokens it read, its own step and
    answer predictions (argmax of its heads at the read-out slot)."""
    read = views.states[:, 0]  # [N, L, d]
    steps = [h.logits(read).argmax(-1) for h in heads.steps]
    stacked = torch.stack(steps, 1) if steps else torch.zeros(read.shape[0], 0, dtype=torch.long)
    return observable_features(
        views.tokens,
        stacked,
        heads.answer.logits(read).argmax(-1),
        heads.token_classes,
        [int(h.weight.shape[0]) for h in heads.steps],
        int(heads.answer.weight.shape[0]),
        views.slots,
    )


def _observables_of(
    model: TaskModel,
    tok: PreTrainedTokenizerFast,
    texts: Sequence[str],
    words: int,
    heads: ObservableHeads,
    batch_size: int,
) -> torch.Tensor:
    """:func:`own_observables` of many texts, a chunk at a time (a view of every slot and block is large)."""
    chunk = 2000
    parts = [
        own_observables(collect_views(model, tok, texts[i : i + chunk], words, batch_size=batch_size), heads)
        for i in range(0, len(texts), chunk)
    ]
    return torch.cat(parts)


def extract_views(
    ctx: ExtractionContext, *, select_frac: float = 0.25, layer_rule: LayerRule = deepest_within_error
) -> ViewExtraction:
    """Fit the token head and one view read-out per concept; score them on ``ctx.heldout``.

    ``layer_rule`` picks each concept's block and L2 strength from the selection scores."""
    model, tok = ctx.model, ctx.tokenizer
    words = word_count([*ctx.probe.texts, *ctx.heldout.texts])
    probe = collect_views(model, tok, ctx.probe.texts, words, batch_size=ctx.batch_size)
    held = collect_views(model, tok, ctx.heldout.texts, words, batch_size=ctx.batch_size)
    classes = tuple(tok.convert_ids_to_tokens(list(range(len(tok)))))
    token, token_acc = _token_head(probe, held, classes)
    steps, answer = model_heads(model)
    heads = ObservableHeads(token, classes, steps, answer)
    labels = ctx.probe_labels  # [N, K]
    fit_idx, sel_idx = split_index(len(labels), select_frac, ctx.seed)
    n_layers, k = probe.states.shape[2], labels.shape[1]
    scores = torch.zeros(n_layers, len(L2_GRID), k)  # [L, G, K] selection-split balanced accuracy
    with torch.no_grad():
        for layer in range(n_layers):
            feats = layer_features(probe.states, probe.mask, heads, layer)
            for g, l2 in enumerate(L2_GRID):
                w, b = fit_logistic(feats[fit_idx], labels[fit_idx], l2=l2).raw()
                scores[layer, g] = balanced_accuracy((feats[sel_idx] @ w.T + b) > 0, labels[sel_idx])
        best_layer, option = layer_rule(scores, labels[sel_idx])
        dim = layer_features(probe.states[:1], probe.mask[:1], heads, 0).shape[1]
        weight, bias = torch.zeros(k, dim), torch.zeros(k)
        for layer in torch.unique(best_layer).tolist():
            feats = layer_features(probe.states, probe.mask, heads, layer)
            for g, l2 in enumerate(L2_GRID):
                ks = ((best_layer == layer) & (option == g)).nonzero().squeeze(1)
                if len(ks):
                    weight[ks], bias[ks] = fit_logistic(feats, labels[:, ks], l2=l2).raw()
        readout = ViewReadout(weight, bias, best_layer)
        accuracy = balanced_accuracy(readout.logits(held.states, held.mask, heads) > 0, ctx.heldout_labels)
        prototypes = torch.zeros(k, 2, dim)
        for layer in torch.unique(best_layer).tolist():
            feats = layer_features(probe.states, probe.mask, heads, layer)
            for kk in (best_layer == layer).nonzero().squeeze(1).tolist():
                prototypes[kk] = class_prototypes(feats, labels[:, kk : kk + 1])[0]
        x_held = own_observables(held, heads)
        if ctx.programs is None:
            x_fit, y_fit = own_observables(probe, heads), labels
        else:
            x_fit = _observables_of(model, tok, ctx.programs.texts, words, heads, ctx.batch_size)
            y_fit = torch.from_numpy(ctx.programs.concepts.copy())
    program = fit_program(x_fit, y_fit, x_held, ctx.heldout_labels, seed=ctx.seed)
    logger.info(
        "view read-outs: mean held-out balanced accuracy %.3f over %d concepts (token head %.3f, programs %.3f)",
        float(accuracy.mean()),
        k,
        token_acc,
        float(program.accuracy.mean()),
    )
    return ViewExtraction(words, heads, readout, accuracy, token_acc, prototypes, program)


def view_tensors(view: ViewExtraction) -> dict[str, torch.Tensor]:
    """Flat tensors of a view extraction (for an extraction file), under ``view.*`` names."""
    h = view.heads
    out = {
        "view.readout.weight": view.readout.weight,
        "view.readout.bias": view.readout.bias,
        "view.readout.layers": view.readout.layers,
        "view.accuracy": view.accuracy,
        "view.prototypes": view.prototypes,
        "view.answer.weight": h.answer.weight,
        "view.answer.bias": h.answer.bias,
    }
    if h.token is not None:
        out |= {"view.token.weight": h.token.weight, "view.token.bias": h.token.bias}
    for j, s in enumerate(h.steps):
        out |= {f"view.step{j}.weight": s.weight, f"view.step{j}.bias": s.bias}
    if view.program is not None:
        out["view.program.accuracy"] = view.program.accuracy
        for i, (w, b) in enumerate(view.program.layers):
            out |= {f"view.program.{i}.weight": w, f"view.program.{i}.bias": b}
    return {k: v.contiguous() for k, v in out.items()}


def view_meta(view: ViewExtraction) -> dict[str, object]:
    h = view.heads
    return {
        "words": view.words,
        "token_accuracy": view.token_accuracy,
        "token_layer": None if h.token is None else h.token.layer,
        "token_classes": list(h.token_classes),
        "step_layers": [s.layer for s in h.steps],
        "answer_layer": h.answer.layer,
        "program_layers": 0 if view.program is None else len(view.program.layers),
    }


def view_from(t: dict[str, torch.Tensor], meta: dict[str, object]) -> ViewExtraction:
    """Rebuild what :func:`view_tensors` and :func:`view_meta` wrote."""
    token_layer = meta["token_layer"]
    token = None if token_layer is None else Head(t["view.token.weight"], t["view.token.bias"], int(str(token_layer)))
    step_layers = [int(x) for x in meta["step_layers"]]  # type: ignore[attr-defined]
    steps = tuple(
        Head(t[f"view.step{j}.weight"], t[f"view.step{j}.bias"], layer) for j, layer in enumerate(step_layers)
    )
    answer = Head(t["view.answer.weight"], t["view.answer.bias"], int(str(meta["answer_layer"])))
    classes = tuple(str(c) for c in meta["token_classes"])  # type: ignore[attr-defined]
    heads = ObservableHeads(token, classes, steps, answer)
    readout = ViewReadout(t["view.readout.weight"], t["view.readout.bias"], t["view.readout.layers"].long())
    n_program = int(str(meta.get("program_layers", 0)))
    program = None
    if n_program:
        layers = tuple((t[f"view.program.{i}.weight"], t[f"view.program.{i}.bias"]) for i in range(n_program))
        program = ConceptProgram(layers, t["view.program.accuracy"])
    return ViewExtraction(
        int(str(meta["words"])),
        heads,
        readout,
        t["view.accuracy"],
        float(str(meta["token_accuracy"])),
        t["view.prototypes"],
        program,
    )
