"""The student agent: take one packet from summary to report, exactly once.

For each packet: verify it itself (`verify`), fit a CAL on the frozen student (`cal.fit`),
stage it as a new checkpoint version, audit it (`audit`), then activate the version or
discard it (rollback: the store is left byte for byte as it was), and report the verdict to
the broker. The state file marks the packet handled only after the broker has the report.

Trust over time (`student_agent.trust`): each sync first learns which keys the registry now
lists as revoked and takes out of the CAL store, byte for byte as if never integrated, every
packet such a key signed (those created at or after ``revoked_after``; by default all); then
it takes the teachers' signed heads, pages the topic, and reports each packet a head names
that the broker did not serve. Every refusal and removal of that kind also goes to the broker
as a trust report on the teacher (`BrokerClient.trust_report`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from m2kt import dsse, keys
from m2kt.client import BrokerClient
from m2kt.errors import Conflict, Forbidden, M2KTError, Unauthorized
from m2kt.jsonutil import loads_strict
from m2kt.ml.models import weights_sha256
from student_agent.audit import AuditConfig, Decision, audit
from student_agent.cal.checkpoint import CheckpointStore
from student_agent.cal.fit import ConceptReader, FitConfig, fit_cal
from student_agent.features import Observation, observe
from student_agent.knowledge import Knowledge
from student_agent.model import Student
from student_agent.state import StudentState
from student_agent.trust import TRUST_FILE, TrustState
from student_agent.verify import Rejection, check_task, fetch_and_verify, head_of

__all__ = ["Outcome", "StudentAgent", "reader_entry"]

logger = logging.getLogger(__name__)

STATE_FILE, CAL_DIR = "state.json", "cal"
# Refusals that say something about the broker or the teacher's keys, not about one packet's content.
TRUST_REASONS = frozenset({"rollback", "stale", "withheld", "revoked-key", "mix-and-match"})


@dataclass
class Outcome:
    packet_id: str
    verdict: str
    detail: str
    metrics: dict[str, Any] = field(default_factory=dict)
    findings: list[dict[str, Any]] = field(default_factory=list)
    fit_seconds: float | None = None


def reader_entry(
    kn: Knowledge,
    reader: ConceptReader,
    metrics: dict[str, Any],
    signers: tuple[str, ...] = (),
    created_at: str | None = None,
) -> dict[str, Any]:
    """The checkpoint index entry of one integrated packet (what a query needs to rebuild it).

    ``signers`` (the trusted keys that signed the packet, the first one as ``keyid``) and
    ``created_at`` (its signed creation time) decide whether a later revocation removes it.
    """
    return {
        "packet_id": kn.packet_id,
        "teacher": kn.teacher,
        "keyid": signers[0] if signers else None,
        "signers": list(signers),
        "created_at": created_at,
        "teacher_weights": kn.teacher_weights,
        "topics": list(kn.topics),
        "concepts": [{"key": c.key, "name": c.name, "topic": c.topic} for c in kn.concepts],
        "excluded": list(metrics.get("not_transferred", [])),  # audited as not transferred: not served
        "cal": reader.cal_config.to_dict(),
        "shape": {
            "d_student": int(reader.student_norm.mean.shape[-1]),  # per slot for views
            "views": reader.views,
            "n_layers_t": reader.shape_t[0],
            "d_t": reader.shape_t[1],
            "k": len(kn.concepts),
        },
        "mean_agreement": metrics.get("mean_agreement"),
    }


class StudentAgent:
    """One student: its frozen model, its state directory and its broker connection."""

    def __init__(
        self,
        student: Student,
        client: BrokerClient,
        state_dir: Path,
        *,
        trusted_keys: tuple[str, ...] = (),
        unlabelled: int = 4000,
        fit_config: FitConfig | None = None,
        audit_config: AuditConfig | None = None,
        revoked_after: datetime | None = None,
        min_signers: int = 1,
    ) -> None:
        """``revoked_after``: when a key is revoked, remove the CALs of packets it signed with a
        ``created_at`` at or after this time; None (the default) removes all of them. ``min_signers``:
        distinct trusted keys that must sign every packet and head, whatever threshold the registry lists."""
        self.student, self.client, self.state_dir = student, client, state_dir
        if min_signers < 1:
            raise ValueError(f"M2KT_STUDENT_MIN_SIGNERS must be at least 1, not {min_signers}")
        self.trusted_keys, self.revoked_after, self.min_signers = trusted_keys, revoked_after, min_signers
        self.n_unlabelled = unlabelled
        self.fit_config, self.audit_config = fit_config or FitConfig(), audit_config or AuditConfig()
        self.state = StudentState.load(state_dir / STATE_FILE)
        self.trust = TrustState.load(state_dir / TRUST_FILE)
        self.store = CheckpointStore(state_dir / CAL_DIR)
        self.store.sweep()  # a version staged before a crash was never decided: drop it
        self._observed: dict[tuple[str, int | None], Observation] = {}
        self._signers: dict[str, tuple[tuple[str, ...], str | None]] = {}  # packet id -> (keyids, created_at)

    # -- the student's own inputs (no labels of any kind) --------------------------------------
    def unlabelled(self, words: int | None = None) -> Observation:
        """The student on its own training inputs (its views with ``words`` word slots, if given)."""
        return self._own("train", words)

    def held_back(self, words: int | None = None) -> Observation:
        """Inputs the CAL never fits on: the reasoning check and the base-task check use them."""
        return self._own("eval", words)

    def _own(self, split: str, words: int | None) -> Observation:
        key = (split, words)
        if key not in self._observed:
            texts = self.student.split(split).texts
            texts = texts[: self.n_unlabelled] if split == "train" else texts
            self._observed[key] = observe(self.student.model, self.student.tokenizer, texts, words)
        return self._observed[key]

    # -- one packet ------------------------------------------------------------------------
    def handle(self, summary: dict[str, Any]) -> Outcome | None:
        """Verify, fit, audit, decide and report one packet; None if it was handled before."""
        packet_id, seq = str(summary["id"]), int(summary["seq"])
        topics = [str(t) for t in summary.get("topics", [])]
        if self.state.is_handled(packet_id):
            return None
        integrated = {e["packet_id"]: e for e in self.store.index()["entries"]}
        if packet_id in integrated:  # fitted and activated before a crash, report not acknowledged
            entry = integrated[packet_id]
            outcome = Outcome(
                packet_id, "accepted", "integrated before a restart", {"mean_agreement": entry.get("mean_agreement")}
            )
        else:
            outcome = self._integrate(summary)
        self._report(outcome)
        self.state.mark_handled(packet_id, outcome.verdict, seq, topics)
        logger.info("packet %s: %s (%s)", packet_id[:12], outcome.verdict, outcome.detail)
        return outcome

    def _integrate(self, summary: dict[str, Any]) -> Outcome:
        packet_id = str(summary["id"])
        try:
            verified = fetch_and_verify(self.client, summary, self.trusted_keys, self.trust, self.min_signers)
            check_task(verified.knowledge, self.student.model.task_spec)
        except Rejection as exc:
            if exc.reason in TRUST_REASONS:
                self._trust_report(str(summary["teacher"]), exc.reason, "refused", packet_id, exc.detail)
            return Outcome(packet_id, "rejected", f"{exc.reason}: {exc.detail}", {"reason": exc.reason})
        kn = verified.knowledge
        model, tok = self.student.model, self.student.tokenizer
        digest_before = weights_sha256(model)
        words = kn.views.words if kn.views is not None and self.fit_config.views else None
        base_before = self.held_back(words)
        anchors = observe(model, tok, kn.anchor_texts, words)
        fitted = fit_cal(kn, anchors, self.unlabelled(words), self.fit_config)
        probes = observe(model, tok, kn.probe_texts, words)
        base_after = observe(model, tok, self.student.split("eval").texts, words)
        decision = audit(
            fitted.reader,
            kn,
            probes=probes,
            held=base_before,
            base_before=base_before,
            base_after=base_after,
            config=self.audit_config,
        )
        decision.metrics["fit_seconds"] = round(fitted.seconds, 2)
        decision.metrics["anchors"] = len(kn.anchor_texts)
        decision.metrics["loss_terms"] = fitted.losses
        digest_after = weights_sha256(model)
        decision.metrics["student_weights_unchanged"] = digest_before == digest_after
        if digest_before != digest_after:
            decision = Decision("rolled_back", decision.metrics, decision.findings, "the student's weights changed")
        signers = verified.opened.signers or (verified.opened.keyid,)
        self._commit(
            reader_entry(kn, fitted.reader, decision.metrics, signers, verified.opened.manifest.created_at),
            fitted.reader,
            decision,
        )
        return Outcome(
            packet_id, decision.verdict, decision.detail, decision.metrics, decision.findings, fitted.seconds
        )

    def _commit(self, entry: dict[str, Any], reader: ConceptReader, decision: Decision) -> None:
        """Stage the new version, prove it loads to the same reader, then activate or discard it."""
        version = self.store.stage(entry, reader.state_dict())
        reloaded = load_reader(self.store, self.store.index(version)["entries"][-1])
        probe = reader.example_input(4, torch.Generator().manual_seed(0))
        if not torch.equal(reloaded(probe), reader(probe)):
            decision.verdict, decision.detail = "rolled_back", "the staged checkpoint does not reproduce the CAL"
        if decision.verdict == "accepted":
            self.store.activate(version)
        else:
            self.store.discard(version)

    def _report(self, outcome: Outcome) -> None:
        body = {
            "verdict": outcome.verdict,
            "metrics": outcome.metrics,
            "student_model": self.student.model_card(),
            "safety_findings": outcome.findings,
            "detail": outcome.detail[:4000],
        }
        try:
            self.client.report(outcome.packet_id, body)
        except Conflict:
            logger.info("packet %s: reported before a restart", outcome.packet_id[:12])

    # -- the subscription --------------------------------------------------------------------
    def catch_up(self, topic: str) -> list[Outcome]:
        """Sync one topic: revocations, then heads, then page from the cursor and handle what is new.

        The heads are taken before the page-through: a teacher puts a head only after the
        packets it names were published, so a named packet the page-through does not list was
        held back. Also the fallback to streaming.
        """
        done = self.sync_revocations()
        self.refresh_heads()
        for summary in self.client.iter_topic_packets(topic, after=self.state.cursors.get(topic, 0)):
            outcome = self.handle(summary)
            if outcome is not None:
                done.append(outcome)
            self.state.advance(topic, int(summary["seq"]))
        return done + self.report_withheld(topic) + self.remove_revoked()

    def _teachers(self) -> list[str]:
        """Every teacher this student pinned keys for or holds a CAL of."""
        held = {str(e["teacher"]) for e in self.store.index()["entries"]}
        return sorted(held | set(self.trust.pinned))

    def refresh_heads(self) -> None:
        """Take each known teacher's current signed head; a head refused is reported as such."""
        for teacher in self._teachers():
            try:
                trusted = self.trust.keys_for(teacher, self.client.get_agent(teacher), self.trusted_keys)
                self.trust.update_head(teacher, head_of(self.client, teacher), trusted, minimum=self.min_signers)
            except Rejection as exc:
                logger.warning("teacher %s: head refused: %s: %s", teacher, exc.reason, exc.detail)
                if exc.reason in TRUST_REASONS:
                    self._trust_report(teacher, exc.reason, "refused", None, f"head: {exc.detail}")
            except M2KTError as exc:
                logger.warning("teacher %s: could not fetch its head: %s", teacher, exc)

    def sync_revocations(self) -> list[Outcome]:
        """Learn the revocations the registry lists for every known teacher, then remove what they signed."""
        for teacher in self._teachers():
            try:
                self.trust.learn_revoked(teacher, self.client.get_agent(teacher))
            except Rejection as exc:
                logger.warning("teacher %s: %s", teacher, exc.detail)
            except M2KTError as exc:
                logger.warning("teacher %s: could not read its registry entry: %s", teacher, exc)
        return self.remove_revoked()

    def remove_revoked(self) -> list[Outcome]:
        """Take out of the CAL store every packet signed by a revoked key (after ``revoked_after``).

        The store is left as if the packet had never been integrated (`CheckpointStore.remove`);
        each removal is remembered in the trust state and reported to the broker, again on the
        next sync should the report not go through.
        """
        doomed: dict[str, tuple[str, str]] = {}
        for entry in self.store.index()["entries"]:
            teacher = str(entry["teacher"])
            if not any(t == teacher for t in self.trust.revoked.values()):
                continue
            signers, created = self._signers_of(entry)
            revoked = [k for k in signers if k in self.trust.revoked]
            need = max(self.trust.thresholds.get(teacher, 1), self.min_signers)
            if not revoked or len(signers) - len(revoked) >= need:
                continue  # enough keys that were never revoked signed it (k-of-n)
            if self.revoked_after is not None and created is not None:
                if datetime.fromisoformat(created.replace("Z", "+00:00")) < self.revoked_after:
                    continue
            doomed[str(entry["packet_id"])] = (teacher, revoked[0])
        # The removals are recorded before the store changes: a crash in between leaves them recorded
        # (the next sync finds the entries again and removes them), never removed and unreported.
        for packet_id, (teacher, keyid) in doomed.items():
            self.trust.removed[packet_id] = {"teacher": teacher, "keyid": keyid, "reported": False}
        if doomed:
            self.trust.save()
        removed = self.store.remove(doomed) if doomed else []
        outcomes = []
        for packet_id in removed:
            teacher, keyid = doomed[packet_id]
            if packet_id in self.state.handled:
                self.state.handled[packet_id]["verdict"] = "removed"
            detail = f"its CAL was removed: signed by key {keyid}, which was revoked"
            logger.warning("packet %s: %s", packet_id[:12], detail)
            outcomes.append(Outcome(packet_id, "removed", f"revoked-key: {detail}", {"reason": "revoked-key"}))
        if removed:
            self.trust.save()
            self.state.save()
        self._report_removals()
        return outcomes

    def _signers_of(self, entry: dict[str, Any]) -> tuple[tuple[str, ...], str | None]:
        """(signing keyids, created_at) of an integrated packet: from its index entry, else from its envelope.

        Entries written before signers were kept: the envelope is fetched and checked against each
        revoked key of the teacher this student had pinned; only a signature that verifies counts.
        """
        if entry.get("signers"):
            return tuple(map(str, entry["signers"])), entry.get("created_at")
        if entry.get("keyid"):
            return (str(entry["keyid"]),), entry.get("created_at")
        packet_id = str(entry["packet_id"])
        if packet_id not in self._signers:
            self._signers[packet_id] = ((), None)
            pins = self.trust.pinned.get(str(entry["teacher"]), {})
            candidates = {k: keys.public_from_b64(v) for k, v in pins.items() if k in self.trust.revoked}
            try:
                verified = dsse.verify(dsse.Envelope.from_json(self.client.get_envelope(packet_id)), candidates)
                created = loads_strict(verified.statement).get("predicate", {}).get("created_at")
                self._signers[packet_id] = (verified.keyids, created if isinstance(created, str) else None)
            except (M2KTError, ValueError, AttributeError) as exc:
                logger.info("packet %s: no revoked key signed it (%s)", packet_id[:12], exc)
        return self._signers[packet_id]

    def _report_removals(self) -> None:
        for packet_id, removal in sorted(self.trust.removed.items()):
            if removal["reported"]:
                continue
            detail = f"its CAL was removed: signed by key {removal['keyid']}, which was revoked"
            if self._trust_report(removal["teacher"], "revoked-key", "removed", packet_id, detail):
                removal["reported"] = True
                self.trust.save()

    def _trust_report(self, teacher: str, reason: str, action: str, packet_id: str | None, detail: str) -> bool:
        """Tell the broker what this student refused or removed of ``teacher``; False when it could not."""
        body = {"reason": reason, "action": action, "packet": packet_id, "detail": detail[:4000]}
        try:
            self.client.trust_report(teacher, body)
        except M2KTError as exc:  # a broker that withholds may refuse the report too; removals are retried
            logger.warning("teacher %s: the trust report (%s) failed: %s", teacher, reason, exc)
            return False
        return True

    def report_withheld(self, topic: str) -> list[Outcome]:
        """Report each packet a teacher's signed head names on ``topic`` that the broker did not serve.

        Run after a complete page-through, so a packet the head names can only be missing because
        the broker held it back. The packet is not marked handled: should it come, it is handled.
        """
        found = []
        for teacher in sorted(self.trust.heads):
            missing = self.trust.withheld(teacher, topic)
            if missing is None or self.state.is_handled(missing[0]):
                continue
            outcome = Outcome(missing[0], "rejected", f"withheld: {missing[1]}", {"reason": "withheld"})
            logger.warning("teacher %s: %s", teacher, outcome.detail)
            self._trust_report(teacher, "withheld", "refused", missing[0], missing[1])
            try:
                self._report(outcome)
            except M2KTError as exc:  # a broker that withholds a packet may refuse reports on it too
                logger.warning("packet %s: the report of withholding failed: %s", missing[0][:12], exc)
            found.append(outcome)
        return found

    def run(
        self,
        topics: list[str],
        connect: Callable[[], BrokerClient],
        *,
        stop: Callable[[], bool] = lambda: False,
        on_outcome: Callable[[Outcome], None] | None = None,
        read_timeout: float = 30.0,
        retry_seconds: float = 1.0,
        sync_seconds: float = 30.0,
    ) -> None:
        """Follow ``topics`` until ``stop()``; packets are handled one at a time, in arrival order.

        One reader thread per topic holds an event stream open from the topic's cursor
        (``Last-Event-ID``), and pages ``/packets?after=`` whenever the stream breaks before
        reconnecting; the main thread handles what they queue. Cursors advance only after a
        packet is handled, so a restart resumes where handling stopped. When nothing is queued,
        the main thread syncs every ``sync_seconds`` (`_sync_following`): a stream shows packets,
        not revocations or heads, and a withheld packet never comes down it.
        """
        for topic in topics:
            self.state.cursors.setdefault(topic, 0)
        self.state.save()
        inbox: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        halt = threading.Event()
        refused: list[M2KTError] = []  # a reader's 401/403: retrying cannot fix a token or a role
        readers = [
            threading.Thread(
                target=_read_topic,
                args=(topic, self.state.cursors[topic], connect, inbox, halt, read_timeout, retry_seconds, refused),
                name=f"m2kt-student-{topic}",
                daemon=True,
            )
            for topic in topics
        ]
        for thread in readers:
            thread.start()
        last_sync = float("-inf")
        try:
            while not stop() and not refused:
                try:
                    topic, summary = inbox.get(timeout=0.2)
                except queue.Empty:
                    if time.monotonic() - last_sync >= sync_seconds:
                        last_sync = time.monotonic()
                        self._sync_following(topics, inbox, refused)
                    continue
                outcome = self.handle(summary)
                self.state.advance(topic, int(summary["seq"]))
                if outcome is not None and on_outcome is not None:
                    on_outcome(outcome)
        finally:
            halt.set()
            for thread in readers:
                thread.join(timeout=read_timeout + 5)
        if refused:
            raise refused[0]

    def _sync_following(
        self, topics: list[str], inbox: queue.Queue[tuple[str, dict[str, Any]]], refused: list[M2KTError]
    ) -> None:
        """What the streams do not show: revocations (and removals), heads, and packets the heads name.

        Packets the page-through finds unhandled are queued like the readers' (the main loop
        handles them in order, between its ``stop()`` checks); a topic whose page-through finds
        nothing new is checked for withheld packets, as `catch_up` does.
        """
        try:
            self.sync_revocations()
            self.refresh_heads()
            for topic in topics:
                after = self.state.cursors.get(topic, 0)
                fresh = [
                    s
                    for s in self.client.iter_topic_packets(topic, after=after)
                    if not self.state.is_handled(str(s["id"]))
                ]
                for summary in fresh:
                    inbox.put((topic, summary))
                if not fresh:
                    self.report_withheld(topic)
        except (Unauthorized, Forbidden) as exc:
            refused.append(exc)
        except M2KTError as exc:
            logger.warning("sync failed: %s; again in a while", exc)


