"""One seed of the protocol on one setup: M2KT and every baseline on the same frozen student.

Every M2KT number goes through the real wire format: the teacher builds and signs a packet,
the student opens it (signature, digest, manifest) and reads it with `Knowledge.from_packet`.
The seed draws the anchors (nested: the first m of one permutation of the teacher's pool),
the KD samples and the CAL's initialisation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench.transfer.setups import Setup
from m2kt import keys
from m2kt.ml.metrics import concept_logits
from m2kt.packet import open_packet
from student_agent.audit import AuditConfig, audit
from student_agent.baselines import fit_translation
from student_agent.cal.config import CALSpec
from student_agent.cal.fit import FitConfig, FittedCAL, fit_cal, slot_mask
from student_agent.evaluate import kd_equal_data, kd_features, kd_readout, scores
from student_agent.features import Observation, observe
from student_agent.knowledge import Knowledge
from teacher_agent.packetize import POISON_KINDS, PacketSpec, build_teacher_packet

__all__ = ["ABLATIONS", "kd_sizes", "n_match", "run_seed"]

# name -> FitConfig changes (or the extractor that built the packet)
ABLATIONS: dict[str, dict[str, Any]] = {
    "no_views": {"views": False},  # the same packet read at its read-out slot only, as before views
    "no_geo": {"alpha": 0.0},
    "no_struct": {"beta": 0.0},
    "no_reason": {"gamma": 0.0},
    "no_scores": {"score_weight": 0.0},  # geo without the anchors' concept scores (states only)
    "no_programs": {"program_weight": 0.0},  # reason without the concept programs on unlabelled inputs
    "geo_with_programs": {"program_geo": 1.0},  # L_geo at full weight beside the programs (before 2026-12-03)
    "low_rank": {"cal": CALSpec(form="lowrank")},
    "teacher_to_student": {"cal": CALSpec(direction="teacher_to_student")},
    "neighbours": {"cal": CALSpec(neighbours=(-1, 1, 2))},  # word slots' maps also see nearby words
    "extractor_clustering": {"extractor": "clustering"},
    "extractor_attribution": {"extractor": "attribution"},
    "first_block": {"extractor": "probing_first"},  # read-outs from the earliest best block, not the deepest
}
# The ablations every pair runs: the loss terms and the views (every word slot, observable heads).
# The design choices (form, direction, extractor, safety term) are ablated on the first pair only.
TERM_ABLATIONS = ("no_views", "no_geo", "no_struct", "no_reason", "no_scores", "no_programs", "geo_with_programs")
POISON_SHARE = 0.2


def kd_sizes(pool: int) -> list[int]:
    """16, 32, ... doubling up to the pool, and the whole pool."""
    sizes = [n for n in (2**i for i in range(4, 30)) if n < pool]
    return [*sizes, pool]


def n_match(kd: Mapping[int, float], target: float) -> float | None:
    """KD examples needed to reach ``target``, interpolated on log n; None if KD never gets there."""
    pts = sorted(kd.items())
    if pts[0][1] >= target:
        return float(pts[0][0])
    for (n0, a0), (n1, a1) in zip(pts, pts[1:], strict=False):
        if a0 < target <= a1:
            t = (target - a0) / (a1 - a0)
            return float(math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0))))
    return None


class _Packets:
    """Builds, signs and opens packets of one setup, the way a student receives them."""

    def __init__(self, setup: Setup, seed: int, probes: int) -> None:
        self.setup, self.key = setup, keys.generate()
        self.trusted = {keys.keyid(self.key.public_key()): self.key.public_key()}
        perm = np.random.default_rng(seed).permutation(len(setup.pool.texts))
        self.probes = setup.pool.subset(perm[:probes].tolist())
        self.order = perm[probes:].tolist()

    def knowledge(self, m: int, *, extractor: str = "probing", spec: PacketSpec | None = None) -> Knowledge:
        s = self.setup
        built = build_teacher_packet(
            s.teacher,
            s.tokenizer,
            s.family,
            s.extractions[extractor],
            s.pool.subset(self.order[:m]),
            self.probes,
            spec or PacketSpec(agent="bench"),
            self.key,
        )
        return Knowledge.from_packet(open_packet(built.envelope, built.payload, self.trusted), built.payload)


def run_seed(
    setup: Setup,
    seed: int,
    anchors: Sequence[int],
    probes: int,
    ablation_m: int | None,
    *,
    mixed_poison: bool = False,
    all_ablations: bool = True,
) -> dict[str, Any]:
    """All measurements of one seed; accuracies are per-concept lists (balanced, on held-out).

    ``all_ablations``: every entry of ABLATIONS and the safety-term ablation at ``ablation_m``;
    otherwise only TERM_ABLATIONS.

    ``mixed_poison``: the auditor sees one packet poisoned with every kind at once instead of one
    packet per kind (the quick profile's saving: one CAL fit instead of three).
    """
    s = setup
    out: dict[str, Any] = {"seed": seed}
    packets = _Packets(setup, seed, probes)
    per_m: dict[str, dict[str, list[float]]] = {}
    fit_seconds: list[float] = []
    held = kd_features(s.held_obs)
    safety_m = max(m for m in anchors if m <= 256)
    honest: _Honest | None = None
    for m in anchors:
        kn = packets.knowledge(m)
        a_obs = _observe(s, kn)
        fitted = fit_cal(kn, a_obs, s.unlabelled, FitConfig(seed=seed))
        fit_seconds.append(fitted.seconds)
        if m == safety_m:  # the honest packet of the safety run is this one: its fit is not redone
            honest = _Honest(kn, a_obs, fitted)
        kd = kd_equal_data(kn, a_obs)
        per_m[str(m)] = {
            "m2kt": _acc(fitted.reader(fitted.reader.input_of(s.held_obs)), s.truth),
            "kd_equal": _acc(kd(held), s.truth),
            "kd_self": _acc(_self_trained(kd, a_obs, kn, s.unlabelled)(held), s.truth),
            "ridge": _acc(_translate(kn, a_obs, "ridge", s.held_obs), s.truth),
            "procrustes": _acc(_translate(kn, a_obs, "procrustes", s.held_obs), s.truth),
        }
    out["per_m"] = per_m
    out["fit_seconds"] = fit_seconds
    out["kd"] = _kd_curve(setup, seed)
    if ablation_m:
        out["ablations"] = _ablations(setup, packets, seed, ablation_m, full=all_ablations)
    assert honest is not None
    out["safety"] = _safety(setup, packets, seed, safety_m, honest, mixed=mixed_poison)
    return out


@dataclass(frozen=True)
class _Honest:
    """An unpoisoned packet, the student on its anchors, and the CAL fitted to it."""

    kn: Knowledge
    a_obs: Observation
    fitted: FittedCAL


def _acc(logits: Tensor, truth: Tensor) -> list[float]:
    return [round(float(v), 5) for v in scores(logits, truth)]


def _observe(setup: Setup, kn: Knowledge) -> Observation:
    """The student on a packet's anchors (with the packet's view slots when it has views)."""
    words = kn.views.words if kn.views is not None else None
    return observe(setup.student.model, setup.student.tokenizer, kn.anchor_texts, words)


def _translate(kn: Knowledge, a_obs: Observation, method: str, held: Observation) -> Tensor:
    """Concept logits on ``held`` through a linear translation into teacher space fitted on the anchors."""
    with torch.no_grad():
        if kn.views is None:
            tr = fit_translation(a_obs.flat, kn.anchor_states.flatten(1), method=method)
            h: Tensor = tr(held.flat).view(-1, *kn.anchor_states.shape[1:])
            return concept_logits(h, kn.layers, kn.directions, kn.biases)
        v = kn.views
        tr = fit_translation(kd_features(a_obs), v.anchor_states.flatten(1), method=method)
        mask = slot_mask(held.view_flat)
        h = tr(kd_features(held)).view(-1, *v.anchor_states.shape[1:]) * mask[:, :, None, None]
        return v.readout.logits(h, mask, v.heads)


def _self_trained(kd: torch.nn.Module, a_obs: Observation, kn: Knowledge, unlabelled: Observation) -> torch.nn.Module:
    """KD with the same unlabelled inputs M2KT uses: pseudo-label them with KD@m, refit on both (self-training)."""
    with torch.no_grad():
        pseudo = kd(kd_features(unlabelled)) > 0
    x = torch.cat([kd_features(a_obs), kd_features(unlabelled)])
    y = torch.cat([kn.anchor_scores > 0, pseudo])
    return kd_readout(x, y)


def _kd_curve(setup: Setup, seed: int) -> dict[str, list[float]]:
    """KD: the student's read-out on n teacher-labelled examples from the pool, n doubling."""
    gen = torch.Generator().manual_seed(seed)
    feats, held = kd_features(setup.kd_obs), kd_features(setup.held_obs)
    perm = torch.randperm(feats.shape[0], generator=gen)
    curve = {}
    readout = None
    for n in kd_sizes(len(perm)):
        idx = perm[:n]
        readout = kd_readout(feats[idx], setup.kd_labels[idx], init=readout)
        curve[str(n)] = _acc(readout(held), setup.truth)
    return curve


