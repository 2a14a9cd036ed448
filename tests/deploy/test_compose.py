"""docker-compose.yml: valid for Compose, and its broker command really serves on PostgreSQL.

There is no Docker engine here, so the compose file is checked with `docker-compose
config` and the broker service's own command runs directly, with the service's
environment, pointed at the local PostgreSQL instead of the `postgres` service.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml
from brokerkit import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def compose_config(env: dict[str, str]) -> dict:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is needed (Debian package docker-compose; .ci/run installs it)"
    out = subprocess.run(
        [exe, "-f", str(ROOT / "docker-compose.yml"), "config"], env=env, capture_output=True, text=True, check=True
    ).stdout
    return yaml.safe_load(out)


def test_compose_file_is_valid_and_complete():
    config = compose_config({**os.environ, "M2KT_ADMIN_TOKEN": "a-long-admin-token-for-tests"})
    services = config["services"]
    assert set(services) >= {"postgres", "broker"}
    for name in ("postgres", "broker"):
        assert services[name]["healthcheck"]["test"], name
    broker = services["broker"]
    assert broker["environment"]["M2KT_ADMIN_TOKEN"] == "a-long-admin-token-for-tests"
    assert broker["environment"]["M2KT_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "brokerdata" in config["volumes"] and "pgdata" in config["volumes"]
    assert broker["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_refuses_to_start_without_an_admin_token():
    env = {k: v for k, v in os.environ.items() if k != "M2KT_ADMIN_TOKEN"}
    exe = shutil.which("docker-compose")
    assert exe
    result = subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), "config"], env=env, capture_output=True)
    assert result.returncode != 0 and b"M2KT_ADMIN_TOKEN" in result.stderr


def test_broker_service_command_serves_on_postgres(pg_database_url, tmp_path):
    config = compose_config({**os.environ, "M2KT_ADMIN_TOKEN": "a-long-admin-token-for-tests"})
    service = config["services"]["broker"]
    env = {**os.environ, **{k: str(v) for k, v in service["environment"].items()}}
    env["M2KT_DATABASE_URL"] = pg_database_url  # the local server stands in for the `postgres` service
    env["M2KT_DATA_DIR"] = str(tmp_path / "data")
    port = free_port()
    command = [str(BIN / service["command"][0]), *service["command"][1:]]
    command[command.index("--port") + 1] = str(port)
    command[command.index("--host") + 1] = "127.0.0.1"
    log = tmp_path / "broker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        check = [c.replace("8080", str(port)) for c in service["healthcheck"]["test"][1:]]
        check[0] = sys.executable if check[0] == "python" else check[0]
        assert subprocess.run(check, env=env).returncode == 0
        admin = {"Authorization": "Bearer a-long-admin-token-for-tests"}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/agents", json={"name": "s", "role": "student"}, headers=admin)
        assert r.status_code == 201
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
