"""The broker demo: start a broker on SQLite, register a teacher, publish a signed packet, read it back.

Run with `make demo`. It uses only the public pieces a real deployment uses: the
`m2kt-broker serve` process over HTTP, `m2kt.build_packet` to sign, and
`m2kt.BrokerClient` to talk to the broker. It prints the packet and its
provenance, with the event log's hash chain checked here, on the client side.
"""

import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.table import Table

from m2kt import BrokerClient, BuiltPacket, OpenedPacket, build_packet, keys, open_packet

console = Console()
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_broker(data_dir: Path, port: int, admin_token: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "M2KT_DATA_DIR": str(data_dir), "M2KT_ADMIN_TOKEN": admin_token}
    log = (data_dir / "broker.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "serve", "--port", str(port)], env=env, stdout=log, stderr=log
    )
    log.close()
    with BrokerClient(f"http://127.0.0.1:{port}", retries=0) as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if client.ready():
                return proc
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"broker did not start; see {data_dir / 'broker.log'}")


def _example_packet(key: Ed25519PrivateKey, name: str) -> BuiltPacket:
    rng = np.random.default_rng(0)
    concepts = [("b_even", "b is even", "modarith.parity"), ("a_lt_half", "a < p/2", "modarith.range")]
    tensors = {
        "concepts.direction": rng.standard_normal((2, 16)).astype(np.float16),
        "concepts.bias": np.zeros(2, dtype=np.float32),
    }
    manifest = {
        "packet_format": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "teacher": {
            "agent": name,
            "model": {
                "architecture": "example",
                "hidden_size": 16,
                "num_layers": 1,
                "weights_sha256": hashlib.sha256(b"example weights").hexdigest(),
            },
        },
        "task": {"name": "modarith", "p": 47},
        "topics": sorted({t for _, _, t in concepts}),
        "concepts": [{"key": k, "name": n, "topic": t} for k, n, t in concepts],
        "anchors": {"count": 0},
        "tensors": {"concepts.direction": {"role": "C"}, "concepts.bias": {"role": "C"}},
    }
    return build_packet(manifest, tensors, key)


def main() -> None:
    data_dir = ROOT / ".m2kt" / "demo"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    port, admin_token = _free_port(), secrets.token_urlsafe(24)
    url = f"http://127.0.0.1:{port}"
    console.rule("[bold]M2KT broker demo")
    console.print(f"broker on SQLite at {data_dir}, serving {url}")
    proc = _start_broker(data_dir, port, admin_token)
    try:
        key = keys.generate()
        keys.save_keypair(key, data_dir / "teacher.key")
        with BrokerClient(url, admin_token) as admin:
            teacher = admin.create_agent("demo-teacher", "teacher", keys.public_to_b64(key.public_key()))
            student = admin.create_agent("demo-student", "student")
        console.print(f"registered teacher [cyan]demo-teacher[/] (key {teacher['keyid'][:16]}…) and a student")
        built = _example_packet(key, "demo-teacher")
        with BrokerClient(url, teacher["token"]) as client:
            result = client.publish(built.envelope, built.payload)
            again = client.publish(built.envelope, built.payload)
        console.print(f"published packet {result.id[:16]}… as seq {result.seq}; re-publish created={again.created}")
        with BrokerClient(url, student["token"]) as reader:
            envelope, payload = reader.get_envelope(result.id), reader.get_payload(result.id)
            agent = reader.get_agent("demo-teacher")
            trusted = {k["keyid"]: keys.public_from_b64(k["public_key"]) for k in agent["keys"] if not k["revoked"]}
            opened = open_packet(envelope, payload, trusted)
            provenance = reader.provenance(result.id)
            log = list(reader.iter_log())
        _show(opened, provenance, log, byte_identical=(envelope == built.envelope and payload == built.payload))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def _chain_ok(log: list[dict[str, Any]]) -> bool:
    prev = "0" * 64
    for entry in log:
        unsigned = {k: v for k, v in entry.items() if k != "hash"}
        digest = hashlib.sha256(bytes.fromhex(prev) + rfc8785.dumps(unsigned)).hexdigest()
        if entry["prev_hash"] != prev or digest != entry["hash"]:
            return False
        prev = entry["hash"]
    return True


def _show(opened: OpenedPacket, provenance: dict[str, Any], log: list[dict[str, Any]], byte_identical: bool) -> None:
    table = Table(title="Packet, read back and verified by the reader")
    table.add_column("field")
    table.add_column("value")
    table.add_row("id", opened.id)
    table.add_row("signed by key", opened.keyid)
    table.add_row("topics", ", ".join(opened.manifest.topics))
    table.add_row("concepts", ", ".join(c.name for c in opened.manifest.concepts))
    table.add_row("tensors", ", ".join(f"{n} {t.dtype}{list(t.shape)}" for n, t in opened.tensors.items()))
    table.add_row("bytes identical to what was sent", "yes" if byte_identical else "[red]NO")
    console.print(table)
    prov = Table(title=f"Provenance: teacher {provenance['teacher']}, key revoked={provenance['key']['revoked']}")
    for col in ("index", "kind", "at", "hash"):
        prov.add_column(col)
    for e in log:
        prov.add_row(str(e["index"]), e["kind"], e["at"], e["hash"][:16] + "…")
    console.print(prov)
    ok = _chain_ok(log)
    console.print(f"event log hash chain: {'[green]verified' if ok else '[red]BROKEN'} ({len(log)} entries)")
    if not (ok and byte_identical):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
