"""ebmtool's Python API: what the commands do, as functions that take and return Python values.

`import ebmtool` loads none of this (nor torch): `ebmtool.train` and the other names below are imported from here
when first used. Each function runs the library code its command runs, with the same checks and the same files;
errors are `ebmtool.runtime.errors.InputError` (a bad argument or file: the command's exit 2) and `RunError` (a failure
while running: exit 1). docs/python-api.md shows them in use; its examples run in the test suite.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ebmtool.analysis.arms import expand_paths, named_arms
from ebmtool.io.artifacts import check_output
from ebmtool.io.checkpoints import Checkpoint, load_checkpoint, resolve_checkpoint_path
from ebmtool.analysis.compare import DEFAULT_SEED
from ebmtool.analysis.compare import compare as compare_groups
from ebmtool.config import NO_STEP_CAP, TrainConfig, check_given
from ebmtool.runtime.errors import InputError
from ebmtool.analysis.evaluate import EVAL_SPLITS, WEIGHT_CHOICES, Evaluation, checkpoint_task, evaluate_checkpoint
from ebmtool.analysis.evaluate import load_model as frozen_model
from ebmtool.analysis.evaluate import sample_answers, weight_sets
from ebmtool.analysis.export import Export, export_run
from ebmtool.offline.mining import MineOptions, MineResult, compute_weights, finished_partial, mine, score, write_scores
from ebmtool.offline.mining import write_weights
from ebmtool.tasks.problems import Problems
from ebmtool.negatives.sans import DEFAULT_ALPHA, DEFAULT_ALPHA_FLOOR
from ebmtool.training.loop import TrainResult
from ebmtool.training.loop import train as run_training
from ebmtool.training.metrics import read_metrics
from ebmtool.training.plan import plan_run
from ebmtool.training.state import checkpoint_compute
from ebmtool.plugins import load_plugins

load_plugins()  # EBMTOOL_PLUGINS and installed plugins, as the command line loads them

__all__ = ["train", "evaluate_run", "compare_runs", "mine_negatives", "score_negatives", "sans_weights",
           "load_model", "load_run", "export_model", "sample", "Run", "TrainConfig", "TrainResult"]

PathLike = str | Path


def train(output: PathLike | None = None, *, recipe: str | None = None, resume: PathLike | None = None,
          autoresume: bool = False, overwrite: bool = False, budget_of: PathLike | None = None,
          trackers: Sequence[str] = (), log: Callable[[str], None] = print, **config) -> TrainResult:
    """Train an energy network with IRED into `output` (a run directory), as `ebmtool train` does.

    `config` holds TrainConfig fields (`task`, `size`, `steps`, `seed`, `negatives`, `k`, `sans`, `width`, ...;
    `ebmtool train --help` describes each under its flag name) on top of the named `recipe` ("cpu", the
    default, or "paper").
    `resume` continues a checkpoint or run directory (then only the cadence fields, such as `steps`, may be
    given); `autoresume` starts, continues or skips the run `output` holds; `overwrite` replaces it.
    `budget_of` trains to another run's compute (matched compute); `budget_flops` to a number of FLOPs.
    `trackers`: any of "csv", "tensorboard", "mlflow" (metrics.h5 and metrics.jsonl are always written).
    `log` receives the run's text lines (print by default).

    Returns a TrainResult: `out_dir`, `step`, `seconds`, `final_eval` (the validation metric of the raw and EMA
    weights) and the resolved `config`. Writes OUTPUT/ckpt.safetensors, metrics.h5 and metrics.jsonl.

    >>> result = ebmtool.train("runs/quick", steps=300, seed=0)          # doctest: +SKIP
    """
    known = {f.name for f in dataclasses.fields(TrainConfig)} - {"recipe", "init_sha256"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise TypeError(f"train() got an unexpected keyword argument {unknown[0]!r} (not a TrainConfig field)")
    given = {k: (str(v) if isinstance(v, Path) else v) for k, v in config.items() if v is not None}
    init = given.pop("init", None)
    if budget_of is not None:
        if "budget_flops" in given:
            raise InputError("budget_of and budget_flops exclude each other: give the run to match or the number")
        path = resolve_checkpoint_path(Path(budget_of))
        flops = checkpoint_compute(load_checkpoint(path))
        if flops is None:
            raise InputError(f"{path} records no compute; give budget_flops instead")
        given.update(budget_flops=flops, budget_of=str(path))
    if "budget_flops" in given and "steps" not in given:
        given["steps"] = NO_STEP_CAP  # a budgeted run without steps has no step cap
    check_given(given)
    plan = plan_run(given, recipe=recipe or "cpu", recipe_given=recipe is not None, init=init,
                    resume=None if resume is None else Path(resume), output=None if output is None else Path(output),
                    overwrite=overwrite, autoresume=autoresume)
    if plan.complete:
        ckpt = load_checkpoint(Path(output) / "ckpt.safetensors")
        return TrainResult(Path(output), ckpt.step, 0.0, {}, ckpt.config)
    return run_training(plan.config, plan.output, resume=plan.resume, overrides=plan.overrides, log=log,
                        trackers=tuple(trackers))


def evaluate_run(run: PathLike, *, weights: str = "both", split: str = EVAL_SPLITS[0], harder: bool = False,
                 n: int = 1024, data: PathLike | None = None, batch_size: int = 256, device: str = "cpu",
                 precision: str = "fp32") -> Evaluation:
    """Sample a run (a run directory, a checkpoint or an exported model directory) on held-out problems, as
    `ebmtool eval` does: the task's fixed, seeded `split` ("test" or "val"; `harder` for the out-of-distribution
    one) or the problems of a `data` file. `weights`: "ema", "model" (the raw weights) or "both".

    Returns an Evaluation: `report` (means per weight set, `baselines` of trivial predictors, the checkpoint's
    sha256, the problems) and the per-problem arrays `errors[weights][metric]`. Changes nothing on disk.
    """
    if weights not in WEIGHT_CHOICES:
        raise InputError(f"weights must be one of {', '.join(WEIGHT_CHOICES)}")
    return evaluate_checkpoint(resolve_checkpoint_path(Path(run)), data=None if data is None else Path(data),
                               split=split, harder=harder, n=n, weights=weights, batch_size=batch_size,
                               device=torch.device(device), precision=precision)


def compare_runs(arms: Mapping[str, str | Sequence[PathLike]] | Sequence[PathLike], *, baseline: str | None = None,
                 n: int = 1024, harder: bool = False, data: PathLike | None = None, weights: str = "ema",
                 vary: Sequence[str] = (), confidence: float = 0.95, bootstrap: int = 2000,
                 permutations: int = 10000, seed: int = DEFAULT_SEED, batch_size: int = 256,
                 device: str = "cpu") -> dict:
    """Does a variant beat the baseline? `ebmtool compare` as a function.

    `arms` maps an arm's name to its runs (seeds are replicates): a list of run directories or checkpoints, or
    one string of comma-separated paths and glob patterns (`{"ired": "runs/ired/seed-*", ...}`); or it is a list
    of runs, each its own arm. The first arm is the baseline unless `baseline` names another. `vary` declares the
    configuration keys the comparison is about (others that differ are warned about).

    Returns the report `--json` prints: `groups` (each arm's mean with its interval, compute), `comparisons`
    (per variant: paired differences, tests, `verdict`), `config_diff`, `warnings`, `trivial_baselines`.
    """
    if isinstance(arms, Mapping):
        groups = [(name, expand_paths(spec)) for name, spec in arms.items()]
    else:
        groups = named_arms([Path(p) for p in arms], [])
    report, _ = compare_groups(groups, baseline=baseline, n=n, harder=harder,
                               data=None if data is None else Path(data), weights=weights, confidence=confidence,
                               n_boot=bootstrap, n_perm=permutations, seed=seed, batch_size=batch_size,
                               device=torch.device(device), declared=tuple(vary))
    return report


def mine_negatives(run: PathLike, output: PathLike, *, overwrite: bool = False, data: PathLike | None = None,
                   device: str = "cpu", **options) -> MineResult:
    """Mine hard negatives (HNM) for every training problem of a run into the negatives file `output`, as
    `ebmtool mine-negatives` does (resumable: an interrupted mine continues from OUTPUT.partial).

    `options` are MineOptions fields: `k` (4), `candidates` (10), `refine_steps` (5), `lam` (1.0), `select`
    ("top" or "sample"), `seed` (0), `batch_size`, `limit` (mine only the first N problems), the filters
    `absolute_margin`, `relative_margin`, `max_energy`, and `weights` ("ema" or "model"); `negatives` names
    another registered source to mine with (hnm's options above are then unused) and `settings` its settings as
    (name, value) pairs.
    Returns a MineResult: `path`, `rows`, `counts` (candidates, duplicates, filtered, ...).
    """
    ckpt, output = resolve_checkpoint_path(Path(run)), Path(output)
    check_output(output, overwrite or finished_partial(output), inputs=(ckpt, data))
    return mine(ckpt, output, MineOptions(**options), data=None if data is None else Path(data),
                device=torch.device(device), overwrite=overwrite)


def score_negatives(run: PathLike, negatives: PathLike, output: PathLike | None = None, *, levels: str = "mined",
                    weights: str = "ema", batch_size: int = 1024, device: str = "cpu",
                    overwrite: bool = False) -> dict[str, np.ndarray]:
    """Energies of the positives and of every negative of a negatives file under a run of the same task, as
    `ebmtool score` does: at each negative's mined level, or also at every level (`levels="all"`).

    Returns the scores' arrays (`energy_pos` (N), `energy` (N, K), `valid`, `level`, `index`); with `output`, also
    writes them as a scores file (the input of `sans_weights`)."""
    ckpt = resolve_checkpoint_path(Path(run))
    if output is not None:
        check_output(Path(output), overwrite, inputs=(ckpt, Path(negatives)))
    result = score(ckpt, Path(negatives), levels=levels, weights=weights, batch_size=batch_size,
                   device=torch.device(device))
    if output is not None:
        write_scores(Path(output), result)
    return result["datasets"]


def sans_weights(scores: PathLike, output: PathLike | None = None, *, alpha: float = DEFAULT_ALPHA,
                 schedule: str = "constant", floor: float = DEFAULT_ALPHA_FLOOR,
                 overwrite: bool = False) -> dict[str, np.ndarray]:
    """SANS weights softmax(-alpha E-) per row over its valid negatives, from a scores file, as `ebmtool weights`
    does (`schedule="linear"`: alpha falls with the noise level to `floor`).

    Returns the arrays (`weights` (N, K), `entropy`, `ess`, `alpha`, `index`); with `output`, also writes the
    weights file that `train(offline_weights=...)` reads."""
    if output is not None:
        check_output(Path(output), overwrite, inputs=(Path(scores),))
    result = compute_weights(Path(scores), alpha, schedule, floor)
    if output is not None:
        write_weights(Path(output), result)
    return result["datasets"]


def load_model(run: PathLike, weights: str | None = None, device: str = "cpu") -> torch.nn.Module:
    """The energy network of a run directory, checkpoint or exported model directory, frozen (eval mode, no
    gradients to its parameters): `model(x, y, t)` is the energy E(x, y, t) of each row, `t` the noise level
    (an integer tensor, 0 = clean). `weights`: "model" (the raw weights, the default for a run, as for
    every command) or "ema"; an export holds one of them, its default."""
    ckpt = load_checkpoint(resolve_checkpoint_path(Path(run)), exported=True)
    return frozen_model(ckpt, weight_sets(ckpt, weights)[0], torch.device(device))


def sample(run: PathLike, inputs, *, weights: str | None = None, mask=None, batch_size: int = 256,
           device: str = "cpu") -> np.ndarray:
    """Answers to problems: IRED's sampler (annealed energy descent, seeded) run with a run's or an export's
    network on `inputs`, an array (N, x_dim); returns the answers (N, y_dim) as float32. `mask` (N, y_dim) marks
    the given entries of tasks that have them (Sudoku). `weights` as in load_model."""
    ckpt = load_checkpoint(resolve_checkpoint_path(Path(run)), exported=True)
    task = checkpoint_task(ckpt)
    x = np.asarray(inputs, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != task.x_dim:
        raise InputError(f"inputs of shape {x.shape} do not fit the model: give (N, {task.x_dim}) for {task.label}")
    problems = Problems(x, np.zeros((len(x), task.y_dim), np.float32), None if mask is None else np.asarray(mask))
    model = frozen_model(ckpt, weight_sets(ckpt, weights)[0], torch.device(device))
    return sample_answers(model, task, problems, batch_size=batch_size, device=torch.device(device))


def export_model(run: PathLike, output: PathLike, *, weights: str = "model", eval_n: int = 1024,
                 overwrite: bool = False, device: str = "cpu") -> Export:
    """`ebmtool export`: write one weight set of a run ("ema" or "model") as a directory to share, in Hugging
    Face's save_pretrained layout: model.safetensors, config.json and a README.md model card (task, recipe,
    compute, an evaluation on `eval_n` test problems beside trivial predictors, provenance). load_model, sample,
    evaluate_run and `ebmtool eval` read it back. Returns an Export (`path`, `weights`, `config`, `evaluation`)."""
    return export_run(Path(run), Path(output), weights=weights, eval_n=eval_n, overwrite=overwrite,
                      device=torch.device(device))


@dataclass
class Run:
    """A training run as files: its directory, its checkpoint (read and verified) and its metrics.h5 curves."""

    path: Path
    checkpoint: Checkpoint
    metrics: dict[str, np.ndarray]
    eval_metrics: dict[str, np.ndarray]

    @property
    def config(self) -> TrainConfig:
        """The run's resolved configuration."""
        return TrainConfig.from_dict(self.checkpoint.config)

    @property
    def step(self) -> int:
        return self.checkpoint.step

    @property
    def compute_flops(self) -> float | None:
        """Cumulative training FLOPs (None for checkpoints written before compute was counted)."""
        return checkpoint_compute(self.checkpoint)

    def model(self, weights: str = "ema", device: str = "cpu") -> torch.nn.Module:
        """The frozen network (see load_model)."""
        return frozen_model(self.checkpoint, weights, torch.device(device))


def load_run(run: PathLike) -> Run:
    """A run directory (or its checkpoint) read back: configuration, step, compute, the model, and the curves of
    metrics.h5 as arrays by column name (`metrics["loss_total"]`; `eval_metrics["metric_ema"]`; empty when the
    run has no metrics.h5)."""
    ckpt_path = resolve_checkpoint_path(Path(run))
    ckpt = load_checkpoint(ckpt_path)
    metrics_path = ckpt_path.parent / "metrics.h5"
    columns, eval_columns = read_metrics(metrics_path) if metrics_path.exists() else ({}, {})
    return Run(ckpt_path.parent, ckpt, columns, eval_columns)
