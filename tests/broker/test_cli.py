"""m2kt-broker: migrate, agents create, keys revoke, and one-line errors."""

import pytest
from typer.testing import CliRunner

from broker.cli import app
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
