"""Files written by ebmtool 0.1 before the training code became a package (tests/data/v0_1: a 20-step tiny run's
checkpoint and metrics.h5, and 64 rows of negatives mined from it) still load, resume and train to the
numbers that version produced (expected.json, recorded with it on 2026-12-02)."""

import dataclasses
import json
import shutil
from pathlib import Path

import h5py
import pytest

from ebmtool.io.checkpoints import load_checkpoint
from ebmtool.config import LATER_FIELDS, LaterField, TrainConfig
from ebmtool.runtime.errors import InputError
from ebmtool.io.negatives_file import read_negatives
from ebmtool.analysis.info import describe
from ebmtool.training import loop, train

from helpers import tiny

DATA = Path(__file__).parent / "data" / "v0_1"
EXPECTED = json.loads((DATA / "expected.json").read_text())


def quiet(msg):
    pass


def _summary(d: Path) -> dict:
    ck = load_checkpoint(d / "ckpt.safetensors")
    w = [v for k, v in sorted(ck.tensors.items()) if k.startswith("model/")]
    with h5py.File(d / "metrics.h5", "r") as f:
        last = {c: float(f[c][-1]) for c in ("loss_total", "compute_flops")}
        n = len(f["step"])
        assert f.attrs["compute_rule"] == ck.meta["ebmtool.compute_rule"]
    return {"step": ck.step, "rows": n, "compute_rule": ck.meta["ebmtool.compute_rule"],
            "weight_sum": float(sum(t.double().sum() for t in w)),
            "weight_abs_sum": float(sum(t.double().abs().sum() for t in w)), **last}


# Compute of the steps this code adds is counted under rule 2 (ebmtool.method.compute, since 2026-12-06), the 0.1 files'
# under rule 1, so the totals differ from expected.json's and the files say they mix the two rules ("1+2").
RULE_2_COMPUTE = {"resume_to_30": 37683200.0, "offline_10": 44631040.0}


def _check(got: dict, want: dict):
    assert (got["step"], got["rows"]) == (want["step"], want["rows"])
    assert got["compute_flops"] == RULE_2_COMPUTE[next(k for k, v in EXPECTED.items() if v is want)]
    assert got["compute_rule"] == "1+2"
    assert got["loss_total"] == pytest.approx(want["loss_total"], rel=1e-6)
    assert got["weight_abs_sum"] == pytest.approx(want["weight_abs_sum"], rel=1e-6)
    # weight_sum cancels (|sum| ~ 6 of sum|w| ~ 358); since fc1 is applied as x's shared projection plus y's
    # product (2026-12-06, the same function: tests/test_condition_reuse.py) its rounding moves it by up to
    # 1.1e-7 of the weights' size here, so it is held to 3e-7 (a real change moves it ~1e-2)
    assert got["weight_sum"] == pytest.approx(want["weight_sum"], abs=3e-7 * want["weight_abs_sum"])


