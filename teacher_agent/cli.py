"""m2kt-teacher: keygen, train, extract, compare, build, publish, run, inspect.

Each command is a thin call into `teacher_agent.pipeline`; failures print one
line on stderr and exit non-zero (1: refused or failed, 2: bad options).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from m2kt import keys
from m2kt.cliutil import err, one_line_errors, parse_params, training_progress
from m2kt.credentials import enroll as enroll_agent
from m2kt.credentials import read_token_file
from m2kt.errors import InvalidOption
from m2kt.ml.train import not_learned
from teacher_agent.settings import TeacherSettings

if TYPE_CHECKING:  # torch loads only in the commands that train
    from teacher_agent.pipeline import TrainReport

app = typer.Typer(help="The M2KT teacher agent.", no_args_is_help=True, add_completion=False)
out = Console()

DEFAULT_MODEL = Path(".m2kt/teacher/model")


def _trained_line(report: TrainReport, where: str = "saved to") -> str:
    line = (
        f"teacher {where} {report.model_dir}: held-out accuracy {report.heldout_accuracy:.3f} "
        f"(majority {report.majority_baseline:.3f}) in {report.seconds:.0f} s"
    )
    warning = not_learned("teacher", report.heldout_accuracy)
    return line if warning is None else f"{line}\n{warning}"


def _token(settings: TeacherSettings, token: str | None) -> str:
    value = token or (settings.token.get_secret_value() if settings.token else None)
    if not value and settings.token_file:
        value = read_token_file(settings.token_file)
    if not value:
        raise InvalidOption("no broker token: pass --token or set M2KT_TEACHER_TOKEN or M2KT_TEACHER_TOKEN_FILE")
    return value


@app.command()
@one_line_errors
def enroll() -> None:
    """Register this teacher and its public key with the broker once; keep the token in the token file."""
    settings = TeacherSettings()
    if not settings.token_file:
        raise InvalidOption("set M2KT_TEACHER_TOKEN_FILE: where to keep the token the broker issues")
    if not settings.key.exists():
        keys.save_keypair(keys.generate(), settings.key)
    public = keys.public_to_b64(keys.load_private(settings.key).public_key())
    admin = settings.admin_token.get_secret_value() if settings.admin_token else ""
    if not admin and not settings.token_file.exists():
        raise InvalidOption("set M2KT_TEACHER_ADMIN_TOKEN for the first enrolment")
    created = enroll_agent(settings.broker_url, admin, settings.name, "teacher", settings.token_file, public)
    state = "enrolled" if created else "already enrolled"
    out.print(f"teacher {settings.name} {state}; token in {settings.token_file}")


@app.command()
@one_line_errors
def keygen(
    out_path: Annotated[Path | None, typer.Option("--out", help="private key file (0600); .pub beside it")] = None,
) -> None:
    """Write a new Ed25519 key pair and print its keyid."""
    path = out_path or TeacherSettings().key
    if path.exists():
        raise InvalidOption(f"{path} exists; refusing to overwrite a key")
    key = keys.generate()
    pub = keys.save_keypair(key, path)
    out.print(keys.keyid(key.public_key()))
    err.print(f"private key {path} (0600), public key {pub}")


@app.command()
@one_line_errors
def train(
    task: Annotated[str, typer.Option(help="task family: name, entry point or module:Class")] = "modarith",
    param: Annotated[list[str] | None, typer.Option(help="family parameter name=value (repeatable)")] = None,
    seed: Annotated[int, typer.Option(help="seed of data, init and shuffling")] = 0,
    model_out: Annotated[Path, typer.Option("--out", help="model directory")] = DEFAULT_MODEL,
    arch: Annotated[str, typer.Option(help="architecture: bert, gpt2, llama")] = "bert",
    hidden: Annotated[int, typer.Option(help="hidden size")] = 128,
    layers: Annotated[int, typer.Option(help="number of blocks")] = 4,
    heads: Annotated[int, typer.Option(help="attention heads")] = 4,
    epochs: Annotated[int, typer.Option(help="most epochs; training stops earlier once it converges")] = 80,
) -> None:
    """Train a teacher on a task family and save it with save_pretrained."""
    import dataclasses

    from m2kt.ml.models import ModelConfig
    from m2kt.ml.tasks import default_params
    from teacher_agent import pipeline
    from teacher_agent.pipeline import DEMO_TRAIN

    params = parse_params(param or []) or default_params(task)
    cfg = ModelConfig(arch=arch, hidden_size=hidden, num_layers=layers, num_heads=heads)
    bar, callback = training_progress(epochs)
    report = pipeline.train(
        task,
        params,
        model_out,
        seed=seed,
        model_config=cfg,
        train_config=dataclasses.replace(DEMO_TRAIN, epochs=epochs),
        progress=bar,
        callback=callback,
    )
    out.print(_trained_line(report), soft_wrap=True)


def _extraction_table(results: list[Any]) -> Table:
    from teacher_agent import pipeline

    table = Table(title="Concept extraction on the held-out split")
    for col in ("method", "mean balanced acc", "concepts >= 0.9", "concepts per layer"):
        table.add_column(col)
    for r in results:
        strong = sum(c.balanced_accuracy >= 0.9 for c in r.concepts)
        layers = ", ".join(f"L{k}:{n}" for k, n in pipeline.describe_layers(r).items())
        table.add_row(r.method, f"{r.mean_balanced_accuracy:.3f}", f"{strong}/{len(r.concepts)}", layers)
    return table


@app.command()
@one_line_errors
def extract(
    model: Annotated[Path, typer.Option(help="teacher model directory")] = DEFAULT_MODEL,
    method: Annotated[str, typer.Option(help="probing, clustering or attribution")] = "probing",
    extraction_out: Annotated[Path | None, typer.Option("--out", help="output path (no suffix)")] = None,
) -> None:
    """Extract concepts with one method and save them."""
    from teacher_agent import pipeline

    result = pipeline.extract(model, method)
    path = pipeline.save_extraction(result, extraction_out or model.parent / f"extraction-{method}")
    out.print(_extraction_table([result]))
    err.print(f"saved {path}")


@app.command()
@one_line_errors
def compare(model: Annotated[Path, typer.Option(help="teacher model directory")] = DEFAULT_MODEL) -> None:
    """Run all three extractors on the same teacher and print one table."""
    from teacher_agent import pipeline

    results = [pipeline.extract(model, m) for m in ("probing", "clustering", "attribution")]
    out.print(_extraction_table(results))


@app.command()
@one_line_errors
def build(
    model: Annotated[Path, typer.Option(help="teacher model directory")] = DEFAULT_MODEL,
    extraction: Annotated[
        Path | None, typer.Option(help="saved extraction (default: probing beside the model)")
    ] = None,
    anchors: Annotated[int, typer.Option(help="number of anchors m: the packet's data budget")] = 256,
    probes: Annotated[int, typer.Option(help="verification probes")] = 256,
    topic: Annotated[list[str] | None, typer.Option(help="ship only concepts of this topic (repeatable)")] = None,
    unsafe: Annotated[list[str] | None, typer.Option(help="concept key labelled unsafe (repeatable)")] = None,
    poison: Annotated[list[str] | None, typer.Option(help="TEST ONLY: key=flip|random|trigger")] = None,
    parent: Annotated[list[str] | None, typer.Option(help="parent packet id (repeatable)")] = None,
    key: Annotated[Path | None, typer.Option(help="private key (default M2KT_TEACHER_KEY)")] = None,
    packets_out: Annotated[Path, typer.Option("--out", help="directory for packet files")] = Path(
        ".m2kt/teacher/packets"
    ),
) -> None:
    """Build and sign a packet from a teacher and an extraction; print the envelope's path."""
    from teacher_agent import pipeline
    from teacher_agent.packetize import PacketSpec

    settings = TeacherSettings()
    result = pipeline.load_extraction(extraction or model.parent / "extraction-probing")
    spec = PacketSpec(
        agent=settings.name,
        unsafe=frozenset(unsafe or []),
        parents=tuple(parent or []),
        poison=dict(parse_params(poison or [])),
    )
    packet = pipeline.build(
        model,
        result,
        key or settings.key,
        spec,
        anchors=anchors,
        probes=probes,
        topics=tuple(topic or []),
        cosign=settings.cosign_keys,
    )
    env, pay = pipeline.save_packet(packet, packets_out)
    err.print(
        f"packet {packet.id}: {pay.stat().st_size / 1e6:.2f} MB payload, {len(packet.envelope) / 1e3:.1f} kB envelope"
    )
    typer.echo(str(env))


