"""The read-only web dashboard: server-rendered pages (Jinja2), no front-end build, no CDN.

Sign-in takes any agent token or the admin token once and opens a server-side session
(broker/services/dashboard_sessions.py): the HttpOnly, SameSite=Strict cookie scoped to
``/dashboard`` holds only a random session id, which expires, dies on sign-out and with the
token it was opened by. Every form carries the session's CSRF token, and every POST must come
from this origin (Origin, else Referer); failed sign-ins are throttled per client address. The
guard (broker/guard.py) adds CSP, frame and nosniff headers. Every page sees exactly what the
API would show that caller (students never see quarantined packets). Charts are inline SVG
drawn by the template, so the package ships no JavaScript library. Each page runs a fixed
number of queries (`broker/repositories/dashboard.py`), paged by seq.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates

from broker.api.params import MAX_CURSOR
from broker.deps import (
    ADMIN,
    BroadcasterDep,
    Caller,
    SessionsDep,
    SettingsDep,
    StoreDep,
    StreamSlotsDep,
    caller_for_token,
)
from broker.events import SlotStreamingResponse
from broker.repositories import dashboard as queries
from broker.services import dashboard_sessions, eventlog
from broker.services import packets as packets_service
from broker.services import topics as topics_service
from broker.services import trust as trust_service
from m2kt.errors import Forbidden, NotFound, TooManyRequests, Unauthorized
from m2kt.payload import read_header
from m2kt.text import count, when

__all__ = ["COOKIE", "SignInThrottle", "router", "verdict_note"]

COOKIE = "m2kt_dashboard"
PAGE = 50
REPORTS_SHOWN = 200  # a packet page shows its newest reports, not all of them (one per student, unbounded)
# What the sign-in page may say: fixed texts chosen by the server, never text from the request.
_MESSAGES = {
    "invalid": "That token is not valid.",
    "throttled": "Too many failed sign-ins from this address; wait a few minutes.",
}
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["when"] = when  # times to the second: stored microseconds are noise on a page
templates.env.filters["count"] = count  # "1 student", "2 students"
router = APIRouter(prefix="/dashboard", include_in_schema=False)


class SignIn(Unauthorized):
    """No valid session: send the browser to the sign-in page (its own handler, before the problem one)."""

    def __init__(self) -> None:
        super().__init__("no dashboard session")


class SignInThrottle:
    """At most ``limit`` failed sign-ins per client address in ``window`` seconds; owned by `app.state`."""

    def __init__(self, limit: int = 10, window: float = 300.0, max_addresses: int = 10_000) -> None:
        self.limit, self.window, self.max_addresses = limit, window, max_addresses
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, who: str) -> deque[float]:
        failures = self._failures.get(who, deque())
        while failures and failures[0] < time.monotonic() - self.window:
            failures.popleft()
        return failures

    def blocked(self, who: str) -> bool:
        return len(self._recent(who)) >= self.limit

    def failed(self, who: str) -> None:
        if who not in self._failures and len(self._failures) >= self.max_addresses:
            self._failures.clear()  # bounded memory: forgetting is safer than growing without end
        failures = self._recent(who)
        failures.append(time.monotonic())
        self._failures[who] = failures

    def succeeded(self, who: str) -> None:
        self._failures.pop(who, None)


@dataclass(frozen=True)
class PageSession:
    caller: Caller
    csrf: str


def _admin_token(settings: SettingsDep) -> str | None:
    return settings.admin_token.get_secret_value() if settings.admin_token is not None else None


def page_session(request: Request, settings: SettingsDep, sessions: SessionsDep) -> PageSession:
    cookie = request.cookies.get(COOKIE, "")
    active = dashboard_sessions.resolve(sessions=sessions, cookie=cookie, admin_token=_admin_token(settings))
    if active is None:
        raise SignIn()
    return PageSession(Caller(active.role, active.agent), active.csrf)


PageSessionDep = Annotated[PageSession, Depends(page_session)]


def page_caller(page: PageSessionDep) -> Caller:
    return page.caller


def same_origin(request: Request) -> None:
    """Refuse a POST another site's page sent: its Origin (else Referer) must name this host.

    A request with neither (not a browser) passes; the session's forms still need their CSRF token.
    SameSite=Strict alone does not stop another port or subdomain of the same site.
    """
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return
    try:
        netloc = urlsplit(source).netloc
    except ValueError:  # e.g. "http://[": not a URL at all
        netloc = ""
    if source == "null" or not netloc or netloc != request.headers.get("host", ""):
        raise Forbidden("this form was not sent from this dashboard")


def checked_form(request: Request, page: PageSessionDep, csrf: Annotated[str, Form(max_length=128)] = "") -> Caller:
    """The caller of a session form that came from this origin with the session's CSRF token."""
    same_origin(request)
    if not hmac.compare_digest(csrf.encode(), page.csrf.encode()):
        raise Forbidden("the form's CSRF token is missing or wrong; reload the page")
    return page.caller


