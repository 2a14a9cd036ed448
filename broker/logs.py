"""Structured (JSON) logs for the broker process, configured once by the CLI.

One line per record, for machines first: timestamps are ISO 8601 in UTC to the millisecond
(`2026-11-30T17:21:22.550Z`), and uvicorn's `color_message` (the same message with ANSI colour
escapes, meant for a terminal) is dropped, so nothing in a line needs a terminal to read.
"""

import logging
import sys
import time
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

__all__ = ["configure", "make_handler"]

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
TERMINAL_ONLY = ("color_message",)  # record attributes that carry terminal escapes


def _utc_millis(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class _UTCMillis(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        return _utc_millis(record)


class _JSONUTCMillis(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return _utc_millis(record)


def _drop_terminal_only(record: logging.LogRecord) -> bool:
    for name in TERMINAL_ONLY:
        record.__dict__.pop(name, None)
    return True


def make_handler(json_logs: bool = True, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing one line per record to `stream` (stderr by default)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_JSONUTCMillis(FORMAT) if json_logs else _UTCMillis(FORMAT))
    handler.addFilter(_drop_terminal_only)
    return handler


def configure(json_logs: bool = True, level: int = logging.INFO) -> None:
    root = logging.getLogger()
    root.handlers[:] = [make_handler(json_logs)]
    root.setLevel(level)