def test_an_old_run_resumes_to_the_numbers_it_would_have_reached(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(DATA, run, ignore=shutil.ignore_patterns("negatives.h5", "expected.json"))
    train(None, run, resume=run / "ckpt.safetensors", overrides={"steps": 30}, log=quiet)
    _check(_summary(run), EXPECTED["resume_to_30"])


def test_an_old_negatives_file_trains_a_refined_run_to_the_same_numbers(tmp_path):
    cfg = tiny(seed=0, steps=10, width=16, k=2, init=str(DATA / "ckpt.safetensors"),
               offline_negatives=str(DATA / "negatives.h5"))
    train(cfg, tmp_path / "offline", log=quiet, force=True)
    _check(_summary(tmp_path / "offline"), EXPECTED["offline_10"])


def test_old_files_open_and_describe(tmp_path):
    negs = read_negatives(DATA / "negatives.h5")
    assert negs["arrays"]["negatives"].shape == (64, 2, 16)
    # info reads every old artifact as what it is, with the values the 0.1 run recorded
    ck = describe(DATA / "ckpt.safetensors")
    assert (ck["kind"], ck["task"], ck["step"], ck["seed"], ck["ebmtool_version"], ck["compute_rule"]) == \
        ("checkpoint", "inverse", 20, 0, "0.1.0", "1")
    assert ck["model"]["parameters"] == 2976 and ck["config"]["steps"] == 20
    metrics = describe(DATA / "metrics.h5")
    assert (metrics["kind"], metrics["provenance"]["command"], metrics["provenance"]["ebmtool_version"]) == \
        ("metrics", "train", "0.1.0")
    summary = metrics["summary"]
    assert (summary["rows"], summary["first_step"], summary["last_step"], summary["alarms"]) == (10, 2, 20, [])
    mined = describe(DATA / "negatives.h5")
    assert (mined["kind"], mined["provenance"]["command"], mined["provenance"]["checkpoint_step"]) == \
        ("negatives", "mine-negatives", 20)
    assert mined["datasets"]["negatives"]["shape"] == [64, 2, 16]


def _oldest_config() -> dict:
    return load_checkpoint(DATA / "ckpt.safetensors").config


def test_every_field_the_oldest_checkpoint_lacks_is_in_the_later_fields_table():
    """A TrainConfig field added since ebmtool 0.1 needs the value 0.1's checkpoints imply (config.LATER_FIELDS),
    or those checkpoints stop resuming."""
    lacking = {f.name for f in dataclasses.fields(TrainConfig)} - set(_oldest_config())
    assert lacking, "the 0.1 fixture lacks no field: this check would check nothing"
    assert lacking <= set(LATER_FIELDS), sorted(lacking - set(LATER_FIELDS))
    stored = TrainConfig.from_dict(_oldest_config())
    assert all(getattr(stored, name) == LATER_FIELDS[name].implied for name in lacking)
    meta = load_checkpoint(DATA / "ckpt.safetensors").meta
    assert stored.checksum() == meta["ebmtool.config_sha256"]  # the checksum 0.1 wrote still verifies


@dataclasses.dataclass
class _WithANewField(TrainConfig):
    new_knob: int = 3  # a field added without an entry in LATER_FIELDS


def test_a_field_missing_from_the_table_is_named_not_read_as_an_altered_checkpoint(tmp_path, monkeypatch):
    with pytest.raises(InputError) as e:
        _WithANewField.from_dict(_oldest_config())
    assert str(e.value) == ("the checkpoint's configuration lacks new_knob, which this ebmtool has no value for in a "
                            "checkpoint written before the field existed (no entry in config.LATER_FIELDS)")
    run = tmp_path / "run"
    shutil.copytree(DATA, run, ignore=shutil.ignore_patterns("negatives.h5", "expected.json"))
    monkeypatch.setattr(loop, "TrainConfig", _WithANewField)  # the resume path of this ebmtool with the new field
    with pytest.raises(InputError) as e:
        train(None, run, resume=run / "ckpt.safetensors", overrides={"steps": 30}, log=quiet)
    assert str(e.value).startswith(f"{run / 'ckpt.safetensors'}: the checkpoint's configuration lacks new_knob, ")
    assert "altered" not in str(e.value)
    monkeypatch.setitem(LATER_FIELDS, "new_knob", LaterField(3, "a test's field"))  # with its entry: it resumes
    assert _WithANewField.from_dict(_oldest_config()).new_knob == 3
    train(None, run, resume=run / "ckpt.safetensors", overrides={"steps": 22}, log=quiet)
    assert load_checkpoint(run / "ckpt.safetensors").step == 22


def test_a_changed_value_still_reads_as_an_altered_checkpoint(tmp_path):
    """The table fills in missing fields only: a stored value that differs from the checksum is still refused."""
    from ebmtool.io.checkpoints import save_checkpoint

    ck = load_checkpoint(DATA / "ckpt.safetensors")
    meta = {**ck.meta, "ebmtool.config": json.dumps({**ck.config, "lr": 0.5}, sort_keys=True)}
    save_checkpoint(tmp_path / "ckpt.safetensors", ck.tensors, meta)
    with pytest.raises(InputError, match="configuration checksum mismatch; the checkpoint was altered"):
        train(None, tmp_path, resume=tmp_path / "ckpt.safetensors", overrides={"steps": 30}, log=quiet)