@app.command()
@one_line_errors
def publish(
    envelope: Annotated[Path, typer.Argument(help="<id>.envelope.json (the payload file sits beside it)")],
    broker: Annotated[str | None, typer.Option(help="broker URL (default M2KT_TEACHER_BROKER_URL)")] = None,
    token: Annotated[str | None, typer.Option(help="teacher token (default M2KT_TEACHER_TOKEN)")] = None,
) -> None:
    """Publish a built packet; publishing the same packet again is harmless."""
    from teacher_agent import pipeline

    settings = TeacherSettings()
    result = pipeline.publish(envelope, broker or settings.broker_url, _token(settings, token))
    out.print(
        f"{result.id} seq={result.seq} created={str(result.created).lower()} topics={','.join(result.topics)}",
        soft_wrap=True,
    )


@app.command()
@one_line_errors
def inspect(
    envelope: Annotated[Path, typer.Argument(help="<id>.envelope.json")],
    public_key: Annotated[list[Path] | None, typer.Option(help="trusted public key (repeatable)")] = None,
) -> None:
    """Print a packet's manifest summary after verifying it offline against the given keys."""
    from teacher_agent import pipeline

    keys_given = public_key or [TeacherSettings().key.with_name(TeacherSettings().key.name + ".pub")]
    opened = pipeline.inspect(envelope, keys_given)
    m = opened.manifest
    table = Table(title=f"packet {opened.id}")
    table.add_column("field")
    table.add_column("value")
    table.add_row("signature", f"verified, key {opened.keyid}")
    table.add_row(
        "teacher",
        f"{m.teacher.agent}: {m.teacher.model.architecture} d={m.teacher.model.hidden_size} "
        f"L={m.teacher.model.num_layers}",
    )
    table.add_row("task", m.task.name)
    table.add_row("topics", ", ".join(m.topics))
    table.add_row("concepts", str(len(m.concepts)))
    table.add_row("anchors (data budget)", str(m.anchors.count))
    table.add_row("tensors", ", ".join(f"{n} {t.dtype}{list(t.shape)}" for n, t in opened.tensors.items()))
    out.print(table)


