"""The student's own model: a different family and width than the teacher, trained here, then frozen.

The default student is Llama-style, d=64 x 3 blocks (the demo teacher is BERT-style,
d=128 x 4). It learns the base task from the same task generator with our shared
training loop and never sees a concept label. A student directory is a
``save_pretrained`` model directory plus ``student_run.json`` (seed and split sizes),
so its unlabelled inputs and evaluation data can be regenerated instead of stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerFast

from m2kt.errors import LocalInputError
from m2kt.ml.models import ModelConfig, TaskModel, load_pretrained, model_card
from m2kt.ml.tasks import SPLIT_SIZES, TaskBatch, TaskFamily, task_from_spec
from m2kt.ml.train import EpochLog, TrainConfig, train_and_save
from student_agent.cal.layers import freeze

__all__ = ["RUN_FILE", "STUDENT_DEFAULT", "STUDENT_SIZES", "STUDENT_TRAIN", "Student", "load_student", "train_student"]

STUDENT_DEFAULT = ModelConfig(arch="llama", hidden_size=64, num_layers=3, num_heads=4)
STUDENT_TRAIN = TrainConfig(epochs=120, batch_size=128, lr=3e-3, target_accuracy=0.99)
# The same split names and sizes as the teacher's, so that (task, seed) deals the same disjoint
# splits: the student trains on `train`, which never overlaps anchors, probes or held-out data.
STUDENT_SIZES = SPLIT_SIZES
RUN_FILE = "student_run.json"


@dataclass(frozen=True)
class Student:
    """A loaded, frozen student: model, tokenizer, its task family and training record."""

    model: TaskModel
    tokenizer: PreTrainedTokenizerFast
    family: TaskFamily
    run: dict[str, Any]
    path: Path

    def split(self, name: str) -> TaskBatch:
        return self.family.generate_splits(dict(self.run["sizes"]), int(self.run["seed"]))[name]

    def model_card(self) -> dict[str, Any]:
        """What a report's ``student_model`` says: architecture, sizes, weights digest, task accuracy."""
        return model_card(self.model) | {"base_task_accuracy": self.run.get("heldout_accuracy")}


def train_student(
    task: str,
    params: Mapping[str, Any],
    out: Path,
    *,
    seed: int = 0,
    model_config: ModelConfig = STUDENT_DEFAULT,
    train_config: TrainConfig = STUDENT_TRAIN,
    sizes: Mapping[str, int] = STUDENT_SIZES,
    progress: bool = False,
    callback: Callable[[EpochLog], None] | None = None,
) -> Student:
    """Train a student on the base task (answers and steps only) and save it to ``out``.

    ``progress`` shows a rich bar on stderr; ``callback`` gets each epoch's log.
    """
    train_and_save(
        task, params, out, RUN_FILE, seed, model_config, train_config, sizes, progress=progress, callback=callback
    )
    return load_student(out)


def load_student(path: Path) -> Student:
    """Load a student directory with ``from_pretrained`` and freeze it."""
    if not (path / RUN_FILE).exists():
        raise LocalInputError(f"{path} is not a student directory (no {RUN_FILE}); run `m2kt-student train`")
    model, tokenizer = load_pretrained(path)
    freeze(model)
    run = json.loads((path / RUN_FILE).read_text())
    return Student(model, tokenizer, task_from_spec(model.task_spec), run, path)
