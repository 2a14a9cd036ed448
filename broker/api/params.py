"""Path and query parameters shared by several routes."""

import re
from typing import Annotated

from fastapi import Path, Query

from m2kt.constants import PACKET_ID_PATTERN, PAGE_LIMIT_DEFAULT
from m2kt.errors import NotFound
from m2kt.manifest import is_topic

_PACKET_ID = re.compile(PACKET_ID_PATTERN)

# seq and log indexes are 64-bit signed integers in both databases; a larger cursor is a 422, not an overflow
MAX_CURSOR = 2**63 - 1
After = Annotated[int, Query(ge=0, le=MAX_CURSOR, description="return items after this seq/index")]
Limit = Annotated[int, Query(ge=1, le=MAX_CURSOR, description="page size; above 500 counts as 500")]
PacketIdPath = Annotated[str, Path(description="lowercase hex sha256 of the statement")]
TopicPath = Annotated[str, Path(description="a topic name, ^[a-z0-9]+(\\.[a-z0-9_-]+)*$")]

DEFAULT_LIMIT = PAGE_LIMIT_DEFAULT


def packet_id(value: str) -> str:
    """A path that names no possible packet is a 404, not a shape error: there is no such resource."""
    if not _PACKET_ID.fullmatch(value):
        raise NotFound(f"no packet {value[:80]!r}")
    return value


def topic(value: str) -> str:
    if not is_topic(value):
        raise NotFound(f"no topic {value[:80]!r}")
    return value
