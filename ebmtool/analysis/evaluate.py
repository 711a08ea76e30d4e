"""Evaluation: pure functions of frozen weights. No optimiser is built, nothing is written back.

Per-problem errors are returned (not only means) so that `compare` can pair problems across models and
compute confidence intervals.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ebmtool.io.artifacts import read_dataset
from ebmtool.runtime.devices import autocast
from ebmtool.method.diffusion import cosine_schedule, sample
from ebmtool.runtime.errors import InputError
from ebmtool.method.models import build_model
from ebmtool.tasks.files import FileTask, resolve_task, split_user_data
from ebmtool.tasks.problems import Problems, Task
from ebmtool.tasks.registry import dataset_task, names as task_names
from ebmtool.io.checkpoints import load_checkpoint
from ebmtool.io.artifacts import sha256_file
from ebmtool.runtime.devices import check_precision
from ebmtool.runtime.progress import progress_bar

# Seed of the sampler's initial noise: fixed, so two models evaluated on one set also share their starting noise.
SAMPLER_SEED = 0


@torch.no_grad()
def sample_answers(model, task: Task, problems: Problems, *, batch_size: int = 256, seed: int = SAMPLER_SEED,
                   device="cpu", inner_steps: int | None = None, progress=None, precision: str = "fp32") -> np.ndarray:
    """Run the sampler over every problem; returns y_hat (N, y_dim) as float32 (bf16 autocast on request)."""
    sched = cosine_schedule().to(device)
    settings = task.sampler
    if inner_steps is not None:
        settings = type(settings)(**{**settings.__dict__, "inner_steps": inner_steps})
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    out = []
    try:
        for start in range(0, len(problems), batch_size):
            x = torch.from_numpy(problems.x[start:start + batch_size]).to(device)
            mask = None
            if problems.mask is not None:
                mask = torch.from_numpy(problems.mask[start:start + batch_size]).to(device)
            out_dim = problems.y.shape[1]  # = task.y_dim, except graph tasks' larger harder splits
            with autocast(device, precision):
                y_hat = sample(model, x, sched, out_dim, settings, generator=gen, mask=mask)
            out.append(y_hat.float().cpu().numpy())
            if progress is not None:
                progress(len(x))
    finally:
        model.train(was_training)
    return np.concatenate(out, axis=0)


def per_problem_errors(task: Task, problems: Problems, y_hat: np.ndarray) -> dict[str, np.ndarray]:
    """The task's metrics per problem (Task.metrics): continuous tasks give `mse` and `mse_ref_scaled` (the mse
    of sqrt(ab_0) * y_hat), discrete tasks their own, the primary one being `task.metric`."""
    return task.metrics(problems, y_hat)


def evaluate_model(model, task: Task, problems: Problems, **kw) -> dict[str, np.ndarray]:
    return per_problem_errors(task, problems, sample_answers(model, task, problems, **kw))


# ------------------------------------------------------------------------------------------------ checkpoints

# The weight set every command uses unless told otherwise (eval, compare, report, mine-negatives, score): the raw
# weights. The EMA lags the raw weights at CPU step budgets, and at matched compute an arm that costs more per
# step trains fewer steps, so its EMA lags more or never starts averaging (docs/compare.md#which-weights).
DEFAULT_WEIGHTS = "model"
WEIGHTS = (DEFAULT_WEIGHTS, "ema")  # the default first; "ema" is what the reference evaluates
WEIGHT_CHOICES = (*WEIGHTS, "both")  # `ebmtool eval --weights`: one set, or both
EVAL_SPLITS = ("test", "val")  # the fixed held-out splits of a built-in task; the first is the default


def load_model(ckpt, weights: str = DEFAULT_WEIGHTS, device="cpu"):
    """A frozen network from a checkpoint: the raw weights, or the EMA weights (as the reference evaluates)."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}")
    model = checkpoint_model(ckpt)
    try:
        model.load_state_dict(ckpt.group(weights), strict=True)
    except RuntimeError as exc:
        raise InputError(f"{ckpt.path}: its {weights} weights do not fit its model {ckpt.dims} "
                         f"({str(exc).splitlines()[0]})") from None
    model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def checkpoint_model(ckpt):
    """The (untrained) network a checkpoint's `ebmtool.model` metadata describes; InputError if it cannot be built."""
    try:
        return build_model(ckpt.dims)
    except (InputError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{ckpt.path}: its model description {ckpt.dims} cannot be built ({exc})") from None


def checkpoint_task(ckpt):
    """The task a checkpoint was trained on (a built-in task, or the user's data file).

    A run trained from an `ebmtool data` file of a discrete task records the task's name and size in its
    metadata (`ebmtool.task`, `ebmtool.task_size`): it is rebuilt as that task, not as the file."""
    cfg = ckpt.config
    if cfg["task"] not in task_names():
        task = dataset_task(ckpt.task, json.loads(ckpt.meta.get("ebmtool.task_size", "null")))
        if task is not None:
            return task
    task, _ = resolve_task(cfg["task"], cfg["size"]) if cfg["task"] in task_names() else (None, None)
    if task is None:
        d = ckpt.dims
        task = FileTask(name="file", size=0, path=cfg["task"], x_dim_=d["x_dim"], y_dim_=d["y_dim"])
    return task


def evaluation_problems(ckpt, *, data=None, split=None, harder=False, n=1024):
    """The held-out problems for a checkpoint: a data file, or the task's fixed split (seeded, shared; `split`
    None is the test split). A split asked for beside a data file is refused: it would be ignored."""
    task = checkpoint_task(ckpt)
    if data is not None and (harder or split is not None):
        flag = "--harder" if harder else f"--split {split}"
        raise InputError(f"--data {data} gives the problems to evaluate on, so {flag} (a split of the task's own "
                         "problems) would not apply; leave it out, or leave out --data")
    split = EVAL_SPLITS[0] if split is None else split
    if data is not None:
        problems = read_dataset(data)
        made_for = problems.description.get("task")
        if not task.path and made_for is not None and (
                made_for != task.name or problems.description.get("size", task.size) != task.size):
            raise InputError(f"{data} holds {made_for} problems (size {problems.description.get('size')}), but "
                             f"the checkpoint was trained on {task.label}")
        if problems.x.shape[1] != task.x_dim or problems.y.shape[1] != task.y_dim:
            raise InputError(f"{data}: problems of shape {problems.x.shape[1]} -> {problems.y.shape[1]} do not fit "
                             f"the checkpoint's model ({task.x_dim} -> {task.y_dim})")
        desc = {"data": str(data), "fingerprint": problems.fingerprint,
                "made_as": {k: problems.description[k] for k in ("task", "size", "split", "harder")
                            if k in problems.description}}
        return task, problems.subset(n) if n else problems, desc
    if task.path:
        if harder:
            raise InputError("--harder needs a built-in task; this checkpoint was trained on a data file "
                             "(give held-out problems with --data)")
        _, val = split_user_data(read_dataset(task.path))
        return task, val, {"data": task.path, "split": "val (last 10 %)", "fingerprint": val.fingerprint}
    problems = task.generate(n, split, harder=harder)
    desc = {"task": task.label, "split": split, "harder": harder, "n": n, "fingerprint": problems.fingerprint}
    return task, problems, desc


def problems_label(desc: dict) -> str:
    """Where held-out problems came from, for a report's first lines: the task and its split, or the data file
    with what its provenance says it holds."""
    if "data" not in desc:
        return f"{desc.get('task')}, {desc.get('split')}{' harder' if desc.get('harder') else ''}"
    made = desc.get("made_as") or {}
    if "task" not in made:
        return f"{desc['data']} (data file)" if "split" not in desc else f"{desc['data']}, {desc['split']}"
    size = f" {made['size']}" if made.get("size") is not None else ""
    return (f"{desc['data']} (data file of {made['task']}{size}, {made.get('split', 'no')} split"
            f"{', harder' if made.get('harder') else ''})")


def weight_sets(ckpt, weights: str | None) -> list[str]:
    """The weight sets `weights` ("both", "ema", "model"; None: the default) picks from a checkpoint, or from an
    export, which holds one: "both" and None mean that one, and asking for the other is refused."""
    held = [w for w in WEIGHTS if any(k.startswith(w + "/") for k in ckpt.tensors)]
    if weights in (None, "both"):
        return held if weights == "both" else held[:1]
    if weights not in held:
        raise InputError(f"{ckpt.path} holds only its {' and '.join(held)} weights (an exported model); "
                         f"export the run with --weights {weights} to evaluate those")
    return [weights]


# ------------------------------------------------------------------------------------------------ a checkpoint

@dataclass
class Evaluation:
    """What `ebmtool eval` reports: `report` (JSON-ready means, baselines, provenance of the numbers) and the
    per-problem arrays behind it (`errors[weights][metric]`, `baselines[name]`)."""
    report: dict
    errors: dict[str, dict[str, np.ndarray]]
    baselines: dict[str, np.ndarray]
    task: Task
    problems: Problems


def evaluate_checkpoint(path: Path, *, data=None, split: str | None = None, harder: bool = False, n: int = 1024,
                        weights: str | None = None, batch_size: int = 256, device="cpu",
                        precision: str = "fp32") -> Evaluation:
    """Sample a checkpoint's raw and/or EMA weights on its held-out problems (a progress bar on a terminal's
    stderr); never changes the checkpoint."""
    if weights is not None and weights not in WEIGHT_CHOICES:
        raise InputError(f"--weights must be one of {', '.join(WEIGHT_CHOICES)}")
    ckpt = load_checkpoint(path, exported=True)  # weights None: DEFAULT_WEIGHTS, or the one set an export holds
    check_precision(precision, device)
    task, problems, desc = evaluation_problems(ckpt, data=data, split=split, harder=harder, n=n)
    which = weight_sets(ckpt, weights)
    errors = {}
    t0 = time.perf_counter()
    with progress_bar(len(problems) * len(which), desc="eval", unit="problem") as bar:
        for w in which:
            errors[w] = evaluate_model(load_model(ckpt, w, device), task, problems, batch_size=batch_size,
                                       device=device, precision=precision, progress=bar.update)
    seconds = time.perf_counter() - t0
    baselines = task.baselines(problems)
    report = {"checkpoint": str(path), "sha256": sha256_file(path), "step": ckpt.step, "problems": desc,
              "metric": task.metric,
              "results": {w: {k: float(v.mean()) for k, v in e.items()} for w, e in errors.items()},
              "baselines": {k: float(v.mean()) for k, v in baselines.items()}, "seconds": seconds,
              "device": str(device), "precision": precision}
    return Evaluation(report, errors, baselines, task, problems)
