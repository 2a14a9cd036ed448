"""The end-to-end demo: a teacher teaches a student through a broker, and we measure what arrived.

Run with `make demo`. Every piece is the one a deployment runs: `m2kt-broker serve` on SQLite
over HTTP, a teacher and a student trained here by our code (cached in `.m2kt/demo-models/`
after the first run), the teacher's signed packets published one concept topic at a time, the
student subscribed to every topic over Server-Sent Events, verifying, fitting its CAL,
auditing and reporting each packet. One extra packet carries a label-flipped concept: the
student must catch it and roll its CAL store back byte for byte.

The demo is also the evaluator: it owns the task generator, so it labels held-out inputs
that neither model has seen and scores, per packet, the student before and after, the
teacher, and knowledge distillation from the same m anchors (KD at equal data).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rfc8785
import torch
from rich.console import Console
from rich.table import Table

from m2kt import BrokerClient, keys
from m2kt.ml.tasks import default_params
from m2kt.ml.threads import use_default_threads
from m2kt.ml.train import not_learned
from m2kt.text import count
from student_agent.agent import Outcome, StudentAgent
from student_agent.evaluate import concept_truth, kd_equal_data, kd_features, scores
from student_agent.features import observe
from student_agent.model import Student, load_student, train_student
from student_agent.query import TransferredConcepts
from student_agent.verify import fetch_and_verify
from teacher_agent import pipeline
from teacher_agent.extract.base import ExtractionResult
from teacher_agent.packetize import PacketSpec

console = Console(width=max(Console().width, 132))  # full tables in a log file too
ROOT = Path(__file__).resolve().parent.parent
MODELS, WORK = ROOT / ".m2kt" / "demo-models", ROOT / ".m2kt" / "demo"
TASK, SEED, ANCHORS, PROBES = "modarith", 0, 256, 256
DEMO_PARAMS = default_params(TASK)  # modarith p=23: trains in minutes on 2 cores
POISONED_TOPIC = "modarith.parity"
QUERIES = 4  # held-out inputs to query


@dataclass
class Row:
    topic: str
    packet_id: str
    keys: tuple[str, ...]
    teacher: float
    before: float
    after: float = 0.0
    kd_equal: float = 0.0
    base_before: float | None = None
    base_after: float | None = None
    verdict: str = ""
    detail: str = ""
    fit_seconds: float | None = None


def main() -> None:
    use_default_threads()
    started = time.monotonic()
    console.rule("[bold]M2KT end-to-end demo")
    teacher_dir, extraction = _teacher()
    student = _student()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    port, admin_token = _free_port(), secrets.token_urlsafe(24)
    url = f"http://127.0.0.1:{port}"
    token_file = WORK / "admin.token"
    token_file.touch(mode=0o600)
    token_file.write_text(admin_token + "\n")
    proc = _start_broker(WORK, port, admin_token)
    try:
        rows, store_same, provenance = _transfer(url, admin_token, teacher_dir, extraction, student)
        _show_rows(rows)
        _show_queries(student)
        ok = _show_provenance(*provenance) and store_same
        console.print(f"demo finished in {time.monotonic() - started:.0f}s; broker data and student state in {WORK}")
        _show_dashboard(url, token_file, port)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    if not ok:
        raise SystemExit(1)


def _show_dashboard(url: str, token_file: Path, port: int) -> None:
    """The dashboard's address; on a terminal the broker keeps serving it until Enter or Ctrl-C."""
    rel = token_file.relative_to(ROOT)
    console.print(f"[bold]dashboard:[/] {url}/dashboard  (sign in with the admin token in {rel}, mode 0600)")
    if sys.stdin.isatty():
        try:
            input("the broker keeps serving the dashboard; press Enter (or Ctrl-C) to stop it ")
        except (EOFError, KeyboardInterrupt):
            console.print()
    console.print(
        f"to serve it again: M2KT_DATA_DIR={WORK.relative_to(ROOT)} M2KT_ADMIN_TOKEN=$(cat {rel}) "
        f".venv/bin/m2kt-broker serve --port {port}"
    )


