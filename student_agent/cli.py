"""m2kt-student: train, run (subscribe and integrate), query, status.

Settings come from the environment (``M2KT_STUDENT_*``, see `student_agent.settings`); options
override them. Failures print one line on stderr and exit non-zero (1: refused, 2: bad options).
"""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from m2kt.client import BrokerClient
from m2kt.cliutil import err, one_line_errors, parse_params, training_progress
from m2kt.credentials import enroll as enroll_agent
from m2kt.credentials import read_token_file
from m2kt.errors import InvalidOption
from m2kt.ml.models import ModelConfig
from student_agent import checks
from student_agent.settings import StudentSettings

if TYPE_CHECKING:  # torch loads only in the commands that need it
    from student_agent.query import ConceptAnswer

app = typer.Typer(help="The M2KT student agent.", no_args_is_help=True, add_completion=False)
out = Console(soft_wrap=True)


def configure_logging() -> None:
    """INFO from the agent; only warnings from the HTTP libraries, which log every request at INFO."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _token(settings: StudentSettings) -> str:
    if settings.token:
        return settings.token.get_secret_value()
    if settings.token_file:
        return read_token_file(settings.token_file)
    raise InvalidOption("no broker token: set M2KT_STUDENT_TOKEN or M2KT_STUDENT_TOKEN_FILE")


@app.command()
@one_line_errors
def enroll() -> None:
    """Register this student with the broker once; keep the token in the token file."""
    settings = StudentSettings()
    if not settings.token_file:
        raise InvalidOption("set M2KT_STUDENT_TOKEN_FILE: where to keep the token the broker issues")
    admin = settings.admin_token.get_secret_value() if settings.admin_token else ""
    if not admin and not settings.token_file.exists():
        raise InvalidOption("set M2KT_STUDENT_ADMIN_TOKEN for the first enrolment")
    created = enroll_agent(settings.broker_url, admin, settings.name, "student", settings.token_file)
    state = "enrolled" if created else "already enrolled"
    out.print(f"student {settings.name} {state}; token in {settings.token_file}")


@app.command()
@one_line_errors
def train(
    task: Annotated[str, typer.Option(help="task family: name, entry point or module:Class")] = "modarith",
    param: Annotated[list[str] | None, typer.Option(help="family parameter name=value (repeatable)")] = None,
    seed: Annotated[int, typer.Option(help="seed of data, init and shuffling")] = 0,
    out_dir: Annotated[Path | None, typer.Option("--out", help="model directory (default: state dir/model)")] = None,
    arch: Annotated[str, typer.Option(help="architecture: bert, gpt2, llama")] = "llama",
    hidden: Annotated[int, typer.Option(help="hidden size")] = 64,
    layers: Annotated[int, typer.Option(help="number of blocks")] = 3,
    heads: Annotated[int, typer.Option(help="attention heads")] = 4,
    epochs: Annotated[int, typer.Option(help="most epochs; training stops earlier once it converges")] = 120,
    if_missing: Annotated[bool, typer.Option(help="do nothing if the model directory holds a student")] = False,
) -> None:
    """Train the student's own model on the base task (never on concept labels) and save it."""
    from m2kt.ml.tasks import default_params
    from student_agent.model import RUN_FILE, STUDENT_TRAIN, train_student

    target = out_dir or StudentSettings().resolved_model_dir
    if if_missing and (target / RUN_FILE).exists():
        out.print(f"student {target} exists; not retraining")
        return
    cfg = ModelConfig(arch=arch, hidden_size=hidden, num_layers=layers, num_heads=heads)
    train_cfg = STUDENT_TRAIN.__class__(**{**STUDENT_TRAIN.__dict__, "epochs": epochs})
    params = parse_params(param or []) or default_params(task)
    bar, callback = training_progress(epochs)
    student = train_student(
        task, params, target, seed=seed, model_config=cfg, train_config=train_cfg, progress=bar, callback=callback
    )
    out.print(
        f"student {target} held-out accuracy {student.run['heldout_accuracy']:.3f} "
        f"(majority {student.run['majority_baseline']:.3f}) in {student.run['seconds']:.0f}s"
    )


