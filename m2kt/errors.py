"""The one exception tree of M2KT.

    M2KTError                      invalid-request, 422
    ├── InvalidEnvelope            invalid-envelope, 422
    ├── BadSignature               bad-signature, 422
    ├── DigestMismatch             digest-mismatch, 422
    ├── InvalidManifest            invalid-manifest, 422
    ├── InvalidPayload             invalid-payload, 422
    ├── UnknownKey                 unknown-key, 403
    ├── PayloadTooLarge            payload-too-large, 413
    ├── Unauthorized               unauthorized, 401
    ├── Forbidden                  forbidden, 403
    ├── NotFound                   not-found, 404
    ├── Conflict                   conflict, 409
    ├── InvalidRequest             invalid-request, 422
    ├── TooManyRequests            too-many-requests, 429 (a per-agent cap, e.g. event streams)
    ├── ServiceUnavailable         unavailable, 503 (readiness, database gone or busy)
    └── TransportError             a client could not reach the broker (no HTTP status)

Each class carries the slug of its RFC 9457 problem type and its HTTP status, so
the broker renders and the client maps back through one table (`BY_SLUG`).
A class with `retry_after` set is answered with that `Retry-After` header.
"""

from typing import ClassVar


class M2KTError(Exception):
    """Root of every failure we report; `slug` names the RFC 9457 problem type."""

    slug: ClassVar[str] = "invalid-request"
    status: ClassVar[int] = 422
    retry_after: ClassVar[int | None] = None  # seconds, for the Retry-After header

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidEnvelope(M2KTError):
    slug = "invalid-envelope"
    status = 422


class BadSignature(M2KTError):
    slug = "bad-signature"
    status = 422


class DigestMismatch(M2KTError):
    slug = "digest-mismatch"
    status = 422


class InvalidManifest(M2KTError):
    slug = "invalid-manifest"
    status = 422


class InvalidPayload(M2KTError):
    slug = "invalid-payload"
    status = 422


class UnknownKey(M2KTError):
    slug = "unknown-key"
    status = 403


class PayloadTooLarge(M2KTError):
    slug = "payload-too-large"
    status = 413


class Unauthorized(M2KTError):
    slug = "unauthorized"
    status = 401


class Forbidden(M2KTError):
    slug = "forbidden"
    status = 403


class NotFound(M2KTError):
    slug = "not-found"
    status = 404


class Conflict(M2KTError):
    slug = "conflict"
    status = 409


class InvalidRequest(M2KTError):
    slug = "invalid-request"
    status = 422


class TooManyRequests(M2KTError):
    slug = "too-many-requests"
    status = 429
    retry_after = 5


class ServiceUnavailable(M2KTError):
    slug = "unavailable"
    status = 503
    retry_after = 2


class TransportError(M2KTError):
    """The broker could not be reached or answered something that is not HTTP we know."""

    slug = "transport"
    status = 0


BY_SLUG: dict[str, type[M2KTError]] = {
    cls.slug: cls
    for cls in (
        InvalidEnvelope,
        BadSignature,
        DigestMismatch,
        InvalidManifest,
        InvalidPayload,
        UnknownKey,
        PayloadTooLarge,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        InvalidRequest,
        TooManyRequests,
        ServiceUnavailable,
    )
}
