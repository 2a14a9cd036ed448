"""docs/architecture.md stays true: every module or folder it names in backticks exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
TOP = ("m2kt", "broker", "teacher_agent", "student_agent", "bench", "tests", "docs")
# a path in backticks: `broker/api/topics.py`, `m2kt/ml/`, `bench/broker_load.py`
PATH = re.compile(r"`((?:" + "|".join(TOP) + r")/[\w./-]*)`")


def named_paths() -> list[str]:
    return sorted(set(PATH.findall(DOC.read_text(encoding="utf-8"))))


def test_the_doc_names_the_modules_it_is_about():
    names = named_paths()
    assert len(names) > 40, names
    for part in ("broker/", "teacher_agent/", "student_agent/", "m2kt/", "m2kt/ml/"):
        assert part in names, part


def test_every_module_the_doc_names_exists():
    missing = []
    for name in named_paths():
        path = ROOT / name
        if not (path.is_dir() if name.endswith("/") else path.is_file()):
            missing.append(name)
    assert not missing, f"docs/architecture.md names what does not exist: {missing}"
