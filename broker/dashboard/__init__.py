"""The read-only web dashboard: server-rendered pages (Jinja2), no front-end build, no CDN.

Sign-in takes any agent token or the admin token and keeps it in an HttpOnly, SameSite=Strict
cookie scoped to ``/dashboard``; every page then sees exactly what the API would show that
caller (students never see quarantined packets). Charts are inline SVG drawn by the template,
so the package ships no JavaScript library. Each page runs a fixed number of queries
(`broker/repositories/dashboard.py`), paged by seq, so it stays fast with many packets.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates

from broker.api.params import MAX_CURSOR
from broker.deps import ADMIN, BroadcasterDep, Caller, SessionsDep, SettingsDep, StoreDep, caller_for_token
from broker.repositories import dashboard as queries
from broker.repositories import packets as packets_repo
from broker.services import eventlog
from broker.services import packets as packets_service
from m2kt.errors import Forbidden, NotFound, Unauthorized
from m2kt.payload import read_header

__all__ = ["COOKIE", "router"]

COOKIE = "m2kt_dashboard"
PAGE = 50
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(prefix="/dashboard", include_in_schema=False)


class SignIn(Exception):
    """No valid session: send the browser to the sign-in page."""


def page_caller(request: Request, settings: SettingsDep, sessions: SessionsDep) -> Caller:
    token = request.cookies.get(COOKIE)
    if not token:
        raise SignIn()
    try:
        return caller_for_token(token, settings, sessions)
    except Unauthorized:
        raise SignIn() from None


PageCaller = Annotated[Caller, Depends(page_caller)]


def _who(caller: Caller) -> str:
    return "admin" if caller.role == ADMIN else f"{caller.agent.name if caller.agent else '?'} ({caller.role})"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, error: str = "") -> Response:
    return templates.TemplateResponse(request, "login.html", {"error": error}, status_code=401 if error else 200)


@router.post("/login")
def login(
    request: Request, settings: SettingsDep, sessions: SessionsDep, token: Annotated[str, Form(max_length=512)]
) -> Response:
    try:
        caller_for_token(token.strip(), settings, sessions)
    except Unauthorized:
        return login_form(request, error="That token is not valid.")
    response = RedirectResponse("/dashboard", status_code=303)
    secure = request.url.scheme == "https"
    response.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict", path="/dashboard", secure=secure)
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(COOKIE, path="/dashboard")
    return response


@router.get("", response_class=HTMLResponse)
def index(
    request: Request,
    caller: PageCaller,
    sessions: SessionsDep,
    before: Annotated[int | None, Query(ge=0, le=MAX_CURSOR)] = None,
) -> Response:
    sees_all = caller.sees_quarantined
    with sessions.reader() as session:
        topics = queries.topic_activity(session=session, include_quarantined=sees_all)
        recent = queries.recent_packets(session=session, before=before, limit=PAGE, include_quarantined=sees_all)
        by_teacher = _rates(queries.verdicts_by_teacher(session=session))
        by_topic = _rates(queries.verdicts_by_topic(session=session))
        bodies = queries.report_bodies(session=session, limit=2000)
    context = {
        "who": _who(caller),
        "topics": topics,
        "recent": recent,
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
    request: Request, caller: PageCaller, settings: SettingsDep, sessions: SessionsDep, broadcaster: BroadcasterDep
) -> StreamingResponse:
    """One SSE message whenever a packet is published anywhere: the page refetches its rows."""

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

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _max_seq(sessions: Any) -> int:
    with sessions.reader() as session:
        return packets_repo.max_seq(session=session)


@router.get("/packets/{packet_id}", response_class=HTMLResponse)
def packet_page(
    request: Request, packet_id: str, caller: PageCaller, sessions: SessionsDep, store: StoreDep
) -> Response:
    with sessions.reader() as session:
        packet = _visible(packets_service.get_packet(session=session, packet_id=packet_id), caller)
        reports = queries.reports_of(session=session, packet_id=packet_id)
        prov = packets_service.provenance(session=session, packet_id=packet_id)
        sha, _size = packets_service.get_blob_ref(session=session, packet_id=packet_id, which="payload")
    with store.path(sha).open("rb") as fh:
        header = read_header(fh, store.path(sha).stat().st_size)
    manifest = packet.statement["predicate"]
    context = {
        "who": _who(caller),
        "is_admin": caller.role == ADMIN,
        "packet": packet,
        "manifest": manifest,
        "concepts": manifest.get("concepts", []),
        "tensors": [(name, t.dtype, t.shape, t.nbytes) for name, t in sorted(header.items())],
        "key": prov.key,
        "parents": prov.parents,
        "reports": [(r.student.name, r.verdict, r.created_at, json.loads(r.body)) for r in reports],
    }
    return templates.TemplateResponse(request, "packet.html", context)


@router.get("/packets/{packet_id}/provenance", response_class=HTMLResponse)
def provenance_page(request: Request, packet_id: str, caller: PageCaller, sessions: SessionsDep) -> Response:
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
    context = {"who": _who(caller), "prov": prov, "entries": entries, "mine": set(indexes), "chain": chain,
               "chain_ok": chain_ok}  # fmt: skip
    return templates.TemplateResponse(request, "provenance.html", context)


@router.post("/packets/{packet_id}/quarantine")
def quarantine(
    packet_id: str,
    caller: PageCaller,
    sessions: SessionsDep,
    broadcaster: BroadcasterDep,
    action: Annotated[str, Form(pattern="^(quarantine|lift)$")],
    reason: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    if caller.role != ADMIN:
        raise Forbidden("only the admin quarantines or lifts")
    text = reason.strip() or "quarantined from the dashboard"
    packets_service.set_quarantine(
        sessions=sessions, packet_id=packet_id, reason=text if action == "quarantine" else None
    )
    broadcaster.notify()
    return RedirectResponse(f"/dashboard/packets/{packet_id}", status_code=303)


def _visible(packet: Any, caller: Caller) -> Any:
    if packet.status == "quarantined" and not caller.sees_quarantined:
        raise NotFound("no such packet")
    return packet


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
    return [{"student": s, "teacher": t, "agreement": sum(v) / len(v), "reports": len(v)}
            for (s, t), v in sorted(acc.items())]  # fmt: skip


def install(app: FastAPI) -> None:
    """Mount the pages and send a visitor without a session to the sign-in page."""
    from fastapi.staticfiles import StaticFiles

    app.include_router(router)
    app.mount("/dashboard/static", StaticFiles(directory=HERE / "static"), name="dashboard-static")

    async def _sign_in(request: Request, exc: Exception) -> Response:
        return RedirectResponse("/dashboard/login", status_code=303)

    app.add_exception_handler(SignIn, _sign_in)
