"""Comments, docstrings and documentation name code that exists: every dotted path `ebmtool.x.y` (a module and
something in it) resolves to a module or attribute, and every `ebmtool/....py` file named exists. A module that
moves takes the references to it along, or this test names each one left behind.

A single component after `ebmtool.` is not checked: `ebmtool.step`, `ebmtool.seed` and the like are checkpoint
metadata keys, not modules."""

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOTTED = re.compile(r"\bebmtool(?:\.[A-Za-z_][A-Za-z0-9_]*){2,}")
FILES = re.compile(r"\bebmtool/[A-Za-z0-9_/]+\.py\b")


def _texts():
    paths = sorted((ROOT / "ebmtool").rglob("*.py")) + sorted((ROOT / "docs").glob("*.md"))
    paths += [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    return [(p.relative_to(ROOT), p.read_text()) for p in paths]


def resolves(path: str) -> bool:
    """Whether `path` is a module, or an attribute (nested: a class's method) of the longest module it starts with."""
    parts = path.split(".")
    for i in range(len(parts), 1, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


GENERATED = {"ebmtool/_version.py"}  # written by the install (setuptools-scm), absent from a bare checkout


def test_the_check_tells_a_real_path_from_a_stale_one():
    assert resolves("ebmtool.training.losses.ired_losses") and resolves("ebmtool.config.TrainConfig.from_dict")
    assert not resolves("ebmtool.analysis.compare.unset_defaults")  # the path cli/defaults.py named after the move
    assert not resolves("ebmtool.no_such_module.thing")


def test_every_dotted_path_in_comments_and_docs_resolves():
    found = {(m.group(0).rstrip("."), str(name)) for name, text in _texts() for m in DOTTED.finditer(text)}
    assert len(found) > 10  # the pattern finds the references there are
    stale = sorted(f"{path} (in {where})" for path, where in found if "__main__" not in path and not resolves(path))
    assert not stale, stale


def test_every_file_named_in_comments_and_docs_exists():
    named = {(m.group(0), str(name)) for name, text in _texts() for m in FILES.finditer(text)}
    assert named
    missing = sorted(f"{path} (in {where})" for path, where in named
                     if not (ROOT / path).exists() and path not in GENERATED)
    assert not missing, missing
