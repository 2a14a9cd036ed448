"""The RFC 9457 problem body, shared by the broker (render) and the client (parse)."""

from typing import Any

from pydantic import BaseModel

from m2kt.constants import PROBLEM_BASE
from m2kt.errors import BY_SLUG, InvalidRequest, M2KTError

__all__ = ["Problem", "error_from_problem", "problem_for"]


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str


def problem_for(exc: M2KTError) -> Problem:
    return Problem(
        type=f"{PROBLEM_BASE}/{exc.slug}",
        title=exc.slug.replace("-", " ").capitalize(),
        status=exc.status,
        detail=exc.detail,
    )


def error_from_problem(body: Any, status: int) -> M2KTError:
    """Map a problem body back to our exception class (unknown types keep their text)."""
    if isinstance(body, dict) and isinstance(body.get("type"), str):
        slug = body["type"].rsplit("/", 1)[-1]
        cls = BY_SLUG.get(slug, InvalidRequest)
        return cls(str(body.get("detail") or body.get("title") or slug))
    return InvalidRequest(f"HTTP {status}")
