"""A 200 MiB body without a token costs the broker almost no memory: limits come before the work.

The broker runs in this process (tests/brokerkit.py), so a thread samples this process's
resident memory while each request is under way; the client streams its body from a generator
and never holds it, so any growth is the server's.
"""

import threading
from pathlib import Path

import pytest

MIB = 1024 * 1024
TOTAL = 200 * MIB
GROWTH_LIMIT = 64 * MIB


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class PeakRSS:
    """The highest RSS seen while the block runs, sampled every few milliseconds."""

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def body(total: int = TOTAL, size: int = MIB):
    block = b"{" + b" " * (size - 1)
    for _ in range(total // size):
        yield block


CASES = [
    ("chunked JSON to /v1/agents", "/v1/agents", {}, 413),
    ("chunked JSON to a report route", "/v1/packets/" + "0" * 64 + "/reports", {}, 413),
    ("declared JSON to /v1/agents", "/v1/agents", {"Content-Length": str(TOTAL)}, 413),
    ("chunked multipart to /v1/packets", "/v1/packets", {"Content-Type": "multipart/form-data; boundary=x"}, 401),
    (
        "declared multipart to /v1/packets",
        "/v1/packets",
        {"Content-Length": str(TOTAL), "Content-Type": "multipart/form-data; boundary=x"},
        413,
    ),
]


@pytest.mark.parametrize(("label", "path", "headers", "status"), CASES, ids=[c[0] for c in CASES])
def test_a_200_mib_body_without_a_token_grows_the_broker_by_less_than_64_mib(broker, label, path, headers, status):
    with broker.http() as http:
        assert http.get("/healthz").status_code == 200  # warm: the first request's allocations are not the body's
        with PeakRSS() as rss:
            r = http.post(path, content=body(), headers=headers)
        assert r.status_code == status, r.text[:200]
        assert r.headers["content-type"].startswith("application/problem+json")
    assert rss.growth < GROWTH_LIMIT, f"{label}: grew {rss.growth / MIB:.0f} MiB"
