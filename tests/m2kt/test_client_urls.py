"""A wrong broker URL gives a message that names the URL, before or instead of "no such resource"."""

import httpx
import pytest

from m2kt.client import BrokerClient, broker_root
from m2kt.errors import M2KTError, NotFound


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:8080/v1", "give the broker's root, e.g. http://127.0.0.1:8080"),
        ("http://127.0.0.1:8080/v1/", "includes the API path /v1"),
        ("https://broker.example/m2kt/v1/agents", "e.g. https://broker.example"),
        ("127.0.0.1:8080", "needs http:// or https://"),
        ("ftp://broker.example", "needs http:// or https://"),
    ],
)
def test_a_url_that_cannot_be_the_broker_root_is_refused_by_name(url, says):
    with pytest.raises(ValueError) as caught:
        BrokerClient(url)
    assert url in str(caught.value) and says in str(caught.value)


def test_a_root_url_is_kept():
    assert broker_root("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert broker_root("https://example.org/m2kt") == "https://example.org/m2kt"  # a broker behind a path prefix


def _client(handler) -> BrokerClient:
    return BrokerClient("http://broker.test/prefix", "t", retries=0, transport=httpx.MockTransport(handler))


def test_a_404_names_the_url_it_asked():
    problem = {
        "type": "https://m2kt.dev/problems/not-found",
        "title": "Not found",
        "status": 404,
        "detail": "no such resource",
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json=problem, headers={"content-type": "application/problem+json"})

    with _client(handler) as client, pytest.raises(NotFound) as caught:
        client.topics()
    assert str(caught.value) == "no such resource (GET http://broker.test/prefix/v1/topics)"


def test_a_server_that_is_not_a_broker_is_named():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, text="<html>Not Found</html>")

    with _client(handler) as client, pytest.raises(M2KTError) as caught:
        client.get_agent("x")
    assert "GET http://broker.test/prefix/v1/agents/x answered HTTP 404 without an M2KT problem" in str(caught.value)
    assert "is http://broker.test/prefix the broker's root URL?" in str(caught.value)
