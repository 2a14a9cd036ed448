"""A full disk: the publish gets a clean 503 problem, no packet, no row, no file left behind.

The write error is injected (ENOSPC) at each step of the storage path in turn: while the
upload is spooled, at the fsync, and at the rename into the content-addressed store. The
broker runs in-process (a real uvicorn server in a thread), so the injection reaches it.
"""

import errno
import os

import factory
import pytest
from test_publish import problem_type

from broker import storage


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FullFile:
    """A spool file on a full disk: every write fails, as the kernel would say it."""

    def __init__(self, fh) -> None:
        self._fh, self.closed = fh, False

    def write(self, _data: bytes) -> int:
        _enospc()
        return 0

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self._fh.fileno()

    def close(self) -> None:
        self._fh.close()
        self.closed = True


def _full(blob):
    blob.fh = _FullFile(blob.fh)
    return blob


@pytest.mark.parametrize(
    "target",
    [
        (storage.BlobStore, "spool"),  # the upload being received
        (storage.os, "fsync"),  # making it durable
        (storage.os, "replace"),  # moving it to its content address
    ],
    ids=["spool", "fsync", "rename"],
)
def test_a_full_disk_is_a_clean_503_and_stores_nothing(broker, monkeypatch, target):
    teacher = broker.teacher()
    pid, env, payload = factory.packet(teacher.key, topics=["a.x"])
    data = broker.settings.data_dir
    before = sorted(p.relative_to(data) for p in data.rglob("*") if p.is_file())
    with broker.http(teacher.token) as http:
        owner, name = target
        if name == "spool":
            original = storage.BlobStore.spool
            monkeypatch.setattr(storage.BlobStore, "spool", lambda self: _full(original(self)))
        else:
            monkeypatch.setattr(owner, name, _enospc)
        r = http.post("/v1/packets", files=factory.files(env, payload))
        assert r.status_code == 503 and problem_type(r) == "unavailable", r.text
        assert "No space left on device" in r.json()["detail"]
        monkeypatch.undo()
        assert http.get(f"/v1/packets/{pid}").status_code == 404
        assert http.get("/v1/topics").json() == []
        after = sorted(p.relative_to(data) for p in data.rglob("*") if p.is_file())
        assert [p for p in after if p.parts[0] == "tmp"] == []  # no partial upload left
        assert [p for p in after if p not in before and p.parts[0] != "blobs"] == []
        # the disk has room again: the same packet goes through whole
        assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
        assert http.get(f"/v1/packets/{pid}/payload").content == payload
