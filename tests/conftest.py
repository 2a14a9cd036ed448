"""Shared fixtures: a real broker over real HTTP, on SQLite and on PostgreSQL.

Every test that takes `broker` runs twice, once per database. PostgreSQL tests
get a fresh database cloned from a migrated template (CREATE DATABASE ...
TEMPLATE), so each test starts empty without paying for migrations each time.
Set M2KT_TEST_PG_URL to point at another server (default: the local one).
"""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokerkit import ADMIN_TOKEN, Broker, ServerThread, broker_settings, free_port, pg_admin, pg_url  # noqa: F401
from runkit import run_wide_folder
from s3kit import Bucket, S3Server, new_bucket

from broker.db import make_engine
from broker.migrate import upgrade

BACKENDS = ["sqlite", "postgresql"]


def pytest_configure(config: pytest.Config) -> None:
    """Each parallel worker gets its share of the cores for torch, here and in the processes it starts."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    name = f"m2kt_tpl_{uuid.uuid4().hex[:10]}"
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(pg_url(name))
    upgrade(engine)
    engine.dispose()
    yield name
    with pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "broker.db"
        target.write_bytes(template.read_bytes())
        yield f"sqlite:///{target}"
    else:
        yield request.getfixturevalue("pg_database_url")


@pytest.fixture
def pg_database_url(pg_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database, for tests that only make sense there (replicas)."""
    name = f"m2kt_t_{uuid.uuid4().hex[:12]}"
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield pg_url(name)
    with pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def broker(database_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Broker]:
    overrides = getattr(request, "param", {}) or {}
    settings = broker_settings(database_url, tmp_path / "data", **overrides)
    with ServerThread(settings) as server:
        yield Broker(server.url, settings, "sqlite" if settings.is_sqlite else "postgresql")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One S3-wire server (moto's) for the session; each test takes its own bucket."""
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    """A fresh bucket, with the AWS environment set for brokers started in this process."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return new_bucket(s3_server)


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Path:
    """tests/plugins on the import path (task families from outside m2kt), and a task registry
    that forgets whatever a test registers."""
    from m2kt.ml.tasks import base as task_base

    folder = Path(__file__).parent / "plugins"
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(task_base, "_REGISTRY", dict(task_base._REGISTRY))
    return folder


@pytest.fixture(scope="session")
def quick_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick benchmark's model cache, with its one pair trained (digitsum, BERT64 -> Llama48).

    Trained once per test run by the benchmark's own code (torch is imported only here): the
    student tests take their teacher and student from it, and the quick benchmark run in
    tests/bench finds the pair there instead of training it a second time.
    """
    from bench.transfer.setups import QUICK, trained_models
    from m2kt.ml.threads import use_default_threads

    use_default_threads()
    ((family, params),) = QUICK.families.items()
    (pair,) = QUICK.pairs
    with run_wide_folder(tmp_path_factory, "bench-models") as root:  # trains only what is not there yet
        trained_models(family, params, pair, QUICK, root)
    return root
