"""The broker as the image runs it: from the built wheel, in an empty directory, with the image's settings.

The wheel is built the way the Dockerfile's `wheel` stage builds it (the same files copied, the
same `pip wheel` command) and installed into a fresh venv outside the checkout. The venv sees the
dependencies of the test environment through a `.pth` path entry (so nothing is downloaded), but
the project itself comes only from the wheel: a path entry does not run the checkout's editable
finder, and the test checks where `broker` is imported from. Then the Dockerfile's and the compose
file's commands run with their environments from an empty working directory, on SQLite (the
image alone, `docker run -e M2KT_ADMIN_TOKEN=...`) and on the local PostgreSQL (compose, with the
local server standing in for the `postgres` service): an admin command refuses the empty
database, `migrate`, an agent created by the admin CLI, `serve`, `/readyz`, the image's
healthcheck, a student created through the API, a publish and a read.
"""

import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import factory
import httpx
import pytest
from brokerkit import free_port, pg_admin, pg_url
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from deploykit import ADMIN, ROOT, compose_config, dockerfile_stages, in_image

from m2kt import keys

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Installed:
    venv: Path
    wheel: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"


def _build_wheel(out: Path) -> Path:
    """Copy what the `wheel` stage copies, then run its command (without build isolation: no network)."""
    stage = dockerfile_stages()["wheel"]
    src = out / "src"
    src.mkdir()
    for *sources, dest in stage.copies:
        for name in sources:
            target = src / dest / Path(name).name if dest.endswith("/") else src / dest
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(ROOT / name, target)
    (command,) = stage.runs
    argv = [in_image(a, out) for a in command.split()]
    assert argv[:2] == ["pip", "wheel"], argv
    argv = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-index", *argv[2:]]
    subprocess.run(argv, cwd=src, check=True, capture_output=True)
    (wheel,) = (out / "dist").glob("m2kt-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(root)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"broker/alembic.ini", "broker/migrations/env.py", "broker/migrations/script.py.mako"} <= names
    assert any(n.startswith("broker/migrations/versions/0001") for n in names)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheel),
        ],
        check=True,
    )
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    where = subprocess.run([str(venv / "bin" / "python"), "-c", code], check=True, capture_output=True, text=True)
    site = Path(where.stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "test_deps.pth").write_text("".join(f"{p}\n" for p in sorted(deps)))
    return Installed(venv, wheel)


def _env(installed: Installed, home: Path, extra: dict[str, str]) -> dict[str, str]:
    """A clean environment: nothing of the test process's own (no PYTHONPATH, no M2KT_*)."""
    return {"PATH": f"{installed.bin}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", **extra}


