"""Run Alembic migrations from code (the CLI and tests), on an engine we already built."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

_ROOT = Path(__file__).resolve().parent.parent


def alembic_config() -> Config:
    cfg = Config(str(_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(_ROOT / "migrations"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate to `revision` in one transaction (PostgreSQL) or batch mode (SQLite)."""
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
