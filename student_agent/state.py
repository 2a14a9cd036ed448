"""The student's durable memory: per-topic cursors and the packets it has handled.

One JSON file, replaced atomically (write, fsync, rename) after every change, so a crash
leaves either the old or the new state, never half of one. A packet is *handled* once its
report is acknowledged by the broker (201, or 409: reported before a crash); until then it
is retried after a restart, and the checkpoint store's index says whether its CAL was already
integrated, so no packet is fitted into the student twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m2kt.fsutil import atomic_write_text

__all__ = ["StudentState"]


@dataclass
class StudentState:
    path: Path
    cursors: dict[str, int] = field(default_factory=dict)
    handled: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> StudentState:
        if not path.exists():
            return cls(path)
        data = json.loads(path.read_text())
        return cls(path, {str(k): int(v) for k, v in data["cursors"].items()}, dict(data["handled"]))

    def save(self) -> None:
        body = {"cursors": self.cursors, "handled": self.handled}
        atomic_write_text(self.path, json.dumps(body, indent=1, sort_keys=True))

    def is_handled(self, packet_id: str) -> bool:
        return packet_id in self.handled

    def mark_handled(self, packet_id: str, verdict: str, seq: int, topics: list[str]) -> None:
        self.handled[packet_id] = {"verdict": verdict, "seq": seq}
        for topic in topics:
            if topic in self.cursors:
                self.cursors[topic] = max(self.cursors[topic], seq)
        self.save()

    def advance(self, topic: str, seq: int) -> None:
        if seq > self.cursors.get(topic, 0):
            self.cursors[topic] = seq
            self.save()
