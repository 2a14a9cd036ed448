"""Read what the image and the compose file would run, so tests can run the same commands here.

There is no Docker engine on the test machines. `Dockerfile` is read with a small parser
(FROM ... AS, COPY, RUN, ENV, WORKDIR, USER, CMD, HEALTHCHECK: the instructions it uses) and
`docker-compose.yml` through `docker-compose config`, which resolves the environment exactly as
Compose would. Paths inside the image (`/data`, `/dist`) are mapped onto a test directory.
"""

import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "a-long-admin-token-for-tests"
COMPOSE_SECRETS = {"M2KT_ADMIN_TOKEN": ADMIN, "POSTGRES_PASSWORD": "a-test-database-password"}


@dataclass(frozen=True)
class Stage:
    """One build stage of the Dockerfile, with what it inherits from its parent stage."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = "root"
    copies: tuple[tuple[str, ...], ...] = ()  # (source..., destination), without --from
    runs: tuple[str, ...] = ()  # this stage's own RUN commands (a parent's are not repeated)
    cmd: tuple[str, ...] = ()
    healthcheck: tuple[str, ...] = ()


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _argv(rest: str) -> tuple[str, ...]:
    return tuple(json.loads(rest)) if rest.startswith("[") else tuple(shlex.split(rest))


def dockerfile_stages(path: Path = ROOT / "Dockerfile") -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for word, rest in _instructions(path.read_text()):
        if word == "FROM":
            parts = rest.split()
            parent, name = parts[0], parts[2] if len(parts) == 3 else parts[0]
            current = replace(stages[parent], name=name, runs=(), copies=()) if parent in stages else Stage(name)
            stages[name] = current
            continue
        assert current is not None, f"{word} before FROM"
        if word == "ENV":
            current = replace(current, env={**current.env, **dict(t.split("=", 1) for t in shlex.split(rest))})
        elif word == "WORKDIR":
            current = replace(current, workdir=rest)
        elif word == "USER":
            current = replace(current, user=rest)
        elif word == "RUN":
            current = replace(current, runs=(*current.runs, rest))
        elif word == "COPY" and not rest.startswith("--"):
            current = replace(current, copies=(*current.copies, tuple(rest.split())))
        elif word == "CMD":
            current = replace(current, cmd=_argv(rest))
        elif word == "HEALTHCHECK":
            flags, _, command = rest.partition("CMD ")
            current = replace(current, healthcheck=_argv(command.strip()))
        stages[current.name] = current
    return stages


def compose_config(env: dict[str, str] | None = None) -> dict[str, Any]:
    """`docker-compose config` with the given environment (default: the test secrets), parsed."""
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is needed (Debian package docker-compose; .ci/run installs it)"
    env = {**os.environ, **COMPOSE_SECRETS} if env is None else env
    out = subprocess.run(
        [exe, "-f", str(ROOT / "docker-compose.yml"), "config"], env=env, capture_output=True, text=True, check=True
    ).stdout
    config: dict[str, Any] = yaml.safe_load(out)
    return config


def compose_refusal(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` expected to fail; returns the finished process."""
    exe = shutil.which("docker-compose")
    assert exe
    return subprocess.run(
        [exe, "-f", str(ROOT / "docker-compose.yml"), "config"], env=env, capture_output=True, text=True
    )


def in_image(value: str, root: Path) -> str:
    """Map the image's absolute paths under /data and /dist onto `root`."""
    for prefix in ("/data", "/dist"):
        if value == prefix or value.startswith(prefix + "/"):
            return str(root) + value
    return value
