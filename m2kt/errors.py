"""The one exception tree of M2KT: everything raised on purpose is an `M2KTError`.

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
    ├── TransportError             a client could not reach the broker (no HTTP status)
    ├── LocalInputError            what was given on this machine cannot be used (a key file, a run
    │                              directory, packet files, an option's value): never an HTTP answer
    ├── InvalidOption              a value given on this machine (an option, a setting) is wrong;
    │   │                          also a ValueError
    │   ├── UnknownName            a registry (task family, architecture, extractor) has no such name;
    │   │                          also a KeyError
    │   └── WrongKind              a name resolves to the wrong kind of object, or to one that takes
    │                              other arguments; also a TypeError
    └── defined beside the code that raises them:
        ├── m2kt.jsonutil.JSONError                  bytes that are not strict JSON (also a ValueError)
        ├── broker.migrate.DatabaseNotReady          unavailable: no database, or not at head
        ├── broker.services.eventlog.ChainBroken     the event log does not verify (a 500)
        ├── broker.dashboard.SignIn                  unauthorized: the dashboard redirects to sign-in
        ├── student_agent.knowledge.PacketContentError  a signed packet breaks the packet format
        └── student_agent.trust.Rejection            why a student refused a packet (`reason`)

Each class carries the slug of its RFC 9457 problem type and its HTTP status, so
the broker renders and the client maps back through one table (`BY_SLUG`).
A class with `retry_after` set is answered with that `Retry-After` header.
A command line (`m2kt.cliutil.one_line_errors`) prints `detail` and exits with
`exit_code`: 1 refused or failed, 2 a bad option or value.

Anything else that escapes is a bug: the broker logs its traceback and answers 500,
a command line shows the traceback.
"""

from typing import ClassVar


class M2KTError(Exception):
    """Root of every failure we report; `slug` names the RFC 9457 problem type."""

    slug: ClassVar[str] = "invalid-request"
    status: ClassVar[int] = 422
    retry_after: ClassVar[int | None] = None  # seconds, for the Retry-After header
    exit_code: ClassVar[int] = 1  # of a command line that stops on it

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


class LocalInputError(M2KTError):
    """What was given on this machine (a key file, a run directory, an option's value) cannot be used.

    A local problem, never an HTTP answer (`InvalidRequest` is the broker's 422): a command line exits 1.
    """

    slug = "local-input"
    status = 0


class InvalidOption(M2KTError, ValueError):
    """A value given on this machine (an option, a setting, a parameter) is wrong: a command line exits 2."""

    slug = "invalid-option"
    status = 0
    exit_code = 2


class UnknownName(InvalidOption, KeyError):
    """A registry (task family, architecture, extractor) has no entry by that name."""

    slug = "unknown-name"

    def __str__(self) -> str:  # KeyError's own quotes the message
        return self.detail


class WrongKind(InvalidOption, TypeError):
    """A name resolves to the wrong kind of object, or to one that does not take the arguments given."""

    slug = "wrong-kind"


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
