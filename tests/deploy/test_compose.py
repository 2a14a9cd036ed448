"""docker-compose.yml: valid for Compose, safe by default, and its services' commands really run.

There is no Docker engine here, so the compose file is checked with `docker-compose
config` and the services' own commands run directly, with the services' environment,
pointed at the local PostgreSQL instead of the `postgres` service. The broker's image, built
from the wheel, is exercised in test_wheel.py.
"""

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import factory
import httpx
import pytest
from brokerkit import free_port
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from deploykit import COMPOSE_SECRETS, compose_config, compose_refusal, dockerfile_stages

from m2kt import keys
from m2kt.client import BrokerClient

BIN = Path(sys.executable).parent


def test_compose_file_is_valid_and_complete():
    config = compose_config()
    services = config["services"]
    assert set(services) >= {"postgres", "broker"}
    for name in ("postgres", "broker"):
        assert services[name]["healthcheck"]["test"], name
    broker = services["broker"]
    assert broker["environment"]["M2KT_ADMIN_TOKEN"] == "a-long-admin-token-for-tests"
    assert broker["environment"]["M2KT_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "brokerdata" in config["volumes"] and "pgdata" in config["volumes"]
    assert broker["depends_on"]["postgres"]["condition"] == "service_healthy"
    password = COMPOSE_SECRETS["POSTGRES_PASSWORD"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == password
    assert f"m2kt:{password}@postgres:5432" in broker["environment"]["M2KT_DATABASE_URL"]


@pytest.mark.parametrize("secret", sorted(COMPOSE_SECRETS))
def test_compose_refuses_to_start_without_a_secret(secret):
    """No weak defaults: each secret comes from the environment or .env, or Compose stops with its name."""
    env = {k: v for k, v in {**os.environ, **COMPOSE_SECRETS}.items() if k != secret}
    result = compose_refusal(env)
    assert result.returncode != 0 and f"set {secret}" in result.stderr


def _published(config: dict) -> list[str]:
    ports = []
    for port in config["services"]["broker"]["ports"]:
        if isinstance(port, dict):  # the long syntax, in newer Compose versions
            port = f"{port.get('host_ip', '')}:{port['published']}:{port['target']}"
        ports.append(str(port).removesuffix("/tcp"))
    return ports


def test_broker_port_is_bound_where_the_operator_says():
    assert _published(compose_config()) == ["127.0.0.1:8080:8080"]  # loopback unless told otherwise
    operator = {"M2KT_BROKER_BIND": "0.0.0.0", "M2KT_BROKER_PORT": "9000"}
    chosen = compose_config({**os.environ, **COMPOSE_SECRETS, **operator})
    assert _published(chosen) == ["0.0.0.0:9000:8080"]


def test_agents_volumes_are_theirs_and_the_student_waits_for_the_teacher():
    services = compose_config()["services"]
    assert services["student"]["depends_on"]["teacher"]["condition"] == "service_completed_successfully"
    stages = dockerfile_stages()
    agents = stages["agents"]
    assert re.search(r"useradd .*--uid 10001 .*m2kt", " ".join(stages["base"].runs))
    assert agents.user == "m2kt"
    setup = " ".join(agents.runs)
    for name, env in (("teacher", "M2KT_TEACHER_WORKDIR"), ("student", "M2KT_STUDENT_STATE_DIR")):
        mounts = [v for v in services[name]["volumes"] if str(v).startswith(f"{name}data:")]
        assert len(mounts) == 1, services[name]["volumes"]
        target = str(mounts[0]).split(":")[1]
        assert agents.env[env] == target
        # the mount point exists in the image, owned by the user the container runs as, so that a fresh
        # named volume takes that owner instead of root
        assert target in shlex.split(setup[setup.index("mkdir -p") :].split("&&")[0])
        assert "chown -R m2kt:m2kt /data" in setup


def test_images_install_the_built_wheel_not_the_source_tree():
    stages = dockerfile_stages()
    assert any("pip wheel" in run and "--wheel-dir /dist" in run for run in stages["wheel"].runs)
    for name in ("broker", "agents"):
        (install,) = [run for run in stages[name].runs if "pip install" in run]
        assert "/dist/m2kt-" in install and not re.search(r"pip install[^&]* \.(\s|$|\[)", install), install
    copied = {src for *sources, _ in stages["base"].copies for src in sources}
    assert copied == {"constraints.txt"}  # the runtime stages see no source files


@contextmanager
def _broker_service(service: dict, env: dict[str, str], log: Path) -> Iterator[int]:
    """The broker service's own command, on a free local port; yields the port once /readyz is 200."""
    port = free_port()
    command = [str(BIN / service["command"][0]), *service["command"][1:]]
    command[command.index("--port") + 1] = str(port)
    command[command.index("--host") + 1] = "127.0.0.1"
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
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_broker_service_command_serves_on_postgres(pg_database_url, tmp_path):
    config = compose_config()
    service = config["services"]["broker"]
    env = {**os.environ, **{k: str(v) for k, v in service["environment"].items()}}
    env["M2KT_DATABASE_URL"] = pg_database_url  # the local server stands in for the `postgres` service
    env["M2KT_DATA_DIR"] = str(tmp_path / "data")
    with _broker_service(service, env, tmp_path / "broker.log") as port:
        check = [c.replace("8080", str(port)) for c in service["healthcheck"]["test"][1:]]
        check[0] = sys.executable if check[0] == "python" else check[0]
        assert subprocess.run(check, env=env).returncode == 0
        admin = {"Authorization": "Bearer a-long-admin-token-for-tests"}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/agents", json={"name": "s", "role": "student"}, headers=admin)
        assert r.status_code == 201


S3_ENV = {  # what the compose file's header tells the operator to add for the `s3` profile
    **COMPOSE_SECRETS,
    "M2KT_BLOB_URL": "s3://m2kt/packets",
    "M2KT_S3_ACCESS_KEY": "m2kt",
    "M2KT_S3_SECRET_KEY": "a-test-object-store-secret",
}


def test_s3_profile_is_optional_and_points_the_broker_at_minio():
    plain = compose_config()
    assert plain["services"]["broker"]["environment"]["M2KT_BLOB_URL"] == ""  # files on the broker's volume
    config = compose_config({**os.environ, **S3_ENV})
    services = config["services"]
    for name in ("minio", "minio-bucket"):
        assert services[name]["profiles"] == ["s3"], name  # only with `--profile s3`
    assert "miniodata" in config["volumes"]
    assert services["minio"]["healthcheck"]["test"]
    assert services["minio-bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    broker = services["broker"]["environment"]
    assert broker["M2KT_BLOB_URL"] == "s3://m2kt/packets" and broker["M2KT_BLOB_S3_ADDRESSING_STYLE"] == "path"
    assert broker["AWS_ENDPOINT_URL"] == "http://minio:9000"
    keys_used = (broker["AWS_ACCESS_KEY_ID"], broker["AWS_SECRET_ACCESS_KEY"])
    assert keys_used == ("m2kt", "a-test-object-store-secret")
    for service in ("minio", "minio-bucket"):
        minio = services[service]["environment"]
        assert (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"]) == keys_used
    bucket = broker["M2KT_BLOB_URL"].removeprefix("s3://").split("/")[0]
    assert services["minio-bucket"]["command"][-1].endswith(f"mc mb --ignore-existing store/{bucket}")


@pytest.mark.parametrize(("secret", "starts"), [("", False), ("short", False), ("a-test-object-store-secret", True)])
def test_minio_refuses_to_start_without_a_real_secret(secret, starts):
    """Compose cannot require the keys of an optional profile, so MinIO's start checks them (no default keys)."""
    service = compose_config({**os.environ, **S3_ENV, "M2KT_S3_SECRET_KEY": secret})["services"]["minio"]
    assert service["entrypoint"] == ["sh", "-c"]
    script = service["command"][-1].replace("$$", "$").replace("exec minio server /data", "exit 0")
    env = {**os.environ, **{k: str(v) for k, v in service["environment"].items()}}
    result = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert (result.returncode == 0) is starts
    if not starts:
        assert "set M2KT_S3_ACCESS_KEY and M2KT_S3_SECRET_KEY" in result.stderr


def test_broker_service_command_keeps_blobs_on_the_object_store(pg_database_url, s3_bucket, tmp_path):
    service = compose_config({**os.environ, **S3_ENV})["services"]["broker"]
    env = {**os.environ, **{k: str(v) for k, v in service["environment"].items()}}
    # the local PostgreSQL and moto's S3 server stand in for the `postgres` and `minio` services
    env |= {
        "M2KT_DATABASE_URL": pg_database_url,
        "M2KT_DATA_DIR": str(tmp_path / "data"),
        "M2KT_BLOB_URL": s3_bucket.url,
        **s3_bucket.server.env,
    }
    key = Ed25519PrivateKey.generate()
    with _broker_service(service, env, tmp_path / "broker.log") as port:
        url = f"http://127.0.0.1:{port}"
        with BrokerClient(url, COMPOSE_SECRETS["M2KT_ADMIN_TOKEN"]) as admin:
            token = admin.create_agent("compose-teacher", "teacher", keys.public_to_b64(key.public_key()))["token"]
        factory.AGENTS[keys.keyid(key.public_key())] = "compose-teacher"
        pid, envelope, payload = factory.packet(key, topics=["compose.s3"])
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
            assert http.post("/v1/packets", files=factory.files(envelope, payload)).status_code == 201
            assert http.get(f"/v1/packets/{pid}/payload").content == payload
    assert len(s3_bucket.keys()) == 2
    assert [p for p in (tmp_path / "data").rglob("*") if p.is_file()] == []


AGENT_ENV = {  # few epochs: the services' commands, not the models' quality, are under test here
    **COMPOSE_SECRETS,
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


@pytest.mark.slow
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
        broker = subprocess.Popen(
            [str(BIN / "m2kt-broker"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=broker_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    student = None
    try:
        _wait_ready(url, broker, tmp_path / "broker.log")
        t_env = _service_env(services["teacher"], tmp_path, url) | {"PATH": env_path}
        teacher = subprocess.run(
            _shell(services["teacher"], tmp_path), env=t_env, capture_output=True, text=True, timeout=600, cwd=tmp_path
        )
        assert teacher.returncode == 0, teacher.stderr[-3000:]
        assert "teacher teacher enrolled" in teacher.stdout
        assert (tmp_path / "teacher" / "token").stat().st_mode & 0o777 == 0o600
        health = [c.replace("/data", str(tmp_path)) for c in services["teacher"]["healthcheck"]["test"][1:]]
        assert subprocess.run(health, env=t_env).returncode == 0
        again = subprocess.run(
            _shell(services["teacher"], tmp_path), env=t_env, capture_output=True, text=True, timeout=600, cwd=tmp_path
        )
        assert again.returncode == 0 and "already enrolled" in again.stdout, again.stderr[-3000:]
        assert "created=true" not in again.stdout  # a restart publishes nothing twice

        s_env = _service_env(services["student"], tmp_path, url) | {"PATH": env_path}
        with (tmp_path / "student.log").open("wb") as log:
            student = subprocess.Popen(
                _shell(services["student"], tmp_path), env=s_env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
            )
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
