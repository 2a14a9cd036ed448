"""The one atomic-write helper: the old file or the new one, never half, never a stray temp file."""

import pytest

from m2kt.fsutil import atomic_path, atomic_write_bytes, atomic_write_text


def test_writes_replace_the_file_and_leave_no_temp(tmp_path):
    target = tmp_path / "deep" / "state.json"
    atomic_write_text(target, "one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "current"
    atomic_write_text(target, "3")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash before the rename")
    assert target.read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current"]
