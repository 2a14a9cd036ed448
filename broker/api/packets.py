"""Packets: publish, read, quarantine, provenance."""

import time
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from broker.api import params
from broker.deps import (
    AdminDep,
    AnyAgentDep,
    BroadcasterDep,
    MetricsDep,
    PublisherDep,
    SessionsDep,
    SettingsDep,
    StoreDep,
)
from broker.schemas import PacketOut, ProvenanceOut, Published, QuarantineIn, QuarantineOut
from broker.services import packets as packets_service
from broker.services import publish as publish_service
from broker.upload import read_packet_upload
from m2kt.constants import ENVELOPE_MEDIA_TYPE
from m2kt.errors import M2KTError

router = APIRouter(prefix="/packets", tags=["packets"])

_MULTIPART = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["envelope", "payload"],
                    "properties": {
                        "envelope": {
                            "type": "string",
                            "format": "binary",
                            "description": "DSSE envelope JSON",
                        },
                        "payload": {"type": "string", "format": "binary", "description": "safetensors bytes"},
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=201,
    openapi_extra=_MULTIPART,
    responses={200: {"model": Published, "description": "the same packet was already stored"}},
)
async def publish(
    request: Request,
    publisher: PublisherDep,
    settings: SettingsDep,
    sessions: SessionsDep,
    store: StoreDep,
    broadcaster: BroadcasterDep,
    metrics: MetricsDep,
) -> JSONResponse:
    started = time.perf_counter()
    assert publisher.caller.agent is not None
    try:
        upload = await read_packet_upload(
            request, store, max_payload=settings.max_payload_bytes, max_envelope=settings.max_envelope_bytes
        )
        try:
            outcome = await run_in_threadpool(
                publish_service.publish,
                sessions=sessions,
                store=store,
                teacher=publisher.caller.agent,
                trusted=publisher.keys,
                envelope=upload.envelope,
                payload=upload.payload,
                broadcaster=broadcaster,
                window=timedelta(seconds=settings.created_at_window_seconds),
            )
        finally:
            upload.payload.discard()  # no-op once committed to its content address
    except M2KTError as exc:
        metrics.publish_refused.labels(type=exc.slug).inc()
        raise
    metrics.publish_seconds.observe(time.perf_counter() - started)
    if outcome.created:
        metrics.packets_published.inc()
    body = Published(id=outcome.id, seq=outcome.seq, topics=outcome.topics, created=outcome.created)
    return JSONResponse(body.model_dump(), status_code=201 if outcome.created else 200)


@router.get("/{packet_id}")
def get_packet(packet_id: params.PacketIdPath, _: AnyAgentDep, sessions: SessionsDep) -> PacketOut:
    with sessions.reader() as session:
        return packets_service.get_packet(session=session, packet_id=params.packet_id(packet_id))


# Blobs are content-addressed: the bytes behind an ETag never change, so a client may keep them for good.
# `private`: every read needs a token, so a shared cache must not hand them to someone without one.
IMMUTABLE = "private, max-age=31536000, immutable"
NOT_MODIFIED: dict[int | str, dict[str, Any]] = {304: {"description": "`If-None-Match` names the blob's ETag"}}


def _blob(sessions: SessionsDep, packet_id: str, which: str) -> tuple[str, int]:
    with sessions.reader() as session:
        return packets_service.get_blob_ref(session=session, packet_id=params.packet_id(packet_id), which=which)


def not_modified(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 §13.1.2: `*`, or any listed tag equal to ``etag`` under weak comparison."""
    if if_none_match is None:
        return False
    tags = [tag.strip() for tag in if_none_match.split(",")]
    return any(tag == "*" or tag.removeprefix("W/") == etag for tag in tags)


def _cached_blob(
    request: Request, sessions: SessionsDep, store: StoreDep, packet_id: str, which: str, media_type: str
) -> Response:
    """A blob with its strong ETag (its sha256) and immutable caching; 304 if the client has it already.

    The object store is touched only for a 200, and its bytes stream through (the store opens the blob
    first, so a store that is down answers 503 before the response starts).
    """
    sha, size = _blob(sessions, packet_id, which)
    headers = {"ETag": f'"{sha}"', "Cache-Control": IMMUTABLE}
    if not_modified(request.headers.get("if-none-match"), headers["ETag"]):
        return Response(status_code=304, headers=headers)
    headers["Content-Length"] = str(size)
    return StreamingResponse(store.stream(sha), media_type=media_type, headers=headers)


@router.get("/{packet_id}/envelope", response_class=Response, responses=NOT_MODIFIED)
def get_envelope(
    request: Request, packet_id: params.PacketIdPath, _: AnyAgentDep, sessions: SessionsDep, store: StoreDep
) -> Response:
    return _cached_blob(request, sessions, store, packet_id, "envelope", ENVELOPE_MEDIA_TYPE)


@router.get("/{packet_id}/payload", response_class=Response, responses=NOT_MODIFIED)
def get_payload(
    request: Request, packet_id: params.PacketIdPath, _: AnyAgentDep, sessions: SessionsDep, store: StoreDep
) -> Response:
    return _cached_blob(request, sessions, store, packet_id, "payload", "application/octet-stream")


@router.get("/{packet_id}/provenance")
def get_provenance(packet_id: params.PacketIdPath, _: AnyAgentDep, sessions: SessionsDep) -> ProvenanceOut:
    with sessions.reader() as session:
        return packets_service.provenance(session=session, packet_id=params.packet_id(packet_id))


@router.post("/{packet_id}/quarantine")
def quarantine(
    packet_id: params.PacketIdPath, body: QuarantineIn, _: AdminDep, sessions: SessionsDep, broadcaster: BroadcasterDep
) -> QuarantineOut:
    return packets_service.set_quarantine(
        sessions=sessions, broadcaster=broadcaster, packet_id=params.packet_id(packet_id), reason=body.reason
    )


@router.delete("/{packet_id}/quarantine")
def lift_quarantine(
    packet_id: params.PacketIdPath, _: AdminDep, sessions: SessionsDep, broadcaster: BroadcasterDep
) -> QuarantineOut:
    return packets_service.set_quarantine(
        sessions=sessions, broadcaster=broadcaster, packet_id=params.packet_id(packet_id), reason=None
    )
