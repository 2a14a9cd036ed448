"""One folder for the whole test run, shared by its parallel workers (pytest-xdist).

`make test` runs the suite on several workers, each with its own session; an expensive session
fixture (a trained model) would be built once per worker. Built in a folder from here, under its
lock, it is built by the first worker that needs it, and the others wait and find it built.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from filelock import FileLock


@contextmanager
def run_wide_folder(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """``name`` under the run's temp root (above each worker's own), locked while the caller fills it."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    with FileLock(f"{folder}.lock"):
        folder.mkdir(exist_ok=True)
        yield folder
