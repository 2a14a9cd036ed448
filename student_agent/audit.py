"""Verifier and safety auditor: after fitting, decide whether the new CAL may be used.

Signals, per concept unless said:

* **agreement**: balanced accuracy of the student's transferred read-out against the packet's
  verification probe labels (inputs the CAL never saw).
* **separation**: does the packet's read-out separate its own shipped class prototypes?
  ``d' = w·(p₁ − p₀) / std_i(w·h_i)`` over the teacher's anchor states. Honest read-outs
  separate them (measured d' 0.5–1.9 on the demo teacher), a negated one gives d' < 0, a
  random or trigger direction d' near 0. The threshold follows the claimed accuracy a: a
  Gaussian read-out with balanced accuracy a has d' = 2·Φ⁻¹(a), and a concept is flagged
  below ``separation_share`` of that (capped at ``min_separation``), so a concept that
  claims little is not flagged for delivering little.
* **prevalence**: a trigger-style concept fires on a narrow slice; the packet's anchor labels
  are then almost all one class while the prototypes say both classes are common.
* **reasoning agreement** (per packet): the teacher's own step and answer heads on mapped
  states of the student's held-back inputs against the student's own answers. Low means the
  map does not carry the teacher's computation, and nothing read through it can be trusted.
* **base task**: the frozen student's answers before and after must be identical, and so
  must its weights digest.

The thresholds are relative where the level is model-dependent: agreement is compared with
the packet's own median (docs/method.md: a fixed threshold flagged most honest concepts), and
consistency with the claimed accuracy. A packet is accepted only with no finding, mean
agreement at least ``min_agreement`` and reasoning agreement at least ``min_reasoning``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from m2kt.text import count
from student_agent.baselines import balanced_accuracy
from student_agent.cal.fit import ConceptReader
from student_agent.features import Observation
from student_agent.knowledge import Knowledge

__all__ = ["AuditConfig", "Decision", "audit"]


@dataclass(frozen=True)
class AuditConfig:
    min_agreement: float = 0.6
    min_reasoning: float = 0.5
    agreement_drop: float = 0.2  # below the packet's median by more than this: not served
    min_separation: float = 0.4  # d' below this (or below the claim's share): contradicts its prototypes
    separation_share: float = 0.5
    min_prevalence: float = 0.08  # anchor labels of one class rarer than this: trigger-like


@dataclass
class Decision:
    verdict: str  # "accepted" or "rolled_back"
    metrics: dict[str, Any]
    findings: list[dict[str, Any]] = field(default_factory=list)
    detail: str = ""


def separation(kn: Knowledge) -> torch.Tensor:
    """``[K]``: d' of each read-out between its own prototypes, in units of its anchor-score spread.

    With views, the read-out the student uses is the view read-out, and so are the prototypes and
    the claimed accuracy it is checked against.
    """
    v = kn.views
    if v is not None:
        scores = v.readout.logits(v.anchor_states, v.anchor_mask, v.heads) - v.readout.bias  # [m, K]
        gap = (v.readout.weight * (v.prototypes[:, 1] - v.prototypes[:, 0])).sum(-1)  # [K]
        return gap / scores.std(0).clamp_min(1e-6)
    scores = (kn.anchor_states[:, kn.layers] * kn.directions).sum(-1)  # [m, K]
    gap = (kn.directions * (kn.prototypes[:, 1] - kn.prototypes[:, 0])).sum(-1)  # [K]
    return gap / scores.std(0).clamp_min(1e-6)


def separation_floor(claimed: float, config: AuditConfig) -> float:
    """The smallest d' an honest read-out claiming balanced accuracy ``claimed`` should show."""
    a = min(max(claimed, 0.5), 0.999)
    expected = 2 * float(torch.special.ndtri(torch.tensor(a)))
    return min(config.min_separation, config.separation_share * expected)


