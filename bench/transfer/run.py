"""`python -m bench.transfer [--quick] [--out FILE]`: the transfer benchmark of docs/method.md.

The full run trains (once, cached) two heterogeneous pairs on three task families and
measures, per seed, M2KT at every m against KD at equal data, KD with self-training on
the same unlabelled inputs, ridge and Procrustes translation, the KD curve over n, the
loss-term and views ablations (every pair), the form / direction / extractor / safety-term
ablations (first pair) and the safety auditor on poisoned packets. ``--quick`` (one small pair,
one family, one seed, m in {64, 256}) is for tests.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import platform
import re
import time
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console

from bench.transfer.measure import run_seed
from bench.transfer.report import aggregate, markdown_table, summary_tables
from bench.transfer.setups import FULL, PAIRS, QUICK, Pair, Profile, prepare
from m2kt.cliutil import fail, parse_params
from m2kt.errors import InvalidOption
from m2kt.fsutil import atomic_write_text
from m2kt.ml.models import weights_sha256
from m2kt.ml.tasks import get_task, register_task
from m2kt.ml.threads import use_default_threads

app = typer.Typer(add_completion=False)
console = Console(width=max(Console().width, 150))
ROOT = Path(__file__).resolve().parents[2]
HEADLINE = ("teacher", "oracle", "m2kt", "kd_equal", "procrustes", "kd", "n_match")
PAIRS_FIRST = next(iter(PAIRS))  # `families` holds each family's first pair (the ablated one)
SETUP_FILE = "setup.json"  # beside a family x pair's seed files: its models' digests and what prepare() measured
MEASURING = ("m2kt", "teacher_agent", "student_agent", "bench/transfer")
REPORTING = {f"bench/transfer/{name}.py" for name in ("run", "report", "plots", "__main__")}
README_MARKERS = ("<!-- transfer-table:start -->", "<!-- transfer-table:end -->")


@app.command()
def main(
    quick: Annotated[bool, typer.Option(help="one small pair, one family, one seed, m in {64, 256}")] = False,
    out: Annotated[
        Path | None, typer.Option(help="result JSON (default bench/results/transfer-<profile>.json)")
    ] = None,
    seeds: Annotated[int, typer.Option(help="seeds (default: 3, quick: 1)")] = 0,
    workdir: Annotated[Path, typer.Option(help="cache of trained models")] = ROOT / ".m2kt" / "bench",
    plots: Annotated[bool, typer.Option(help="write PNG plots beside the JSON (default: full runs only)")] = False,
    readme: Annotated[bool, typer.Option(help="regenerate the README's results table from this run")] = False,
    fresh: Annotated[bool, typer.Option(help="ignore seed results already in the seed directory")] = False,
    stale: Annotated[
        bool,
        typer.Option(
            help="measure again only what this code did not measure: keep the seeds it measured (on any"
            " training on file), run the others; without it a cell whose seeds all agree is reported as it is"
        ),
    ] = False,
    seed_dir: Annotated[
        Path | None, typer.Option(help="one JSON per finished seed, to resume from (default: beside --out)")
    ] = None,
    cached_only: Annotated[
        bool, typer.Option(help="report only family x pair runs whose seeds are all cached")
    ] = False,
    family: Annotated[
        list[str] | None,
        typer.Option(
            help="run only this family (repeatable); others' results in --out are kept. Any family the"
            " registry resolves runs too: an entry-point name or module:Class (a plug-in)"
        ),
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option(help="name=value, a parameter of a plug-in --family (repeatable)")
    ] = None,
    pair: Annotated[
        list[str] | None, typer.Option(help="run only this pair (repeatable); others' results in --out are kept")
    ] = None,
) -> None:
    """Run the benchmark, print its tables, write its JSON (and plots)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    use_default_threads()
    profile = QUICK if quick else FULL
    n_seeds = seeds or (1 if quick else 3)
    target = (out or ROOT / "bench" / "results" / f"transfer-{profile.name}.json").resolve()
    try:  # bad options are refused on one line, before any training
        families = _families(profile, family, parse_params(param or []))
        _check_names("pair", pair, [p.name for p in profile.pairs])
        if fresh and stale:
            raise InvalidOption("--fresh measures every seed again and --stale keeps this code's; give one")
        cited = readme_source(target) if readme else ""
        selected = [(f, i, p) for f in families for i, p in enumerate(profile.pairs) if not pair or p.name in pair]
        # A partial run (--family / --pair) keeps every other family x pair already in the output file.
        result = _kept(target, profile.name, {(f, p.name) for f, _, p in selected}) if family or pair else {}
    except InvalidOption as exc:
        raise fail(exc.detail, exc.exit_code) from exc
    started = time.monotonic()
    result = {"profile": profile.name, "families": {}, "pairs": {}, "raw": {}} | result
    # Finished seeds are kept beside the results (and committed with them), so a run that stops
    # resumes on any machine. Training is reproducible in recipe and quality but not in bits across
    # CPUs, so a seed keeps the digests of the models it ran on and the setup file keeps every such
    # training's scores: a cell may pool seeds from several trainings, each against its own teacher.
    seeds_root = seed_dir or target.parent / f"{target.stem}-seeds"
    for fam, i, pair_ in selected:
        cache = seeds_root / f"{fam}-{pair_.name}"
        cache.mkdir(parents=True, exist_ok=True)
        seed_files = [cache / f"seed-{s}.json" for s in range(n_seeds)]
        recorded = None if fresh else _recorded(cache, seed_files, code=code_digest() if stale else None)
        if cached_only and recorded is None:  # never trains: seeds on file that do not agree are no report
            why = "not all seeds cached" if not all(f.exists() for f in seed_files) else "seeds on file disagree"
            console.print(f"{fam} {pair_.name}: {why} (code or models); left out (--cached-only)")
            result.setdefault("left_out", []).append(f"{fam}/{pair_.name}")
            continue
        if recorded is not None:  # every seed was measured on the models the setup file names
            info, runs = recorded
            console.print(f"{fam} {pair_.name}: {len(runs)} seeds and the setup on file; not retrained", soft_wrap=True)
        else:
            info, runs = _measure(fam, families[fam], i, pair_, profile, workdir, cache, seed_files, fresh=fresh)
        agg = aggregate(info, runs) | {"code": runs[0].get("code") if runs else None}
        result["pairs"].setdefault(fam, {})[pair_.name] = agg
        result["raw"].setdefault(fam, {})[pair_.name] = runs
        if i == 0:
            result["families"][fam] = {k: agg[k] for k in HEADLINE}
    result["safety"] = _safety(result["raw"])
    result["seconds"] = round(time.monotonic() - started, 1)
    result["environment"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "seeds": n_seeds,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=1) + "\n")
    for table in summary_tables(result):
        console.print(table)
    console.print(f"wrote {target} in {result['seconds']:.0f}s")
    if plots or not quick:
        from bench.transfer.plots import plot_all

        for path in plot_all(result, target.parent, target.stem):
            console.print(f"wrote {path}")
    mixed = _codes(result)
    if len(mixed) > 1:
        listed = "; ".join(f"{code or 'unrecorded'}: {', '.join(cells)}" for code, cells in mixed.items())
        message = f"cells measured by different code: {listed}"
        console.print(f"[yellow]warning:[/] {message}", soft_wrap=True)
        if readme:  # the README's table is one method's, never a mix
            raise fail(f"--readme refused, {message}; measure the older cells again with --fresh", 1)
    if readme:
        _update_readme(result, cited)


