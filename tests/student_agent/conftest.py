"""A small teacher (BERT-style) and a small student (Llama-style), trained once per session.

They are the quick benchmark's pair (the `quick_models` fixture trains them with the benchmark's
code): both learn the digit sum of five digits from the same generator with our training code;
the teacher ships a probing extraction, the student never sees a concept label. Digit sums, not
modular arithmetic: at these sizes both models learn digitsum within the epoch bound, while on
``a + b*c mod 17`` the teacher learned the step and never the answer in 60 epochs (held-out 0.03).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.transfer.setups import QUICK
from m2kt import keys
from student_agent.model import Student, load_student
from teacher_agent import pipeline

((TASK, PARAMS),) = QUICK.families.items()


@dataclass
class Pair:
    teacher_dir: Path
    extraction: Path
    key_path: Path
    student: Student


@pytest.fixture(scope="session")
def pair(quick_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Pair:
    base = quick_models / QUICK.name / f"{TASK}-{QUICK.pairs[0].name}"
    key_path = tmp_path_factory.mktemp("pair") / "teacher.key"
    keys.save_keypair(keys.generate(), key_path)
    student = load_student(base / "student")
    teacher_run = json.loads((base / "teacher" / pipeline.RUN_FILE).read_text())
    # Models that cannot do their task cannot hold its concepts: the tests below need both to have learned it.
    assert teacher_run["heldout_accuracy"] >= 0.95, f"the test teacher did not learn {TASK}: {teacher_run}"
    assert student.run["heldout_accuracy"] >= 0.95, f"the test student did not learn: {student.run['heldout_accuracy']}"
    return Pair(base / "teacher", base / "extraction-probing", key_path, student)
