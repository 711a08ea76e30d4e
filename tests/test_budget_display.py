"""A budgeted run without --steps has no step cap; info and compare show its budget, never the internal 10^9."""

import pytest

from ebmtool.cli import cli

from helpers import TINY_FLAGS

CAP = "1000000000"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from click.testing import CliRunner

    d = tmp_path_factory.mktemp("budget")
    runner = CliRunner()
    for args in (["--steps", "4", "-o", str(d / "base")], ["--budget-of", str(d / "base"), "-o", str(d / "budgeted")]):
        r = runner.invoke(cli, ["train", *TINY_FLAGS, "--seed", "0", *args])
        assert r.exit_code == 0, r.output
    return d


def test_info_shows_the_budget_instead_of_the_step_cap(runs, runner):
    r = runner.invoke(cli, ["info", str(runs / "budgeted" / "ckpt.safetensors")])
    assert r.exit_code == 0, r.output
    assert CAP not in r.output
    line = next(ln for ln in r.output.splitlines() if ln.strip().startswith("steps ="))
    assert "budget" in line and "FLOPs" in line


def test_compare_shows_the_budget_instead_of_the_step_cap(runs, runner, tmp_path):
    md = tmp_path / "cmp.md"
    r = runner.invoke(cli, ["compare", str(runs / "base"), str(runs / "budgeted"), "-n", "8", "--markdown-file",
                            str(md)])
    assert r.exit_code == 0, r.output
    for text in (r.output, md.read_text()):
        assert CAP not in text
        assert "until the budget" in text
