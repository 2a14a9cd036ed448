"""BrokerClient: the one HTTP client of the agents, CLIs, demo and tests.

Problem bodies come back as the same exception classes the broker raised
(`m2kt.errors`), so a caller catches `UnknownKey`, not a status code. Every
request has a timeout; only idempotent requests are retried (tenacity), after a
transport error or a 502/503/504, with jittered exponential backoff or after the
answer's `Retry-After`; a refusal (401, 403, any 4xx) is never retried.
Publishing counts as idempotent: the same packet again is the same packet
(docs/protocol.md §1), so a retry after a lost acknowledgement is safe.

The SSE parser below stays hand-written: `httpx-sse` drops comment lines, and a
long-lived reader needs the broker's keep-alive comments to look up between packets.
"""

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import tenacity

from m2kt.constants import PROBLEM_BASE
from m2kt.errors import Forbidden, InvalidRequest, NotFound, TransportError, Unauthorized, UnknownKey
from m2kt.problem import error_from_problem

__all__ = ["BrokerClient", "PublishResult", "SSEvent", "broker_root"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
_RETRY_STATUS = {502, 503, 504}
MAX_WAIT = 30.0  # seconds: the longest a retry waits, whatever Retry-After asks


def _retryable(response: httpx.Response) -> bool:
    return response.status_code in _RETRY_STATUS


def retry_after(response: httpx.Response) -> float | None:
    """The wait a ``Retry-After`` header asks for (delay-seconds or an HTTP date), None if absent or unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Wait(tenacity.wait.wait_base):
    """Retry-After when the broker said how long; else exponential backoff with jitter, both capped."""

    def __init__(self, backoff: float, cap: float) -> None:
        self.cap = cap
        # backoff * 2**n, then up to ``backoff`` of jitter (the second retry waits 0.5-0.75 s at 0.25)
        self.backoff = tenacity.wait_exponential(multiplier=backoff, max=5.0) + tenacity.wait_random(0, backoff)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        if outcome is not None and not outcome.failed:
            asked = retry_after(outcome.result())
            if asked is not None:
                return min(asked, self.cap)
        return min(float(self.backoff(retry_state)), self.cap)


def _log_retry(retry_state: tenacity.RetryCallState) -> None:
    method, path = retry_state.args[:2]
    wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
    logger.info("retrying %s %s in %.2fs", method, path, wait)


def broker_root(base_url: str) -> str:
    """``base_url`` without a trailing slash, once it is known to be a broker's root URL.

    Raises:
        ValueError: naming the URL, when it is not http(s) with a host, or includes the API
            path (``http://host:8080/v1``), which would make every request miss.
    """
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"broker URL {base_url!r} is not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"broker URL {base_url!r} needs http:// or https:// and a host, e.g. http://127.0.0.1:8080")
    segments = [part for part in url.path.split("/") if part]
    if "v1" in segments:
        root = str(url.copy_with(path="/", query=None, fragment=None)).rstrip("/")
        raise ValueError(f"broker URL {base_url!r} includes the API path /v1: give the broker's root, e.g. {root}")
    return base_url.rstrip("/")


@dataclass(frozen=True)
class PublishResult:
    id: str
    seq: int
    topics: list[str]
    created: bool


@dataclass(frozen=True)
class SSEvent:
    id: str | None
    event: str
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


class BrokerClient:
    """A typed client for docs/protocol.md's `/v1` API.

    Args:
        base_url: the broker's root, e.g. ``http://127.0.0.1:8080`` (not ``.../v1``: the client
            adds the API paths; a URL with ``/v1`` in it raises ValueError naming it).
        token: the agent's (or admin's) bearer token.
        retries: extra attempts for idempotent requests after a transport error or 502/503/504.
        backoff: the first retry's wait in seconds (doubling, plus up to as much jitter); an
            answer's ``Retry-After`` replaces it, up to ``max_wait``.
        transport: an httpx transport, e.g. ``httpx.ASGITransport(app)`` in tests.
        sleep: how a retry waits (tests pass a recorder).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: float = 0.25,
        max_wait: float = MAX_WAIT,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = broker_root(base_url)
        self._retries, self._wait, self._sleep = retries, _Wait(backoff, max_wait), sleep
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "BrokerClient":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, idempotent: bool, **kwargs: Any) -> httpx.Response:
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(1 + (self._retries if idempotent else 0)),
            retry=tenacity.retry_if_exception_type(httpx.TransportError) | tenacity.retry_if_result(_retryable),
            wait=self._wait,
            sleep=self._sleep,
            before_sleep=_log_retry,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,  # the last try's
        )
        try:
            response: httpx.Response = retrying(self._http.request, method, path, **kwargs)
        except httpx.TransportError as exc:
            raise TransportError(f"cannot reach the broker at {self.base_url}: {exc}") from exc
        return self._check(response)

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.is_success or response.status_code == 304:
            return response
        try:
            body = response.json()
        except ValueError:
            body = None
        exc = error_from_problem(body, response.status_code)
        request = f"{response.request.method} {response.request.url}"
        if not (isinstance(body, dict) and str(body.get("type", "")).startswith(PROBLEM_BASE)):
            hint = f": is {self.base_url} the broker's root URL?" if response.status_code in (404, 405) else ""
            raise type(exc)(f"{request} answered HTTP {response.status_code} without an M2KT problem{hint}") from None
        if response.status_code == 404:  # a wrong base URL looks like a missing resource: name the URL
            raise type(exc)(f"{exc.detail} ({request})") from None
        raise exc

    def _get_json(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, idempotent=True, params=params or None).json()

    def ready(self) -> bool:
        """True when the broker answers `/readyz` with 200 (no retries, no exception)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def require_role(self, role: str) -> None:
        """Return if the token is a ``role`` agent's; else raise, changing nothing on the broker.

        An agent should know this before it downloads or trains anything. The API has no "who am
        I" route, so this asks what only that role may ask, with a request the broker refuses
        after its role check: a student reports on a packet that cannot exist (no statement
        hashes to 64 zeros) and gets 404 (or 422); a teacher publishes a body that is not
        multipart and gets 422 (a teacher whose keys are all revoked gets 403 unknown-key).
        Any other role gets 403, an unknown token 401.

        Raises:
            Unauthorized: the broker does not know the token.
            Forbidden: the token is another role's.
            UnknownKey: a teacher's token whose keys are all revoked.
            TransportError: the broker cannot be reached (after the usual retries).
        """
        body: dict[str, Any]
        if role == "student":
            path, body = f"/v1/packets/{'0' * 64}/reports", {"json": {"verdict": "accepted"}}
        elif role == "teacher":
            path, body = "/v1/packets", {"content": b"", "headers": {"Content-Type": "text/plain"}}
        else:
            raise ValueError(f"require_role supports 'student' and 'teacher', not {role!r}")
        try:
            self._request("POST", path, idempotent=True, **body)
        except (NotFound, InvalidRequest):
            return
        except Unauthorized as exc:
            raise Unauthorized(f"the broker at {self.base_url} refuses this token: {exc.detail}") from None
        except UnknownKey as exc:
            raise UnknownKey(f"the broker at {self.base_url} refuses this teacher: {exc.detail}") from None
        except Forbidden as exc:
            raise Forbidden(f"this token is not a {role}'s (the broker at {self.base_url}: {exc.detail})") from None
        raise AssertionError(f"the broker accepted the {role} role check's request")

    # -- agents -----------------------------------------------------------------------------
    def create_agent(self, name: str, role: str, public_key: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "role": role}
        if public_key is not None:
            body["public_key"] = public_key
        return dict(self._request("POST", "/v1/agents", idempotent=False, json=body).json())

    def get_agent(self, name: str) -> dict[str, Any]:
        return dict(self._get_json(f"/v1/agents/{name}"))

    def add_key(self, name: str, public_key: str) -> dict[str, Any]:
        path = f"/v1/agents/{name}/keys"
        return dict(self._request("POST", path, idempotent=False, json={"public_key": public_key}).json())

    def revoke_key(self, name: str, keyid: str) -> dict[str, Any]:
        path = f"/v1/agents/{name}/keys/{keyid}/revoke"
        return dict(self._request("POST", path, idempotent=True).json())

    def get_head(self, name: str) -> bytes:
        """A teacher's newest signed head envelope (m2kt.head); NotFound when it never put one."""
        return self._request("GET", f"/v1/agents/{name}/head", idempotent=True).content

    def put_head(self, name: str, envelope: bytes) -> dict[str, Any]:
        """Store this teacher's signed head: ``envelope`` as m2kt.head.sign_head made it."""
        body = json.loads(envelope)
        return dict(self._request("PUT", f"/v1/agents/{name}/head", idempotent=True, json=body).json())

    # -- packets ----------------------------------------------------------------------------
    def publish(self, envelope: bytes, payload: bytes) -> PublishResult:
        files = {
            "envelope": ("envelope.json", envelope, "application/json"),
            "payload": ("payload.safetensors", payload, "application/octet-stream"),
        }
        body = self._request("POST", "/v1/packets", idempotent=True, files=files).json()
        return PublishResult(body["id"], body["seq"], list(body["topics"]), bool(body["created"]))

    def get_packet(self, packet_id: str) -> dict[str, Any]:
        return dict(self._get_json(f"/v1/packets/{packet_id}"))

    def get_envelope(self, packet_id: str) -> bytes:
        return self._request("GET", f"/v1/packets/{packet_id}/envelope", idempotent=True).content

    def get_payload(self, packet_id: str) -> bytes:
        return self._request("GET", f"/v1/packets/{packet_id}/payload", idempotent=True).content

    def provenance(self, packet_id: str) -> dict[str, Any]:
        return dict(self._get_json(f"/v1/packets/{packet_id}/provenance"))

    def quarantine(self, packet_id: str, reason: str) -> dict[str, Any]:
        path = f"/v1/packets/{packet_id}/quarantine"
        return dict(self._request("POST", path, idempotent=True, json={"reason": reason}).json())

    def lift_quarantine(self, packet_id: str) -> dict[str, Any]:
        return dict(self._request("DELETE", f"/v1/packets/{packet_id}/quarantine", idempotent=True).json())

    # -- topics and events ------------------------------------------------------------------
    def topics(self) -> list[dict[str, Any]]:
        return list(self._get_json("/v1/topics"))

    def topic_packets(self, topic: str, after: int = 0, limit: int = 100) -> dict[str, Any]:
        return dict(self._get_json(f"/v1/topics/{topic}/packets", after=after, limit=limit))

    def iter_topic_packets(self, topic: str, after: int = 0) -> Iterator[dict[str, Any]]:
        while True:
            page = self.topic_packets(topic, after=after, limit=500)
            yield from page["items"]
            if not page["items"]:
                return
            after = page["next_after"]

    def events(
        self, topic: str, last_event_id: str | None = None, read_timeout: float | None = 60.0, keepalives: bool = False
    ) -> Iterator[SSEvent]:
        """Yield SSE events of a topic until the stream ends.

        Keep-alive comments are skipped, or yielded as ``SSEvent(None, "keep-alive", "")`` with
        ``keepalives=True`` so a long-lived reader can look up between packets.
        """
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        timeout = httpx.Timeout(DEFAULT_TIMEOUT.connect or 5.0, read=read_timeout)
        try:
            with self._http.stream("GET", f"/v1/topics/{topic}/events", headers=headers, timeout=timeout) as response:
                if not response.is_success:
                    response.read()
                    self._check(response)
                yield from _parse_sse(response.iter_lines(), keepalives)
        except httpx.TransportError as exc:
            raise TransportError(f"event stream from {self.base_url} broke: {exc}") from exc

    # -- reports and log --------------------------------------------------------------------
    def report(self, packet_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        path = f"/v1/packets/{packet_id}/reports"
        return dict(self._request("POST", path, idempotent=False, json=dict(body)).json())

    def trust_report(self, teacher: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """A student's report of what it refused or removed of ``teacher`` (rollback, withheld, revoked-key...).

        Idempotent: the broker keeps one entry per distinct report, so a retry adds nothing.
        """
        path = f"/v1/agents/{teacher}/trust-reports"
        return dict(self._request("POST", path, idempotent=True, json=dict(body)).json())

    def trust_reports(self, teacher: str) -> list[dict[str, Any]]:
        return list(self._get_json(f"/v1/agents/{teacher}/trust-reports"))

    def reports(self, packet_id: str) -> list[dict[str, Any]]:
        return list(self._get_json(f"/v1/packets/{packet_id}/reports"))

    def log(self, after: int = 0, limit: int = 100) -> dict[str, Any]:
        return dict(self._get_json("/v1/log", after=after, limit=limit))

    def iter_log(self, after: int = 0) -> Iterator[dict[str, Any]]:
        while True:
            page = self.log(after=after, limit=500)
            yield from page["items"]
            if not page["items"]:
                return
            after = page["next_after"]


def _parse_sse(lines: Iterator[str], keepalives: bool = False) -> Iterator[SSEvent]:
    """The SSE line protocol (WHATWG): fields until a blank line dispatch one event."""
    event_id: str | None = None
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield SSEvent(event_id, event, "\n".join(data))
            event, data = "message", list[str]()
            continue
        if line.startswith(":"):
            if keepalives:
                yield SSEvent(None, "keep-alive", "")
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            event_id = value
        elif name == "event":
            event = value
        elif name == "data":
            data.append(value)
