"""Versioned CAL checkpoints: what the student has integrated, and the way back.

Layout under ``root``::

    readers/<packet_id>.safetensors   one fitted reader (CAL + read-outs) per packet, written once
    v0001/index.json                  a version: the list of integrated packets and their configs
    current                           the version in use (replaced atomically)

A new packet is *staged* as a new version (the previous version's entries plus the new one),
checked, then activated or discarded. Files are never rewritten, so discarding a staged
version leaves every byte of the store as it was: that is the rollback.

`remove` takes integrated packets out again (a teacher's key was revoked): the versions from
the first one that held such a packet on are rewritten as they would have been written had the
packet never come, and its reader is deleted. Readers are fitted per packet and never depend
on one another, so the result is byte for byte the store of a student that never integrated
it. A journal (``removing.json``) makes the rewrite crash-safe: `sweep` finishes it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from m2kt.fsutil import atomic_path, atomic_write_bytes

__all__ = ["CheckpointStore"]

POINTER, INDEX, READERS, JOURNAL = "current", "index.json", "readers", "removing.json"


class CheckpointStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / READERS).mkdir(parents=True, exist_ok=True)

    def versions(self) -> list[int]:
        return sorted(int(p.name[1:]) for p in self.root.glob("v[0-9]*") if (p / INDEX).exists())

    def current(self) -> int | None:
        pointer = self.root / POINTER
        return int(pointer.read_text()) if pointer.exists() else None

    def index(self, version: int | None = None) -> dict[str, Any]:
        """A version's index (the current one by default; an empty index when there is none)."""
        chosen = self.current() if version is None else version
        if chosen is None:
            return {"version": 0, "entries": []}
        data: dict[str, Any] = json.loads((self._folder(chosen) / INDEX).read_text())
        return data

    def stage(self, entry: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> int:
        """Write a new version = the current entries (minus an older entry of the same packet) + ``entry``."""
        packet_id = str(entry["packet_id"])
        reader = self.reader_path(packet_id)
        if reader.exists():
            raise ValueError(f"packet {packet_id} already has a reader; discard its staged version first")
        with atomic_path(reader) as tmp:
            save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp))
        version = max(self.versions(), default=0) + 1
        entries = [e for e in self.index()["entries"] if e["packet_id"] != packet_id] + [dict(entry)]
        folder = self._folder(version)
        folder.mkdir()
        atomic_write_bytes(folder / INDEX, json.dumps({"version": version, "entries": entries}, indent=1).encode())
        return version

    def activate(self, version: int | None) -> None:
        """Point ``current`` at a version (None: nothing integrated), atomically."""
        if version is None:
            (self.root / POINTER).unlink(missing_ok=True)
            return
        if version not in self.versions():
            raise ValueError(f"no CAL checkpoint v{version:04d}")
        atomic_write_bytes(self.root / POINTER, str(version).encode())

    def discard(self, version: int) -> None:
        """Remove a staged version that never became current, with the reader only it introduced."""
        if version == self.current():
            raise ValueError(f"v{version:04d} is current; activate another version first")
        introduced = {e["packet_id"] for e in self.index(version)["entries"]}
        for other in self.versions():
            if other != version:
                introduced -= {e["packet_id"] for e in self.index(other)["entries"]}
        for packet_id in introduced:
            self.reader_path(packet_id).unlink(missing_ok=True)
        shutil.rmtree(self._folder(version))

    def remove(self, packet_ids: Collection[str]) -> list[str]:
        """Take integrated packets out, as if they had never been integrated; the ones removed.

        Versions after the last one without any of them are replaced by the same history
        without them (a version that only added one of them disappears); their readers go.
        """
        self.sweep()
        gone = set(packet_ids)
        current = self.current()
        history = [v for v in self.versions() if current is not None and v <= current]
        holding = [v for v in history if gone & {e["packet_id"] for e in self.index(v)["entries"]}]
        if not holding:
            return []
        first = holding[0]
        base = max((v for v in history if v < first), default=None)
        previous = self.index(base)["entries"] if base is not None else []
        rewritten: list[list[dict[str, Any]]] = []
        for version in (v for v in history if v >= first):
            entries = [e for e in self.index(version)["entries"] if e["packet_id"] not in gone]
            if entries != (rewritten[-1] if rewritten else previous):
                rewritten.append(entries)
        removed = sorted(gone & {e["packet_id"] for v in holding for e in self.index(v)["entries"]})
        plan = {"base": base, "drop": [v for v in history if v >= first], "versions": rewritten, "removed": removed}
        atomic_write_bytes(self.root / JOURNAL, json.dumps(plan).encode())
        self._finish_removal()
        return removed

    def _finish_removal(self) -> None:
        """Carry out the journalled removal (again, after a crash: every step can be repeated)."""
        journal = self.root / JOURNAL
        if not journal.exists():
            return
        plan = json.loads(journal.read_text())
        base: int | None = plan["base"]
        self.activate(base)  # first a consistent state: the last version without them
        for version in plan["drop"]:
            shutil.rmtree(self._folder(version), ignore_errors=True)
        version = base or 0
        for entries in plan["versions"]:
            version += 1
            folder = self._folder(version)
            folder.mkdir(exist_ok=True)
            atomic_write_bytes(folder / INDEX, json.dumps({"version": version, "entries": entries}, indent=1).encode())
        self.activate(version or None)
        for packet_id in plan["removed"]:
            self.reader_path(packet_id).unlink(missing_ok=True)
        journal.unlink()

    def sweep(self) -> None:
        """Finish a removal, discard staged versions newer than ``current`` (a crash between stage and decision)."""
        self._finish_removal()
        current = self.current() or 0
        for version in self.versions():
            if version > current:
                self.discard(version)
        for tmp in self.root.rglob("*.tmp"):
            tmp.unlink()

    def reader_path(self, packet_id: str) -> Path:
        return self.root / READERS / f"{packet_id}.safetensors"

    def load_reader(self, packet_id: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.reader_path(packet_id)))

    def files(self) -> dict[str, bytes]:
        """Every file of the store with its bytes (for byte-identity checks)."""
        return {str(p.relative_to(self.root)): p.read_bytes() for p in sorted(self.root.rglob("*")) if p.is_file()}

    def _folder(self, version: int) -> Path:
        return self.root / f"v{version:04d}"
