"""Alembic environment: the URL comes from BrokerSettings, or from the caller's engine."""

from alembic import context
from sqlalchemy import Connection

from broker import models  # noqa: F401  (registers the tables on Base.metadata)
from broker.db import Base, make_engine
from broker.settings import BrokerSettings

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = make_engine(BrokerSettings().database_url)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()