# -- models (trained once, then loaded with from_pretrained) ------------------------------------
def _teacher() -> tuple[Path, ExtractionResult]:
    model_dir, ext_path = MODELS / "teacher", MODELS / "teacher-extraction-probing"
    if not (model_dir / pipeline.RUN_FILE).exists():
        console.print("training the teacher (BERT-style, d=128 x 4) on a + b*c mod 23 ...")
        report = pipeline.train(TASK, DEMO_PARAMS, model_dir, seed=SEED, progress=True)
        console.print(f"teacher held-out accuracy {report.heldout_accuracy:.3f} in {report.seconds:.0f}s")
        _warn_if_not_learned("teacher", report.heldout_accuracy)
    if not ext_path.with_suffix(".json").exists():
        console.print("extracting concepts from the teacher's hidden states (linear probes) ...")
        pipeline.save_extraction(pipeline.extract(model_dir, "probing"), ext_path)
    return model_dir, pipeline.load_extraction(ext_path)


def _student() -> Student:
    model_dir = MODELS / "student"
    if (model_dir / "student_run.json").exists():
        return load_student(model_dir)
    console.print("training the student (Llama-style, d=64 x 3) on the base task only ...")
    student = train_student(TASK, DEMO_PARAMS, model_dir, seed=SEED, progress=True)
    console.print(f"student held-out accuracy {student.run['heldout_accuracy']:.3f} in {student.run['seconds']:.0f}s")
    _warn_if_not_learned("student", float(student.run["heldout_accuracy"]))
    return student


def _warn_if_not_learned(who: str, accuracy: float) -> None:
    warning = not_learned(who, accuracy)
    if warning:
        console.print(f"[bold red]{warning}[/]")


# -- the transfer: publish, let the subscribed student handle it, measure -------------------------
def _transfer(
    url: str, admin_token: str, teacher_dir: Path, extraction: ExtractionResult, student: Student
) -> tuple[list[Row], bool, tuple[dict[str, Any], list[dict[str, Any]]]]:
    key = keys.generate()
    keys.save_keypair(key, WORK / "teacher.key")
    with BrokerClient(url, admin_token) as admin:
        teacher = admin.create_agent("demo-teacher", "teacher", keys.public_to_b64(key.public_key()))
        learner = admin.create_agent("demo-student", "student")
    console.print(
        f"broker on SQLite at {url}; registered [cyan]demo-teacher[/] (key {teacher['keyid'][:16]}…) "
        "and [cyan]demo-student[/]"
    )
    topics = sorted({c.topic for c in extraction.concepts})
    outcomes: dict[str, Outcome] = {}
    arrived = threading.Condition()
    stop = threading.Event()

    def on_outcome(outcome: Outcome) -> None:
        with arrived:
            outcomes[outcome.packet_id] = outcome
            arrived.notify_all()

    state_dir = WORK / "student"
    with BrokerClient(url, learner["token"]) as client:
        agent = StudentAgent(student, client, state_dir, trusted_keys=(teacher["keyid"],))
        thread = threading.Thread(
            target=agent.run,
            args=(topics, lambda: BrokerClient(url, learner["token"])),
            kwargs={"stop": stop.is_set, "on_outcome": on_outcome, "read_timeout": 10.0},
            daemon=True,
        )
        thread.start()
        console.print(f"student subscribed to {count(len(topics), 'topic')}: {', '.join(topics)}")
        held = student.split("heldout")  # the same split the teacher held out: neither model trained on it
        words = extraction.view.words if extraction.view is not None else None
        held_obs = observe(student.model, student.tokenizer, held.texts, words)
        parity = [c for c in extraction.concepts if c.topic == POISONED_TOPIC]
        flipped = max(parity, key=lambda c: c.balanced_accuracy).key
        plan = [(t, PacketSpec(agent="demo-teacher")) for t in topics]
        plan.append((POISONED_TOPIC, PacketSpec(agent="demo-teacher", poison={flipped: "flip"})))
        rows: list[Row] = []
        store_before_poison = ""
        base = _base_accuracy(student, held)
        try:
            for topic, spec in plan:
                if spec.poison:
                    store_before_poison = _tree_digest(state_dir / "cal")
                packet = pipeline.build(
                    teacher_dir, extraction, WORK / "teacher.key", spec, anchors=ANCHORS, probes=PROBES, topics=(topic,)
                )
                keys_ = tuple(c.key for c in extraction.concepts if c.topic == topic)
                truth = concept_truth(student.family, held, keys_)
                row = Row(
                    topic,
                    packet.id,
                    keys_,
                    _teacher_score(extraction, keys_),
                    _student_score(student, state_dir, held.texts, keys_, truth),
                )
                with BrokerClient(url, teacher["token"]) as pub:
                    seq = pub.publish(packet.envelope, packet.payload).seq
                poison = f" [red](poisoned: {flipped} flipped)[/]" if spec.poison else ""
                console.print(f"teacher published {packet.id[:12]}… on {topic} as seq {seq}{poison}")
                outcome = _wait(outcomes, arrived, packet.id)
                summary = client.get_packet(packet.id)
                kn = fetch_and_verify(client, summary, (teacher["keyid"],)).knowledge
                kd = kd_equal_data(kn, observe(student.model, student.tokenizer, kn.anchor_texts, words))
                row.kd_equal = float(scores(kd(kd_features(held_obs)), truth).mean())
                row.after = _student_score(student, state_dir, held.texts, keys_, truth)
                row.verdict, row.detail, row.fit_seconds = outcome.verdict, outcome.detail, outcome.fit_seconds
                row.base_before = base
                base = _base_accuracy(student, held)
                row.base_after = base
                colour = "green" if outcome.verdict == "accepted" else "red"
                console.print(f"  student: [{colour}]{outcome.verdict}[/] — {outcome.detail}", highlight=False)
                rows.append(row)
        finally:
            stop.set()
            thread.join(timeout=30)
        store_same = _tree_digest(state_dir / "cal") == store_before_poison
        console.print(
            f"CAL store after the poisoned packet: "
            f"{'[green]byte-identical to before' if store_same else '[red]CHANGED'}"
        )
        provenance = client.provenance(rows[-1].packet_id), list(client.iter_log())
    return rows, store_same, provenance


