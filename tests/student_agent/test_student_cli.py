"""m2kt-student's failures are one line and an exit code, never a traceback."""

import os

import pytest
from typer.testing import CliRunner

from student_agent.cli import app


@pytest.fixture
def env(pair, tmp_path, monkeypatch):
    monkeypatch.setenv("M2KT_STUDENT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("M2KT_STUDENT_MODEL_DIR", str(pair.student.path))
    monkeypatch.delenv("M2KT_STUDENT_TOKEN", raising=False)
    monkeypatch.delenv("M2KT_STUDENT_TOPICS", raising=False)
    return tmp_path


def _one_line(result, code: int, needle: str) -> None:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.output, result.output


def test_run_without_topics_or_token_says_what_is_missing(env, monkeypatch):
    runner = CliRunner()
    _one_line(runner.invoke(app, ["run"]), 2, "no topics")
    _one_line(runner.invoke(app, ["run", "--topic", "digitsum.range"]), 2, "no broker token")
    token = env / "token"
    token.write_text("secret")
    os.chmod(token, 0o644)
    monkeypatch.setenv("M2KT_STUDENT_TOKEN_FILE", str(token))
    _one_line(runner.invoke(app, ["run", "--topic", "digitsum.range"]), 2, "chmod 600")


def test_query_before_anything_is_integrated_is_refused(env):
    _one_line(CliRunner().invoke(app, ["query", "1 2 3 4 5"]), 1, "nothing integrated yet")


def test_status_of_a_fresh_student(env):
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 0 and "CAL version: None" in result.output


def test_a_missing_model_directory_is_one_line(env, monkeypatch):
    monkeypatch.setenv("M2KT_STUDENT_MODEL_DIR", str(env / "nowhere"))
    _one_line(CliRunner().invoke(app, ["query", "1 + 2 * 3"]), 1, "not a student directory")


def test_a_bad_cal_setting_is_one_line(env, monkeypatch):
    monkeypatch.setenv("M2KT_STUDENT_CAL_FORM", "transformer")
    _one_line(CliRunner().invoke(app, ["run", "--topic", "digitsum.range"]), 2, "CAL form")


@pytest.mark.parametrize(
    "name,value",
    [("REVOKED_AFTER", "yesterday"), ("REVOKED_AFTER", "2026-01-01T00:00:00"), ("MIN_SIGNERS", "0")],
)  # not a time; a time without its zone; no signer at all
def test_a_bad_trust_setting_is_one_line(env, monkeypatch, name, value):
    monkeypatch.setenv(f"M2KT_STUDENT_{name}", value)
    _one_line(CliRunner().invoke(app, ["run", "--topic", "digitsum.range"]), 2, f"M2KT_STUDENT_{name}")


def test_query_heading_stays_whole_above_a_narrow_table():
    """The heading is its own line: as a table title it wrapped to the width of one short column."""
    import io

    from rich.console import Console

    from student_agent.cli import print_answers
    from student_agent.query import ConceptAnswer

    buffer = io.StringIO()
    print_answers(Console(file=buffer, width=100), [ConceptAnswer("1 + 2 * 3", {"c": 0.5})], 12)
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "transferred concepts (CAL v12)" and any("0.50" in line for line in lines[1:])


def test_the_students_logging_keeps_http_requests_out():
    import logging

    from student_agent.cli import configure_logging

    loggers = [logging.getLogger(name) for name in ("httpx", "httpcore")]
    before = [logger.level for logger in loggers]
    try:
        configure_logging()
        assert not any(logger.isEnabledFor(logging.INFO) for logger in loggers)
        assert all(logger.isEnabledFor(logging.WARNING) for logger in loggers)
    finally:
        for logger, level in zip(loggers, before, strict=True):
            logger.setLevel(level)
