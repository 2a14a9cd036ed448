"""Strict JSON in and canonical JSON out.

Signed bytes must mean one thing only: duplicate keys, NaN/Infinity, invalid
UTF-8 and absurd nesting are refused instead of being resolved silently (a
parser that keeps the last duplicate and one that keeps the first would read
two different manifests from the same signed bytes).
"""

import json
from typing import Any

import rfc8785

from m2kt.constants import MAX_JSON_DEPTH

__all__ = ["JSONError", "canonical", "loads_strict"]


class JSONError(ValueError):
    """The bytes are not strict JSON; the message says why."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JSONError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise JSONError(f"{name} is not JSON")


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(node, dict):
            stack.extend((v, level + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, level + 1) for v in node)
    return deepest


def loads_strict(data: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse UTF-8 JSON, refusing duplicates, non-finite numbers and deep nesting.

    Raises:
        JSONError: with a one-line reason.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise JSONError(f"not UTF-8: {exc.reason} at byte {exc.start}") from exc
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except JSONError:
        raise
    except RecursionError as exc:
        raise JSONError(f"nested deeper than {max_depth} levels") from exc
    except json.JSONDecodeError as exc:
        raise JSONError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    if _depth(value) > max_depth:
        raise JSONError(f"nested deeper than {max_depth} levels")
    return value


def canonical(value: Any) -> bytes:
    """RFC 8785 (JCS) bytes of a JSON value: the form that is hashed."""
    return rfc8785.dumps(value)