def _ablations(setup: Setup, packets: _Packets, seed: int, m: int, *, full: bool) -> dict[str, list[float]]:
    s = setup
    out: dict[str, list[float]] = {}
    base = packets.knowledge(m)
    a_obs = _observe(s, base)
    for name, change in ABLATIONS.items():
        if not full and name not in TERM_ABLATIONS:
            continue
        change = dict(change)
        extractor = change.pop("extractor", "probing")
        if extractor not in s.extractions:
            continue
        kn = packets.knowledge(m, extractor=extractor) if extractor != "probing" else base
        fitted = fit_cal(kn, a_obs, s.unlabelled, replace(FitConfig(seed=seed), **change))
        out[name] = _acc(fitted.reader(fitted.reader.input_of(s.held_obs)), s.truth)
    if not full:
        return out
    # the safety term: two concepts marked unsafe; how readable do they stay in the mapped space?
    unsafe = tuple(c.key for c in s.extractions["probing"].concepts[:2])
    kn = packets.knowledge(m, spec=PacketSpec(agent="bench", unsafe=frozenset(unsafe)))
    for name, lam in (("unsafe_readable_with_safety", 1.0), ("unsafe_readable_without_safety", 0.0)):
        fitted = fit_cal(kn, a_obs, s.unlabelled, FitConfig(seed=seed, lam=lam))
        out[name] = _acc(fitted.reader(fitted.reader.input_of(s.held_obs))[:, :2], s.truth[:, :2])
    return out


