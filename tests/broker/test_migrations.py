"""The migrations build exactly the schema the models describe, on both databases, and go down again."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from broker import models  # noqa: F401
from broker.db import Base, make_engine
from broker.migrate import upgrade


def test_migrated_schema_matches_models(database_url):
    engine = make_engine(database_url)
    try:
        upgrade(engine)  # already at head: a no-op
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, Base.metadata)
            assert diff == []
            assert ctx.get_current_revision() is not None
        tables = set(inspect(engine).get_table_names())
        assert {"agents", "keys", "packets", "packet_topics", "reports", "quarantines", "log_entries"} <= tables
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back(database_url):
    from alembic import command

    from broker.migrate import alembic_config

    engine = make_engine(database_url)
    try:
        cfg = alembic_config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "base")
        assert "packets" not in inspect(engine).get_table_names()
        upgrade(engine)
        assert "packets" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_alembic_cli_works_from_the_checkout():
    """Developers write revisions with Alembic's own CLI: `alembic -c broker/alembic.ini ...`."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    alembic = Path(sys.executable).parent / "alembic"
    out = subprocess.run(
        [str(alembic), "-c", "broker/alembic.ini", "heads"], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().endswith("(head)"), out
