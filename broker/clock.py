"""One clock for the broker, so timestamps are UTC, aware, and formatted one way."""

from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a `Z`, e.g. 2026-11-23T09:14:42.123456Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
