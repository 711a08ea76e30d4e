"""One flag name, one meaning: a flag spelled the same in two commands takes the same kind of value, renamed
flags say what replaced them, and a --seeds list written with spaces gets a hint."""

from __future__ import annotations

import click
import pytest

from ebmtool.cli import cli


def invoke(runner, args):
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


def kind(param: click.Parameter) -> str:
    """What a flag takes: a file, a number, a choice, nothing (a flag), ..."""
    if getattr(param, "is_flag", False):
        return "flag"
    return type(param.type).__name__


def test_a_flag_means_the_same_in_every_command():
    kinds: dict[str, dict[str, str]] = {}
    choices: dict[str, list[set]] = {}
    for name, cmd in cli.commands.items():
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden:
                for flag in p.opts:
                    kinds.setdefault(flag, {})[name] = kind(p)
                    if isinstance(p.type, click.Choice):
                        choices.setdefault(flag, []).append(set(p.type.choices))
    differ = {flag: by_cmd for flag, by_cmd in kinds.items() if len(set(by_cmd.values())) > 1}
    assert not differ, f"flags with one spelling and different kinds of value: {differ}"
    # a choice may add values in one command (eval --weights both), but its values mean the same everywhere
    apart = [flag for flag, sets in choices.items() if not set.intersection(*sets)]
    assert not apart, f"choice flags whose values share nothing between commands: {apart}"


@pytest.mark.parametrize("old, new", [("--negatives", "--offline-negatives FILE"),
                                      ("--weights", "--offline-weights FILE")])
def test_the_old_offline_flags_name_their_new_spelling(runner, tmp_path, old, new):
    r = invoke(runner, ["train", old, "anm", "-o", tmp_path / "r"])
    assert r.exit_code == 2
    assert r.output.count("Error:") == 1 and f"{old} was renamed" in r.output and new in r.output
    if old == "--negatives":
        assert "--negatives-from SOURCE" in r.output  # the flag for a negative source, which `anm` is
    assert not (tmp_path / "r").exists()


def test_a_seeds_list_with_spaces_gets_the_comma_form(runner, tmp_path):
    r = invoke(runner, ["train", "--seeds", "0", "1", "2", "-o", tmp_path / "r"])
    assert r.exit_code == 2 and "Error: --seeds takes one comma-separated list: --seeds 0,1,2" in r.output
    r = invoke(runner, ["train", "--steps", "3", "extra"])  # other stray words keep click's own message
    assert r.exit_code == 2 and "Got unexpected extra argument (extra)" in r.output


TRAIN_GROUPS = ["Task, model and budget", "Run directory, seeds and resuming", "Energy term and negatives",
                "Settings of the negative sources", "SANS", "Offline negatives", "EMA",
                "Logging, evaluation and checkpoints", "Device and speed"]


def test_train_help_shows_every_option_in_a_group(runner):
    from click_option_group import GroupedOption

    train = cli.commands["train"]
    loose = [p.opts[0] for p in train.params if isinstance(p, click.Option) and not p.hidden
             and not isinstance(p, GroupedOption) and p.name != "help"]
    assert not loose, f"train options outside a group of its --help: {loose}"
    r = invoke(runner, ["train", "--help"])
    assert r.exit_code == 0
    options = r.output.split("\nOptions:\n", 1)[1]
    headings = [line.strip().rstrip(":") for line in options.splitlines()
                if line.startswith("  ") and not line.startswith("   ") and line.strip().endswith(":")]
    assert headings == TRAIN_GROUPS
