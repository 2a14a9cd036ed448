"""`python -m bench.transfer` options: refused on one line before any training, and plug-in families.

Nothing here trains: each case stops at the options, or at `--cached-only` with no seeds on file.
"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.transfer.run import _families, readme_source
from bench.transfer.setups import QUICK
from m2kt.errors import InvalidOption
from m2kt.ml.tasks import get_task

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "tests" / "plugins"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(PLUGINS)}  # a user's package, installed beside m2kt
    cmd = [sys.executable, "-m", "bench.transfer", "--quick", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def test_a_plug_in_family_runs_under_its_own_name_with_its_parameters(plugins):
    assert _families(QUICK, None, {}) == {"digitsum": {}}
    assert _families(QUICK, ["digitsum"], {}) == {"digitsum": {}}
    assert _families(QUICK, ["m2kt_parity_plugin:ParityTask"], {"n_bits": 5}) == {"parity3": {"n_bits": 5}}
    assert get_task("parity3", n_bits=5).n_bits == 5  # registered under its name: prepare() and the agents resolve it


def test_plug_in_families_that_cannot_run_are_refused(plugins):
    """(The command line turns these into one line and exit 2: see the test at the end.)"""
    with pytest.raises(InvalidOption, match="unknown task family"):
        _families(QUICK, ["no-such-family"], {})
    with pytest.raises(InvalidOption, match="cannot load"):
        _families(QUICK, ["m2kt_no_such_module:Family"], {})
    with pytest.raises(InvalidOption, match="does not take"):
        _families(QUICK, ["m2kt_parity_plugin:ParityTask"], {"width": 3})
    with pytest.raises(InvalidOption, match="like this profile's own family"):
        _families(QUICK, ["m2kt_parity_plugin:Shadow"], {})


def test_the_command_line_takes_a_plug_in_family(plugins, tmp_path):
    proc = _run(
        "--family", "m2kt_parity_plugin:ParityTask", "--param", "n_bits=6", "--cached-only",
        "--out", str(tmp_path / "r.json"), "--workdir", str(tmp_path / "models"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "parity3 bert64-llama48: not all seeds cached" in proc.stdout
    assert (tmp_path / "r-seeds" / "parity3-bert64-llama48").is_dir() and not (tmp_path / "models").exists()


def test_cached_only_leaves_out_a_cell_whose_seeds_on_file_disagree(plugins, tmp_path):
    """Seed files from another code are no report, and --cached-only must not train to replace them."""
    cell = tmp_path / "r-seeds" / "parity3-bert64-llama48"
    cell.mkdir(parents=True)
    models = {"teacher": "t", "student": "s"}
    (cell / "setup.json").write_text(json.dumps({"models": models, "code": "c1", "info": {"keys": ["k"]}}))
    (cell / "seed-0.json").write_text(json.dumps({"models": models, "code": "c2"}))
    proc = _run(
        "--family", "m2kt_parity_plugin:ParityTask", "--param", "n_bits=6", "--cached-only",
        "--out", str(tmp_path / "r.json"), "--workdir", str(tmp_path / "models"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "parity3 bert64-llama48: seeds on file disagree" in proc.stdout
    assert json.loads((tmp_path / "r.json").read_text())["left_out"] == ["parity3/bert64-llama48"]
    assert not (tmp_path / "models").exists()


def test_the_readme_cites_a_result_by_its_path_in_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert readme_source(Path("bench/results/transfer-full.json")) == "bench/results/transfer-full.json"
    assert readme_source(ROOT / "bench" / "results" / "x.json") == "bench/results/x.json"
    with pytest.raises(InvalidOption, match="inside the repository"):
        readme_source(tmp_path / "x.json")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--readme", "--out", "{tmp}/x.json"], "inside the repository"),
        (["--family", "no-such-family"], "unknown task family"),
        (["--family", "digitsum", "--param", "p"], "name=value"),
        (["--fresh", "--stale"], "give one"),
    ],
)
def test_bad_options_are_refused_on_one_line_before_any_training(tmp_path, args, message):
    proc = _run(*(a.format(tmp=tmp_path) for a in args), "--workdir", str(tmp_path / "models"))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "models").exists()


def test_the_code_digest_covers_what_measures_and_not_what_reports(tmp_path, monkeypatch):
    from bench.transfer import run

    for rel in ("m2kt/ml/x.py", "student_agent/cal/fit.py", "bench/transfer/measure.py", "bench/transfer/run.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"# {rel}\n")
    monkeypatch.setattr(run, "ROOT", tmp_path)
    before = run.code_digest()
    (tmp_path / "bench/transfer/run.py").write_text("# a new table layout\n")
    assert run.code_digest() == before  # reporting code: committed seeds still count
    (tmp_path / "student_agent/cal/fit.py").write_text("# another loss\n")
    assert run.code_digest() != before  # measuring code: an interrupted run measures again


def test_a_cell_reports_from_files_only_where_one_code_measured_every_seed(tmp_path):
    import json

    from bench.transfer.run import SETUP_FILE, _recorded

    models = {"teacher": "t", "student": "s"}
    (tmp_path / SETUP_FILE).write_text(json.dumps({"models": models, "code": "c1", "info": {"keys": ["k"]}}))
    seeds = [tmp_path / f"seed-{i}.json" for i in range(2)]
    for f in seeds:
        f.write_text(json.dumps({"models": models, "code": "c1"}))
    assert _recorded(tmp_path, seeds) is not None
    assert _recorded(tmp_path, seeds, code="c1") is not None  # --stale: this code measured them all
    assert _recorded(tmp_path, seeds, code="c3") is None  # --stale: an older code's cell is measured again
    seeds[1].write_text(json.dumps({"models": models, "code": "c2"}))
    assert _recorded(tmp_path, seeds) is None


def test_seeds_run_on_two_trainings_pool_their_teachers_and_oracles(tmp_path):
    """Training differs in bits across CPUs: a cell resumed on another machine keeps both trainings'
    setups and reports each seed against the teacher it ran on (a seed weighs one)."""
    from bench.transfer.run import SETUP_FILE, _recorded

    def info(teacher: float, oracle: float, acc: float) -> dict:
        keys = ["a", "b"]
        return {
            "keys": keys,
            "teacher_score": [teacher, 1.0],
            "oracle_score": [oracle, 1.0],
            "task_accuracy": {"teacher": acc},
            "seconds": {"teacher_train": 10.0},
        }

    old, new = {"teacher": "t1", "student": "s1"}, {"teacher": "t2", "student": "s2"}
    trainings = {
        "t1/s1": {"code": "c1", "info": info(0.6, 0.5, 0.9)},
        "t2/s2": {"code": "c1", "info": info(0.9, 0.8, 1.0)},
    }
    setup = {"models": new, "code": "c1", "info": info(0.9, 0.8, 1.0), "trainings": trainings}
    (tmp_path / SETUP_FILE).write_text(json.dumps(setup))
    seeds = [tmp_path / f"seed-{i}.json" for i in range(3)]
    for f, models in zip(seeds, (old, new, new), strict=True):
        f.write_text(json.dumps({"models": models, "code": "c1"}))
    pooled, runs = _recorded(tmp_path, seeds, code="c1")
    assert len(runs) == 3 and pooled["trainings"] == 2
    assert pooled["teacher_score"] == pytest.approx([0.8, 1.0])  # (0.6 + 0.9 + 0.9) / 3
    assert pooled["oracle_score"] == pytest.approx([0.7, 1.0])
    assert pooled["task_accuracy"]["teacher"] == pytest.approx(0.9667, abs=1e-4)
    seeds[0].write_text(json.dumps({"models": {"teacher": "t3", "student": "s3"}, "code": "c1"}))
    assert _recorded(tmp_path, seeds) is None  # a seed whose training is not on file is measured again
    trainings["t2/s2"]["info"]["keys"] = ["a", "c"]
    seeds[0].write_text(json.dumps({"models": old, "code": "c1"}))
    (tmp_path / SETUP_FILE).write_text(json.dumps(setup))
    assert _recorded(tmp_path, seeds) is None  # nor are seeds whose trainings found other concepts


def test_cells_are_grouped_by_the_code_that_measured_them():
    from bench.transfer.run import _codes

    result = {"pairs": {"a": {"p": {"code": "1" * 64}, "q": {"code": "1" * 64}}, "b": {"p": {"code": None}}}}
    assert _codes(result) == {"1" * 12: ["a/p", "a/q"], None: ["b/p"]}


def test_the_readme_table_bolds_whichever_method_leads_each_row():
    """A row where a baseline beats M2KT must not show M2KT in bold (the committed run has such rows)."""
    from bench.transfer.report import POOLED_NOTE, markdown_table

    result = json.loads((ROOT / "bench" / "results" / "transfer-full.json").read_text())
    # and the same run with one row handed to KD, so the check bites whatever the committed run says
    led = copy.deepcopy(result)
    led_family, led_pair = next((f, p) for f, pairs in led["pairs"].items() for p in pairs)
    led_cell = led["pairs"][led_family][led_pair]
    m = next(iter(led_cell["m2kt"]))
    led_cell["kd_equal"][m] = led_cell["m2kt"][m] + 0.01
    led_cell["trainings"] = 2  # and its seeds ran on two trainings of the models
    methods = ("m2kt", "kd_equal", "kd_self", "ridge", "procrustes")
    for run in (result, led):
        table = markdown_table(run).splitlines()
        rows = [line.strip("| ").split(" | ") for line in table[2:] if line.startswith("|")]
        assert rows
        pooled = [line for line in table if line.startswith(POOLED_NOTE)]
        named = [
            f"{f} {p} ({c['trainings']})"
            for f, pairs in run["pairs"].items()
            for p, c in pairs.items()
            if c.get("trainings", 1) > 1
        ]
        assert pooled == ([f"{POOLED_NOTE}: {', '.join(named)}."] if named else [])
        assert run is not led or f"{led_family} {led_pair} (2)" in named
        for family, pair, m, _teacher, _oracle, *rest in rows:
            values = {k: round(run["pairs"][family][pair][k][m], 3) for k in methods}
            best = max(values.values())
            for k, cell in zip(methods, rest[:5], strict=True):
                assert cell.startswith("**") == (values[k] == best), (family, pair, m, k)
    assert any(not r[5].startswith("**") for r in rows)  # the handed-over row: M2KT not in bold
