"""What every M2KT command line shares: one-line errors, ``name=value`` parameters, training progress."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from m2kt.errors import InvalidOption, M2KTError

if TYPE_CHECKING:  # torch loads only in the commands that train
    from m2kt.ml.train import EpochLog

__all__ = ["err", "fail", "one_line_errors", "parse_params", "training_progress"]

err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> typer.Exit:
    """Print ``error: message`` on one line of stderr; the caller raises the returned exit."""
    err.print(f"[red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    return typer.Exit(code=code)


def one_line_errors(fn: F) -> F:
    """Turn every expected failure into one line on stderr and an exit code; a bug keeps its traceback.

    Expected failures: an `M2KTError` (its ``exit_code``: 1 refused or failed, 2 a bad option),
    a ``ValueError`` (2: a bad value, e.g. a setting pydantic refuses) and an ``OSError`` (1: a file).
    A ``KeyError``, ``TypeError`` or anything else is a bug, not bad options, and is not hidden.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except M2KTError as exc:
            raise fail(exc.detail, exc.exit_code) from exc
        except ValueError as exc:
            raise fail(str(exc), 2) from exc
        except OSError as exc:
            raise fail(f"{exc.strerror}: {exc.filename}" if exc.strerror else str(exc), 1) from exc

    return wrapper  # type: ignore[return-value]


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["p=23", "name=x"]`` -> ``{"p": 23, "name": "x"}`` (integers where they look like one)."""
    params: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise InvalidOption(f"--param takes name=value, got {item!r}")
        params[name] = int(value) if value.lstrip("-").isdigit() else value
    return params


def training_progress(epochs: int) -> tuple[bool, Callable[[EpochLog], None] | None]:
    """``(progress bar, per-epoch callback)`` for ``m2kt.ml.train.fit``, by where stderr goes.

    A terminal gets the rich bar. Anything else (a log file, a pipe, ``docker logs``) gets one
    line per epoch instead: the bar draws nothing there, so training looked stuck for minutes.
    """
    if err.is_terminal:
        return True, None

    def line(log: EpochLog) -> None:
        err.print(
            f"epoch {log.epoch + 1}/{epochs}: loss {log.train_loss:.4f}, "
            f"held-out accuracy {log.eval.accuracy:.3f} ({log.seconds:.0f} s)",
            soft_wrap=True,
            highlight=False,
        )

    return False, line
