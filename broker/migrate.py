"""Run Alembic migrations from code (the CLI and tests), on an engine we already built.

The migrations and `alembic.ini` are package data of `broker` (`broker/migrations/`,
`broker/alembic.ini`), read through `importlib.resources`, so an installed wheel migrates
exactly as the checkout does, whatever the current directory. The ini names its scripts as the
package resource `broker:migrations`, which Alembic resolves through `importlib.resources` too.

`require_head` is the admin commands' guard: they write to the database directly, so they
refuse one that is missing or not migrated instead of creating an empty SQLite file next to
wherever they were started.
"""

from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from m2kt.errors import ServiceUnavailable

__all__ = ["DatabaseNotReady", "alembic_config", "require_head", "shown_url", "upgrade"]

CONFIG_RESOURCE = "alembic.ini"


class DatabaseNotReady(ServiceUnavailable):
    """The database is missing, unreachable or not at the newest schema; the message says which."""


def alembic_config() -> Config:
    """Alembic's configuration as shipped in the package, not read from the current directory."""
    cfg = Config()  # no file: the parser starts empty and takes the packaged ini below
    text = resources.files("broker").joinpath(CONFIG_RESOURCE).read_text(encoding="utf-8")
    cfg.file_config.read_string(text, source=f"broker/{CONFIG_RESOURCE}")
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate to `revision` in one transaction (PostgreSQL) or batch mode (SQLite)."""
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def shown_url(database_url: str) -> str:
    """The URL as messages may show it: the password masked."""
    return make_url(database_url).render_as_string(hide_password=True)


def require_head(database_url: str) -> None:
    """Return if the database exists and is at the newest revision; create and change nothing.

    Raises:
        DatabaseNotReady: with one line naming the database (password masked) and what to do.
    """
    url = make_url(database_url)
    shown = shown_url(database_url)
    if url.get_backend_name() == "sqlite":
        path = url.database or ""
        if path in ("", ":memory:") or not Path(path).is_file():
            raise DatabaseNotReady(
                f"no broker database at {shown}: set M2KT_DATABASE_URL (or M2KT_DATA_DIR) to the broker's, "
                "or create it with `m2kt-broker migrate`"
            )
    engine = create_engine(database_url, poolclass=NullPool)  # no pragmas, no pool: only a read
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise DatabaseNotReady(f"cannot open the broker database at {shown}: {reason}") from exc
    finally:
        engine.dispose()
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if current is None:
        raise DatabaseNotReady(f"the database at {shown} has no broker schema: run `m2kt-broker migrate` first")
    if current != head:
        raise DatabaseNotReady(
            f"the database at {shown} is at schema revision {current}, not {head}: run `m2kt-broker migrate`"
        )
