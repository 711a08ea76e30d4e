"""The repository's own hygiene: what the documented commands write is ignored by git, so a checkpoint never
shows up as a file to commit."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md")),
         ROOT / "examples" / "Makefile", ROOT / "studies" / "Makefile"]
# a make command of the pipeline or the study with the OUT it writes to
MAKE_OUT = re.compile(r"make (?:-C examples|(?:-j \d+ )?study|-f studies/Makefile)\b[^\n`]*?\bOUT=(\S+)")


def makefile_default_out(makefile: Path) -> str:
    return re.search(r"^OUT\s*\?=\s*(\S+)", makefile.read_text(encoding="utf-8"), re.MULTILINE).group(1)


def written_checkpoints() -> list[str]:
    """A checkpoint inside every output folder the Makefiles default to and the docs' make commands name (paths
    relative to the repository; absolute folders are outside it)."""
    pipeline = [f"examples/{makefile_default_out(ROOT / 'examples' / 'Makefile')}"]
    study = [makefile_default_out(ROOT / "studies" / "Makefile")]
    for page in PAGES:
        for line in page.read_text(encoding="utf-8").splitlines():
            for out in MAKE_OUT.findall(line):
                if not out.startswith("/"):
                    (pipeline if "-C examples" in line else study).append(out)
    return [f"{d}/base/ckpt.safetensors" for d in pipeline] + [f"{d}/inverse/ired/s0/ckpt.safetensors" for d in study]


def test_the_docs_make_commands_are_found():
    assert len(written_checkpoints()) >= 3, written_checkpoints()


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
@pytest.mark.parametrize("path", written_checkpoints())
def test_checkpoints_the_documented_commands_write_are_ignored_by_git(path):
    r = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT)
    assert r.returncode == 0, f"{path} would show as an untracked file: add its folder to .gitignore"


DURATION = re.compile(r"(?:about |~)?(?:a|\d+(?:[–-]\d+)?) ?(?:min(?:utes?)?|s)\b")


def test_the_default_jobs_training_time_is_stated_as_measured():
    """Every place that gives the training time of the default job (1,500 steps of the CPU recipe) gives the
    time docs/performance.md measured, in the same words."""
    from ebmtool.cli import cli

    measured = re.search(r"1,500 steps in (\d+ s)\b", (ROOT / "docs" / "performance.md").read_text()).group(1)
    recipe_help = next(p.help for p in cli.commands["train"].params if p.name == "recipe")
    texts = {"README.md": (ROOT / "README.md").read_text(), "docs/training.md": (ROOT / "docs" / "training.md")
             .read_text(), "train --help (--recipe)": recipe_help}
    stated = {(where, d) for where, text in texts.items() for line in text.splitlines()
              if re.search(r"\b1,?500 steps", line) for d in DURATION.findall(line)}
    assert len(stated) >= 3 and all(d == measured for _, d in stated), stated


def test_the_compile_flag_states_what_was_measured():
    """`train --help` on --compile gives figures, and each is one that docs/performance.md's --compile section
    measured (its seconds within 1 s, its speed-up within 0.05), not a promise."""
    from ebmtool.cli import cli

    text = next(p.help for p in cli.commands["train"].params if p.name == "compile")
    perf = (ROOT / "docs" / "performance.md").read_text()
    section = perf[perf.index("### `--compile` on the CPU"):]
    section = section[:section.index("\n#", 1)]
    claims = re.findall(r"(\d+(?:\.\d+)?) ?(s|x)\b", text)
    assert {u for _, u in claims} == {"s", "x"} and "docs/performance.md" in text, text
    for value, unit in claims:
        measured = [float(v) for v in re.findall(rf"(\d+(?:\.\d+)?)(?:–\d+)? ?{unit}\b", section)]
        assert any(abs(float(value) - m) <= (1 if unit == "s" else 0.05) for m in measured), (value, unit)
