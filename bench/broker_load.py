"""`python -m bench.broker_load [--db sqlite|postgresql ...] [--out FILE]`: the broker under load.

Five measurements per database, each against a baseline taken in the same run:

* **publish throughput** for 64 KiB and 1 MiB payloads with 1 and 8 concurrent publishers,
  against the *raw storage path*: the same envelope and payload bytes written, fsynced and
  renamed into the same disk, plus the same rows (packet, topic, log entry) inserted through
  the database driver directly, one transaction per packet; reported as the ratio of the medians
  of ``--reps`` runs each (broker and raw path alternating), with the slowest run and the worst
  single-run ratio beside it. With ``--store s3`` the same cells run with blobs on an object
  store (moto's S3 server in this process, a broker with ``M2KT_BLOB_URL=s3://...``), against a
  raw path that PUTs the same two objects (with their SHA-256 checksum) instead of the files.
* **fan-out latency** from the publisher's acknowledgement to each of 100 open event streams
  receiving the packet: p50, p99, max.
* **memory**: the broker's resident set while 100 streams are open and across a 60 MiB upload
  (peak minus before: what the upload holds in memory).
* **many streams**: publish p50 and `/healthz` p99 while 1,000 event streams (``--load-streams``)
  are open on distinct topics, ten per student token (under the per-token cap of 16), against
  the same publishes and probes with no stream open; reported as ratios. A publish wakes only the
  streams of its topics.
* **provenance at the parents cap**: the read time of `GET /v1/packets/{id}/provenance` for a
  packet naming 256 known parents (the cap), against a packet naming one; reported as the ratio.

The last two run in a broker of their own on a fresh database, so no stream of the others is
open. ``--cells`` runs a subset; the cells not run keep their figures from the existing ``--out``.

The broker is the real ``python -m broker serve`` process; packets are signed beforehand so the
publishers measure the broker, not Ed25519.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import os
import sqlite3
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from bench import harness
from m2kt import BrokerClient
from m2kt.constants import MAX_PARENTS

app = typer.Typer(add_completion=False)
console = Console(width=max(Console().width, 120))
ROOT = Path(__file__).resolve().parents[1]
CELLS = ("throughput", "fanout", "memory", "streams", "provenance")
STORES = ("file", "s3")
SIZES = (64 * 1024, 1024 * 1024)
PER_STUDENT = 10  # event streams per student token; the broker caps a token at 16


@app.command()
def main(
    db: Annotated[list[str] | None, typer.Option(help="sqlite and/or postgresql")] = None,
    packets: Annotated[int, typer.Option(help="packets per throughput run")] = 40,
    reps: Annotated[int, typer.Option(help="runs per throughput cell, broker and raw path alternating")] = 5,
    streams: Annotated[int, typer.Option(help="open event streams for fan-out and memory")] = 100,
    load_streams: Annotated[int, typer.Option(help="streams on distinct topics, many-streams cell")] = 1000,
    cells: Annotated[list[str] | None, typer.Option(help=f"a subset of {', '.join(CELLS)}")] = None,
    store: Annotated[list[str] | None, typer.Option(help="blob stores of the throughput cells: file, s3")] = None,
    sizes: Annotated[list[int] | None, typer.Option(help="payload sizes in KiB of the throughput cells")] = None,
    out: Annotated[Path, typer.Option(help="result JSON")] = ROOT / "bench" / "results" / "broker-load.json",
) -> None:
    """Run the measurements on each database, print tables, write JSON."""
    chosen = [c for c in CELLS if c in (cells or CELLS)]
    if unknown := set(cells or ()) - set(CELLS):
        raise typer.BadParameter(f"unknown cells {sorted(unknown)}; choose from {', '.join(CELLS)}")
    stores = store or list(STORES)
    if unknown := set(stores) - set(STORES):
        raise typer.BadParameter(f"unknown stores {sorted(unknown)}; choose from {', '.join(STORES)}")
    payload_sizes = [k * 1024 for k in sizes] if sizes else list(SIZES)
    result: dict[str, Any] = {"databases": {}}
    if chosen != list(CELLS) and out.exists():  # a partial run updates its cells and keeps the others
        result = json.loads(out.read_text())
    if "throughput" in chosen:
        result["packets"], result["reps"] = packets, reps
    if {"fanout", "memory"} & set(chosen):
        result["streams"] = streams
    if "streams" in chosen:
        result["load_streams"] = load_streams
    if "provenance" in chosen:
        result["parents"] = MAX_PARENTS
    for name in db or ["sqlite", "postgresql"]:
        res: dict[str, Any] = result["databases"].setdefault(name, {})
        if {"fanout", "memory"} & set(chosen) or ("throughput" in chosen and "file" in stores):
            with harness.database(name) as url, harness.scratch() as tmp:
                with harness.broker_process(url, tmp) as (base, admin, pid):
                    if "throughput" in chosen and "file" in stores:
                        res["throughput"] = _throughput(base, admin, url, tmp, packets, reps, payload_sizes)
                    if "fanout" in chosen or "memory" in chosen:  # memory is measured with these streams open
                        res["fanout"] = _fanout(base, admin, streams)
                    if "memory" in chosen:
                        res["memory"] = _memory(base, admin, pid, streams)
        if "throughput" in chosen and "s3" in stores:
            with harness.database(name) as url, harness.scratch() as tmp, harness.object_store() as (env, s3, blob_url):
                put = functools.partial(_put_object, s3, blob_url)
                with harness.broker_process(url, tmp, {**env, "M2KT_BLOB_URL": blob_url}) as (base, admin, _pid):
                    res["throughput_s3"] = _throughput(base, admin, url, tmp, packets, reps, payload_sizes, put)
        if {"streams", "provenance"} & set(chosen):
            with harness.database(name) as url, harness.scratch() as tmp:
                with harness.broker_process(url, tmp) as (base, admin, _pid):
                    if "provenance" in chosen:
                        res["provenance"] = _provenance(base, admin)
                    if "streams" in chosen:
                        res["many_streams"] = _many_streams(base, admin, load_streams)
    _show(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    console.print(f"wrote {out}")


# -- publish throughput ---------------------------------------------------------------------------
Put = Callable[[bytes, str], None]  # store one blob under its sha256 (the object-store raw path)


def _throughput(
    base: str, admin: str, db_url: str, tmp: Path, n: int, reps: int, sizes: list[int], put: Put | None = None
) -> list[dict[str, Any]]:
    """Each cell ``reps`` times, the broker and the raw path alternating so both meet the same machine load."""
    rows = []
    for size in sizes:
        for workers in (1, 8):
            token, key = harness.teacher(base, admin)
            broker_s, raw_s = [], []
            for rep in range(reps):
                batch = harness.signed_packets(key, n, size, f"bench.t{size}.{workers}", first=rep * n)
                broker_s.append(_parallel(batch, workers, lambda p, c: c.publish(*p), base, token))
                raw_s.append(_raw_path(batch, workers, db_url, tmp / f"raw-{size}-{workers}-{rep}", put))
            broker_med, raw_med = statistics.median(broker_s), statistics.median(raw_s)
            rows.append(
                {
                    "payload_bytes": size,
                    "publishers": workers,
                    "packets": n,
                    "reps": reps,
                    "broker_per_s": round(n / broker_med, 1),
                    "raw_per_s": round(n / raw_med, 1),
                    "broker_per_s_min": round(n / max(broker_s), 1),
                    "raw_per_s_min": round(n / max(raw_s), 1),
                    "ratio": round(raw_med / broker_med, 3),
                    "ratio_worst": round(min(r / b for r, b in zip(raw_s, broker_s, strict=True)), 3),
                }
            )
            console.print(f"throughput {size // 1024} KiB x{workers}: {rows[-1]}")
    return rows


def _parallel(batch: list[Any], workers: int, call: Any, base: str, token: str) -> float:
    chunks = [batch[i::workers] for i in range(workers)]
    start = threading.Barrier(workers + 1)
    errors: list[BaseException] = []

    def run(chunk: list[Any]) -> None:
        with BrokerClient(base, token, retries=0) as c:
            start.wait()
            try:
                for item in chunk:
                    call(item, c)
            except BaseException as exc:  # surfaced below: a failed publish invalidates the cell
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def _put_object(client: Any, blob_url: str, blob: bytes, digest: str) -> None:
    """The raw path's blob on the object store: one PUT with its checksum, as the broker's S3 store sends."""
    bucket, prefix = blob_url.removeprefix("s3://").split("/", 1)
    client.put_object(
        Bucket=bucket,
        Key=f"{prefix}/raw/{digest}",
        Body=blob,
        ChecksumSHA256=base64.b64encode(bytes.fromhex(digest)).decode(),
    )


def _raw_path(batch: list[tuple[bytes, bytes]], workers: int, db_url: str, root: Path, put: Put | None) -> float:
    """The same bytes fsynced and renamed into place (or ``put``), the same three rows in one transaction each."""
    (root / "tmp").mkdir(parents=True)
    (root / "blobs").mkdir()
    if db_url.startswith("sqlite"):
        path = root / "raw.db"
        setup = sqlite3.connect(path)
        setup.executescript(_RAW_SCHEMA.replace("BIGSERIAL", "INTEGER"))
        setup.execute("PRAGMA journal_mode=WAL")
        setup.close()

        def connect() -> Any:
            conn = sqlite3.connect(path, timeout=60, isolation_level=None)
            conn.execute("PRAGMA synchronous=FULL")
            return conn

        mark = "?"
    else:
        import psycopg

        dsn = db_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn, autocommit=True) as conn:  # fresh tables: each run numbers its seq from 1
            conn.execute("DROP TABLE IF EXISTS raw_packets, raw_topics, raw_log")
            conn.execute(_RAW_SCHEMA)

        def connect() -> Any:
            return psycopg.connect(dsn, autocommit=True)

        mark = "%s"
    counter = iter(range(1, 10**9))
    lock = threading.Lock()

    def store(item: tuple[bytes, bytes], conn: Any) -> None:
        if put is not None:
            for blob in item:
                put(blob, hashlib.sha256(blob).hexdigest())
        else:
            write_files(item)
        insert_rows(item, conn)

    def write_files(item: tuple[bytes, bytes]) -> None:
        for blob in item:
            digest = hashlib.sha256(blob).hexdigest()
            tmp = root / "tmp" / uuid.uuid4().hex
            with tmp.open("wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, root / "blobs" / digest)
        fd = os.open(root / "blobs", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    def insert_rows(item: tuple[bytes, bytes], conn: Any) -> None:
        pid = hashlib.sha256(item[0]).hexdigest()
        with lock:
            seq = next(counter)
        q = (
            f"INSERT INTO raw_packets VALUES ({mark},{mark},{mark},{mark})",
            f"INSERT INTO raw_topics VALUES ({mark},{mark},{mark})",
            f"INSERT INTO raw_log (subject, hash, body) VALUES ({mark},{mark},{mark})",
        )
        conn.execute("BEGIN")
        conn.execute(q[0], (pid, seq, item[0].decode(), datetime.now(UTC).isoformat()))
        conn.execute(q[1], (pid, "t", seq))
        conn.execute(q[2], (pid, hashlib.sha256(pid.encode()).hexdigest(), "{}"))
        conn.execute("COMMIT")

    chunks = [batch[i::workers] for i in range(workers)]
    start = threading.Barrier(workers + 1)
    errors: list[BaseException] = []

    def run(chunk: list[tuple[bytes, bytes]]) -> None:
        conn = connect()
        start.wait()
        try:
            for item in chunk:
                store(item, conn)
        except BaseException as exc:  # surfaced below: a raw run that stopped early would look fast
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


_RAW_SCHEMA = """
CREATE TABLE IF NOT EXISTS raw_packets (id TEXT PRIMARY KEY, seq BIGINT UNIQUE, statement TEXT, received_at TEXT);
CREATE TABLE IF NOT EXISTS raw_topics (packet_id TEXT, topic TEXT, seq BIGINT, PRIMARY KEY (packet_id, topic));
CREATE TABLE IF NOT EXISTS raw_log (idx BIGSERIAL PRIMARY KEY, subject TEXT, hash TEXT, body TEXT);
"""


# -- fan-out latency ------------------------------------------------------------------------------
def _fanout(base: str, admin: str, n_streams: int, n_packets: int = 30) -> dict[str, Any]:
    token, key = harness.teacher(base, admin)
    with BrokerClient(base, admin) as c:  # a token holds at most 16 streams: ten streams per student
        students = [
            str(c.create_agent(f"bench-s-{uuid.uuid4().hex[:6]}", "student")["token"])
            for _ in range(-(-n_streams // 10))
        ]
    topic = "bench.fanout"
    received: dict[str, list[float]] = {}
    lock = threading.Lock()
    opened = threading.Semaphore(0)
    stop = threading.Event()

    def listen(student: str) -> None:
        headers = {"Authorization": f"Bearer {student}"}
        with (
            httpx.Client(timeout=httpx.Timeout(10, read=60)) as http,
            http.stream("GET", f"{base}/v1/topics/{topic}/events", headers=headers) as r,
        ):
            for line in r.iter_lines():
                if line == ": stream open":
                    opened.release()
                elif line.startswith("id: "):
                    now = time.perf_counter()
                    with lock:
                        received.setdefault(line[4:], []).append(now)
                if stop.is_set():
                    return

    threads = [threading.Thread(target=listen, args=(students[i // 10],), daemon=True) for i in range(n_streams)]
    for t in threads:
        t.start()
    for _ in threads:
        if not opened.acquire(timeout=30):
            raise SystemExit("event streams did not open")
    batch = harness.signed_packets(key, n_packets, 4096, topic)
    acks: dict[str, float] = {}
    with BrokerClient(base, token, retries=0) as c:
        for env, payload in batch:
            ack = c.publish(env, payload)
            acks[str(ack.seq)] = time.perf_counter()
            time.sleep(0.05)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum(len(v) for v in received.values()) < n_streams * n_packets:
        time.sleep(0.05)
    stop.set()
    lat = sorted(max(0.0, t - acks[seq]) * 1000 for seq, ts in received.items() if seq in acks for t in ts)
    got = len(lat)
    res = {
        "streams": n_streams,
        "packets": n_packets,
        "deliveries": got,
        "expected": n_streams * n_packets,
        "p50_ms": round(_pct(lat, 50), 2),
        "p99_ms": round(_pct(lat, 99), 2),
        "max_ms": round(lat[-1], 2),
        "mean_ms": round(statistics.fmean(lat), 2),
    }
    console.print(f"fan-out: {res}")
    return res


def _pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p)) if xs else float("nan")


# -- memory ---------------------------------------------------------------------------------------
def _rss_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            k, v = line.split(":")
            fields[k] = int(v.split()[0])
    return fields


def _memory(base: str, admin: str, pid: int, n_streams: int) -> dict[str, Any]:
    """RSS with the streams of `_fanout` still open (daemon threads), and the peak across big uploads.

    VmHWM (the peak) already includes the 1 MiB x 8 throughput cells; growth beyond it is what a
    60 MiB upload adds. Two uploads: the first also pays one-time costs (imports, buffers).
    """
    before = _rss_kib(pid)
    token, key = harness.teacher(base, admin)
    size = 60 * 1024 * 1024
    growth = []
    for i in range(2):
        ((env, payload),) = harness.signed_packets(key, 1, size - 4096 * i, "bench.memory")
        hwm = _rss_kib(pid)["VmHWM"]
        with BrokerClient(base, token, retries=0) as c:
            c.publish(env, payload)
        growth.append(round(max(0, _rss_kib(pid)["VmHWM"] - hwm) / 1024, 1))
    after = _rss_kib(pid)
    res = {
        "rss_idle_mib": round(before["VmRSS"] / 1024, 1),
        "peak_before_mib": round(before["VmHWM"] / 1024, 1),
        "upload_mib": round(size / 2**20, 1),
        "peak_growth_first_upload_mib": growth[0],
        "peak_growth_during_upload_mib": growth[1],
        "rss_after_upload_mib": round(after["VmRSS"] / 1024, 1),
    }
    console.print(f"memory: {res}")
    return res


# -- publish and /healthz with many streams open --------------------------------------------------
def _many_streams(base: str, admin: str, n_streams: int, n_packets: int = 30) -> dict[str, Any]:
    """Publish p50 and `/healthz` p99 with ``n_streams`` streams open on distinct topics, against none open.

    The same teacher publishes ``n_packets`` 4 KiB packets one at a time (50 ms apart, as in the
    fan-out cell) to a topic no stream listens to, while a prober asks `/healthz` every 10 ms.
    """
    token, key = harness.teacher(base, admin)
    batches = [
        harness.signed_packets(key, n_packets + 3, 4096, "bench.load", first=i * (n_packets + 3)) for i in range(2)
    ]
    baseline = _publish_and_probe(base, token, batches[0])
    with _open_streams(base, admin, n_streams):
        loaded = _publish_and_probe(base, token, batches[1])
    res = {
        "streams": n_streams,
        "packets": n_packets,
        "students": -(-n_streams // PER_STUDENT),
        "publish_p50_ms_no_streams": baseline["publish_p50_ms"],
        "publish_p50_ms": loaded["publish_p50_ms"],
        "publish_ratio": round(loaded["publish_p50_ms"] / baseline["publish_p50_ms"], 2),
        "healthz_p99_ms_no_streams": baseline["healthz_p99_ms"],
        "healthz_p99_ms": loaded["healthz_p99_ms"],
        "healthz_ratio": round(loaded["healthz_p99_ms"] / baseline["healthz_p99_ms"], 2),
        "healthz_probes_no_streams": baseline["healthz_probes"],
        "healthz_probes": loaded["healthz_probes"],
        "healthz_max_ms": loaded["healthz_max_ms"],
    }
    console.print(f"many streams: {res}")
    return res


def _publish_and_probe(base: str, token: str, batch: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """Publish ``batch`` (the first three warm up, unmeasured) while a prober times `/healthz`."""
    publish_ms: list[float] = []
    healthz_ms: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            while not stop.is_set():
                t0 = time.perf_counter()
                if http.get("/healthz").status_code != 200:
                    raise SystemExit("/healthz did not answer 200")
                healthz_ms.append((time.perf_counter() - t0) * 1000)
                time.sleep(0.01)

    with BrokerClient(base, token, retries=0, timeout=httpx.Timeout(120, connect=10)) as c:
        for env, payload in batch[:3]:
            c.publish(env, payload)
        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        for env, payload in batch[3:]:
            t0 = time.perf_counter()
            c.publish(env, payload)
            publish_ms.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.05)
        stop.set()
        prober.join()
    return {
        "publish_p50_ms": round(_pct(publish_ms, 50), 2),
        "healthz_p99_ms": round(_pct(healthz_ms, 99), 2),
        "healthz_max_ms": round(max(healthz_ms), 2),
        "healthz_probes": len(healthz_ms),
    }


@contextmanager
def _open_streams(base: str, admin: str, n: int) -> Iterator[None]:
    """``n`` event streams on topics ``bench.s<i>``, held open (and drained) by one asyncio loop.

    Raw HTTP/1.1 over asyncio sockets rather than a thread and a client per stream: a thousand
    threads would cost the 2 cores more than the broker's side does. Opens 50 at a time.
    """
    with BrokerClient(base, admin) as c:
        students = [
            str(c.create_agent(f"bench-l-{uuid.uuid4().hex[:8]}", "student")["token"])
            for _ in range(-(-n // PER_STUDENT))
        ]
    url = httpx.URL(base)
    host, port = url.host, url.port or 80
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    writers: list[asyncio.StreamWriter] = []
    drains: list[asyncio.Task[None]] = []
    gate = asyncio.Semaphore(50)

    async def drain(reader: asyncio.StreamReader) -> None:
        while await reader.read(4096):  # keep-alives; nothing is published on these topics
            pass

    async def one(i: int) -> None:
        async with gate:
            reader, writer = await asyncio.open_connection(host, port)
            writers.append(writer)
            writer.write(
                f"GET /v1/topics/bench.s{i}/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Authorization: Bearer {students[i // PER_STUDENT]}\r\n"
                "Accept: text/event-stream\r\n\r\n".encode()
            )
            status = await asyncio.wait_for(reader.readline(), 60)
            if b" 200 " not in status:
                raise SystemExit(f"stream {i}: {status!r}")
            while (line := await asyncio.wait_for(reader.readline(), 60)) and not line.startswith(b": stream open"):
                pass
            if not line:
                raise SystemExit(f"stream {i} closed before it opened")
            drains.append(asyncio.create_task(drain(reader)))

    async def open_all() -> None:
        await asyncio.gather(*(one(i) for i in range(n)))

    async def close_all() -> None:
        for task in drains:
            task.cancel()
        for writer in writers:
            writer.close()

    try:
        t0 = time.perf_counter()
        asyncio.run_coroutine_threadsafe(open_all(), loop).result(timeout=600)
        console.print(f"{n} streams open in {time.perf_counter() - t0:.1f} s")
        yield
    finally:
        asyncio.run_coroutine_threadsafe(close_all(), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


# -- provenance at the parents cap ----------------------------------------------------------------
def _provenance(base: str, admin: str, reads: int = 50) -> dict[str, Any]:
    """Read time of a packet's provenance with MAX_PARENTS known parents, against one known parent.

    The parents are real packets of the same teacher (each read names its teacher): the most a
    provenance read can be asked to resolve. Reads alternate between the two packets, three
    unmeasured first.
    """
    token, key = harness.teacher(base, admin)
    batch = harness.signed_packets(key, MAX_PARENTS, 4096, "bench.parents")
    children: dict[str, str] = {}
    with BrokerClient(base, token, retries=0) as c:
        parents = [c.publish(env, payload).id for env, payload in batch]
        for label, names in (("one", parents[:1]), ("cap", parents)):
            ((env, payload),) = harness.signed_packets(key, 1, 4096, f"bench.child.{label}", parents=names)
            children[label] = c.publish(env, payload).id
    times: dict[str, list[float]] = {"one": [], "cap": []}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        for i in range(reads + 3):
            for label, pid in children.items():
                t0 = time.perf_counter()
                r = http.get(f"/v1/packets/{pid}/provenance")
                elapsed = (time.perf_counter() - t0) * 1000
                want = 1 if label == "one" else MAX_PARENTS
                if r.status_code != 200 or len(r.json()["parents"]) != want:
                    raise SystemExit(f"provenance of {pid}: {r.status_code} {r.text[:200]}")
                if i >= 3:
                    times[label].append(elapsed)
    res: dict[str, Any] = {"parents": MAX_PARENTS, "reads": reads}
    for label, name in (("one", "one_parent"), ("cap", "cap")):
        res[f"{name}_p50_ms"] = round(_pct(times[label], 50), 2)
        res[f"{name}_p99_ms"] = round(_pct(times[label], 99), 2)
    res["ratio"] = round(res["cap_p50_ms"] / res["one_parent_p50_ms"], 2)
    console.print(f"provenance: {res}")
    return res


def _show(result: dict[str, Any]) -> None:
    t = Table(title="Publish throughput: broker against the raw storage path (same bytes stored + same rows)")
    columns = ("broker pkt/s med (min)", "raw pkt/s med (min)", "broker/raw med", "worst run")
    for col in ("db", "store", "payload", "publishers", *columns):
        t.add_column(col, justify="right")
    f = Table(title=f"Fan-out latency, publish ack -> receipt on {result.get('streams')} event streams")
    for col in ("db", "deliveries", "p50 ms", "p99 ms", "max ms"):
        f.add_column(col, justify="right")
    m = Table(title="Broker resident memory")
    for col in ("db", "idle MiB", "upload MiB", "peak growth during upload MiB", "after MiB"):
        m.add_column(col, justify="right")
    s = Table(
        title=f"Publish and /healthz with {result.get('load_streams')} streams open on distinct topics, "
        "against none open"
    )
    for col in ("db", "publish p50 ms: none / streams", "ratio", "/healthz p99 ms: none / streams", "ratio"):
        s.add_column(col, justify="right")
    p = Table(title=f"Provenance read, {result.get('parents')} known parents against one")
    for col in ("db", "1 parent p50 ms", "cap p50 ms", "cap p99 ms", "cap/1"):
        p.add_column(col, justify="right")
    for db, r in result["databases"].items():
        cells = [("file", row) for row in r.get("throughput", [])] + [("s3", row) for row in r.get("throughput_s3", [])]
        for store, row in cells:
            t.add_row(
                db,
                store,
                f"{row['payload_bytes'] // 1024} KiB",
                str(row["publishers"]),
                f"{row['broker_per_s']} ({row.get('broker_per_s_min', '-')})",
                f"{row['raw_per_s']} ({row.get('raw_per_s_min', '-')})",
                f"{row['ratio']:.2f}",
                f"{row.get('ratio_worst', row['ratio']):.2f}",
            )
        if fo := r.get("fanout"):
            f.add_row(
                db, f"{fo['deliveries']}/{fo['expected']}", str(fo["p50_ms"]), str(fo["p99_ms"]), str(fo["max_ms"])
            )
        if mem := r.get("memory"):
            m.add_row(
                db,
                str(mem["rss_idle_mib"]),
                str(mem["upload_mib"]),
                str(mem["peak_growth_during_upload_mib"]),
                str(mem["rss_after_upload_mib"]),
            )
        if ms := r.get("many_streams"):
            publish = f"{ms['publish_p50_ms_no_streams']} / {ms['publish_p50_ms']}"
            healthz = f"{ms['healthz_p99_ms_no_streams']} / {ms['healthz_p99_ms']}"
            s.add_row(db, publish, f"{ms['publish_ratio']:.2f}", healthz, f"{ms['healthz_ratio']:.2f}")
        if pr := r.get("provenance"):
            p.add_row(
                db, str(pr["one_parent_p50_ms"]), str(pr["cap_p50_ms"]), str(pr["cap_p99_ms"]), f"{pr['ratio']:.2f}"
            )
    for table in (t, f, m, s, p):
        if table.row_count:
            console.print(table)


if __name__ == "__main__":
    app()