@app.command()
@one_line_errors
def run(
    topic: Annotated[list[str] | None, typer.Option(help="concept topic to follow (repeatable)")] = None,
    trust: Annotated[list[str] | None, typer.Option(help="keyid to accept signatures from (repeatable)")] = None,
    max_packets: Annotated[int, typer.Option(help="stop after handling this many packets (0: never)")] = 0,
    idle_exit: Annotated[float, typer.Option(help="stop after this many idle seconds (0: never)")] = 0.0,
) -> None:
    """Subscribe to topics and integrate every packet: verify, fit the CAL, audit, report."""
    from student_agent.agent import StudentAgent
    from student_agent.cal.config import CALSpec
    from student_agent.cal.fit import FitConfig
    from student_agent.model import load_student

    settings = StudentSettings()
    cal = CALSpec(form=settings.cal_form, direction=settings.cal_direction)
    fit_config = FitConfig(alpha=settings.alpha, beta=settings.beta, gamma=settings.gamma, lam=settings.lam, cal=cal)
    revoked_after = settings.revoked_cutoff  # a bad value stops here, before the broker is asked anything
    if settings.min_signers < 1:
        raise InvalidOption(f"M2KT_STUDENT_MIN_SIGNERS must be at least 1, not {settings.min_signers}")
    topics = list(topic or settings.topics)
    if not topics:
        raise InvalidOption("no topics: pass --topic or set M2KT_STUDENT_TOPICS")
    token = _token(settings)
    with BrokerClient(settings.broker_url, token) as probe:
        probe.require_role("student")  # before the model, any download or any fitting
    student = load_student(settings.resolved_model_dir)
    checks.require_topics(student.family, topics)  # before a topic reaches the state file
    configure_logging()
    handled, last = 0, time.monotonic()
    stopping = False

    def on_term(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)

    def stop() -> bool:
        idle = idle_exit and time.monotonic() - last > idle_exit
        return stopping or bool(max_packets and handled >= max_packets) or bool(idle)

    def connect() -> BrokerClient:
        return BrokerClient(settings.broker_url, token)

    def done(outcome: Any) -> None:
        nonlocal handled, last
        handled, last = handled + 1, time.monotonic()
        out.print(f"packet {outcome.packet_id} {outcome.verdict}: {outcome.detail}", highlight=False)

    with connect() as client:
        agent = StudentAgent(
            student,
            client,
            settings.state_dir,
            trusted_keys=tuple(trust or settings.trusted_keys),
            unlabelled=settings.unlabelled,
            fit_config=fit_config,
            revoked_after=revoked_after,
            min_signers=settings.min_signers,
        )
        try:
            agent.run(topics, connect, stop=stop, on_outcome=done)
        except KeyboardInterrupt:
            err.print("interrupted; state saved")


@app.command()
@one_line_errors
def query(
    text: Annotated[list[str], typer.Argument(help="input texts, e.g. '3 + 4 * 5'")],
    topic: Annotated[list[str] | None, typer.Option(help="only concepts of this topic (repeatable)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Print the transferred concepts' probabilities for the texts (frozen student + its CALs)."""
    from student_agent.model import load_student
    from student_agent.query import TransferredConcepts

    settings = StudentSettings()
    student = load_student(settings.resolved_model_dir)
    checks.require_inputs(student.family, text)
    checks.require_topics(student.family, topic or [])
    known = TransferredConcepts(student, settings.state_dir)
    empty = checks.topics_without_concepts((c.topic for c in known.concepts), topic or [])
    for name in empty:
        err.print(f"nothing integrated for topic {name} yet", highlight=False)
    if topic and len(empty) == len(topic):
        raise typer.Exit(code=1)
    answers = known.predict(text, topic or [])
    if as_json:
        out.print_json(json.dumps([{"text": a.text, "probabilities": a.probabilities} for a in answers]))
        return
    print_answers(out, answers, known.version)


def print_answers(console: Console, answers: list[ConceptAnswer], version: int | None) -> None:
    """A heading line, then one row per concept and one column per text.

    The heading is its own line, not the table's title: a title wraps to the table's width,
    which a narrow table (one short text) breaks mid-phrase.
    """
    console.print(f"transferred concepts (CAL v{version})", highlight=False, soft_wrap=True)
    table = Table("concept", *(a.text for a in answers))
    for key in answers[0].probabilities if answers else []:
        table.add_row(key, *(f"{a.probabilities[key]:.2f}" for a in answers))
    console.print(table)


@app.command()
@one_line_errors
def status() -> None:
    """Print what the student has integrated and handled."""
    from student_agent.agent import CAL_DIR, STATE_FILE
    from student_agent.cal.checkpoint import CheckpointStore
    from student_agent.state import StudentState

    settings = StudentSettings()
    state = StudentState.load(settings.state_dir / STATE_FILE)
    store = CheckpointStore(settings.state_dir / CAL_DIR)
    verdicts: dict[str, int] = {}
    for h in state.handled.values():
        verdicts[h["verdict"]] = verdicts.get(h["verdict"], 0) + 1
    out.print(f"CAL version: {store.current()}; cursors: {state.cursors}; handled: {verdicts}")
    table = Table("packet", "teacher", "topics", "concepts", "mean agreement", title="integrated packets")
    for e in store.index()["entries"]:
        table.add_row(
            e["packet_id"][:16],
            e["teacher"],
            ", ".join(e["topics"]),
            str(len(e["concepts"])),
            str(e.get("mean_agreement")),
        )
    out.print(table)
