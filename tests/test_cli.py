"""Every command through click's CliRunner: exit codes, key output lines, one-sentence errors."""

import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from ebmtool.cli import cli
from ebmtool.runtime.errors import InputError

from helpers import TINY_FLAGS

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = sorted(cli.commands)


def invoke(runner, args):
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_and_an_example(runner, command):
    r = invoke(runner, [command, "--help"])
    assert r.exit_code == 0
    assert "Example" in r.output or "example" in r.output


def readme_command_table() -> list[str]:
    """The command names in README.md's command table: the rows under its `| command | what it does |` header,
    each `| `ebmtool NAME ...` | ... |`, up to the first line that is not a table row."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index("| command | what it does |")
    assert re.fullmatch(r"\|-+\|-+\|", lines[start + 1]), lines[start + 1]
    names = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        row = re.fullmatch(r"\| `ebmtool ([a-z][a-z-]*)(?: [^`]*)?` \| .+ \|", line)
        assert row, f"README.md's command table has a row that names no command: {line}"
        names.append(row.group(1))
    return names


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_is_documented_in_the_readme(command):
    assert command in readme_command_table()


def test_the_readme_command_table_names_each_real_command_once():
    assert sorted(readme_command_table()) == COMMANDS


def test_version(runner):
    r = invoke(runner, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("ebmtool, version ")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from click.testing import CliRunner

    out = tmp_path_factory.mktemp("run") / "r"
    r = CliRunner().invoke(cli, ["train", *TINY_FLAGS, "--steps", "4", "--seed", "0", "-o", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out, r


def test_train_writes_a_run_directory(tiny_run):
    out, r = tiny_run
    assert (out / "ckpt.safetensors").exists() and (out / "metrics.h5").exists()
    assert "trained 4 steps in" in r.stdout
    assert "validation mse" in r.stdout
    assert "config beside the defaults: " in r.stderr  # what was set or resolved is printed at start


def test_train_and_info_show_what_was_set_not_empty_fields(tiny_run, runner):
    out, r = tiny_run
    line = next(x for x in r.stderr.splitlines() if x.startswith("config "))
    assert "null" not in line and len(line) < 300, line
    assert "seed=0" in line and "size=4" in line and "lr=" not in line  # set or resolved; lr is at its default
    info = invoke(runner, ["info", out / "ckpt.safetensors"]).output
    config = info[info.index("\nconfig "):]
    assert "null" not in config and len(config.splitlines()) < 25, config
    assert "  seed = 0" in config and "lr=0.001" in config  # set ones a line each; defaults wrapped together


def test_train_refuses_an_existing_run_without_overwrite(runner, tiny_run):
    out, _ = tiny_run
    r = runner.invoke(cli, ["train", *TINY_FLAGS, "--steps", "1", "-o", str(out)])
    assert r.exit_code == 2
    assert "already holds a run; use --resume to continue it or --overwrite" in r.output


def test_resume_continues_in_place_and_rejects_changed_flags(runner, tmp_path):
    out = tmp_path / "r"
    assert invoke(runner, ["train", *TINY_FLAGS, "--steps", "2", "--seed", "1", "-o", out]).exit_code == 0
    r = runner.invoke(cli, ["train", "--resume", str(out), "--lr", "0.5"])
    assert r.exit_code == 2 and "--lr cannot change on --resume" in r.output
    r = invoke(runner, ["train", "--resume", out, "--steps", "4"])
    assert r.exit_code == 0 and "trained 2 more steps (2 -> 4) in" in r.stdout  # what this call trained


def test_seeds_continue_an_unfinished_seed_run(runner, tmp_path):
    """--seeds resumes a seed run that has fewer steps than asked (it used to crash on the --recipe check)."""
    assert invoke(runner, ["train", *TINY_FLAGS, "--seeds", "0", "--steps", "2", "-o", tmp_path]).exit_code == 0
    r = invoke(runner, ["train", *TINY_FLAGS, "--seeds", "0", "--steps", "4", "-o", tmp_path])
    assert r.exit_code == 0 and "trained 2 more steps (2 -> 4)" in r.stdout


def test_eval_prints_mse_and_baselines_and_json(runner, tiny_run):
    out, _ = tiny_run
    r = invoke(runner, ["eval", out / "ckpt.safetensors", "-n", "8"])
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"checkpoint  {out / 'ckpt.safetensors'} (step 4, sha256 ")
    assert lines[1] == "problems    inverse 4x4, test, 8 problems"
    assert any(line.startswith("model (model weights)") for line in lines)  # raw weights by default
    assert not any(line.startswith("model (ema weights)") for line in lines)
    assert any(line.startswith("baseline: zeros") for line in lines)
    r = invoke(runner, ["eval", out, "-n", "8", "--harder", "--weights", "model", "--json"])
    rep = json.loads(r.stdout)
    assert rep["step"] == 4 and set(rep["results"]) == {"model"} and rep["problems"]["harder"] is True
    assert rep["results"]["model"]["mse"] > 0


def test_eval_writes_per_problem_results(runner, tiny_run, tmp_path):
    out, _ = tiny_run
    res = tmp_path / "ev.h5"
    assert invoke(runner, ["eval", out, "-n", "8", "-o", res]).exit_code == 0
    with h5py.File(res) as f:
        assert f.attrs["kind"] == "evaluation" and f["model/mse"].shape == (8,) and "ema" not in f
    r = runner.invoke(cli, ["eval", str(out), "-n", "8", "-o", str(res)])
    assert r.exit_code == 2 and "already exists; pass --overwrite" in r.output


def test_data_then_train_on_the_file_then_info(runner, tmp_path):
    f = tmp_path / "train.h5"
    r = invoke(runner, ["data", "inverse", "-n", "300", "--size", "4", "--seed", "3", "-o", f])
    assert r.exit_code == 0 and r.stdout.strip() == f"wrote 300 inverse 4x4 problems (train, seed 3) to {f}"
    r = invoke(runner, ["info", f])
    assert r.exit_code == 0 and "kind      dataset (hdf5)" in r.stdout and "inputs" in r.stdout
    out = tmp_path / "r"
    flags = [a for a in TINY_FLAGS]
    r = invoke(runner, ["train", "--task", f, *flags, "--steps", "2", "--seed", "0", "-o", out])
    assert r.exit_code == 0, r.output
    r = invoke(runner, ["eval", out, "--json"])
    rep = json.loads(r.stdout)
    assert rep["problems"]["split"] == "val (last 10 %)"


def test_info_on_checkpoint_and_metrics(runner, tiny_run):
    out, _ = tiny_run
    r = invoke(runner, ["info", out / "ckpt.safetensors"])
    assert r.exit_code == 0
    assert "kind      checkpoint (safetensors)" in r.stdout and "step      4" in r.stdout
    r = invoke(runner, ["info", out / "metrics.h5"])
    assert r.exit_code == 0 and "kind      metrics (hdf5)" in r.stdout and "loss_denoise" in r.stdout
    d = json.loads(invoke(runner, ["info", out / "ckpt.safetensors", "--json"]).stdout)
    assert d["kind"] == "checkpoint" and d["model"]["parameters"] > 0


@pytest.mark.parametrize("case", ["missing", "wrong-kind", "text", "empty", "directory-without-ckpt"])
def test_eval_bad_checkpoint_inputs_exit_2_with_one_sentence(runner, tiny_run, tmp_path, case):
    out, _ = tiny_run
    path = {"missing": tmp_path / "nope.safetensors", "wrong-kind": out / "metrics.h5",
            "text": tmp_path / "t.txt", "empty": tmp_path / "e.safetensors",
            "directory-without-ckpt": tmp_path}[case]
    if case == "text":
        path.write_text("hello")
    if case == "empty":
        path.write_bytes(b"")
    r = runner.invoke(cli, ["eval", str(path)])
    assert r.exit_code == 2
    msg = {"missing": "no such file", "wrong-kind": "is an HDF5 metrics file, not a checkpoint",
           "text": "is neither a safetensors nor an HDF5 file", "empty": "is empty",
           "directory-without-ckpt": "is a directory without a ckpt.safetensors"}[case]
    assert msg in r.output
    assert "Traceback" not in r.output
    assert len([ln for ln in r.output.splitlines() if ln.strip()]) == 1


def test_unknown_task_exits_2(runner, tmp_path):
    r = runner.invoke(cli, ["train", "--task", "sudokku", "--steps", "1", "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "unknown task 'sudokku'" in r.output
    r = runner.invoke(cli, ["data", "sudokku", "-o", str(tmp_path / "d.h5")])
    assert r.exit_code == 2


def test_eval_data_with_wrong_shape_exits_2(runner, tiny_run, tmp_path):
    out, _ = tiny_run
    f = tmp_path / "d.h5"
    with h5py.File(f, "w") as h:
        h["inputs"], h["targets"] = np.zeros((4, 9), np.float32), np.zeros((4, 9), np.float32)
    r = runner.invoke(cli, ["eval", str(out), "--data", str(f)])
    assert r.exit_code == 2 and "do not fit the checkpoint's model" in r.output


def test_debug_shows_the_traceback(runner, tmp_path):
    missing = tmp_path / "nope.safetensors"
    r = runner.invoke(cli, ["eval", str(missing)])  # without --debug: exit 2, one sentence
    assert r.exit_code == 2 and r.stderr == f"Error: {missing}: no such file\n"
    r = runner.invoke(cli, ["--debug", "eval", str(missing)])  # with it: the library's exception itself
    assert r.exit_code == 1 and type(r.exception) is InputError and str(r.exception) == f"{missing}: no such file"
    p = subprocess.run([sys.executable, "-m", "ebmtool", "--debug", "eval", str(missing)], capture_output=True,
                       text=True, timeout=120)  # and, as a process, Python's traceback on stderr
    assert p.returncode == 1 and p.stderr.startswith("Traceback (most recent call last):"), p.stderr
    assert p.stderr.strip().splitlines()[-1] == f"ebmtool.runtime.errors.InputError: {missing}: no such file"


def test_shell_completion_names_every_subcommand():
    """click's completion protocol, as a shell calls it: `ebmtool <TAB>` lists the subcommands."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "ebmtool"
    env = {**os.environ, "_EBMTOOL_COMPLETE": "bash_complete", "COMP_WORDS": "ebmtool ", "COMP_CWORD": "1"}
    out = subprocess.run([str(script)], capture_output=True, text=True, env=env, timeout=60).stdout
    assert sorted(out.split()) == sorted(f"plain,{name}" for name in cli.commands)
    env = {**os.environ, "_EBMTOOL_COMPLETE": "bash_complete", "COMP_WORDS": "ebmtool train --bud", "COMP_CWORD": "2"}
    out = subprocess.run([str(script)], capture_output=True, text=True, env=env, timeout=60).stdout
    assert sorted(out.split()) == ["plain,--budget", "plain,--budget-of"]
