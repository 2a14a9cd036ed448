"""From per-seed measurements to the benchmark's JSON, its console tables and the README table."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from rich.table import Table

from bench.transfer.measure import n_match

__all__ = ["METHODS", "aggregate", "markdown_table", "summary_tables"]

METHODS = ("m2kt", "kd_equal", "kd_self", "ridge", "procrustes")


def _mean(xs: Sequence[float]) -> float:
    return round(statistics.fmean(xs), 4)


def _std(xs: Sequence[float]) -> float:
    return round(statistics.stdev(xs), 4) if len(xs) > 1 else 0.0


def _seedwise(runs: list[dict[str, Any]], get: Any) -> list[float]:
    """The concept-mean of one quantity, per seed."""
    return [statistics.fmean(get(r)) for r in runs]


def aggregate(setup_info: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over concepts per seed, then mean and std over seeds; ``n_match`` from the mean KD curve."""
    ms = list(runs[0]["per_m"])
    out: dict[str, Any] = {
        "teacher": _mean(setup_info["teacher_score"]),
        "oracle": _mean(setup_info["oracle_score"]),
        "seeds": [r["seed"] for r in runs],
        "task_accuracy": setup_info.get("task_accuracy", {}),  # the models' held-out answer accuracy
        "trainings": setup_info.get("trainings", 1),  # model trainings the seeds ran on (one per machine)
    }
    std: dict[str, Any] = {}
    for method in METHODS:
        vals = {m: _seedwise(runs, lambda r, m=m, method=method: r["per_m"][m][method]) for m in ms}
        out[method] = {m: _mean(v) for m, v in vals.items()}
        std[method] = {m: _std(v) for m, v in vals.items()}
    ns = list(runs[0]["kd"])
    kd_vals = {n: _seedwise(runs, lambda r, n=n: r["kd"][n]) for n in ns}
    out["kd"] = {n: _mean(v) for n, v in kd_vals.items()}
    std["kd"] = {n: _std(v) for n, v in kd_vals.items()}
    curve = {int(n): v for n, v in out["kd"].items()}
    out["n_match"] = {m: _round(n_match(curve, out["m2kt"][m])) for m in ms}
    out["std"] = std
    if "ablations" in runs[0]:
        names = list(runs[0]["ablations"])
        abl = {n: _seedwise(runs, lambda r, n=n: r["ablations"][n]) for n in names}
        out["ablations"] = {n: {"mean": _mean(v), "std": _std(v)} for n, v in abl.items()}
        out["ablation_m"] = setup_info.get("ablation_m")
    last_m = ms[-1]
    out["per_concept"] = {
        "keys": setup_info["keys"],
        "teacher": [round(v, 4) for v in setup_info["teacher_score"]],
        "oracle": [round(v, 4) for v in setup_info["oracle_score"]],
        "m": last_m,
        "m2kt": _concept_means(runs, lambda r: r["per_m"][last_m]["m2kt"]),
        "kd_equal": _concept_means(runs, lambda r: r["per_m"][last_m]["kd_equal"]),
    }
    if setup_info.get("groups"):
        out["groups"] = _groups(setup_info, runs, ms)
    out["fit_seconds"] = _mean([s for r in runs for s in r["fit_seconds"]])
    out["train_seconds"] = setup_info["seconds"]
    return out


def _groups(setup_info: dict[str, Any], runs: list[dict[str, Any]], ms: list[str]) -> dict[str, Any]:
    """The same means over each concept group alone (input / step-answer / relation concepts)."""
    out: dict[str, Any] = {}
    labels = setup_info["groups"]
    for group in dict.fromkeys(labels):
        idx = [k for k, g in enumerate(labels) if g == group]

        def part(xs: Sequence[float], idx: list[int] = idx) -> list[float]:
            return [xs[k] for k in idx]

        g: dict[str, Any] = {
            "concepts": len(idx),
            "teacher": _mean(part(setup_info["teacher_score"])),
            "oracle": _mean(part(setup_info["oracle_score"])),
        }
        for method in ("m2kt", "kd_equal"):
            g[method] = {
                m: _mean(_seedwise(runs, lambda r, m=m, method=method: part(r["per_m"][m][method]))) for m in ms
            }
        if "ablations" in runs[0]:
            g["ablations"] = {
                n: _mean(_seedwise(runs, lambda r, n=n: part(r["ablations"][n])))
                for n in runs[0]["ablations"]
                if not n.startswith("unsafe_")
            }
        out[group] = g
    return out


def _round(v: float | None) -> int | None:
    return None if v is None else int(round(v))


def _concept_means(runs: list[dict[str, Any]], get: Any) -> list[float]:
    cols = list(zip(*(get(r) for r in runs), strict=True))
    return [_mean(c) for c in cols]