def _wait(outcomes: dict[str, Outcome], arrived: threading.Condition, packet_id: str) -> Outcome:
    with arrived:
        if not arrived.wait_for(lambda: packet_id in outcomes, timeout=600):
            raise SystemExit(f"the student did not handle packet {packet_id} within 10 minutes")
        return outcomes[packet_id]


def _base_accuracy(student: Student, held: Any) -> float:
    """The student's own base-task accuracy on the held-out inputs (frozen: it must not move)."""
    answers = observe(student.model, student.tokenizer, held.texts).answer
    return float((answers == torch.as_tensor(held.answers)).float().mean())


def _teacher_score(extraction: ExtractionResult, keys_: tuple[str, ...]) -> float:
    """The teacher's own held-out balanced accuracy, as its manifest claims it."""
    by_key = {c.key: c.balanced_accuracy for c in extraction.concepts}
    if extraction.view is not None:  # the packet ships the view read-outs; theirs is the claim
        by_key = {c.key: float(extraction.view.accuracy[i]) for i, c in enumerate(extraction.concepts)}
    return sum(by_key[k] for k in keys_) / len(keys_)


def _student_score(
    student: Student, state_dir: Path, texts: Sequence[str], keys_: tuple[str, ...], truth: Any
) -> float:
    """Mean balanced accuracy of the student's query API on ``keys_``; an unknown concept scores as chance."""
    known = TransferredConcepts(student, state_dir)
    if not known.concepts:
        return float(scores(torch.zeros(truth.shape), truth).mean())
    answers = known.predict(list(texts))
    probs = torch.tensor([[a.probabilities.get(k, 0.5) for k in keys_] for a in answers])
    return float(scores(torch.logit(probs.clamp(1e-6, 1 - 1e-6)), truth).mean())


def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


