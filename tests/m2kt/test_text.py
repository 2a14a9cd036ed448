"""Display helpers: counts with the right noun, times to the second."""

from datetime import UTC, datetime

from m2kt.text import count, when


def test_count_pluralises_only_when_not_one():
    assert count(1, "concept") == "1 concept"
    assert count(0, "concept") == "0 concepts" and count(2, "concept") == "2 concepts"
    assert count(3, "entry", "entries") == "3 entries" and count(1, "entry", "entries") == "1 entry"


def test_when_drops_microseconds_and_reads_rfc3339():
    moment = datetime(2026, 11, 23, 9, 14, 42, 123456, tzinfo=UTC)
    assert when(moment) == "2026-11-23 09:14:42 UTC"
    assert when("2026-11-23T09:14:42.123456Z") == "2026-11-23 09:14:42 UTC"
    assert when(moment.replace(tzinfo=None)) == "2026-11-23 09:14:42 UTC"
    assert when("not a time") == "not a time" and when(None) == "—"
