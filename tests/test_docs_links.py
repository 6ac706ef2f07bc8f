"""The docs stand alone: every relative link in a Markdown file points at a file the
repository holds, every ``docs/*.md`` a source file cites exists, and no file names a
document outside the repository or a path of a development machine."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")
CITED_DOC = re.compile(r"\bdocs/[\w.-]+\.md\b")


def tracked_files() -> list[Path]:
    """Files git tracks plus new files in the work tree (not ignored)."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / p for p in out.stdout.splitlines() if (ROOT / p).is_file()]


FILES = tracked_files() if (ROOT / ".git").exists() else []
MARKDOWN = [p for p in FILES if p.suffix == ".md"]
TEXT = [p for p in FILES if p.suffix in {".py", ".md", ".toml", ".service", ".yml", ".yaml",
                                         ".sh", ".json", ".txt"} or p.name == "run"]


def test_there_is_something_to_check() -> None:
    if not FILES:
        pytest.skip("not a git checkout")
    assert ROOT / "README.md" in MARKDOWN and len(MARKDOWN) >= 10


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same file
        file = target.split("#", 1)[0]
        if not (path.parent / file).exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)}: links to missing files {broken}"


def test_cited_docs_exist() -> None:
    missing = set()
    for path in TEXT:
        for doc in CITED_DOC.findall(path.read_text(encoding="utf-8", errors="replace")):
            if not (ROOT / doc).is_file():
                missing.add(f"{path.relative_to(ROOT)}: {doc}")
    assert not missing, sorted(missing)


def test_no_outside_documents_or_machine_paths() -> None:
    # spelled in pieces so that this file does not match itself
    outside = ["DESIGN" + ".md", "/" + "work/", "/" + "root/", "/" + "home/"]
    hits = []
    for path in TEXT:
        text = path.read_text(encoding="utf-8", errors="replace")
        for needle in outside:
            if needle in text:
                hits.append(f"{path.relative_to(ROOT)}: {needle}")
    assert not hits, hits
