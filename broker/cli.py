"""m2kt-broker: serve, migrate, sweep, agents create / rotate-token / revoke-token, keys revoke."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from alembic.util import CommandError
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from broker import logs
from broker.db import Sessions, make_engine
from broker.migrate import DatabaseNotReady, require_head, upgrade
from broker.services import agents as agents_service
from broker.services import trust as trust_service
from broker.settings import BrokerSettings
from m2kt import keys
from m2kt.cliutil import err, one_line_errors
from m2kt.errors import InvalidOption
from m2kt.text import when

app = typer.Typer(help="The M2KT broker.", no_args_is_help=True, add_completion=False)
agents_app = typer.Typer(help="Register agents.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage teachers' keys.", no_args_is_help=True)
teachers_app = typer.Typer(help="What students trust of each teacher.", no_args_is_help=True)
app.add_typer(agents_app, name="agents")
app.add_typer(keys_app, name="keys")
app.add_typer(teachers_app, name="teachers")

out = Console()


def _settings() -> BrokerSettings:
    try:
        return BrokerSettings()
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = "M2KT_" + "_".join(str(p) for p in first["loc"]).upper()
        raise InvalidOption(f"{field}: {first['msg']}") from exc


def _migrate(settings: BrokerSettings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
    except (SQLAlchemyError, CommandError) as exc:
        raise DatabaseNotReady(f"migration failed: {str(exc).splitlines()[0]}") from exc
    finally:
        engine.dispose()


@app.command()
@one_line_errors
def migrate() -> None:
    """Migrate the database to the newest schema."""
    settings = _settings()
    _migrate(settings)
    err.print("database at head")


@app.command()
@one_line_errors
def serve(
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to bind")] = 8080,
    no_migrate: Annotated[bool, typer.Option("--no-migrate", help="skip the migration to head")] = False,
) -> None:
    """Serve the broker's HTTP API (migrates to head first)."""
    import uvicorn

    from broker.main import create_app

    settings = _settings()
    logs.configure(json_logs=settings.log_json)
    if settings.admin_token is None:
        err.print("[yellow]warning:[/] M2KT_ADMIN_TOKEN is not set: admin routes refuse every token")
    if not no_migrate:
        _migrate(settings)
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, timeout_graceful_shutdown=5)


@contextmanager
def _admin_sessions(settings: BrokerSettings) -> Iterator[Sessions]:
    """The database of an admin command, once it is known to exist and be at head; disposed after.

    Raises:
        DatabaseNotReady: missing, unreachable or not migrated.
    """
    require_head(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        yield Sessions(engine)
    finally:
        engine.dispose()


@app.command()
@one_line_errors
def sweep() -> None:
    """Remove blobs no packet references, older than M2KT_ORPHAN_GRACE_SECONDS (each start does it too).

    Safe beside serving replicas: the grace period spares blobs whose publish has not committed yet.
    Replicas that seldom restart on an object store run it now and then (a publish whose commit failed
    leaves its objects behind).
    """
    from broker.main import sweep_orphans
    from broker.storage import open_store

    settings = _settings()
    with _admin_sessions(settings) as sessions:
        removed = sweep_orphans(sessions, open_store(settings), settings.orphan_grace_seconds)
    err.print(f"removed {removed} unreferenced blobs and temp files")


@agents_app.command("create")
@one_line_errors
def agents_create(
    name: Annotated[str, typer.Option(help="agent name")],
    role: Annotated[str, typer.Option(help="teacher or student")],
    public_key: Annotated[Path | None, typer.Option(help="teacher's public key file (.pub or PEM)")] = None,
) -> None:
    """Register an agent directly in the database and print its token (shown once)."""
    settings = _settings()
    b64 = keys.public_to_b64(keys.load_public(public_key)) if public_key is not None else None
    with _admin_sessions(settings) as sessions:
        new = agents_service.create_agent(sessions=sessions, name=name, role=role, public_key=b64)
    out.print(new.token, soft_wrap=True, highlight=False)


@keys_app.command("revoke")
@one_line_errors
def keys_revoke(
    name: Annotated[str, typer.Option(help="the teacher")],
    keyid: Annotated[str, typer.Option(help="the key to revoke")],
) -> None:
    """Revoke a teacher's key: packets it signed stay, it signs nothing new."""
    settings = _settings()
    with _admin_sessions(settings) as sessions:
        agents_service.revoke_key(sessions=sessions, name=name, keyid=keyid)
    err.print(f"revoked {keyid}")


@keys_app.command("threshold")
@one_line_errors
def keys_threshold(
    name: Annotated[str, typer.Option(help="the teacher")],
    k: Annotated[int, typer.Option(help="how many of its keys must sign each packet and head", min=1, max=16)],
) -> None:
    """Require k of a teacher's unrevoked keys on each packet and head it publishes (k-of-n)."""
    settings = _settings()
    with _admin_sessions(settings) as sessions:
        agents_service.set_threshold(sessions=sessions, name=name, threshold=k)
    err.print(f"{name}: {k} of its keys must sign")


@agents_app.command("rotate-token")
@one_line_errors
def agents_rotate_token(name: Annotated[str, typer.Option(help="agent name")]) -> None:
    """Issue a new token for an agent and print it (shown once); the old token stops working at once."""
    settings = _settings()
    with _admin_sessions(settings) as sessions:
        new = agents_service.rotate_token(sessions=sessions, name=name)
    out.print(new.token, soft_wrap=True, highlight=False)


@agents_app.command("revoke-token")
@one_line_errors
def agents_revoke_token(name: Annotated[str, typer.Option(help="agent name")]) -> None:
    """Refuse an agent's token from now on (rotate-token issues a new one)."""
    settings = _settings()
    with _admin_sessions(settings) as sessions:
        agents_service.revoke_token(sessions=sessions, name=name)
    err.print(f"token of {name} revoked")


@teachers_app.command("show")
@one_line_errors
def teachers_show(
    name: Annotated[str, typer.Option(help="the teacher")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
) -> None:
    """Print a teacher's signed head and its expiry, versions per topic, keys, and students' trust reports."""
    settings = _settings()
    with _admin_sessions(settings) as sessions:
        with sessions.reader() as session:
            t = trust_service.teacher_trust(session=session, name=name, include_quarantined=True)
    if as_json:
        out.print_json(t.model_dump_json())
        return
    if t.head is None:
        out.print(f"teacher {t.teacher}: no signed head", highlight=False)
    else:
        state = "EXPIRED" if t.head.expired else "current"
        out.print(
            f"teacher {t.teacher}: head version {t.head.version}, expires {when(t.head.expires)} ({state})",
            highlight=False,
            soft_wrap=True,
        )
    topics = Table("topic", "packets", "highest version", "head names", "head packet", title="versions per topic")
    for v in t.topics:
        topics.add_row(
            v.topic, str(v.packets), _or_dash(v.latest_version), _or_dash(v.head_version), (v.head_packet or "-")[:16]
        )
    out.print(topics)
    # Lines, not a table: a key id is copied into other commands, so it stays whole on any width
    # (rich takes 80 columns when the output is piped, and a table would cut or wrap it).
    out.print(f"keys ({t.threshold} must sign each packet and head):", highlight=False)
    for k in t.keys:
        status = f"revoked {when(k.revoked_at)}" if k.revoked else "active"
        out.print(f"  {k.keyid}  {status}", highlight=False, soft_wrap=True)
    reports = Table("student", "reason", "action", "reports", "last", title="students' trust reports")
    for r in t.reports:
        reports.add_row(r.student, r.reason, r.action, str(r.reports), when(r.last_at))
    out.print(reports)


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)
