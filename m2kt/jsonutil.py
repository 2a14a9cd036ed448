"""Strict JSON in and canonical JSON out.

Signed bytes must mean one thing only: duplicate keys, NaN/Infinity, invalid
UTF-8 and absurd nesting are refused instead of being resolved silently (a
parser that keeps the last duplicate and one that keeps the first would read
two different manifests from the same signed bytes).

The same parser guards every JSON body the broker accepts, so nothing it stores
can break a later read: numbers must be finite and integers fit in 64 bits (a
5,000-digit integer is refused before Python's int-from-string limit raises),
and text must be Unicode a database and an encoder accept: no NUL, no lone
surrogate (`"\ud800"` parses in Python but cannot be encoded as UTF-8 again).
"""

import json
import math
import re
from collections.abc import Callable
from typing import Any

import rfc8785

from m2kt.constants import MAX_JSON_DEPTH
from m2kt.errors import M2KTError

__all__ = ["INT_MAX", "SAFE_INT_MAX", "JSONError", "bad_text", "canonical", "loads_strict"]

# Integers must fit a signed 64-bit column, the range both databases and most JSON parsers share.
INT_MAX = 2**63 - 1
# What RFC 8785 (JCS) can canonicalize: JSON that will be hashed in the log must stay inside it.
SAFE_INT_MAX = 2**53 - 1
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


class JSONError(M2KTError, ValueError):
    """The bytes are not strict JSON; the message says why (callers map it to their own problem type)."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JSONError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise JSONError(f"{name} is not JSON")


def _int_parser(max_int: int) -> Callable[[str], int]:
    digits = len(str(max_int))

    def parse(text: str) -> int:
        if len(text.lstrip("-")) > digits:  # before int(): Python refuses 4,300+ digits with a ValueError
            raise JSONError(f"integer of {len(text)} characters is out of range")
        value = int(text)
        if not -max_int <= value <= max_int:
            raise JSONError(f"integer {text} is out of range (at most {max_int} in magnitude)")
        return value

    return parse


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONError(f"number {text[:40]} is not finite")
    return value


def bad_text(text: str) -> str | None:
    """Why ``text`` may not be stored (a NUL or a lone surrogate), or None when it is fine."""
    found = _BAD_TEXT.search(text)
    if found is None:
        return None
    return "a NUL character" if found.group() == "\x00" else "a lone surrogate"


def _walk(value: Any, max_depth: int) -> None:
    """Refuse nesting deeper than ``max_depth`` and text that `bad_text` refuses, keys included."""
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if level > max_depth:
            raise JSONError(f"nested deeper than {max_depth} levels")
        if isinstance(node, str):
            why = bad_text(node)
            if why is not None:
                raise JSONError(f"text contains {why}")
        elif isinstance(node, dict):
            stack.extend((k, level) for k in node)
            stack.extend((v, level + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, level + 1) for v in node)


def loads_strict(data: bytes | str, *, max_depth: int = MAX_JSON_DEPTH, max_int: int = INT_MAX) -> Any:
    """Parse UTF-8 JSON, refusing duplicates, non-finite or oversized numbers, bad text and deep nesting.

    Raises:
        JSONError: with a one-line reason.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise JSONError(f"not UTF-8: {exc.reason} at byte {exc.start}") from exc
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
            parse_int=_int_parser(max_int),
            parse_float=_float,
        )
    except JSONError:
        raise
    except RecursionError as exc:
        raise JSONError(f"nested deeper than {max_depth} levels") from exc
    except json.JSONDecodeError as exc:
        raise JSONError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    _walk(value, max_depth)
    return value


def canonical(value: Any) -> bytes:
    """RFC 8785 (JCS) bytes of a JSON value: the form that is hashed."""
    return rfc8785.dumps(value)
