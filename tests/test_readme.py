"""The README's command blocks run as written, at a tiny scale, so they cannot rot.

The five-minute tour (both blocks) and, from "Common invocations", the lines that continue its runs (resume,
fine-tune, `eval --harder --json` and the offline chain mine-negatives -> score -> weights -> train --negatives)
are read from README.md and run in that order, in a fresh directory, through the CLI in this process. Each
`ebmtool` command is the README's with flags appended that only shrink it (TINY: a 4x4 problem, a small network
and a short run for `train`; few problems for `eval` and `compare`; few candidates for `mine-negatives`), and a
README `--steps N` becomes N // 50. The README's own flags, paths, seeds and order are kept, so a command that
stops working as written fails here.
"""

import re
import shlex
from pathlib import Path

import pytest

from ebmtool.cli import cli

README = Path(__file__).parent.parent / "README.md"
TINY = {
    "train": ["--size", "4", "--width", "32", "--train-size", "256", "--batch-size", "32", "--val-size", "8",
              "--eval-every", "0", "--log-every", "2"],
    "eval": ["-n", "16"],
    "compare": ["-n", "16", "--bootstrap", "200", "--permutations", "200"],
    "mine-negatives": ["--candidates", "2", "--refine-steps", "1"],
}
STEPS_DIVISOR = 50  # --steps 300 -> 6
SHORT_RUN = ["--steps", "6"]  # a train line that gives neither --steps nor a budget (the recipe's 1,500 steps)


def _blocks(heading: str) -> list[str]:
    """The lines of the ```sh blocks of the README section under `heading` (up to the next heading)."""
    text = README.read_text()
    start = text.index(heading + "\n")
    end = re.search(r"\n#{2,3} ", text[start + len(heading):])
    section = text[start:start + len(heading) + (end.start() if end else len(text))]
    return [ln for block in re.findall(r"```sh\n(.*?)```", section, re.S) for ln in block.splitlines() if ln.strip()]


def _commands(line: str) -> list[list[str]]:
    """The ebmtool invocations of one shell line (comments dropped, `&&` chains split)."""
    words = shlex.split(line, comments=True)
    cmds, cur = [], []
    for w in words + ["&&"]:
        if w == "&&":
            cmds.append(cur)
            cur = []
        else:
            cur.append(w)
    assert all(c and c[0] == "ebmtool" for c in cmds), line
    return [c[1:] for c in cmds]


def shrink(args: list[str]) -> list[str]:
    """The README's command with TINY's flags appended and its --steps scaled down."""
    args = list(args)
    if "--steps" in args:
        i = args.index("--steps") + 1
        args[i] = str(max(1, int(args[i]) // STEPS_DIVISOR))
    cmd = args[0]
    if cmd == "train" and "--resume" in args:
        return args  # a resumed run keeps its configuration
    extra = TINY.get(cmd, [])
    if cmd == "train" and not {"--steps", "--budget", "--budget-of"} & set(args):
        extra = extra + SHORT_RUN
    return args + extra


def readme_commands() -> list[list[str]]:
    tour = _blocks("## A five-minute tour")
    common = [ln for ln in _blocks("### Common invocations") if "runs/quick" in ln or "scores.h5" in ln]
    offline = " ".join(common)
    for step in ("mine-negatives", "ebmtool score", "ebmtool weights",
                 "--offline-negatives negs.h5 --offline-weights weights.h5"):
        assert step in offline, f"the README's offline chain lost {step!r}"
    return [c for line in tour + common for c in _commands(line)]


def test_the_readme_blocks_are_found():
    cmds = readme_commands()
    assert cmds[0][:2] == ["train", "--steps"] and any(c[0] == "compare" for c in cmds)
    assert sum(c[0] == "train" for c in cmds) >= 6


def test_the_readme_commands_run_as_written(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in readme_commands():
        r = runner.invoke(cli, shrink(args))
        assert r.exit_code == 0, f"ebmtool {shlex.join(args)} -> exit {r.exit_code}:\n{r.output[-2000:]}"
    assert (tmp_path / "runs" / "refined" / "ckpt.safetensors").exists()


@pytest.mark.parametrize("args,expect", [
    (["train", "--steps", "300", "-o", "q"], ["train", "--steps", "6", "-o", "q", *TINY["train"]]),
    (["train", "--resume", "q", "--steps", "600"], ["train", "--resume", "q", "--steps", "12"]),
    (["train", "--init", "q", "-o", "f"], ["train", "--init", "q", "-o", "f", *TINY["train"], *SHORT_RUN]),
])
def test_shrink_only_appends_and_scales_steps(args, expect):
    assert shrink(args) == expect
