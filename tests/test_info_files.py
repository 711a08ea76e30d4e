"""`ebmtool info` reads the tool's own text outputs (the live log metrics.jsonl, compare's --json-file report) and
a --seeds parent directory; eval and compare given a --seeds parent name its seeds and suggest --group."""

import json

import pytest

from ebmtool.cli import cli

from helpers import TINY_FLAGS


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    from click.testing import CliRunner

    d = tmp_path_factory.mktemp("infofiles")
    runner = CliRunner()
    r = runner.invoke(cli, ["train", *TINY_FLAGS, "--steps", "2", "--seeds", "0,1", "-o", str(d / "ired")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["compare", "--group", f"a={d / 'ired' / 'seed-0'}", "--group", f"b={d / 'ired' / 'seed-1'}",
                            "-n", "8", "--json-file", str(d / "cmp.json")])
    assert r.exit_code == 0, r.output
    return d


def test_info_reads_the_live_log(seeds, runner):
    r = runner.invoke(cli, ["info", str(seeds / "ired" / "seed-0" / "metrics.jsonl")])
    assert r.exit_code == 0, r.output
    assert "kind      live log" in r.output and "progress  step 2 of 2" in r.output
    r = runner.invoke(cli, ["info", "--json", str(seeds / "ired" / "seed-0" / "metrics.jsonl")])
    assert json.loads(r.output)["kind"] == "live log"


def test_info_reads_a_compare_report(seeds, runner):
    r = runner.invoke(cli, ["info", str(seeds / "cmp.json")])
    assert r.exit_code == 0, r.output
    assert "kind      compare report" in r.output and "baseline  a" in r.output
    assert any(ln.startswith("arm       b:") for ln in r.output.splitlines())


def test_info_names_what_it_reads_for_any_other_file(runner, tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("hello\n")
    r = runner.invoke(cli, ["info", str(other)])
    assert r.exit_code == 2
    assert "metrics.jsonl" in r.output and "compare" in r.output and "checkpoint" in r.output


def test_info_on_a_seeds_parent_lists_its_seeds_and_suggests_group(seeds, runner):
    r = runner.invoke(cli, ["info", str(seeds / "ired")])
    assert r.exit_code == 0, r.output
    assert "seed-0" in r.output and "seed-1" in r.output and "--group" in r.output
    assert "a directory, not a file" not in r.output


@pytest.mark.parametrize("cmd", [["eval"], ["compare", "OTHER"]])
def test_eval_and_compare_given_a_seeds_parent_suggest_group(seeds, runner, cmd):
    args = [c if c != "OTHER" else str(seeds / "ired" / "seed-0") for c in cmd]
    r = runner.invoke(cli, [*args, str(seeds / "ired")])
    assert r.exit_code == 2, r.output
    last = r.output.strip().splitlines()[-1]
    assert "seed-0, seed-1" in last and "--group" in last
