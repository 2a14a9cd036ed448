"""Alembic migrations of the broker's schema, shipped in the package (see broker/migrate.py)."""
