"""m2kt-broker: migrate, agents create, keys revoke, and one-line errors."""

import json
import time

import pytest
from test_heads import _head, _published
from typer.testing import CliRunner

from broker.cli import app, out
from m2kt import keys

runner = CliRunner()


@pytest.fixture
def env(database_url, tmp_path):
    return {"M2KT_DATABASE_URL": database_url, "M2KT_DATA_DIR": str(tmp_path / "data"), "M2KT_LOG_JSON": "false"}


def test_migrate_create_revoke(env, tmp_path):
    assert runner.invoke(app, ["migrate"], env=env).exit_code == 0
    key = keys.generate()
    pub = keys.save_keypair(key, tmp_path / "t.key")
    result = runner.invoke(
        app, ["agents", "create", "--name", "t1", "--role", "teacher", "--public-key", str(pub)], env=env
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.startswith("m2kt_") and len(token) > 40
    again = runner.invoke(app, ["agents", "create", "--name", "t1", "--role", "student"], env=env)
    assert again.exit_code == 1 and "taken" in again.output and "Traceback" not in again.output
    kid = keys.keyid(key.public_key())
    assert runner.invoke(app, ["keys", "revoke", "--name", "t1", "--keyid", kid], env=env).exit_code == 0
    missing = runner.invoke(app, ["keys", "revoke", "--name", "t1", "--keyid", "0" * 64], env=env)
    assert missing.exit_code == 1 and "no key" in missing.output


def test_bad_inputs_give_one_line(env, tmp_path):
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("not a key")
    result = runner.invoke(
        app, ["agents", "create", "--name", "x", "--role", "teacher", "--public-key", str(bad_key)], env=env
    )
    assert result.exit_code == 1 and "base64" in result.output and "Traceback" not in result.output
    weak = runner.invoke(app, ["migrate"], env={**env, "M2KT_ADMIN_TOKEN": "changethis"})
    assert weak.exit_code == 2 and "M2KT_ADMIN_TOKEN" in weak.output and len(weak.output.strip().splitlines()) == 1


ADMIN_COMMANDS = [
    ["agents", "create", "--name", "s1", "--role", "student"],
    ["keys", "revoke", "--name", "t1", "--keyid", "0" * 64],
    ["teachers", "show", "--name", "t1"],
]


def _refused(args, env, *expected):
    """One line on stderr naming the database, exit 1, nothing on stdout (no empty token in `$(...)`)."""
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("args", ADMIN_COMMANDS)
def test_admin_commands_refuse_a_missing_sqlite_database_and_create_nothing(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {"M2KT_DATABASE_URL": None, "M2KT_DATA_DIR": None, "M2KT_LOG_JSON": "false"}
    line = _refused(args, env, f"sqlite:///{tmp_path / '.m2kt' / 'broker.db'}", "M2KT_DATABASE_URL", "migrate")
    assert line.startswith("error: no broker database at")
    assert list(tmp_path.iterdir()) == []  # no .m2kt/, no empty broker.db


@pytest.mark.parametrize("args", ADMIN_COMMANDS)
def test_admin_commands_refuse_an_unmigrated_sqlite_database(args, tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    env = {"M2KT_DATABASE_URL": f"sqlite:///{empty}", "M2KT_DATA_DIR": str(tmp_path / "data"), "M2KT_LOG_JSON": "false"}
    _refused(args, env, f"sqlite:///{empty}", "no broker schema", "m2kt-broker migrate")
    assert empty.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]


def test_admin_commands_refuse_a_missing_or_unmigrated_postgres_database(tmp_path):
    import uuid

    from brokerkit import pg_admin, pg_url

    name = f"m2kt_cli_{uuid.uuid4().hex[:10]}"
    missing = pg_url(name)
    env = {"M2KT_DATABASE_URL": missing, "M2KT_DATA_DIR": str(tmp_path / "data"), "M2KT_LOG_JSON": "false"}
    _refused(ADMIN_COMMANDS[0], env, "cannot open the broker database at", f"/{name}")
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        _refused(ADMIN_COMMANDS[0], env, "no broker schema", f"/{name}")
        assert runner.invoke(app, ["migrate"], env=env).exit_code == 0
        created = runner.invoke(app, ADMIN_COMMANDS[0], env=env)
        assert created.exit_code == 0 and created.stdout.startswith("m2kt_")
    finally:
        with pg_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_messages_mask_the_database_password():
    from broker.migrate import shown_url

    shown = shown_url("postgresql+psycopg://m2kt:s3cret@db:5432/m2kt")
    assert "s3cret" not in shown and shown.startswith("postgresql+psycopg://m2kt:")


def test_teachers_show_prints_head_versions_keys_and_trust_reports(broker, tmp_path, monkeypatch):
    env = {
        "M2KT_DATABASE_URL": broker.settings.database_url,
        "M2KT_DATA_DIR": str(tmp_path / "data"),
        "M2KT_LOG_JSON": "false",
    }
    monkeypatch.setattr(out, "width", 80)  # what rich takes when the output is piped: key ids still whole
    teacher = broker.teacher()
    student_name, student = broker.student()
    with broker.http(teacher.token) as http:
        named = _published(http, teacher.key, 1, 2)
        head = _head(teacher.key, teacher.name, 3, {"modarith.parity": named}, expires_in=3)
        assert http.put(f"/v1/agents/{teacher.name}/head", json=head).status_code == 201
    with broker.admin as admin:
        admin.revoke_key(teacher.name, teacher.keyid)
    with broker.http(student) as http:
        body = {"reason": "revoked-key", "action": "removed", "packet": named.packet}
        assert http.post(f"/v1/agents/{teacher.name}/trust-reports", json=body).status_code == 201
    time.sleep(3.1)  # the head runs out
    result = runner.invoke(app, ["teachers", "show", "--name", teacher.name], env=env)
    assert result.exit_code == 0, result.output
    for expected in (
        "head version 3",
        "(EXPIRED)",
        "modarith.parity",
        teacher.keyid,
        "revoked 20",
        student_name,
        "revoked-key",
        "removed",
    ):
        assert expected in result.stdout, (expected, result.stdout)
    as_json = json.loads(runner.invoke(app, ["teachers", "show", "--name", teacher.name, "--json"], env=env).stdout)
    assert as_json["head"]["expired"] is True and as_json["revoked_keys"] == [teacher.keyid]
    assert as_json["topics"][0]["latest_version"] == 2 and as_json["topics"][0]["head_version"] == 2
    missing = runner.invoke(app, ["teachers", "show", "--name", student_name], env=env)
    assert missing.exit_code == 1 and "no teacher" in missing.output and "Traceback" not in missing.output
