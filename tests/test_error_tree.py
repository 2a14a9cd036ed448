"""One exception tree: everything raised on purpose is an M2KTError; a command line shows bugs as bugs."""

import pytest
import typer
from typer.testing import CliRunner

from m2kt import errors
from m2kt.cliutil import one_line_errors


def test_every_exception_raised_on_purpose_is_an_m2kt_error():
    from broker.dashboard import SignIn
    from broker.migrate import DatabaseNotReady
    from broker.services.eventlog import ChainBroken
    from m2kt.jsonutil import JSONError
    from student_agent.knowledge import PacketContentError
    from student_agent.trust import Rejection

    for cls in (SignIn, DatabaseNotReady, ChainBroken, JSONError, PacketContentError, Rejection):
        assert issubclass(cls, errors.M2KTError), cls
    # what callers caught before still catches them
    assert issubclass(JSONError, ValueError) and issubclass(PacketContentError, ValueError)
    assert issubclass(errors.UnknownName, KeyError) and issubclass(errors.WrongKind, TypeError)
    rejection = Rejection("rollback", "an older head")
    assert (rejection.reason, rejection.detail, str(rejection)) == (
        "rollback",
        "an older head",
        "rollback: an older head",
    )


def test_local_errors_are_not_http_problems():
    for cls in (errors.LocalInputError, errors.InvalidOption, errors.TransportError):
        assert cls not in errors.BY_SLUG.values()
    assert str(errors.UnknownName("unknown task family 'x'")) == "unknown task family 'x'"


def _app(exc: BaseException) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @one_line_errors
    def run() -> None:
        raise exc

    return app


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.NotFound("no agent named 'x'"), 1),
        (errors.LocalInputError("cannot read private key k: No such file"), 1),
        (errors.InvalidOption("--anchors [must] be at least 1"), 2),
        (errors.UnknownName("unknown task family 'nope'"), 2),
        (ValueError("no broker token"), 2),
        (FileNotFoundError(2, "No such file or directory", "k.key"), 1),
    ],
)
def test_expected_failures_are_one_line_and_an_exit_code(exc, code):
    result = CliRunner().invoke(_app(exc), [])
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
    if isinstance(exc, errors.M2KTError):
        assert lines[0] == f"error: {exc.detail}"  # brackets shown as written, not read as markup


@pytest.mark.parametrize(
    "exc", [KeyError("model_dir"), TypeError("f() got an unexpected keyword"), AttributeError("x")]
)
def test_a_bug_keeps_its_traceback(exc):
    result = CliRunner().invoke(_app(exc), [])
    assert result.exit_code == 1 and result.exception is exc


def test_unknown_registry_names_and_parameters_are_options_not_bugs():
    from m2kt.ml.tasks import get_task

    with pytest.raises(errors.UnknownName, match="unknown task family"):
        get_task("no-such-family")
    with pytest.raises(errors.WrongKind, match="does not take"):
        get_task("modarith", q=3)
    assert get_task("modarith", p=23).spec()["params"]["p"] == 23
