"""`eval`/`compare --data FILE`: the file gives the problems, so --harder and --split (splits of the task's own
problems) are refused rather than ignored, and the output names the file instead of an empty split field."""

import pytest

from ebmtool.cli import cli

from helpers import TINY_FLAGS


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from click.testing import CliRunner

    d = tmp_path_factory.mktemp("evaldata")
    runner = CliRunner()
    for seed in (0, 1):
        r = runner.invoke(cli, ["train", *TINY_FLAGS, "--steps", "2", "--seed", str(seed), "-o", str(d / f"r{seed}")])
        assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["data", "inverse", "--size", "4", "-n", "8", "--harder", "-o", str(d / "ood.h5")])
    assert r.exit_code == 0, r.output
    return d


@pytest.mark.parametrize("extra,flag", [(["--harder"], "--harder"), (["--split", "val"], "--split"),
                                        (["--split", "test"], "--split")])
def test_eval_refuses_a_split_with_data(run, runner, extra, flag):
    r = runner.invoke(cli, ["eval", str(run / "r0"), "--data", str(run / "ood.h5"), *extra])
    assert r.exit_code == 2, r.output
    last = r.output.strip().splitlines()[-1]
    assert flag in last and "--data" in last


def test_compare_refuses_harder_with_data(run, runner):
    r = runner.invoke(cli, ["compare", str(run / "r0"), str(run / "r1"), "--data", str(run / "ood.h5"), "--harder"])
    assert r.exit_code == 2, r.output
    assert "--harder" in r.output and "--data" in r.output


def test_plain_data_names_the_file_and_what_it_holds(run, runner):
    r = runner.invoke(cli, ["eval", str(run / "r0"), "--data", str(run / "ood.h5")])
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("problems"))
    assert ", ," not in line and str(run / "ood.h5") in line and "harder" in line and "8 problems" in line
    r = runner.invoke(cli, ["compare", str(run / "r0"), str(run / "r1"), "--data", str(run / "ood.h5"), "-n", "8"])
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("problems"))
    assert ", ," not in line and str(run / "ood.h5") in line