def summary_tables(result: dict[str, Any]) -> list[Table]:
    tables = []
    for family, pairs in result["pairs"].items():
        for pair, r in pairs.items():
            k = len(r["per_concept"]["keys"])
            t = Table(
                title=f"{family}, {pair}: mean balanced accuracy over {k} concepts (teacher "
                f"{r['teacher']:.3f}, student oracle {r['oracle']:.3f}, seeds {r['seeds']})"
            )
            t.add_column("m")
            for method in METHODS:
                t.add_column(method, justify="right")
            t.add_column("M2KT/teacher", justify="right")
            t.add_column("KD n to match", justify="right")
            for m in r["m2kt"]:
                cells = [f"{r[method][m]:.3f}±{r['std'][method][m]:.3f}" for method in METHODS]
                nm = r["n_match"][m]
                t.add_row(m, *cells, f"{r['m2kt'][m] / r['teacher']:.2f}", "never" if nm is None else str(nm))
            tables.append(t)
            if "groups" in r:
                g = Table(title=f"{family}, {pair}: by concept group (mean balanced accuracy)")
                g.add_column("group")
                g.add_column("K", justify="right")
                g.add_column("teacher", justify="right")
                g.add_column("oracle", justify="right")
                for m in r["m2kt"]:
                    g.add_column(f"M2KT m={m}", justify="right")
                    g.add_column(f"KD m={m}", justify="right")
                for name, v in r["groups"].items():
                    cells = [f"{v[method][m]:.3f}" for m in r["m2kt"] for method in ("m2kt", "kd_equal")]
                    g.add_row(name, str(v["concepts"]), f"{v['teacher']:.3f}", f"{v['oracle']:.3f}", *cells)
                tables.append(g)
            if "ablations" in r:
                a = Table(
                    title=f"{family}, {pair}: ablations at m={r['ablation_m']} (M2KT default "
                    f"{r['m2kt'][str(r['ablation_m'])]:.3f})"
                )
                a.add_column("variant")
                a.add_column("mean balanced accuracy", justify="right")
                groups = {n: g["ablations"] for n, g in r.get("groups", {}).items() if "ablations" in g}
                for group in groups:
                    a.add_column(group, justify="right")
                for name, v in r["ablations"].items():
                    per_group = [f"{g[name]:.3f}" if name in g else "" for g in groups.values()]
                    a.add_row(name, f"{v['mean']:.3f}±{v['std']:.3f}", *per_group)
                tables.append(a)
    s = result["safety"]
    st = Table(title="Safety: poisoned concepts caught by the student's auditor")
    for col in ("poisoned", "detected", "honest", "false positives", "detection rate", "false-positive rate"):
        st.add_column(col, justify="right")
    st.add_row(
        str(s["poisoned"]),
        str(s["detected_count"]),
        str(s["honest"]),
        str(s["false_positive_count"]),
        f"{s['detected']:.3f}",
        f"{s['false_positive']:.3f}",
    )
    tables.append(st)
    return tables


POOLED_NOTE = "Seeds run on more than one training of the models (teacher and oracle: their means)"


def markdown_table(result: dict[str, Any]) -> str:
    """The README's headline table, generated from a result file."""
    lines = [
        "| family | pair | m | teacher | oracle | M2KT | KD @ m | KD+self @ m | ridge | Procrustes | "
        "M2KT/teacher | KD n to match |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    methods = ("m2kt", "kd_equal", "kd_self", "ridge", "procrustes")
    for family, pairs in result["pairs"].items():
        for pair, r in pairs.items():
            for m in r["m2kt"]:
                nm = r["n_match"][m]
                # Bold whichever method leads the row (ties to three decimals all bold), so a row
                # where a baseline wins reads as one at a glance.
                best = max(round(r[k][m], 3) for k in methods)
                cell = {k: (f"**{r[k][m]:.3f}**" if round(r[k][m], 3) == best else f"{r[k][m]:.3f}") for k in methods}
                lines.append(
                    f"| {family} | {pair} | {m} | {r['teacher']:.3f} | {r['oracle']:.3f} | "
                    f"{cell['m2kt']} ± {r['std']['m2kt'][m]:.3f} | {cell['kd_equal']} | "
                    f"{cell['kd_self']} | {cell['ridge']} | {cell['procrustes']} | "
                    f"{r['m2kt'][m] / r['teacher']:.2f} | {'never' if nm is None else nm} |"
                )
    pooled = [
        f"{family} {pair} ({r['trainings']})"
        for family, pairs in result["pairs"].items()
        for pair, r in pairs.items()
        if r.get("trainings", 1) > 1
    ]
    if pooled:  # a cell resumed on another machine: its seeds ran on models trained there
        lines += ["", f"{POOLED_NOTE}: {', '.join(pooled)}."]
    return "\n".join(lines)
