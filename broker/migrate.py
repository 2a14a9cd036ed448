"""Run Alembic migrations from code (the CLI and tests), on an engine we already built.

The migrations and `alembic.ini` are package data of `broker` (`broker/migrations/`,
`broker/alembic.ini`), read through `importlib.resources`, so an installed wheel migrates
exactly as the checkout does, whatever the current directory. The ini names its scripts as the
package resource `broker:migrations`, which Alembic resolves through `importlib.resources` too.
"""

from importlib import resources

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

CONFIG_RESOURCE = "alembic.ini"


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
