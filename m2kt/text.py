"""Small text helpers for what people read: counts with the right noun, times to the second."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["count", "when"]


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``count(1, "concept")`` -> ``"1 concept"``, ``count(2, "concept")`` -> ``"2 concepts"``.

    Args:
        n: how many.
        noun: the singular noun.
        plural: the plural where adding "s" is wrong (``count(2, "entry", "entries")``).
    """
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def when(moment: datetime | str | None) -> str:
    """A UTC time to the second for display, e.g. ``2026-11-23 09:14:42 UTC``.

    Stored and wire timestamps keep their microseconds (the event log hashes them); people
    do not need them. Accepts a datetime (naive means UTC) or an RFC 3339 string; text that
    is not a time comes back unchanged, ``None`` as an em dash.
    """
    if moment is None:
        return "—"
    if isinstance(moment, str):
        try:
            parsed = datetime.fromisoformat(moment)
        except ValueError:
            return moment
    else:
        parsed = moment
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