PageCaller = Annotated[Caller, Depends(page_caller)]
FormCaller = Annotated[Caller, Depends(checked_form)]


def _who(caller: Caller) -> str:
    return "admin" if caller.role == ADMIN else f"{caller.agent.name if caller.agent else '?'} ({caller.role})"


def _login_page(request: Request, message: str | None = None, status: int = 200) -> Response:
    headers = {"Retry-After": "60"} if status == 429 else None
    context = {"error": _MESSAGES.get(message or "", "")}
    return templates.TemplateResponse(request, "login.html", context, status_code=status, headers=headers)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    return _login_page(request)


@router.post("/login")
def login(
    request: Request, settings: SettingsDep, sessions: SessionsDep, token: Annotated[str, Form(max_length=512)]
) -> Response:
    same_origin(request)
    throttle: SignInThrottle = request.app.state.sign_in_throttle
    who = request.client.host if request.client is not None else "unknown"
    if throttle.blocked(who):
        return _login_page(request, "throttled", status=429)
    try:
        caller = caller_for_token(token.strip(), settings, sessions)
    except Unauthorized:
        throttle.failed(who)
        return _login_page(request, "invalid", status=401)
    throttle.succeeded(who)
    ttl = timedelta(seconds=settings.dashboard_session_seconds)
    opened = dashboard_sessions.open_session(
        sessions=sessions, role=caller.role, agent=caller.agent, token=token.strip(), ttl=ttl
    )
    response = RedirectResponse("/dashboard", status_code=303)
    secure = request.url.scheme == "https"
    response.set_cookie(
        COOKIE,
        opened.cookie,
        max_age=int(ttl.total_seconds()),
        httponly=True,
        samesite="strict",
        path="/dashboard",
        secure=secure,
    )
    return response


