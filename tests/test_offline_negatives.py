"""Offline negatives: mine-negatives (resumable), score, weights, train --offline-negatives and its provenance checks."""

import json

import h5py
import numpy as np
import pytest
import torch

from ebmtool.cli import cli
from ebmtool.runtime.errors import InputError
from ebmtool.offline.mining import MineOptions, compute_weights, mine, partial_path, score, write_scores
from helpers import TINY_FLAGS, tiny


OPTS = MineOptions(k=3, candidates=3, refine_steps=1, seed=5, batch_size=64, limit=192)
MINE_FLAGS = ["--k", "3", "--candidates", "3", "--refine-steps", "1", "--seed", "5", "--batch-size", "64",
              "--limit", "192", "--device", "cpu"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny base run (CLI-compatible model shape), its negatives, scores and weights."""
    from ebmtool.offline.mining import write_weights
    from ebmtool.training.loop import train

    d = tmp_path_factory.mktemp("offline")
    train(tiny(steps=2, seed=1, time_dim=128), d / "base", log=lambda m: None)
    ckpt = d / "base" / "ckpt.safetensors"
    res = mine(ckpt, d / "negs.h5", OPTS)
    assert res.complete
    write_scores(d / "scores.h5", score(ckpt, d / "negs.h5"))
    write_weights(d / "weights.h5", compute_weights(d / "scores.h5", 2.0))
    return d


def _contents(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}


def test_negatives_file_schema(base):
    with h5py.File(base / "negs.h5", "r") as f:
        assert f.attrs["kind"] == "negatives"
        prov = json.loads(f.attrs["provenance"])
        shapes = {k: f[k].shape for k in f}
        valid, dist = f["valid"][()], f["distance"][()]
        assert f.attrs["checkpoint_sha256"] == prov["inputs"]["checkpoint"]["sha256"]
        assert prov["config"]["k"] == 3 and prov["data_fingerprint"] == f.attrs["data_fingerprint"]
        assert f["negatives"].compression == "gzip" and f["negatives"].chunks is not None
    assert shapes["negatives"] == (192, 3, 16) and shapes["index"] == (192,) and shapes["level"] == (192,)
    assert shapes["energy"] == shapes["distance"] == shapes["valid"] == (192, 3)
    assert (dist[valid] > 1e-3).all()  # the near-duplicate filter holds for every kept negative


def test_resumed_mining_equals_uninterrupted(base, tmp_path):
    ckpt = base / "base" / "ckpt.safetensors"
    out = tmp_path / "negs.h5"
    first = mine(ckpt, out, OPTS, max_batches=1)
    assert not first.complete and not out.exists() and partial_path(out).exists() and first.rows == 64
    done = mine(ckpt, out, OPTS)
    assert done.complete and done.resumed_from == 64 and out.exists() and not partial_path(out).exists()
    a, b = _contents(out), _contents(base / "negs.h5")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    with h5py.File(out, "r") as f, h5py.File(base / "negs.h5", "r") as g:
        for key in ("count_candidates", "count_duplicates", "count_rows_not_enough"):
            assert f.attrs[key] == g.attrs[key]


def test_partial_with_other_options_is_refused(base, tmp_path):
    ckpt = base / "base" / "ckpt.safetensors"
    out = tmp_path / "negs.h5"
    mine(ckpt, out, OPTS, max_batches=1)
    with pytest.raises(InputError, match="started with other options"):
        mine(ckpt, out, MineOptions(**{**OPTS.__dict__, "candidates": 4}))


def test_partial_of_an_earlier_ebmtool_is_refused_unless_overwrite(base, tmp_path):
    ckpt = base / "base" / "ckpt.safetensors"
    out = tmp_path / "negs.h5"
    partial_path(out).write_bytes(b"\x89HDF\r\n\x1a\n an HDF5 partial file written in place")
    with pytest.raises(InputError, match="partial file of an earlier ebmtool"):
        mine(ckpt, out, OPTS, max_batches=1)
    assert mine(ckpt, out, OPTS, overwrite=True, max_batches=1).rows == 64 and partial_path(out).is_dir()


def test_a_partial_in_use_is_refused(base, tmp_path):
    from ebmtool.io.negatives_file import PartialNegatives

    ckpt = base / "base" / "ckpt.safetensors"
    out = tmp_path / "negs.h5"
    mine(ckpt, out, OPTS, max_batches=1)
    holder = PartialNegatives(out)
    holder._lock()  # as a second mine of the same output holds it
    try:
        with pytest.raises(InputError, match="is in use: process"):
            mine(ckpt, out, OPTS)
    finally:
        holder.close()
    assert mine(ckpt, out, OPTS).complete


def test_score_of_mining_checkpoint_reproduces_mined_energies(base):
    s = _contents(base / "scores.h5")
    n = _contents(base / "negs.h5")
    np.testing.assert_allclose(s["energy"], n["energy"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s["energy_pos"], n["energy_pos"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(s["index"], n["index"])


def test_weights_sum_to_one_and_favour_the_lowest_energy(base):
    w = _contents(base / "weights.h5")
    s = _contents(base / "scores.h5")
    full = s["valid"].all(axis=1)
    assert full.any()
    np.testing.assert_allclose(w["weights"][full].sum(axis=1), 1.0, atol=1e-5)
    lowest = np.where(s["valid"], s["energy"], np.inf).argmin(axis=1)
    assert (w["weights"][full].argmax(axis=1) == lowest[full]).all()
    assert (w["weights"][~s["valid"]] == 0).all()
    assert ((w["ess"][full] >= 1 - 1e-5) & (w["ess"][full] <= 3 + 1e-5)).all()


def test_cli_mine_score_weights_and_no_overwrite(base, runner, tmp_path):
    ckpt = str(base / "base" / "ckpt.safetensors")
    out = tmp_path / "n.h5"
    r = runner.invoke(cli, ["mine-negatives", ckpt, "-o", str(out), *MINE_FLAGS, "--limit", "64",
                            "--absolute-margin", "100"])
    assert r.exit_code == 0, r.output
    assert "p_hard" in r.output and "could not find 3 valid negatives for 64 problems" in r.output
    for args in (["mine-negatives", ckpt, "-o", str(out), *MINE_FLAGS],
                 ["score", ckpt, str(base / "negs.h5"), "-o", str(out)],
                 ["weights", str(base / "scores.h5"), "-o", str(out)]):
        before = out.read_bytes()
        r = runner.invoke(cli, args)
        assert r.exit_code == 2 and "already exists; pass --overwrite" in r.output
        assert out.read_bytes() == before
    r = runner.invoke(cli, ["score", ckpt, str(base / "negs.h5"), "-o", str(tmp_path / "s.h5"), "--levels", "all"])
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f.attrs["kind"] == "scores" and f["energy_all_levels"].shape == (192, 3, 10)
        lv = f["level"][()]
        np.testing.assert_allclose(f["energy_all_levels"][()][np.arange(192), :, lv], f["energy"][()], rtol=1e-5)


def _train(runner, tmp_path, *extra, seed="1"):
    return runner.invoke(cli, ["train", *TINY_FLAGS, "--steps", "2", "--seed", seed, "-o", str(tmp_path / "run"),
                               *extra])


def test_train_uses_offline_negatives_and_weights(base, runner, tmp_path):
    r = _train(runner, tmp_path, "--init", str(base / "base" / "ckpt.safetensors"), "--offline-negatives",
               str(base / "negs.h5"), "--offline-weights", str(base / "weights.h5"), "--offline-fraction", "1")
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "run" / "metrics.h5", "r") as f:
        frac = f["offline_fraction"][()]
        cfg = json.loads(f.attrs["provenance"])["config"]
    # 192 of the 256 training rows were mined: about 3/4 of each batch takes offline negatives
    assert (frac > 0.4).all() and (frac < 1).all()
    assert cfg["k"] == 3 and cfg["offline_mismatch"] is None and cfg["offline_weights_sha256"]


def test_the_old_spelling_of_offline_fraction_still_works(base, runner, tmp_path):
    """--negatives-fraction was renamed --offline-fraction; the old spelling means nothing else, so it still works
    (with a note). --negatives and --weights, which were ambiguous, are refused (tests/test_flag_names.py)."""
    r = _train(runner, tmp_path, "--offline-negatives", str(base / "negs.h5"), "--negatives-fraction", "0.25")
    assert r.exit_code == 0, r.output
    assert "note: --negatives-fraction is now --offline-fraction" in r.stderr
    with h5py.File(tmp_path / "run" / "metrics.h5", "r") as f:
        assert json.loads(f.attrs["provenance"])["config"]["offline_fraction"] == 0.25
    r = _train(runner, tmp_path, "--offline-negatives", str(base / "negs.h5"), "--negatives-fraction", "0.25",
               "--offline-fraction", "0.5", "--overwrite")
    assert r.exit_code == 2 and "give --offline-fraction alone" in r.output


def test_offline_rows_take_the_files_negatives(base):
    """energy_term puts the file's clean negatives and weights on the rows it covers (unit level)."""
    from ebmtool.method.diffusion import cosine_schedule
    from ebmtool.offline.inputs import OfflineNegatives
    from ebmtool.method.models import EnergyMLP
    from ebmtool.tasks.data import TrainingData
    from ebmtool.training.losses import Batch, Objective, energy_term

    cfg = tiny(seed=1, time_dim=128, k=3, offline_negatives=str(base / "negs.h5"),
               offline_weights=str(base / "weights.h5"), offline_fraction=1.0).validate()
    data = TrainingData(cfg)
    model = EnergyMLP(16, 16, 32, 128)
    store = OfflineNegatives.load(cfg, data, model.dims)
    idx = np.array([5, 200, 7, 9])  # row 200 was not mined (--limit 192): it falls back to online negatives
    pos, rows = store.rows_for(idx, 1.0)
    assert pos.tolist() == [0, 2, 3] and rows.tolist() == [5, 7, 9]
    x, y = (torch.from_numpy(a[idx]) for a in (data.train.x, data.train.y))
    t = torch.tensor([1, 2, 3, 4])
    eps = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    batch = Batch(x, y, t, torch.Generator(), torch.Generator().manual_seed(1), offline_rows=idx)
    parts, diag, _ = energy_term(model, batch, Objective(cfg, cosine_schedule(), offline=store), eps)
    assert diag["offline_fraction"] == 0.75
    w = _contents(base / "weights.h5")["weights"]
    e_neg = parts.energy_neg  # weighted mean of E- with the file's weights on offline rows
    from ebmtool.negatives import renoise
    xn = renoise(cosine_schedule(), store.y_neg[[5]], t[[0]], eps[[0]]).reshape(3, 16)
    with torch.no_grad():
        e = model(x[[0]].repeat(3, 1), xn, t[[0]].repeat(3))
    assert torch.allclose(e_neg[0], (torch.from_numpy(w[5]) * e).sum(), atol=1e-5)


@pytest.mark.parametrize("case", ["data", "negatives", "family"])
def test_provenance_mismatch_exits_2_unless_forced(base, runner, tmp_path, case):
    negs, weights, seed = base / "negs.h5", base / "weights.h5", "1"
    if case == "data":  # negatives mined on another training set (another seed)
        seed, expect = "2", "was mined on another training set"
        extra = ["--offline-negatives", str(negs)]
    elif case == "negatives":  # weights computed for other negatives
        other = tmp_path / "other-negs.h5"
        mine(base / "base" / "ckpt.safetensors", other, MineOptions(**{**OPTS.__dict__, "seed": 6}))
        extra, expect = ["--offline-negatives", str(other), "--offline-weights", str(weights)], "holds weights for other negatives"
    else:  # scores from another checkpoint family (other model shape)
        extra, expect = ["--offline-negatives", str(negs), "--offline-weights", str(weights)], "another checkpoint family"
    flags = list(TINY_FLAGS)
    if case == "family":
        flags[flags.index("--width") + 1] = "16"
    r = runner.invoke(cli, ["train", *flags, "--steps", "2", "--seed", seed, "-o", str(tmp_path / "run"), *extra])
    if case == "data":  # another training set: its rows are other problems, which no --force makes fit, so the
        # message says so at once instead of advising --force
        assert r.exit_code == 2 and "its negatives belong to other problems" in r.output, r.output
        assert "pass --force" not in r.output and "--seed 1" in r.output
        return
    assert r.exit_code == 2 and expect in r.output and "--force" in r.output, r.output
    assert not (tmp_path / "run" / "ckpt.safetensors").exists()
    r = runner.invoke(cli, ["train", *flags, "--steps", "2", "--seed", seed, "-o", str(tmp_path / "run"), *extra,
                            "--force"])
    assert r.exit_code == 0, r.output
    from ebmtool.io.checkpoints import load_checkpoint

    recorded = load_checkpoint(tmp_path / "run" / "ckpt.safetensors").config["offline_mismatch"]
    assert recorded and expect in recorded[0]


def test_offline_flag_validation(base, runner, tmp_path):
    r = _train(runner, tmp_path, "--offline-weights", str(base / "weights.h5"))
    assert r.exit_code == 2 and "--offline-weights needs --offline-negatives" in r.output
    r = _train(runner, tmp_path, "--offline-negatives", str(base / "negs.h5"), "--offline-fraction", "1.5")
    assert r.exit_code == 2 and "--offline-fraction must be in (0, 1]" in r.output
    r = _train(runner, tmp_path, "--offline-negatives", str(base / "negs.h5"), "--k", "2")
    assert r.exit_code == 2 and "K = 3" in r.output


def test_hnm_sample_selection_is_seeded(base):
    ckpt = base / "base" / "ckpt.safetensors"
    o = MineOptions(**{**OPTS.__dict__, "select": "sample", "limit": 64})
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        mine(ckpt, Path(d) / "a.h5", o)
        mine(ckpt, Path(d) / "b.h5", o)
        a, b = _contents(Path(d) / "a.h5"), _contents(Path(d) / "b.h5")
        np.testing.assert_array_equal(a["negatives"], b["negatives"])
        top = _contents(base / "negs.h5")
        assert not np.array_equal(a["start_level"], top["start_level"][:64])


def test_weights_default_alpha_is_trains(base, runner, tmp_path):
    """`weights` without --alpha uses the inverse temperature `train --sans` defaults to, and says so in its file."""
    from ebmtool.negatives.sans import DEFAULT_ALPHA
    from ebmtool.config import TrainConfig

    assert TrainConfig(sans=True, k=2).validate().alpha == DEFAULT_ALPHA == 1.0
    r = runner.invoke(cli, ["weights", str(base / "scores.h5"), "-o", str(tmp_path / "w.h5")])
    assert r.exit_code == 0, r.output
    explicit = tmp_path / "w1.h5"
    assert runner.invoke(cli, ["weights", str(base / "scores.h5"), "--alpha", "1", "-o", str(explicit)]).exit_code == 0
    assert np.array_equal(_contents(tmp_path / "w.h5")["weights"], _contents(explicit)["weights"])
