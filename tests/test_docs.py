"""The documentation keeps up with the code: every command in README.md's table, a short README, links into docs/
that resolve, and no citations of documents that are not in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 220
# Documents outside the repository that pages once cited; a page must describe the thing itself instead.
# (assembled from parts so that this file does not itself contain the citations it searches for)
OUTSIDE_CITATIONS = tuple(name + ".md" for name in ("ired-algorithm", "lessons", "conventions", "DESIGN")) + \
    ("../" + "shared",)
ISSUE_REFERENCE = re.compile(r"\bissues?\s*#?\d+", re.IGNORECASE)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def pages() -> list[Path]:
    return [README, ROOT / "CONTRIBUTING.md", *sorted(DOCS.glob("*.md"))]


def test_docs_folder_exists():
    assert DOCS.is_dir() and list(DOCS.glob("*.md")), "docs/ holds the reference pages"


def test_every_command_has_a_row_in_the_readme_table():
    from ebmtool.cli import cli

    lines = README.read_text(encoding="utf-8").splitlines()
    missing = [name for name in sorted(cli.commands)
               if not any(re.match(rf"\| `ebmtool {re.escape(name)}[ `]", line) for line in lines)]
    assert not missing, f"README.md's command table has no row '| `ebmtool NAME ...` |' for: {', '.join(missing)}"


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES}): move reference to docs/"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_into_docs_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if DOCS.resolve() in (path, *path.parents) and not path.exists():
            broken.append(target)
    assert not broken, f"{page.name} links to docs/ files that do not exist: {', '.join(broken)}"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_citations_of_outside_documents(page):
    text = page.read_text(encoding="utf-8")
    found = [s for s in OUTSIDE_CITATIONS if s in text] + ISSUE_REFERENCE.findall(text)
    assert not found, f"{page.name} cites documents that are not in the repository: {', '.join(found)}"


def test_the_checks_catch_what_they_should():
    """The patterns themselves: a row for another command does not count, and the citation patterns match."""
    row = "| `ebmtool trainer` | something else |"
    assert not re.match(rf"\| `ebmtool {re.escape('train')}[ `]", row)
    assert re.match(rf"\| `ebmtool {re.escape('train')}[ `]", "| `ebmtool train` | trains |")
    assert re.match(rf"\| `ebmtool {re.escape('data')}[ `]", "| `ebmtool data TASK -o FILE.h5` | writes |")
    number = "1" + "2"
    assert ISSUE_REFERENCE.search(f"as issue {number} asked") and ISSUE_REFERENCE.search(f"(issue #{number})")
    assert not ISSUE_REFERENCE.search("a known issue with threads")
    assert LINK.findall("see [x](docs/a.md#b) and [y](https://e.org)") == ["docs/a.md#b", "https://e.org"]
