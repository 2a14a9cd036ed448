"""The broker's log lines: one JSON object each, no terminal escapes, UTC timestamps to the millisecond."""

import io
import json
import logging
import re

import pytest

from broker import logs


def _emit(json_logs: bool) -> str:
    stream = io.StringIO()
    logger = logging.getLogger(f"test.broker.logs.{json_logs}")
    logger.propagate = False
    logger.handlers[:] = [logs.make_handler(json_logs, stream)]
    logger.setLevel(logging.INFO)
    # what uvicorn logs at start: the message, and the same with ANSI colours for a terminal
    logger.info(
        "Started server process [%d]", 42, extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"}
    )
    return stream.getvalue()


def test_json_lines_carry_no_terminal_escapes_and_utc_millisecond_times():
    (line,) = _emit(json_logs=True).splitlines()
    record = json.loads(line)
    assert record["message"] == "Started server process [42]"
    assert "color_message" not in record and "\x1b" not in line and "\\u001b" not in line
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["asctime"]), record["asctime"]


@pytest.mark.parametrize("json_logs", [True, False])
def test_both_formats_use_the_same_timestamps(json_logs):
    line = _emit(json_logs)
    assert re.match(r'(\{"asctime": ")?\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z', line), line
    assert "\x1b" not in line