# -- output --------------------------------------------------------------------------------------
def _show_rows(rows: list[Row]) -> None:
    table = Table(
        title=f"Concept transfer per packet: mean balanced accuracy on {TASK} held-out inputs "
        f"(m={ANCHORS} anchors per packet)"
    )
    for col in (
        "topic",
        "concepts",
        "teacher",
        "student before",
        "student after",
        "KD @ m",
        "base task",
        "fit s",
        "verdict",
    ):
        table.add_column(col, justify="left" if col in ("topic", "verdict") else "right")
    for r in rows:
        colour = "green" if r.verdict == "accepted" else "red"
        base = "—" if r.base_before is None else f"{r.base_before:.3f}→{r.base_after:.3f}"
        topic = r.topic + (" (poisoned)" if r.verdict != "accepted" else "")
        table.add_row(
            topic,
            str(len(r.keys)),
            f"{r.teacher:.3f}",
            f"{r.before:.3f}",
            f"{r.after:.3f}",
            f"{r.kd_equal:.3f}",
            base,
            "—" if r.fit_seconds is None else f"{r.fit_seconds:.1f}",
            f"[{colour}]{r.verdict}",
        )
    console.print(table)


def _show_queries(student: Student) -> None:
    known = TransferredConcepts(student, WORK / "student")
    shown = [
        c
        for c in known.concepts
        if c.key in ("modarith.s1.even", "modarith.answer.even", "modarith.a_lt_b", "modarith.wrap")
    ][:4]
    shown = shown or known.concepts[:4]
    held = student.split("heldout")
    texts = list(held.texts[:QUERIES])
    truth = concept_truth(student.family, held, [c.key for c in shown])
    table = Table(title="Concept queries: P(concept) from the frozen student + its CALs (truth in brackets)")
    table.add_column("input")
    for c in shown:
        table.add_column(c.name, justify="right")
    for i, answer in enumerate(known.predict(texts)):
        table.add_row(
            answer.text, *(f"{answer.probabilities[c.key]:.2f} [{int(truth[i, j])}]" for j, c in enumerate(shown))
        )
    console.print(table)


def _chain_ok(log: list[dict[str, Any]]) -> bool:
    prev = "0" * 64
    for entry in log:
        unsigned = {k: v for k, v in entry.items() if k != "hash"}
        digest = hashlib.sha256(bytes.fromhex(prev) + rfc8785.dumps(unsigned)).hexdigest()
        if entry["prev_hash"] != prev or digest != entry["hash"]:
            return False
        prev = entry["hash"]
    return True


def _show_provenance(provenance: dict[str, Any], log: list[dict[str, Any]]) -> bool:
    key = provenance["key"]
    table = Table(
        title=f"Provenance of the poisoned packet: teacher {provenance['teacher']}, "
        f"key {key['keyid'][:16]}… ({'revoked' if key['revoked'] else 'active'})"
    )
    for col in ("index", "kind", "at", "detail", "hash", "prev_hash"):
        table.add_column(col)
    for e in provenance["log"]:
        body = provenance.get("bodies", {}).get(str(e["index"]), {})
        detail = str(body.get("verdict", "")) if isinstance(body, dict) else ""
        at = re.sub(r"\.\d+", "", e["at"])  # to the second; the log keeps microseconds for its hashes
        table.add_row(str(e["index"]), e["kind"], at, detail, e["hash"][:12] + "…", e["prev_hash"][:12] + "…")
    console.print(table)
    ok = _chain_ok(log)
    console.print(
        f"event log hash chain: {'[green]verified' if ok else '[red]BROKEN'} "
        f"({count(len(log), 'entry', 'entries')}, recomputed here from the genesis hash)"
    )
    return ok


# -- the broker process -------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_broker(data_dir: Path, port: int, admin_token: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "M2KT_DATA_DIR": str(data_dir),
        "M2KT_ADMIN_TOKEN": admin_token,
        "M2KT_SSE_KEEPALIVE_SECONDS": "2",
    }
    with (data_dir / "broker.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "broker", "serve", "--port", str(port)], env=env, stdout=log, stderr=log
        )
    with BrokerClient(f"http://127.0.0.1:{port}", retries=0) as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if client.ready():
                return proc
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"broker did not start; see {data_dir / 'broker.log'}")


if __name__ == "__main__":
    main()
