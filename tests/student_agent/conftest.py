"""A small teacher (BERT-style) and a small student (Llama-style) trained once per session.

Both learn the digit sum of five digits from the same generator with our training code; the
teacher ships a probing extraction, the student never sees a concept label. Digit sums, not
modular arithmetic: at these sizes both models learn digitsum within the epoch bound (as in the
quick benchmark, same models and training), while on ``a + b*c mod 17`` the teacher learned the
step and never the answer in 60 epochs (held-out 0.03) and the fixture spent three minutes on it.
"""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from m2kt import keys
from m2kt.ml.models import ModelConfig
from m2kt.ml.train import TrainConfig
from student_agent.model import Student, train_student

SIZES = {"train": 6000, "eval": 300, "probe": 800, "heldout": 400, "pool": 600}
TASK, PARAMS = "digitsum", {}


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
    taught = pipeline.train(
        TASK, PARAMS, root / "teacher", model_config=teacher_cfg, sizes=SIZES, train_config=train_cfg
    )
    pipeline.save_extraction(pipeline.extract(root / "teacher", "probing"), root / "extraction-probing")
    key = keys.generate()
    keys.save_keypair(key, root / "teacher.key")
    student_cfg = ModelConfig(arch="llama", hidden_size=48, num_layers=3, num_heads=4)
    student = train_student(
        TASK, PARAMS, root / "student", model_config=student_cfg, sizes=SIZES, train_config=train_cfg
    )
    # Models that cannot do their task cannot hold its concepts: the tests below need both to have learned it.
    assert taught.heldout_accuracy >= 0.95, f"the test teacher did not learn digitsum: {taught.heldout_accuracy:.3f}"
    assert student.run["heldout_accuracy"] >= 0.95, f"the test student did not learn: {student.run['heldout_accuracy']}"
    return Pair(root / "teacher", root / "extraction-probing", root / "teacher.key", student)
