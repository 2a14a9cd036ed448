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


AGENT_ENV = {  # few epochs: the services' commands, not the models' quality, are under test here
    "M2KT_ADMIN_TOKEN": "a-long-admin-token-for-tests",
    "M2KT_TEACHER_TRAIN_EPOCHS": "2",
    "M2KT_STUDENT_TRAIN_EPOCHS": "2",
    "M2KT_STUDENT_TOPICS": "modarith.carry",
    "M2KT_ANCHORS": "64",
}


def _service_env(service: dict, data: Path, broker_url: str) -> dict[str, str]:
    """The service's compose environment, with /data on a temp dir and the broker on localhost."""
    env = {**os.environ}
    for k, v in service["environment"].items():
        env[k] = str(v).replace("/data", str(data)).replace("http://broker:8080", broker_url)
    return env


def _shell(service: dict, data: Path) -> list[str]:
    cmd = [c.replace("$$", "$").replace("/data", str(data)) for c in service["command"]]
    assert cmd[:2] == ["sh", "-c"], cmd
    return cmd


def test_teacher_and_student_services_publish_and_learn(pg_database_url, tmp_path):
    config = compose_config({**os.environ, **AGENT_ENV})
    services = config["services"]
    assert {"teacher", "student"} <= set(services)
    for name in ("teacher", "student"):
        assert services[name]["healthcheck"]["test"], name
        assert services[name]["depends_on"]["broker"]["condition"] == "service_healthy"
        assert any(str(v).startswith(f"{name}data:") for v in services[name]["volumes"]), name
    assert {"teacherdata", "studentdata"} <= set(config["volumes"])
    broker_env = {**os.environ, **{k: str(v) for k, v in services["broker"]["environment"].items()}}
    broker_env |= {"M2KT_DATABASE_URL": pg_database_url, "M2KT_DATA_DIR": str(tmp_path / "broker")}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env_path = os.pathsep.join([str(BIN), os.environ.get("PATH", "")])
    with (tmp_path / "broker.log").open("wb") as log:
        broker = subprocess.Popen([str(BIN / "m2kt-broker"), "serve", "--host", "127.0.0.1", "--port", str(port)],
                                  env=broker_env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    student = None
    try:
        _wait_ready(url, broker, tmp_path / "broker.log")
        t_env = _service_env(services["teacher"], tmp_path, url) | {"PATH": env_path}
        teacher = subprocess.run(_shell(services["teacher"], tmp_path), env=t_env, capture_output=True, text=True,
                                 timeout=600, cwd=tmp_path)  # fmt: skip
        assert teacher.returncode == 0, teacher.stderr[-3000:]
        assert "teacher teacher enrolled" in teacher.stdout
        assert (tmp_path / "teacher" / "token").stat().st_mode & 0o777 == 0o600
        health = [c.replace("/data", str(tmp_path)) for c in services["teacher"]["healthcheck"]["test"][1:]]
        assert subprocess.run(health, env=t_env).returncode == 0
        again = subprocess.run(_shell(services["teacher"], tmp_path), env=t_env, capture_output=True, text=True,
                               timeout=600, cwd=tmp_path)  # fmt: skip
        assert again.returncode == 0 and "already enrolled" in again.stdout, again.stderr[-3000:]
        assert "created=true" not in again.stdout  # a restart publishes nothing twice

        s_env = _service_env(services["student"], tmp_path, url) | {"PATH": env_path}
        with (tmp_path / "student.log").open("wb") as log:
            student = subprocess.Popen(_shell(services["student"], tmp_path), env=s_env, stdout=log,
                                       stderr=subprocess.STDOUT, cwd=tmp_path)  # fmt: skip
        token = (tmp_path / "teacher" / "token").read_text().strip()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
            carry = client.get("/v1/topics/modarith.carry/packets").json()["items"]
            assert len(carry) == 1
            deadline = time.monotonic() + 400
            while not client.get(f"/v1/packets/{carry[0]['id']}/reports").json():
                assert student.poll() is None, (tmp_path / "student.log").read_text()[-3000:]
                assert time.monotonic() < deadline, (tmp_path / "student.log").read_text()[-3000:]
                time.sleep(1)
            report = client.get(f"/v1/packets/{carry[0]['id']}/reports").json()[0]
        assert report["verdict"] in {"accepted", "rolled_back"}
        health = services["student"]["healthcheck"]["test"][1:]
        assert subprocess.run(health, env=s_env, capture_output=True, cwd=tmp_path).returncode == 0
        student.send_signal(signal.SIGTERM)
        assert student.wait(timeout=60) == 0, (tmp_path / "student.log").read_text()[-3000:]
    finally:
        if student is not None and student.poll() is None:
            student.kill()
        broker.send_signal(signal.SIGTERM)
        broker.wait(timeout=20)


def _wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