def test_the_package_comes_from_the_wheel(installed, tmp_path):
    code = (
        "import broker, broker.migrate as m; print(broker.__file__);"
        "print(m.alembic_config().get_main_option('script_location'))"
    )
    out = subprocess.run(
        [str(installed.bin / "python"), "-c", code],
        cwd=tmp_path,
        env=_env(installed, tmp_path, {}),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert Path(out[0]).is_relative_to(installed.venv) and not Path(out[0]).is_relative_to(ROOT), out
    assert out[1] == "broker:migrations"


@dataclass
class Deployment:
    env: dict[str, str]
    workdir: Path
    command: list[str]
    database: str
    healthcheck: list[str]


@pytest.fixture(params=["image-sqlite", "compose-postgresql"])
def deployment(request: pytest.FixtureRequest, installed: Installed, tmp_path: Path) -> Iterator[Deployment]:
    stage = dockerfile_stages()["broker"]
    assert stage.user != "root"
    image = tmp_path / "image"
    workdir = Path(in_image(stage.workdir, image))
    workdir.mkdir(parents=True)  # the image creates its working directory, empty, owned by its user
    home = tmp_path / "home"
    home.mkdir()
    env = _env(installed, home, {k: in_image(v, image) for k, v in stage.env.items()})
    if request.param == "image-sqlite":  # docker run -e M2KT_ADMIN_TOKEN=... m2kt-broker
        env["M2KT_ADMIN_TOKEN"] = ADMIN
        yield Deployment(env, workdir, list(stage.cmd), f"sqlite:///{workdir / 'broker.db'}", list(stage.healthcheck))
        return
    service = compose_config()["services"]["broker"]
    env |= {k: in_image(str(v), image) for k, v in service["environment"].items()}
    assert env["M2KT_DATABASE_URL"].startswith("postgresql+psycopg://m2kt:")
    name = f"m2kt_wheel_{uuid.uuid4().hex[:10]}"
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # empty: the deployment migrates it
    env["M2KT_DATABASE_URL"] = pg_url(name)  # the local server stands in for the `postgres` service
    try:
        assert service["healthcheck"]["test"][0] == "CMD"
        yield Deployment(
            env, workdir, list(service["command"]), env["M2KT_DATABASE_URL"], list(service["healthcheck"]["test"][1:])
        )
    finally:
        with pg_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _cli(installed: Installed, d: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(installed.bin / "m2kt-broker"), *args],
        cwd=d.workdir,
        env=d.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_broker_serves_from_the_wheel(installed, deployment, tmp_path):
    d = deployment
    key = Ed25519PrivateKey.generate()
    pub = keys.save_keypair(key, tmp_path / "teacher.key")

    early = _cli(installed, d, "agents", "create", "--name", "t1", "--role", "teacher", "--public-key", str(pub))
    assert early.returncode == 1 and early.stdout == "", early.stdout
    assert len(early.stderr.strip().splitlines()) == 1 and "m2kt-broker migrate" in early.stderr, early.stderr
    assert list(d.workdir.iterdir()) == []  # the refusal created nothing in the empty directory

    migrated = _cli(installed, d, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "Traceback" not in migrated.stderr
    if d.database.startswith("sqlite"):  # the image's default: SQLite in its data directory, /data
        assert Path(d.database.removeprefix("sqlite:///")).is_file()
    created = _cli(installed, d, "agents", "create", "--name", "t1", "--role", "teacher", "--public-key", str(pub))
    assert created.returncode == 0, created.stderr
    teacher_token = created.stdout.strip()

    port = free_port()
    command = [in_image(c, tmp_path / "image") for c in d.command]
    assert command[0] == "m2kt-broker", command
    command[0] = str(installed.bin / "m2kt-broker")
    command[command.index("--host") + 1] = "127.0.0.1"  # the container's 0.0.0.0 is its own loopback here
    command[command.index("--port") + 1] = str(port)
    log = tmp_path / "broker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=d.workdir, env=d.env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, log)
        check = [c.replace(":8080/", f":{port}/") for c in d.healthcheck]  # the image's, or compose's
        assert subprocess.run(check, cwd=d.workdir, env=d.env, timeout=30).returncode == 0
        with httpx.Client(base_url=url, timeout=30) as http:
            admin = {"Authorization": f"Bearer {ADMIN}"}
            r = http.post("/v1/agents", json={"name": "s1", "role": "student"}, headers=admin)
            assert r.status_code == 201, r.text
            student = {"Authorization": f"Bearer {r.json()['token']}"}
            factory.AGENTS[factory.keyid_of(key)] = "t1"  # the broker publishes only the teacher's own statements
            packet_id, envelope, payload = factory.packet(key, topics=["modarith.parity"])
            r = http.post(
                "/v1/packets",
                files=factory.files(envelope, payload),
                headers={"Authorization": f"Bearer {teacher_token}"},
            )
            assert r.status_code == 201 and r.json()["id"] == packet_id, r.text
            got = http.get(f"/v1/packets/{packet_id}", headers=student).json()
            assert got["teacher"] == "t1" and got["status"] == "published"
            assert http.get(f"/v1/packets/{packet_id}/payload", headers=student).content == payload
            assert http.get(f"/v1/packets/{packet_id}/envelope", headers=student).content == envelope
            items = http.get("/v1/topics/modarith.parity/packets", headers=student).json()["items"]
            assert [i["id"] for i in items] == [packet_id]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()[-3000:]  # uvicorn re-raises the signal
    text = log.read_text()
    assert "Traceback" not in text
    assert "color_message" not in text and "\\u001b" not in text  # log lines are for machines, not terminals
    assert all(line.startswith("{") for line in text.splitlines()), text[:2000]


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
