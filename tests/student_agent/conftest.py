"""A small teacher (BERT-style) and a small student (Llama-style) trained once per session.

Both learn ``a + b*c mod 17`` from the same generator with our training code; the teacher
ships a probing extraction, the student never sees a concept label.
"""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from m2kt import keys
from m2kt.ml.models import ModelConfig
from m2kt.ml.train import TrainConfig
from student_agent.model import Student, train_student

SIZES = {"train": 3000, "eval": 200, "probe": 800, "heldout": 400, "pool": 500}
TASK, PARAMS = "modarith", {"p": 17}


@dataclass
class Pair:
    teacher_dir: Path
    extraction: Path
    key_path: Path
    student: Student


@pytest.fixture(scope="session")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    from teacher_agent import pipeline

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("pair")
    teacher_cfg = ModelConfig(arch="bert", hidden_size=64, num_layers=3, num_heads=4)
    train_cfg = TrainConfig(epochs=60, batch_size=64, lr=3e-3, target_accuracy=0.97)  # epochs bound it, not the clock
    pipeline.train(TASK, PARAMS, root / "teacher", model_config=teacher_cfg, sizes=SIZES, train_config=train_cfg)
    pipeline.save_extraction(pipeline.extract(root / "teacher", "probing"), root / "extraction-probing")
    key = keys.generate()
    keys.save_keypair(key, root / "teacher.key")
    student_cfg = ModelConfig(arch="llama", hidden_size=48, num_layers=3, num_heads=4)
    student = train_student(
        TASK, PARAMS, root / "student", model_config=student_cfg, sizes=SIZES, train_config=train_cfg
    )
    return Pair(root / "teacher", root / "extraction-probing", root / "teacher.key", student)