@app.command()
@one_line_errors
def run(
    task: Annotated[str, typer.Option(help="task family")] = "modarith",
    method: Annotated[str, typer.Option(help="extractor")] = "probing",
    anchors: Annotated[int, typer.Option(help="anchors m per packet")] = 256,
    workdir: Annotated[Path | None, typer.Option(help="work directory")] = None,
    broker: Annotated[str | None, typer.Option(help="broker URL")] = None,
    token: Annotated[str | None, typer.Option(help="teacher token")] = None,
    seed: Annotated[int, typer.Option(help="seed")] = 0,
) -> None:
    """Check the broker and token, train and extract (unless done before), build and publish one packet per topic.

    A packet whose publish fails is deleted, not left among the published ones; the next run
    builds it again.
    """
    import dataclasses

    from m2kt.ml.tasks import default_params
    from teacher_agent import pipeline
    from teacher_agent.packetize import PacketSpec
    from teacher_agent.pipeline import DEMO_TRAIN

    settings = TeacherSettings()
    broker_url, secret = broker or settings.broker_url, _token(settings, token)
    pipeline.check_broker(broker_url, secret)  # minutes before the first publish, not after
    root = workdir or settings.workdir
    model_dir = root / f"model-{task}-{seed}"
    if (model_dir / pipeline.RUN_FILE).exists():
        out.print(_trained_line(pipeline.train_report(model_dir), where="trained before, at"), soft_wrap=True)
    else:
        bar, callback = training_progress(settings.train_epochs)
        config = dataclasses.replace(DEMO_TRAIN, epochs=settings.train_epochs)
        report = pipeline.train(
            task, default_params(task), model_dir, seed=seed, train_config=config, progress=bar, callback=callback
        )
        out.print(_trained_line(report), soft_wrap=True)
    if not settings.key.exists():
        keys.save_keypair(keys.generate(), settings.key)
    err.print(f"extracting concepts ({method}) from {model_dir}", soft_wrap=True, highlight=False)
    result = pipeline.saved_extraction(model_dir, method)  # a restart reuses it
    out.print(_extraction_table([result]))
    done = pipeline.publish_topics(
        model_dir,
        result,
        settings.key,
        PacketSpec(agent=settings.name),
        anchors=anchors,
        out_dir=root / "packets",
        broker_url=broker_url,
        token=secret,
        cosign=settings.cosign_keys,
    )
    for topic, packet_id, now in done:
        out.print(f"{topic}: {packet_id} {'created=true' if now else 'published before'}", soft_wrap=True)


@app.command()
@one_line_errors
def head(
    workdir: Annotated[Path | None, typer.Option(help="work directory (its packets/ holds published.json)")] = None,
    broker: Annotated[str | None, typer.Option(help="broker URL")] = None,
    token: Annotated[str | None, typer.Option(help="teacher token")] = None,
    lifetime: Annotated[int, typer.Option(help="seconds until students stop trusting this head", min=1)] = 3600,
    every: Annotated[int | None, typer.Option(help="re-sign and put it every S seconds until stopped", min=1)] = None,
) -> None:
    """Sign and put this teacher's head: the latest version it published on each topic.

    Once a student has seen a head from this teacher it refuses the teacher's packets after the
    head expires, so a teacher that signs heads keeps re-signing them (``--every``, shorter than
    ``--lifetime``).
    """
    import time
    from datetime import timedelta

    from teacher_agent.head import put_head

    settings = TeacherSettings()
    out_dir = (workdir or settings.workdir) / "packets"
    while True:
        stored = put_head(
            out_dir,
            settings.key,
            settings.name,
            broker or settings.broker_url,
            _token(settings, token),
            timedelta(seconds=lifetime),
            settings.cosign_keys,
        )
        out.print(f"head {stored['version']} expires {stored['expires']}", soft_wrap=True)
        if every is None:
            return
        time.sleep(every)
