"""`python -m bench.transfer` options: refused on one line before any training, and plug-in families.

Nothing here trains: each case stops at the options, or at `--cached-only` with no seeds on file.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.transfer.run import _families, readme_source
from bench.transfer.setups import QUICK
from m2kt.errors import InvalidOption
from m2kt.ml.tasks import base as task_base
from m2kt.ml.tasks import get_task

ROOT = Path(__file__).resolve().parents[2]

PLUGIN = textwrap.dedent(
    '''
    import numpy as np
    from m2kt.ml.tasks.base import ConceptDef, StepSpec, TaskFamily, value_is


    class Bits(TaskFamily):
        """A family from outside the repository: n bits, the parity of the first two as the step."""

        name = "bits"

        def __init__(self, n: int = 4):
            self.n = n

        def params(self):
            return {"n": self.n}

        n_classes = 2
        step_specs = (StepSpec("first2", 2),)

        @property
        def concept_defs(self):
            return tuple(
                ConceptDef.of("bits", f"b{i}", f"bit {i}", "bits", value_is(f"b{i}", lambda x: x == 1))
                for i in range(self.n)
            )

        def vocab(self):
            return ("0", "1")

        def sample_inputs(self, rng, n):
            return rng.integers(0, 2, size=(n, self.n), dtype=np.int64)

        def values(self, inputs):
            out = {f"b{i}": inputs[:, i] for i in range(self.n)}
            out["first2"] = inputs[:, 0] ^ inputs[:, 1]
            out["answer"] = inputs.sum(1) % 2
            return out

        def render(self, inputs):
            return [" ".join(map(str, row)) for row in inputs.tolist()]


    class Shadow(Bits):
        name = "digitsum"
    '''
)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """An importable plug-in module, and a registry that forgets what a test registers."""
    (tmp_path / "m2kt_bits_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(task_base, "_REGISTRY", dict(task_base._REGISTRY))
    return tmp_path


def _run(*args: str, env_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = None
    if env_path is not None:
        import os

        env = os.environ | {"PYTHONPATH": str(env_path)}
    cmd = [sys.executable, "-m", "bench.transfer", "--quick", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def test_a_plug_in_family_runs_under_its_own_name_with_its_parameters(plugin):
    assert _families(QUICK, None, {}) == {"digitsum": {}}
    assert _families(QUICK, ["digitsum"], {}) == {"digitsum": {}}
    assert _families(QUICK, ["m2kt_bits_plugin:Bits"], {"n": 5}) == {"bits": {"n": 5}}
    assert get_task("bits", n=5).n == 5  # registered under its name: prepare() and the agents resolve it


def test_plug_in_families_that_cannot_run_are_refused(plugin):
    """(The command line turns these into one line and exit 2: see the test at the end.)"""
    with pytest.raises(InvalidOption, match="unknown task family"):
        _families(QUICK, ["no-such-family"], {})
    with pytest.raises(InvalidOption, match="cannot load"):
        _families(QUICK, ["m2kt_no_such_module:Family"], {})
    with pytest.raises(InvalidOption, match="does not take"):
        _families(QUICK, ["m2kt_bits_plugin:Bits"], {"width": 3})
    with pytest.raises(InvalidOption, match="like this profile's own family"):
        _families(QUICK, ["m2kt_bits_plugin:Shadow"], {})


def test_the_command_line_takes_a_plug_in_family(plugin, tmp_path):
    proc = _run(
        "--family", "m2kt_bits_plugin:Bits", "--param", "n=6", "--cached-only",
        "--out", str(tmp_path / "r.json"), "--workdir", str(tmp_path / "models"),
        env_path=plugin,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "bits bert64-llama48: not all seeds cached" in proc.stdout
    assert (tmp_path / "r-seeds" / "bits-bert64-llama48").is_dir() and not (tmp_path / "models").exists()


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
    ],
)
def test_bad_options_are_refused_on_one_line_before_any_training(tmp_path, args, message):
    proc = _run(*(a.format(tmp=tmp_path) for a in args), "--workdir", str(tmp_path / "models"))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "models").exists()
