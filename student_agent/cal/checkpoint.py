"""CAL checkpoints: weights as safetensors, the config as JSON beside them, versioned by number.

Rollback restores the previous version's files byte for byte: a checkpoint is never rewritten,
`current` is a small pointer file replaced atomically, and loading never re-serialises.
"""

from __future__ import annotations

import os
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from student_agent.cal.config import CALConfig
from student_agent.cal.layers import build_cal

WEIGHTS, CONFIG, POINTER = "cal.safetensors", "cal.json", "current"


class CheckpointStore:
    """``root/v0001/{cal.safetensors,cal.json}``, ``root/current`` names the version in use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def versions(self) -> list[int]:
        return sorted(int(p.name[1:]) for p in self.root.glob("v[0-9]*") if (p / WEIGHTS).exists())

    def current(self) -> int | None:
        pointer = self.root / POINTER
        return int(pointer.read_text()) if pointer.exists() else None

    def save(self, cal: nn.Module, cfg: CALConfig, metadata: dict[str, str] | None = None) -> int:
        """Write a new version (not yet current)."""
        version = max(self.versions(), default=0) + 1
        folder = self.root / f"v{version:04d}"
        folder.mkdir()
        state = {k: v.detach().contiguous() for k, v in cal.state_dict().items()}
        save_file(state, str(folder / WEIGHTS), metadata=metadata)
        (folder / CONFIG).write_text(cfg.to_json())
        return version

    def activate(self, version: int | None) -> None:
        """Point `current` at a version (None: no CAL at all), atomically."""
        tmp = self.root / (POINTER + ".tmp")
        if version is None:
            (self.root / POINTER).unlink(missing_ok=True)
            return
        if version not in self.versions():
            raise ValueError(f"no CAL checkpoint v{version:04d}")
        tmp.write_text(str(version))
        os.replace(tmp, self.root / POINTER)

    def files(self, version: int) -> tuple[Path, Path]:
        folder = self.root / f"v{version:04d}"
        return folder / WEIGHTS, folder / CONFIG

    def load(self, version: int | None = None) -> tuple[nn.Module, CALConfig]:
        chosen = self.current() if version is None else version
        if chosen is None:
            raise ValueError("no CAL is active")
        weights, config = self.files(chosen)
        cfg = CALConfig.from_json(config.read_text())
        cal = build_cal(cfg)
        cal.load_state_dict(load_file(str(weights)))
        return cal, cfg