def _read_topic(
    topic: str,
    cursor: int,
    connect: Callable[[], BrokerClient],
    inbox: queue.Queue[tuple[str, dict[str, Any]]],
    halt: threading.Event,
    read_timeout: float,
    retry_seconds: float,
    refused: list[M2KTError],
) -> None:
    """Queue every packet of ``topic`` after ``cursor``, once, in seq order, until ``halt``.

    Outages are retried; a 401 or 403 is not transient: it goes into ``refused`` and stops all.
    """
    with connect() as client:
        while not halt.is_set():
            try:
                for summary in client.iter_topic_packets(topic, after=cursor):  # the paging fallback
                    inbox.put((topic, summary))
                    cursor = max(cursor, int(summary["seq"]))
                for event in client.events(topic, str(cursor), read_timeout=read_timeout, keepalives=True):
                    if halt.is_set():
                        return
                    if event.event == "packet":
                        summary = event.json()
                        if int(summary["seq"]) > cursor:
                            inbox.put((topic, summary))
                            cursor = int(summary["seq"])
            except (Unauthorized, Forbidden) as exc:
                refused.append(exc)
                halt.set()
                return
            except (M2KTError, ValueError, KeyError) as exc:  # a broken stream or an outage: page again
                logger.warning("topic %s: %s; retrying in %.1fs", topic, exc, retry_seconds)
                halt.wait(retry_seconds)


def load_reader(store: CheckpointStore, entry: dict[str, Any]) -> ConceptReader:
    from student_agent.cal.config import CALConfig

    shape = entry["shape"]
    cal = CALConfig.from_dict(entry["cal"])  # also the flat layout of stores written before CALSpec
    reader = ConceptReader(cal, shape["d_student"], shape["n_layers_t"], shape["d_t"], shape["k"], shape.get("views"))
    reader.load_state_dict(store.load_reader(entry["packet_id"]))
    reader.eval()
    reader.requires_grad_(False)
    return reader