def _safety(
    setup: Setup, packets: _Packets, seed: int, m: int, honest: _Honest, *, mixed: bool = False
) -> dict[str, Any]:
    """Poison a share of concepts with each kind; what the auditor flags, and what it flags wrongly.

    One packet per kind, or with ``mixed`` one packet whose poisoned concepts take the kinds in turn.
    """
    s = setup
    keys_ = [c.key for c in s.extractions["probing"].concepts]
    rng = np.random.default_rng(seed + 1000)
    n_bad = max(1, round(POISON_SHARE * len(keys_)))
    found: dict[str, Any] = {"poisoned": 0, "detected": 0, "honest": 0, "false_positive": 0, "packets": {}}
    started = time.monotonic()
    groups = [POISON_KINDS] if mixed else [(kind,) for kind in POISON_KINDS]
    for group in [(), *groups]:
        kind = "none" if not group else "mixed" if len(group) > 1 else group[0]
        if not group:
            kn, a_obs, fitted, bad = honest.kn, honest.a_obs, honest.fitted, []
        else:
            bad = rng.choice(keys_, n_bad, replace=False).tolist()
            spec = PacketSpec(agent="bench", poison={k: group[i % len(group)] for i, k in enumerate(bad)}, seed=seed)
            kn = packets.knowledge(m, spec=spec)
            a_obs = _observe(s, kn)
            fitted = fit_cal(kn, a_obs, s.unlabelled, FitConfig(seed=seed))
        words = kn.views.words if kn.views is not None else None
        probes = observe(s.student.model, s.student.tokenizer, kn.probe_texts, words)
        decision = audit(
            fitted.reader,
            kn,
            probes=probes,
            held=s.eval_obs,
            base_before=s.eval_obs,
            base_after=s.eval_obs,
            config=AuditConfig(),
        )
        flagged = {f["concept"] for f in decision.findings}
        found["poisoned"] += len(bad)
        found["detected"] += len(flagged & set(bad))
        found["honest"] += len(keys_) - len(bad)
        found["false_positive"] += len(flagged - set(bad))
        found["packets"][kind] = decision.verdict
    found["seconds"] = round(time.monotonic() - started, 1)
    return found
