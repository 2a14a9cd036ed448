"""Streaming multipart reader for `POST /v1/packets`.

Starlette's form parser reads a whole file part before anyone can look at its
size. Here the payload part streams into a spooled blob and the upload stops the
moment it passes `M2KT_MAX_PAYLOAD_BYTES`, so memory holds one chunk at a time
and an oversized upload is refused before it has all arrived.
"""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from broker.storage import BlobStore, SpooledBlob
from m2kt.errors import InvalidRequest, PayloadTooLarge

if TYPE_CHECKING:  # the library defines its callback types for type checkers only
    from python_multipart.multipart import MultipartCallbacks

_OVERHEAD = 64 * 1024  # multipart boundaries and part headers
_MAX_BOUNDARY = 70


@dataclass
class PacketUpload:
    envelope: bytes
    payload: SpooledBlob


@dataclass
class _State:
    store: BlobStore
    max_payload: int
    max_envelope: int
    header_field: bytes = b""
    header_value: bytes = b""
    headers: dict[bytes, bytes] = field(default_factory=dict)
    current: str | None = None
    envelope: bytearray | None = None
    payload: SpooledBlob | None = None
    seen: set[str] = field(default_factory=set)
    error: Exception | None = None

    def on_part_begin(self) -> None:
        self.headers, self.header_field, self.header_value, self.current = {}, b"", b"", None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("latin-1")
        if name in self.seen:
            raise InvalidRequest(f"multipart part {name!r} appears twice")
        self.seen.add(name)
        self.current = name
        if name == "envelope":
            self.envelope = bytearray()
        elif name == "payload":
            self.payload = self.store.spool()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.current == "payload" and self.payload is not None:
            if self.payload.size + len(chunk) > self.max_payload:
                raise PayloadTooLarge(f"the payload part exceeds {self.max_payload} bytes")
            self.payload.write(chunk)
        elif self.current == "envelope" and self.envelope is not None:
            if len(self.envelope) + len(chunk) > self.max_envelope:
                raise PayloadTooLarge(f"the envelope part exceeds {self.max_envelope} bytes")
            self.envelope += chunk


async def read_packet_upload(
    request: Request, store: BlobStore, *, max_payload: int, max_envelope: int
) -> PacketUpload:
    """Read the `envelope` and `payload` parts; the caller owns (and must discard) the payload blob.

    Raises:
        PayloadTooLarge: a part over its limit, checked while streaming (and on Content-Length).
        InvalidRequest: not multipart/form-data, malformed, or a part missing.
    """
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise InvalidRequest("the body must be multipart/form-data with parts 'envelope' and 'payload'")
    if len(boundary) > _MAX_BOUNDARY:
        raise InvalidRequest(f"the multipart boundary is longer than {_MAX_BOUNDARY} characters (RFC 2046)")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_payload + max_envelope + _OVERHEAD:
        raise PayloadTooLarge(f"a request of {declared} bytes exceeds the size limit")
    state = _State(store=store, max_payload=max_payload, max_envelope=max_envelope)
    callbacks: MultipartCallbacks = {
        "on_part_begin": state.on_part_begin,
        "on_header_field": state.on_header_field,
        "on_header_value": state.on_header_value,
        "on_header_end": state.on_header_end,
        "on_headers_finished": state.on_headers_finished,
        "on_part_data": state.on_part_data,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
        if state.payload is None or state.envelope is None:
            raise InvalidRequest("multipart parts 'envelope' and 'payload' are both required")
        state.payload.finish()
    except FormParserError as exc:  # the parser's root error: a malformed body or boundary
        if state.payload is not None:
            state.payload.discard()
        raise InvalidRequest(f"malformed multipart body: {exc}") from exc
    except BaseException:
        if state.payload is not None:
            state.payload.discard()
        raise
    return PacketUpload(envelope=bytes(state.envelope), payload=state.payload)
