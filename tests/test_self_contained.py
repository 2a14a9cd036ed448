"""The repository stands alone: nothing in it points at a file outside it.

A user who clones the repository has only the repository. So every relative Markdown link must
land on a file inside it, no link may be an absolute filesystem path (or a file: URL), every
`*.md` file that a document or docstring names must exist here, and no tracked text file may
point into the directories this project was developed beside (a sibling `shared/` folder, the
build machines' `/work/`) or cite the design documents kept there ("PROTOCOL §2", "METHOD.md's
bar"): the repository's own are docs/protocol.md and docs/method.md.
"""

import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".md", ".py", ".toml", ".yml", ".yaml", ".ini", ".cfg", ".txt", ".html", ".mako", ".js", ".css"}
TEXT_NAMES = {"Makefile", "Dockerfile", "run", ".gitignore"}

INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
HTML_LINK = re.compile(r"""(?:href|src)\s*=\s*["']([^"']+)["']""")
WEB = re.compile(r"^(?:https?:|mailto:)", re.IGNORECASE)
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)
# a name ending in .md that is not part of a URL or of a longer path
MD_NAME = re.compile(r"(?<![\w/.:~-])((?:\.{1,2}/)*[\w.-]*(?:/[\w.-]+)*\.md)\b")
OUTSIDE = re.compile(
    r"\.\./(?:\.\./)*shared\b|\bshared/design\b|(?<![\w.])/work/"
    # the design documents the project began from, by name: here they are docs/protocol.md and docs/method.md
    r"|\b(?:PROTOCOL|METHOD|STYLE)\b"
)


def _tracked() -> list[Path]:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
        files = [ROOT / name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (a source archive): walk it
        skip = {".git", ".venv", ".m2kt", "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
        files = [p for p in ROOT.rglob("*") if not skip & set(p.relative_to(ROOT).parts)]
    return sorted(p for p in files if p.is_file())


def _text_files() -> list[Path]:
    me = Path(__file__).resolve()
    return [p for p in _tracked() if (p.suffix in TEXT_SUFFIXES or p.name in TEXT_NAMES) and p != me]


def _inside(path: Path) -> bool:
    return path.resolve().is_relative_to(ROOT)


def _link_problem(doc: Path, target: str) -> str | None:
    if not target or target.startswith("#") or WEB.match(target):
        return None
    if SCHEME.match(target):
        return "a URL scheme that is not http(s) or mailto"
    path = unquote(target.split("#", 1)[0].split("?", 1)[0])
    if path.startswith(("/", "~")):
        return "an absolute path"
    resolved = (doc.parent / path).resolve()
    if not _inside(resolved):
        return "outside the repository"
    if not resolved.exists():
        return "no such file in the repository"
    return None


def markdown_link_problems(doc: Path, text: str) -> list[str]:
    targets = [*INLINE_LINK.findall(text), *REFERENCE_LINK.findall(text), *HTML_LINK.findall(text)]
    found = []
    for target in targets:
        problem = _link_problem(doc, target)
        if problem:
            found.append(f"{doc.relative_to(ROOT)}: link {target!r}: {problem}")
    return found


def md_name_problems(doc: Path, text: str, names: set[str]) -> list[str]:
    found = []
    for name in MD_NAME.findall(text):
        here = [doc.parent / name, ROOT / name]
        if any(_inside(p) and p.is_file() for p in here) or Path(name).name in names:
            continue
        found.append(f"{doc.relative_to(ROOT)}: names {name!r}, which is not in the repository")
    return found


def test_markdown_links_stay_inside_the_repository():
    problems = []
    for doc in _tracked():
        if doc.suffix == ".md":
            problems += markdown_link_problems(doc, doc.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


def test_named_documents_exist_in_the_repository():
    names = {p.name for p in _tracked() if p.suffix == ".md"}
    problems = []
    for path in _text_files():
        if path.suffix in {".md", ".py"}:
            problems += md_name_problems(path, path.read_text(encoding="utf-8"), names)
    assert not problems, "\n".join(problems)


def test_no_text_file_points_outside_the_repository():
    problems = []
    for path in _text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                problems.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("../shared/design/PROTOCOL.md", "outside the repository"),
        ("../../shared/design/METHOD.md", "outside the repository"),
        ("shared/design/METHOD.md", "no such file in the repository"),
        ("/work/shared/design/PROTOCOL.md", "an absolute path"),
        ("file:///etc/passwd", "a URL scheme that is not http(s) or mailto"),
        ("missing.md", "no such file in the repository"),
        ("docs/protocol.md#2-the-brokers-http-api", None),
        ("https://example.org/x.md", None),
        ("#anchor", None),
    ],
)
def test_the_link_check_catches_what_it_should(target, problem):
    assert _link_problem(ROOT / "README.md", target) == problem


def test_the_name_and_path_checks_catch_what_they_should():
    doc = ROOT / "docs" / "student.md"
    names = {"protocol.md"}
    assert md_name_problems(doc, "see PROTOCOL.md and METHOD.md", names) != []
    assert len(md_name_problems(doc, "see PROTOCOL.md and METHOD.md", names)) == 2
    assert md_name_problems(doc, "see protocol.md, docs/method.md and https://x.org/a/PROTOCOL.md", names) == []
    assert OUTSIDE.search("[m](../shared/design/METHOD.md)") and OUTSIDE.search("cat /work/shared/x")
    assert OUTSIDE.search("the checks of PROTOCOL §2") and not OUTSIDE.search("docs/protocol.md §2")
    assert OUTSIDE.search("After PROTOCOL's checks") and OUTSIDE.search("METHOD.md's bar")
    assert not OUTSIDE.search("METHODS = ('m2kt',)") and not OUTSIDE.search("PROTOCOL_VERSION = 1")
    assert not OUTSIDE.search("tmp_path / 'shared-data'")