@router.post("/logout")
def logout(
    request: Request,
    settings: SettingsDep,
    sessions: SessionsDep,
    csrf: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    same_origin(request)
    cookie = request.cookies.get(COOKIE, "")
    active = dashboard_sessions.resolve(sessions=sessions, cookie=cookie, admin_token=_admin_token(settings))
    if active is not None:
        if not hmac.compare_digest(csrf.encode(), active.csrf.encode()):
            raise Forbidden("the form's CSRF token is missing or wrong; reload the page")
        dashboard_sessions.close(sessions=sessions, cookie=cookie)
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(COOKIE, path="/dashboard")
    return response


@router.get("", response_class=HTMLResponse)
def index(
    request: Request,
    page: PageSessionDep,
    sessions: SessionsDep,
    before: Annotated[int | None, Query(ge=0, le=MAX_CURSOR)] = None,
) -> Response:
    caller = page.caller
    sees_all = caller.sees_quarantined
    with sessions.reader() as session:
        topics = queries.topic_activity(session=session, include_quarantined=sees_all)
        recent = queries.recent_packets(session=session, before=before, limit=PAGE, include_quarantined=sees_all)
        verdicts = queries.verdicts_of(session=session, packet_ids=[p.id for p in recent])
        by_teacher = _rates(queries.verdicts_by_teacher(session=session))
        by_topic = _rates(queries.verdicts_by_topic(session=session))
        bodies = queries.report_bodies(session=session, limit=2000)
    context = {
        "who": _who(caller),
        "csrf": page.csrf,
        "topics": topics,
        "recent": recent,
        "verdicts": {pid: verdict_note(v) for pid, v in verdicts.items()},
        "next_before": recent[-1].seq if len(recent) == PAGE else None,
        "by_teacher": by_teacher,
        "by_topic": by_topic,
        "transfer": _transfer_bars(bodies),
        "last_seq": max((t[2] for t in topics), default=0),
    }
    return templates.TemplateResponse(request, "index.html", context)


@router.get("/fragments/topics", response_class=HTMLResponse)
def topics_fragment(request: Request, caller: PageCaller, sessions: SessionsDep) -> Response:
    """The topics table's rows, for the page's live update."""
    with sessions.reader() as session:
        topics = queries.topic_activity(session=session, include_quarantined=caller.sees_quarantined)
    return templates.TemplateResponse(request, "topics_rows.html", {"topics": topics})


@router.get("/events")
async def events(
    request: Request,
    caller: PageCaller,
    settings: SettingsDep,
    sessions: SessionsDep,
    broadcaster: BroadcasterDep,
    slots: StreamSlotsDep,
) -> StreamingResponse:
    """One SSE message whenever a packet is published anywhere: the page refetches its rows.

    Counts against the caller's cap on concurrent event streams, like the API's streams.
    """
    if not slots.acquire(caller.stream_holder):
        raise TooManyRequests(f"this agent already holds {slots.per_holder} event streams; close a page first")

    async def stream() -> AsyncIterator[str]:
        wake = broadcaster.subscribe()
        try:
            yield ": stream open\n\n"
            while not await request.is_disconnected():
                try:
                    await asyncio.wait_for(wake.wait(), timeout=settings.sse_keepalive_seconds)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                since = broadcaster.generation
                wake.clear()
                seq = await broadcaster.shared_read("dashboard-max-seq", since, functools.partial(_max_seq, sessions))
                yield f"event: changed\ndata: {seq}\n\n"
        finally:
            broadcaster.unsubscribe(wake)

    release = functools.partial(slots.release, caller.stream_holder)
    return SlotStreamingResponse(
        stream(), release, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


def _max_seq(sessions: Any) -> int:
    return topics_service.current_seq(sessions=sessions)


@router.get("/packets/{packet_id}", response_class=HTMLResponse)
def packet_page(
    request: Request, packet_id: str, page: PageSessionDep, sessions: SessionsDep, store: StoreDep
) -> Response:
    caller = page.caller
    with sessions.reader() as session:
        packet = _visible(packets_service.get_packet(session=session, packet_id=packet_id), caller)
        reports = queries.reports_of(session=session, packet_id=packet_id, limit=REPORTS_SHOWN)
        prov = packets_service.provenance(session=session, packet_id=packet_id)
        sha, size = packets_service.get_blob_ref(session=session, packet_id=packet_id, which="payload")
    with store.open(sha) as fh:
        header = read_header(fh, size)
    manifest = packet.statement["predicate"]
    spec = manifest["task"].get("spec")  # the agents' field: any JSON, so read it defensively
    context = {
        "who": _who(caller),
        "csrf": page.csrf,
        "task_params": spec.get("params", "") if isinstance(spec, dict) else "",
        "is_admin": caller.role == ADMIN,
        "packet": packet,
        "verdict_note": verdict_note(packet.reports.model_dump()),
        "manifest": manifest,
        "concepts": manifest.get("concepts", []),
        "tensors": [(name, t.dtype, t.shape, t.nbytes) for name, t in sorted(header.items())],
        "key": prov.key,
        "parents": prov.parents,
        "reports": [(r.student.name, r.verdict, r.created_at, json.loads(r.body)) for r in reports],
    }
    return templates.TemplateResponse(request, "packet.html", context)


@router.get("/teachers/{name}", response_class=HTMLResponse)
def teacher_page(request: Request, name: str, page: PageSessionDep, sessions: SessionsDep) -> Response:
    """Trust over time for one teacher: head and expiry, versions per topic, keys, students' trust reports."""
    caller = page.caller
    with sessions.reader() as session:
        overview = trust_service.teacher_trust(
            session=session, name=name[:64], include_quarantined=caller.sees_quarantined
        )
    context = {"who": _who(caller), "csrf": page.csrf, "t": overview}
    return templates.TemplateResponse(request, "teacher.html", context)


@router.get("/packets/{packet_id}/provenance", response_class=HTMLResponse)
def provenance_page(request: Request, packet_id: str, page: PageSessionDep, sessions: SessionsDep) -> Response:
    caller = page.caller
    with sessions.reader() as session:
        _visible(packets_service.get_packet(session=session, packet_id=packet_id), caller)
        prov = packets_service.provenance(session=session, packet_id=packet_id)
        indexes = [e.index for e in prov.log]
        window = queries.log_window(session=session, first=max(1, min(indexes) - 3), last=max(indexes) + 3)
    entries = [eventlog.as_dict(e) for e in window]
    try:
        eventlog.verify_chain(entries[1:], prev_hash=entries[0]["hash"], start=entries[0]["index"] + 1)
        chain = f"verified: entries {entries[0]['index']}..{entries[-1]['index']} link and recompute"
        chain_ok = True
    except eventlog.ChainBroken as exc:
        chain, chain_ok = f"BROKEN: {exc}", False
    context = {
        "who": _who(caller),
        "csrf": page.csrf,
        "prov": prov,
        "entries": entries,
        "mine": set(indexes),
        "chain": chain,
        "chain_ok": chain_ok,
    }
    return templates.TemplateResponse(request, "provenance.html", context)


@router.post("/packets/{packet_id}/quarantine")
def quarantine(
    packet_id: str,
    caller: FormCaller,
    sessions: SessionsDep,
    broadcaster: BroadcasterDep,
    action: Annotated[str, Form(pattern="^(quarantine|lift)$")],
    reason: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    if caller.role != ADMIN:
        raise Forbidden("only the admin quarantines or lifts")
    text = reason.strip() or "quarantined from the dashboard"
    packets_service.set_quarantine(
        sessions=sessions, broadcaster=broadcaster, packet_id=packet_id, reason=text if action == "quarantine" else None
    )
    return RedirectResponse(f"/dashboard/packets/{packet_id}", status_code=303)


def _visible(packet: Any, caller: Caller) -> Any:
    if packet.status == "quarantined" and not caller.sees_quarantined:
        raise NotFound("no such packet")
    return packet


def verdict_note(verdicts: dict[str, int]) -> str:
    """What the students said of one packet, worst first: "rolled back by 2 students, accepted by 1 student".

    A packet's status is the broker's (published or quarantined); this is the students'
    verdict, which the status alone hides. Keys other than the three verdicts are ignored.
    """
    said = [(verdicts.get(v, 0), label) for v, label in _VERDICT_LABELS]
    return ", ".join(f"{label} by {count(n, 'student')}" for n, label in said if n)


_VERDICT_LABELS = (("rolled_back", "rolled back"), ("rejected", "rejected"), ("accepted", "accepted"))


def _rates(rows: list[tuple[str, str, int]]) -> list[dict[str, Any]]:
    table: dict[str, dict[str, int]] = defaultdict(lambda: {"accepted": 0, "rolled_back": 0, "rejected": 0})
    for name, verdict, n in rows:
        table[name][verdict] = table[name].get(verdict, 0) + n
    out = []
    for name, counts in sorted(table.items()):
        total = sum(counts.values())
        out.append({"name": name, "total": total, **{k: v / total for k, v in counts.items()}})
    return out


def _transfer_bars(bodies: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """Mean probe agreement with the teacher (the student's own measure) per student x teacher."""
    acc: dict[tuple[str, str], list[float]] = defaultdict(list)
    for student, teacher, body in bodies:
        value = json.loads(body).get("metrics", {}).get("mean_agreement")
        if isinstance(value, int | float):
            acc[(student, teacher)].append(float(value))
    return [
        {"student": s, "teacher": t, "agreement": sum(v) / len(v), "reports": len(v)}
        for (s, t), v in sorted(acc.items())
    ]


def install(app: FastAPI) -> None:
    """Mount the pages and send a visitor without a session to the sign-in page."""
    from fastapi.staticfiles import StaticFiles

    app.state.sign_in_throttle = SignInThrottle()
    app.include_router(router)
    app.mount("/dashboard/static", StaticFiles(directory=HERE / "static"), name="dashboard-static")

    async def _sign_in(request: Request, exc: Exception) -> Response:
        return RedirectResponse("/dashboard/login", status_code=303)

    app.add_exception_handler(SignIn, _sign_in)