def _measure(
    fam: str,
    params: dict[str, Any],
    i: int,
    pair_: Pair,
    profile: Profile,
    workdir: Path,
    cache: Path,
    seed_files: list[Path],
    *,
    fresh: bool,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train (or load) one family x pair, run the seeds not yet on file; its setup and runs."""
    extractors = (
        ("probing", "clustering", "attribution", "probing_first") if profile.ablation_m and i == 0 else ("probing",)
    )
    setup = prepare(fam, params, pair_, profile, workdir, extractors)
    models = {"teacher": weights_sha256(setup.teacher), "student": weights_sha256(setup.student.model)}
    keys = [c.key for c in setup.extractions["probing"].concepts]
    info: dict[str, Any] = {
        "teacher_score": setup.teacher_score.tolist(),
        "oracle_score": setup.oracle_score.tolist(),
        "keys": keys,
        "groups": setup.groups,
        "seconds": setup.seconds,
        "task_accuracy": setup.task_accuracy,
        "ablation_m": profile.ablation_m,
    }
    code = code_digest()
    setup_file = cache / SETUP_FILE
    on_file = _trainings(json.loads(setup_file.read_text())) if setup_file.exists() and not fresh else {}
    trainings = on_file | {_training(models): {"code": code, "info": info}}
    _write_setup(setup_file, models, code, info, trainings)  # before any seed, so a crash keeps it
    runs = []
    for seed, cached in enumerate(seed_files):
        kept = json.loads(cached.read_text()) if cached.exists() and not fresh else None
        if kept is not None and kept.get("code") == code and _measured_by(trainings, kept, code, keys):
            runs.append(kept)
            console.print(f"{fam} {pair_.name} seed {seed}: cached ({cached})")
            continue
        if kept is not None:
            console.print(f"{fam} {pair_.name} seed {seed}: {cached} was measured on other models or code; rerun")
        console.print(f"{fam} {pair_.name} seed {seed} ...")
        run = run_seed(
            setup,
            seed,
            profile.anchors,
            profile.probes,
            profile.ablation_m,
            mixed_poison=profile.mixed_poison,
            all_ablations=i == 0,
        )
        run["models"], run["code"] = models, code
        atomic_write_text(cached, json.dumps(run))
        runs.append(run)
    used = {_training(run["models"]) for run in runs}
    _write_setup(setup_file, models, code, info, {k: v for k, v in trainings.items() if k in used})
    return _pooled(trainings, runs), runs


def _training(models: dict[str, str]) -> str:
    """A training's name in a setup file: its teacher's and student's weight digests."""
    return f"{models.get('teacher')}/{models.get('student')}"


def _trainings(setup: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every training of a cell's models on file, by name, with the code that measured its setup
    and its info (setup files written before trainings were kept name one: their ``models``)."""
    known: dict[str, dict[str, Any]] = dict(setup.get("trainings", {}))
    if "models" in setup:
        known.setdefault(_training(setup["models"]), {"code": setup.get("code"), "info": setup["info"]})
    return known


def _measured_by(trainings: dict[str, dict[str, Any]], run: dict[str, Any], code: str | None, keys: list[str]) -> bool:
    """Whether a seed ran on a training on file whose setup this code measured, with these concepts."""
    training = trainings.get(_training(run.get("models") or {}))
    return training is not None and training["code"] == code and training["info"]["keys"] == keys


def _write_setup(
    path: Path, models: dict[str, str], code: str, info: dict[str, Any], trainings: dict[str, dict[str, Any]]
) -> None:
    """A cell's setup file: this run's models and info, and every training its seeds ran on."""
    atomic_write_text(path, json.dumps({"models": models, "code": code, "info": info, "trainings": trainings}))


def _pooled(trainings: dict[str, dict[str, Any]], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One setup info for seeds run on one or more trainings of the same recipe: per-concept
    scores, answer accuracy and training seconds are means over the seeds' trainings (one weight a
    seed), so the teacher and oracle columns belong to the models M2KT was measured on."""
    infos: list[dict[str, Any]] = [trainings[_training(run["models"])]["info"] for run in runs]  # same keys
    used = len({_training(run["models"]) for run in runs})
    if used == 1:
        return infos[0] | {"trainings": 1}

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    pooled = dict(infos[0])
    for field in ("teacher_score", "oracle_score"):
        pooled[field] = [mean(list(scores)) for scores in zip(*(info[field] for info in infos), strict=True)]
    for field in ("task_accuracy", "seconds"):
        pooled[field] = {k: round(mean([info[field][k] for info in infos]), 4) for k in infos[0].get(field, {})}
    return pooled | {"trainings": used}


def code_digest() -> str:
    """sha256 of the source that measures: every module of m2kt, teacher_agent, student_agent and
    bench/transfer except the benchmark's reporting ones. A seed on file counts for a resumed run
    only where it was measured by this code, so a run never mixes two methods; it is strict (a change
    to an agent's CLI also means measuring again), because a silent mix would cost more than a rerun."""
    digest = hashlib.sha256()
    for top in MEASURING:
        for path in sorted((ROOT / top).rglob("*.py")):
            if path.relative_to(ROOT).as_posix() in REPORTING:
                continue
            digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _codes(result: dict[str, Any]) -> dict[str | None, list[str]]:
    """Which family x pair cells of a result each code digest measured."""
    codes: dict[str | None, list[str]] = {}
    for fam, pairs in result["pairs"].items():
        for name, agg in pairs.items():
            code = agg.get("code")
            codes.setdefault(code[:12] if code else None, []).append(f"{fam}/{name}")
    return codes


def _recorded(
    cache: Path, seed_files: list[Path], *, code: str | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The (pooled) setup and every seed of a family x pair from its seed folder, where one code
    measured every seed and the setups of the trainings they ran on (so a committed run reports
    again without training, even after the code has moved on); with ``code``, only that code."""
    setup_file = cache / SETUP_FILE
    if not setup_file.exists() or not all(f.exists() for f in seed_files):
        return None
    trainings = _trainings(json.loads(setup_file.read_text()))
    runs = [json.loads(f.read_text()) for f in seed_files]
    measured = {run.get("code") for run in runs}
    first = trainings.get(_training(runs[0].get("models") or {}))
    keys = first["info"]["keys"] if first else []
    if len(measured) != 1 or not all(_measured_by(trainings, run, runs[0].get("code"), keys) for run in runs):
        return None
    if code is not None and measured != {code}:
        return None
    return _pooled(trainings, runs), runs


def _families(profile: Profile, given: list[str] | None, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The families to run, by name, with their parameters: the profile's, or those ``--family`` names.

    A name outside the profile is a plug-in (a registered or entry-point family, or ``module:Class``)
    run with ``--param``; it is registered under its own name, which labels its results and its
    cache folders like a built-in family's.
    """
    if not given:
        return {name: dict(p) for name, p in profile.families.items()}
    out: dict[str, dict[str, Any]] = {}
    for ref in given:
        if ref in profile.families and not params:
            out[ref] = dict(profile.families[ref])
            continue
        try:
            task = get_task(ref, **params)
        except (ImportError, AttributeError) as exc:
            raise InvalidOption(f"cannot load task family {ref!r}: {exc}") from None
        if task.name != ref and task.name in profile.families:
            raise InvalidOption(f"{ref!r} is named {task.name!r}, like this profile's own family; rename it")
        if task.name != ref:
            register_task(task.name, functools.partial(get_task, ref))
        out[task.name] = params
    return out


def _check_names(kind: str, given: list[str] | None, known: list[str]) -> None:
    unknown = sorted(set(given or ()) - set(known))
    if unknown:
        raise InvalidOption(f"unknown {kind} {', '.join(unknown)}; this profile has {', '.join(known)}")


def _kept(target: Path, profile: str, rerun: set[tuple[str, str]]) -> dict[str, Any]:
    """The family x pair results in an earlier output file that this partial run does not redo."""
    if not target.exists():
        return {}
    old = json.loads(target.read_text())
    if old.get("profile") != profile:
        raise InvalidOption(f"{target} holds a {old.get('profile')!r} run, not {profile!r}")
    kept: dict[str, Any] = {"families": {}, "pairs": {}, "raw": {}}
    for fam, pairs in old.get("pairs", {}).items():
        for name, agg in pairs.items():
            if (fam, name) in rerun:
                continue
            kept["pairs"].setdefault(fam, {})[name] = agg
            kept["raw"].setdefault(fam, {})[name] = old["raw"][fam][name]
            if fam in old.get("families", {}) and name == PAIRS_FIRST:
                kept["families"][fam] = old["families"][fam]
    return kept


def _safety(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Detection and false-positive rates over every seed of every family x pair in the result."""
    totals = {"poisoned": 0, "detected": 0, "honest": 0, "false_positive": 0}
    verdicts: dict[str, list[str]] = {}
    for pairs in raw.values():
        for runs in pairs.values():
            for run in runs:
                for key in totals:
                    totals[key] += run["safety"][key]
                for kind, verdict in run["safety"]["packets"].items():
                    verdicts.setdefault(kind, []).append(verdict)
    return {
        "detected": round(totals["detected"] / max(totals["poisoned"], 1), 4),
        "false_positive": round(totals["false_positive"] / max(totals["honest"], 1), 4),
        "poisoned": totals["poisoned"],
        "detected_count": totals["detected"],
        "honest": totals["honest"],
        "false_positive_count": totals["false_positive"],
        "packet_verdicts": {kind: {v: vs.count(v) for v in sorted(set(vs))} for kind, vs in verdicts.items()},
    }


def readme_source(target: Path) -> str:
    """How the README cites a result file: its path in the repository (it must be committed there).

    Checked before the run, with the README's table markers, so a run is not lost to a bad option.
    """
    try:
        cited = target.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        raise InvalidOption(
            f"--readme cites the result file, so --out must be inside the repository ({ROOT}), not {target}"
        ) from None
    start, end = README_MARKERS
    text = (ROOT / "README.md").read_text()
    if start not in text or end not in text:
        raise InvalidOption(f"--readme: README.md has no {start} ... {end} block to regenerate")
    return cited


def _update_readme(result: dict[str, Any], source: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = README_MARKERS
    body = f"{start}\n<!-- generated by `python -m bench.transfer --readme` from {source} -->\n"
    body += markdown_table(result) + f"\n{end}"
    readme.write_text(re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: body, text, flags=re.S))
    console.print("README.md results table regenerated")