@torch.inference_mode()
def reasoning_agreement(reader: ConceptReader, kn: Knowledge, held: Observation) -> float:
    """Share of held-back inputs where the teacher's heads on mapped states give the student's answers."""
    if not reader.to_teacher or held.flat.shape[0] == 0:
        return float("nan")
    h = reader.mapped(reader.input_of(held))  # [N, L_T, d_T], or [N, S, L_T, d_T] for views
    if reader.views is not None:
        h = h[:, 0]  # the read-out slot
    hits = [(h[:, kn.answer_layer] @ kn.answer_head[0].T + kn.answer_head[1]).argmax(-1) == held.answer]
    for j, ((w, b), layer) in enumerate(zip(kn.step_heads, kn.step_layers, strict=True)):
        hits.append((h[:, layer] @ w.T + b).argmax(-1) == held.steps[:, j])
    return float(torch.stack(hits).float().mean())


@torch.inference_mode()
def audit(
    reader: ConceptReader,
    kn: Knowledge,
    probes: Observation,
    held: Observation,
    base_before: Observation,
    base_after: Observation,
    config: AuditConfig | None = None,
) -> Decision:
    """Measure the fitted reader and decide. ``base_*``: the student on its own evaluation inputs."""
    config = config or AuditConfig()
    agreement = balanced_accuracy(reader(reader.input_of(probes)) > 0, kn.probe_labels)  # [K]
    sep = separation(kn)  # [K]
    prevalence = (kn.anchor_scores > 0).float().mean(0)  # [K]
    median = float(agreement.median())
    findings: list[dict[str, Any]] = []
    for k, c in enumerate(kn.concepts):
        reasons = []
        floor = separation_floor(c.teacher_accuracy, config)
        if float(sep[k]) < floor:
            reasons.append(("contradicts-prototypes", f"its read-out separates its own prototypes by d'="
                                                      f"{float(sep[k]):.2f} < {floor:.2f} (claims accuracy "
                                                      f"{c.teacher_accuracy:.2f})"))  # fmt: skip
        if min(float(prevalence[k]), 1 - float(prevalence[k])) < config.min_prevalence:
            reasons.append(("narrow-trigger", f"fires on {float(prevalence[k]):.1%} of the anchors"))
        for kind, why in reasons:
            findings.append({"concept": c.key, "kind": kind, "detail": why})
    # A concept far below the packet's own level did not transfer to this student: a matter of
    # quality, not of safety. It is reported and left out of what the student serves (the packet's
    # other concepts are integrated); flagging it as a finding rolled back honest packets of a
    # weak pair (answer ranges at agreement 0.5 where the teacher's own answers were 76 % right).
    not_transferred = [c.key for k, c in enumerate(kn.concepts)
                       if float(agreement[k]) < median - config.agreement_drop and c.key not in
                       {f["concept"] for f in findings}]  # fmt: skip
    reasoning = reasoning_agreement(reader, kn, held)
    base_same = torch.equal(base_before.answer, base_after.answer) and torch.equal(base_before.steps, base_after.steps)
    metrics: dict[str, Any] = {
        "mean_agreement": round(float(agreement.mean()), 4),
        "median_agreement": round(median, 4),
        "reasoning_agreement": None if reasoning != reasoning else round(reasoning, 4),
        "base_task_unchanged": base_same,
        "not_transferred": not_transferred,
        "concepts": {c.key: {"agreement": round(float(agreement[k]), 4),
                             "separation": round(float(sep[k]), 4),
                             "anchor_prevalence": round(float(prevalence[k]), 4)}
                     for k, c in enumerate(kn.concepts)},
    }  # fmt: skip
    problems = []
    if findings:
        problems.append(f"{count(len({f['concept'] for f in findings}), 'concept')} flagged by the safety auditor")
    if float(agreement.mean()) < config.min_agreement:
        problems.append(f"mean probe agreement {float(agreement.mean()):.3f} < {config.min_agreement}")
    if reasoning == reasoning and reasoning < config.min_reasoning:
        problems.append(f"reasoning agreement {reasoning:.3f} < {config.min_reasoning}")
    if not base_same:
        problems.append("the student's own base-task answers changed")
    if problems:
        return Decision("rolled_back", metrics, findings, "; ".join(problems))
    return Decision("accepted", metrics, findings, f"{count(len(kn.concepts), 'concept')} integrated")
