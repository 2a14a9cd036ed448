"""Packets: publish, read, quarantine, provenance."""

import time
from datetime import timedelta

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


def _blob(sessions: SessionsDep, store: StoreDep, packet_id: str, which: str) -> tuple[str, int]:
    with sessions.reader() as session:
        return packets_service.get_blob_ref(session=session, packet_id=params.packet_id(packet_id), which=which)


@router.get("/{packet_id}/envelope", response_class=Response)
def get_envelope(packet_id: params.PacketIdPath, _: AnyAgentDep, sessions: SessionsDep, store: StoreDep) -> Response:
    sha, _size = _blob(sessions, store, packet_id, "envelope")
    return Response(store.read(sha), media_type=ENVELOPE_MEDIA_TYPE)


@router.get("/{packet_id}/payload", response_class=Response)
def get_payload(
    request: Request, packet_id: params.PacketIdPath, _: AnyAgentDep, sessions: SessionsDep, store: StoreDep
) -> Response:
    sha, size = _blob(sessions, store, packet_id, "payload")
    etag = f'"{sha}"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    headers = {"ETag": etag, "Content-Length": str(size)}
    return StreamingResponse(store.iter_chunks(sha), media_type="application/octet-stream", headers=headers)


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
