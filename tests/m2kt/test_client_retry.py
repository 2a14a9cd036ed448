"""BrokerClient retries: idempotent requests only, jittered backoff or Retry-After, never a refusal."""

import httpx
import pytest

from m2kt.client import BrokerClient
from m2kt.errors import Forbidden, ServiceUnavailable, TransportError, Unauthorized


def _problem(status: int, slug: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"type": f"https://m2kt.dev/problems/{slug}", "title": slug, "status": status, "detail": slug}
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json", **(headers or {})})


def _client(answers: list, waits: list[float], **kw) -> tuple[BrokerClient, list[str]]:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    client = BrokerClient("http://broker.test", "t", transport=httpx.MockTransport(handler), sleep=waits.append, **kw)
    return client, seen


def test_a_503_is_retried_after_the_retry_after_it_names():
    waits: list[float] = []
    client, seen = _client([_problem(503, "unavailable", {"Retry-After": "2"}), httpx.Response(200, json=[])], waits)
    assert client.topics() == [] and len(seen) == 2
    assert waits == [2.0]


def test_without_retry_after_the_backoff_grows_with_jitter_and_gives_up_with_the_last_answer():
    waits: list[float] = []
    client, seen = _client([_problem(503, "unavailable")] * 4, waits, retries=3, backoff=0.25)
    with pytest.raises(ServiceUnavailable):
        client.topics()
    assert len(seen) == 4 and len(waits) == 3
    for n, wait in enumerate(waits):
        assert 0.25 * 2**n <= wait <= 0.25 * 2**n + 0.25, waits


def test_retry_after_is_capped():
    waits: list[float] = []
    client, _ = _client(
        [_problem(503, "unavailable", {"Retry-After": "3600"}), httpx.Response(200, json=[])], waits, max_wait=7.0
    )
    client.topics()
    assert waits == [7.0]


@pytest.mark.parametrize(
    ("status", "slug", "exc"), [(401, "unauthorized", Unauthorized), (403, "forbidden", Forbidden)]
)
def test_a_refusal_is_never_retried(status, slug, exc):
    waits: list[float] = []
    client, seen = _client([_problem(status, slug, {"Retry-After": "1"})] * 4, waits)
    with pytest.raises(exc):
        client.topics()
    assert len(seen) == 1 and waits == []


def test_transport_errors_are_retried_then_named():
    waits: list[float] = []
    client, seen = _client([httpx.ConnectError("refused")] * 4, waits, retries=3, backoff=0)
    with pytest.raises(TransportError, match="cannot reach the broker"):
        client.topics()
    assert len(seen) == 4 and waits == [0.0] * 3


def test_a_request_that_is_not_idempotent_is_tried_once():
    waits: list[float] = []
    client, seen = _client([_problem(503, "unavailable", {"Retry-After": "1"})] * 4, waits)
    with pytest.raises(ServiceUnavailable):
        client.create_agent("s1", "student")
    assert seen == ["POST"] and waits == []
