"""PNG plots of a result: accuracy against data for M2KT and KD, and per-concept bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_all"]


def plot_all(result: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for family, pairs in result["pairs"].items():
        fig, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 4.2), squeeze=False)
        for ax, (pair, r) in zip(axes[0], pairs.items(), strict=True):
            ms = [int(m) for m in r["m2kt"]]
            ns = [int(n) for n in r["kd"]]
            ax.errorbar(
                ms,
                list(r["m2kt"].values()),
                yerr=list(r["std"]["m2kt"].values()),
                marker="o",
                label="M2KT (m anchors)",
                capsize=3,
            )
            ax.errorbar(
                ns,
                list(r["kd"].values()),
                yerr=list(r["std"]["kd"].values()),
                marker="s",
                label="KD (n teacher labels)",
                capsize=3,
            )
            ax.plot(ms, list(r["procrustes"].values()), ":", marker="^", label="Procrustes (m anchors)")
            ax.plot(ms, list(r["ridge"].values()), ":", marker="v", label="ridge (m anchors)")
            ax.axhline(r["teacher"], color="k", linestyle="--", linewidth=1, label="teacher")
            ax.axhline(r["oracle"], color="grey", linestyle="-.", linewidth=1, label="student oracle")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("examples the student sees from the teacher (m or n)")
            ax.set_ylabel("mean balanced accuracy (held-out)")
            ax.set_title(f"{family}: {pair}")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        path = out_dir / f"{stem}-{family}-data.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

        pair, r = next(iter(pairs.items()))
        pc = r["per_concept"]
        fig, ax = plt.subplots(figsize=(max(8.0, 0.32 * len(pc["keys"])), 4.5))
        xs = range(len(pc["keys"]))
        width = 0.22
        bars = (
            ("teacher", "teacher"),
            ("oracle", "student oracle"),
            ("m2kt", f"M2KT m={pc['m']}"),
            ("kd_equal", f"KD m={pc['m']}"),
        )
        for i, (name, label) in enumerate(bars):
            ax.bar([x + (i - 1.5) * width for x in xs], pc[name], width, label=label)
        ax.set_xticks(list(xs), [k.split(".", 1)[-1] for k in pc["keys"]], rotation=70, fontsize=7)
        ax.set_ylim(0.4, 1.0)
        ax.set_ylabel("balanced accuracy")
        ax.set_title(f"{family}, {pair}: per concept")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{stem}-{family}-concepts.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
