"""`python -m bench.transfer --quick --out FILE`: runs and writes the JSON other tools read.

One run (one seed, m in {64, 256}) on the quick pair, which the session's `quick_models` fixture
trained with the benchmark's own code into the cache the run is pointed at (`--workdir`), so
the pair is trained once for the benchmark and the student tests together; the assertions compare its
numbers with each other (KD's curve, the interpolated n_match, the auditor's rates), never
with constants that happened to pass once.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.transfer.measure import kd_sizes, n_match

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick(tmp_path_factory, quick_models):
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    cmd = [sys.executable, "-m", "bench.transfer", "--quick", "--out", str(out), "--workdir", str(quick_models)]
    # a deadline for a hung run, not a speed check
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout, out


@pytest.mark.slow  # runs the quick transfer benchmark (trains)
def test_quick_json_has_the_published_shape(quick):
    result, stdout, _ = quick
    assert set(result) >= {"families", "safety", "seconds"}
    (family, r), *_ = result["families"].items()
    assert family == "digitsum"
    for key in ("teacher", "oracle"):
        assert 0.0 <= r[key] <= 1.0
    (pair,) = result["pairs"][family].values()
    assert set(pair["task_accuracy"]) == {"teacher", "student"}  # each model's held-out answer accuracy
    for key in ("m2kt", "kd_equal", "procrustes", "n_match"):
        assert set(r[key]) == {"64", "256"}, key
    assert all(isinstance(v, int) or v is None for v in r["n_match"].values())
    assert [int(n) for n in r["kd"]] == sorted(int(n) for n in r["kd"]) and min(int(n) for n in r["kd"]) == 16
    assert set(result["safety"]) >= {"detected", "false_positive"}
    assert result["seconds"] > 0
    assert "M2KT/teacher" in stdout  # the rich table


@pytest.mark.slow
def test_quick_numbers_are_consistent_with_each_other(quick):
    result, _, _ = quick
    r = result["families"]["digitsum"]
    chance = 0.5
    kd = {int(n): v for n, v in r["kd"].items()}
    assert kd[max(kd)] > kd[16] and kd[max(kd)] > chance  # more teacher labels help KD
    assert r["oracle"] > chance and r["teacher"] > chance
    for m, acc in r["m2kt"].items():
        assert acc > chance
        nm = n_match(kd, acc)
        assert (nm is None) == (r["n_match"][m] is None)
        if nm is not None:
            assert r["n_match"][m] == round(nm)
    assert result["safety"]["detected"] > result["safety"]["false_positive"]
    # the packet carries more than its anchors' labels: M2KT beats KD trained on the same m labels
    for m in r["m2kt"]:
        assert r["m2kt"][m] > r["kd_equal"][m]
    # the KD curve reaches 50x the largest m (the family has the inputs), so n_match can say "never"
    assert max(int(n) for n in r["kd"]) >= max(int(m) for m in r["m2kt"]) / 0.02


@pytest.mark.slow
def test_a_recorded_run_reports_again_without_training(quick, tmp_path):
    """Seed files and the setup file beside them are enough to report a run again: a committed
    full run is re-reported (tables, README, plots) on a machine that never trained its models."""
    result, _, out = quick
    seeds = out.parent / f"{out.stem}-seeds"
    again = tmp_path / "again.json"
    cmd = [sys.executable, "-m", "bench.transfer", "--quick", "--out", str(again), "--seed-dir", str(seeds)]
    cmd += ["--workdir", str(tmp_path / "no-models")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not retrained" in proc.stdout and not (tmp_path / "no-models").exists()
    reported = json.loads(again.read_text())
    assert reported["pairs"] == result["pairs"] and reported["safety"] == result["safety"]


def test_n_match_interpolates_on_the_log_scale():
    curve = {16: 0.5, 64: 0.6, 256: 0.7}
    assert n_match(curve, 0.65) == pytest.approx(128.0)
    assert n_match(curve, 0.45) == 16.0
    assert n_match(curve, 0.75) is None
    assert math.isclose(n_match(curve, 0.6), 64.0)
    assert kd_sizes(100) == [16, 32, 64, 100] and kd_sizes(64) == [16, 32, 64]
