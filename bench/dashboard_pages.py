"""`python -m bench.dashboard_pages [--db sqlite|postgresql ...] [--packets 10000]`: dashboard page times.

The dashboard must stay fast as the broker fills up. For each database a real broker process is
filled over HTTP with small signed packets on 20 topics (a student reports on every tenth), and
each page is timed, signed in as the admin, first with 100 packets (the baseline, same run, same
process) and then with ``--packets``. Paged queries and no per-row queries keep the ratio near 1;
what grows with the database is only the per-topic aggregate (one GROUP BY).
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from bench import harness
from m2kt import BrokerClient

app = typer.Typer(add_completion=False)
console = Console(width=max(Console().width, 120))
ROOT = Path(__file__).resolve().parents[1]
TOPICS = 20
BASELINE = 100
REPEAT = 15
VERDICTS = ("accepted", "rolled_back", "rejected")


@app.command()
def main(
    db: Annotated[list[str] | None, typer.Option(help="sqlite and/or postgresql")] = None,
    packets: Annotated[int, typer.Option(min=BASELINE + 1, help="packets for the measurement")] = 10_000,
    out: Annotated[Path, typer.Option(help="result JSON")] = ROOT / "bench" / "results" / "dashboard-pages.json",
) -> None:
    """Time every dashboard page at 100 packets and at ``--packets``, print a table, write JSON."""
    result: dict[str, Any] = {"packets": packets, "baseline_packets": BASELINE, "repeat": REPEAT, "databases": {}}
    for name in db or ["sqlite", "postgresql"]:
        with harness.database(name) as url, harness.scratch() as tmp:
            with harness.broker_process(url, tmp) as (base, admin, _pid):
                result["databases"][name] = _measure(base, admin, packets)
    _show(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    console.print(f"wrote {out}")


def _measure(base: str, admin: str, total: int) -> dict[str, Any]:
    token, key = harness.teacher(base, admin)
    with BrokerClient(base, admin) as c:
        student = str(c.create_agent("bench-dash-student", "student")["token"])
    ids: list[str] = []
    stages: dict[str, Any] = {}
    for target in (BASELINE, total):
        started = time.perf_counter()
        ids += _fill(base, token, student, key, start=len(ids), n=target - len(ids))
        console.print(f"{target} packets in the broker (+{time.perf_counter() - started:.0f}s to publish)")
        stages[str(target)] = _time_pages(base, admin, ids)
    before, after = stages[str(BASELINE)], stages[str(total)]
    ratios = {page: round(after[page]["p50_ms"] / before[page]["p50_ms"], 2) for page in after}
    return {"stages": stages, "ratio_p50": ratios}


def _fill(base: str, token: str, student: str, key: Any, *, start: int, n: int, workers: int = 8) -> list[str]:
    """Publish ``n`` more packets with ``workers`` concurrent publishers; report on every tenth."""
    created_at = datetime.now(UTC).isoformat(timespec="seconds")  # one for the batch: workers publish in any order
    batch = [
        (
            start + i,
            *harness.signed_packets(
                key, 1, 4096, f"dash.t{(start + i) % TOPICS:02d}", first=start + i, created_at=created_at
            )[0],
        )
        for i in range(n)
    ]
    ids: dict[int, str] = {}
    errors: list[BaseException] = []

    def run(chunk: list[tuple[int, bytes, bytes]]) -> None:
        try:
            with BrokerClient(base, token, retries=0) as pub, BrokerClient(base, student, retries=0) as rep:
                for i, envelope, payload in chunk:
                    pid = pub.publish(envelope, payload).id
                    ids[i] = pid
                    if i % 10 == 0:
                        body = {"verdict": VERDICTS[i // 10 % 3], "metrics": {"mean_agreement": 0.5 + i % 7 / 20}}
                        rep.report(pid, body)
        except BaseException as exc:  # surfaced below: a failed publish spoils the measurement
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(batch[w::workers],)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [ids[i] for i in sorted(ids)]


def _time_pages(base: str, admin: str, ids: list[str]) -> dict[str, dict[str, float]]:
    reported = ids[(len(ids) // 20) * 10]  # a packet in the middle that carries a report
    pages = {
        "topics (index)": "/dashboard",
        "older page (before=)": f"/dashboard?before={len(ids) // 2}",
        "topics fragment": "/dashboard/fragments/topics",
        "packet": f"/dashboard/packets/{reported}",
        "provenance": f"/dashboard/packets/{reported}/provenance",
    }
    timings: dict[str, dict[str, float]] = {}
    with httpx.Client(base_url=base, timeout=60) as http:
        if http.post("/dashboard/login", data={"token": admin}).status_code != 303:
            raise SystemExit("could not sign in to the dashboard")
        for name, path in pages.items():
            samples = []
            for i in range(REPEAT + 2):
                t0 = time.perf_counter()
                r = http.get(path)
                elapsed = time.perf_counter() - t0
                if r.status_code != 200:
                    raise SystemExit(f"{path}: {r.status_code} {r.text[:200]}")
                if i >= 2:  # two warm-up requests
                    samples.append(elapsed * 1000)
            xs = np.asarray(samples)
            timings[name] = {
                "p50_ms": round(float(np.percentile(xs, 50)), 2),
                "p95_ms": round(float(np.percentile(xs, 95)), 2),
                "bytes": len(r.content),
            }
    return timings


def _show(result: dict[str, Any]) -> None:
    n, b = str(result["packets"]), str(result["baseline_packets"])
    table = Table(title=f"Dashboard pages: p50 / p95 ms at {b} and at {n} packets (admin, over HTTP)")
    for col in ("db", "page", f"p50 @{b}", f"p50 @{n}", f"p95 @{n}", "ratio p50", "KiB"):
        table.add_column(col, justify="left" if col in ("db", "page") else "right")
    for db, res in result["databases"].items():
        for page, after in res["stages"][n].items():
            before = res["stages"][b][page]
            table.add_row(
                db,
                page,
                f"{before['p50_ms']:.1f}",
                f"{after['p50_ms']:.1f}",
                f"{after['p95_ms']:.1f}",
                f"{res['ratio_p50'][page]:.2f}",
                f"{after['bytes'] / 1024:.0f}",
            )
    console.print(table)


if __name__ == "__main__":
    app()
