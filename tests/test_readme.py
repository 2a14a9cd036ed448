"""The README's first hour: a reader learns to activate .venv before the first m2kt command."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_activation_comes_before_the_first_command():
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    commands = [b for b in blocks if re.search(r"^\s*(export .*\$\()?m2kt-(broker|teacher|student)\b", b, re.M)]
    assert commands, "the README shows no m2kt command"
    first = blocks.index(commands[0])
    assert any(re.search(r"^\s*(\.|source) \.venv/bin/activate\b", b, re.M) for b in blocks[: first + 1])
