"""The teacher's packet versions: strictly increasing without local state, and a positive lifetime."""

from datetime import timedelta

import pytest

from teacher_agent.packetize import PacketSpec, next_version


def test_next_version_strictly_increases_and_follows_the_clock():
    import time

    versions = [next_version() for _ in range(1000)]  # far more than one per millisecond
    assert all(a < b for a, b in zip(versions, versions[1:], strict=False))
    assert versions[0] >= time.time_ns() // 1_000_000 - 60_000


@pytest.mark.parametrize("change", [{"version": 0}, {"lifetime": timedelta(0)}])
def test_packet_spec_refuses_a_bad_version_or_lifetime(change):
    with pytest.raises(ValueError, match="PacketSpec"):
        PacketSpec(agent="t", **change)
