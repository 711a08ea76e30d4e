"""The training step's host round-trips: one per step (the cross-process agreement) outside logged rows, and
the logged row's device values read in one transfer. A round-trip is a read of a tensor's value into Python
(.item(), .tolist(), .numpy(), bool(), float(), int()) made by ebmtool's code: on a GPU each one stalls the
host until the device catches up. torch's own reads (Adam's CPU step counters) are not ebmtool's to remove, and
ebmtool/tasks/data.py's are of the epoch permutation, a tensor drawn on the host that never visits the device.
"""

import sys
from pathlib import Path

import pytest
import torch

import ebmtool
from ebmtool.training.diagnostics import to_host
from ebmtool.training.loop import start_run
from ebmtool.training.step import draw_batch, train_step

from helpers import tiny

PACKAGE = str(Path(ebmtool.__file__).parent)
HOST_SIDE = (str(Path(ebmtool.__file__).parent / "tasks" / "data.py"),)  # reads of host-resident tensors only
READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")
ARMS = {"ired": {}, "anm_k2": dict(negatives="anm", k=2), "hnm": dict(negatives="hnm"),
        "gaussian": dict(negatives="gaussian"), "sans_anm_k2": dict(negatives="anm", k=2, sans=True),
        "mixed": dict(negatives="ired:0.5,anm:0.5", k=2), "denoise_only": dict(supervise_energy=False)}


class ReadCounter:
    """Counts the value reads of tensors that ebmtool's own code makes while active (where they come from too)."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in READS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(original))

    def _counting(self, original):
        def read(tensor, *args, **kwargs):
            caller = sys._getframe(1)
            where = caller.f_code.co_filename
            if where.startswith(PACKAGE) and where not in HOST_SIDE:
                self.calls.append(f"{caller.f_code.co_filename}:{caller.f_lineno} {original.__name__}")
            return original(tensor, *args, **kwargs)
        return read


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def _state(tmp_path, device="cpu", **kw):
    return start_run(tiny(seed=0, steps=1000, log_every=10, device=device, **kw), tmp_path, None, None, False,
                     lambda m: None)


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_a_step_outside_logged_rows_reads_the_device_once(arm, tmp_path, monkeypatch):
    _count_reads_of_eight_steps(_state(tmp_path, **ARMS[arm]), monkeypatch)


@pytest.mark.parametrize("device", DEVICES)
def test_a_step_reads_the_device_once_on_every_device(device, tmp_path, monkeypatch):
    _count_reads_of_eight_steps(_state(tmp_path, device, **ARMS["anm_k2"]), monkeypatch)


def _count_reads_of_eight_steps(st, monkeypatch):
    train_step(st, draw_batch(st, st.step))  # first-use work (caches) happens before counting
    counter = ReadCounter(monkeypatch)
    for _ in range(8):  # steps 2..9: none ends a row of 10
        result = train_step(st, draw_batch(st, st.step))
        assert result.fault is None
    assert len(counter.calls) == 8, "\n".join(counter.calls)


@pytest.mark.parametrize("arm", ["ired", "hnm", "sans_anm_k2"])
def test_a_logged_row_reads_its_window_in_one_transfer(arm, tmp_path, monkeypatch):
    st = _state(tmp_path, **ARMS[arm])
    window = [train_step(st, draw_batch(st, st.step)).row for _ in range(9)]
    counter = ReadCounter(monkeypatch)
    window.append(train_step(st, draw_batch(st, st.step)).row)  # step 10 ends the row: the share is measured
    rows = to_host(window)
    assert len(counter.calls) == 2, "\n".join(counter.calls)  # the agreement and the row
    assert all(isinstance(v, float) for r in rows for v in r.values())
    assert 0 < rows[-1]["grad_share_energy"] < 1 and "grad_share_energy" not in rows[0]
    # what was read is what the tensors held
    assert rows[0]["p_hard"] == float(window[0]["p_hard"]) and rows[-1]["margin"] == float(window[-1]["margin"])


def test_the_counter_sees_a_read(monkeypatch):
    """The check above can fail: a step that reads one more value is counted."""
    counter = ReadCounter(monkeypatch)
    from ebmtool.training import diagnostics
    diagnostics.to_host([{"a": torch.tensor(1.0)}])
    assert len(counter.calls) == 1 and "diagnostics.py" in counter.calls[0]
