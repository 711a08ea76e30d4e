"""Core commands: data, train, eval, info."""

from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path

import click
import numpy as np

from ebmtool.artifacts import check_output, load_checkpoint, provenance, sha256_file, write_h5
from ebmtool.cli import cli
from ebmtool.cli.common import (
    checkpoint_argument, device_option, json_option, log, overwrite_option, print_json, seed_option, table,
)
from ebmtool.errors import InputError
from ebmtool.tasks import SPLITS, TASK_NAMES, get_task


# ------------------------------------------------------------------------------------------------ data

@cli.command()
@click.argument("task", type=click.Choice(TASK_NAMES))
@click.option("-n", "n", type=click.IntRange(min=1), default=1024, show_default=True, help="Number of problems.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="HDF5 file to write.")
@click.option("--size", type=click.IntRange(min=2), default=8, show_default=True, help="Matrix size (20 in the paper).")
@click.option("--split", type=click.Choice(SPLITS), default="train", show_default=True,
              help="train draws from --seed; val and test are the fixed evaluation sets every model shares.")
@click.option("--harder", is_flag=True, help="The out-of-distribution variant of the task.")
@seed_option("Seed of a train split; drawn and recorded when not given (val/test use their fixed seed).")
@overwrite_option
def data(task, n, output, size, split, harder, seed, overwrite):
    """Write a data set of a built-in task to HDF5 (`inputs`, `targets`, provenance).

    Example: ebmtool data inverse -n 4096 --size 8 -o train.h5
    """
    check_output(output, overwrite)
    if split == "train" and seed is None:
        import secrets

        seed = secrets.randbelow(2**31)
    t = get_task(task, size)
    problems = t.generate(n, split, seed=seed, harder=harder)
    prov = provenance("data", {"task": task, "size": size, "split": split, "harder": harder, "n": n,
                               "seed": problems.description["seed"]}, data=problems.description)
    write_h5(output, "dataset", {"inputs": problems.x, "targets": problems.y},
             {"task": task, "size": size, "split": split, "harder": harder, "n": n,
              "seed": problems.description["seed"], "fingerprint": problems.fingerprint}, prov)
    click.echo(f"wrote {n} {t.label} problems ({split}{', harder' if harder else ''}, seed "
               f"{problems.description['seed']}) to {output}")


# ------------------------------------------------------------------------------------------------ train



@cli.command()
@click.option("--task", default=None, help=f"Built-in task ({', '.join(TASK_NAMES)}; default inverse) or an HDF5 "
              "data file with `inputs` and `targets`.")
@click.option("--recipe", type=click.Choice(["cpu", "paper"]), default="cpu", show_default=True,
              help="Named budget: cpu = 8x8, 1500 steps, batch 256, lr 1e-3 (minutes on 2 cores); paper = 20x20, "
              "100k steps, batch 2048, lr 1e-4 (a GPU job). Flags below override it.")
@click.option("--size", type=click.IntRange(min=2), default=None, help="Matrix size (the paper uses 20).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Total optimiser steps (also on --resume).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--lr", type=float, default=None, help="Adam learning rate (betas 0.9, 0.99; clip 1.0).")
@seed_option()
@click.option("--train-size", type=click.IntRange(min=0), default=None,
              help="Fixed training problems drawn from the seed [12800]; 0 = fresh problems every step.")
@click.option("--supervise-energy/--no-supervise-energy", default=None,
              help="The energy-landscape (contrastive) term; on by default (full IRED).")
@click.option("--energy-weight", type=float, default=None, help="λ of the energy term [task's reference: 0.5].")
@click.option("--neg-steps", type=click.IntRange(min=0), default=None, help="Descent steps of IRED negatives [2].")
@click.option("--clamp-mode", type=click.Choice(["per-example", "first-example"]), default=None,
              help="opt_step clamp bound: per example (correct) or the release's first-example bug [per-example].")
@click.option("--width", type=click.IntRange(min=1), default=None, help="MLP width [512].")
@click.option("--ema-beta", type=click.FloatRange(0, 1), default=None, help="EMA decay ceiling [0.995].")
@click.option("--ema-every", type=click.IntRange(min=1), default=None, help="EMA update period in steps [10].")
@click.option("--log-every", type=click.IntRange(min=1), default=None, help="Steps per metrics row [10].")
@click.option("--eval-every", type=click.IntRange(min=0), default=None,
              help="Steps between validation sampling (0 = only at the end) [500].")
@click.option("--ckpt-every", type=click.IntRange(min=0), default=None, help="Steps between checkpoints [500].")
@click.option("--keep", type=click.IntRange(min=0), default=None,
              help="Also keep the newest N periodic checkpoints as OUTPUT/ckpt-stepNNNNNNN.safetensors "
              "(0 = only the latest, OUTPUT/ckpt.safetensors) [0].")
@click.option("--val-size", type=click.IntRange(min=0), default=None, help="Validation problems [256].")
@click.option("--on-nan", type=click.Choice(["stop", "skip"]), default=None,
              help="A non-finite loss stops the run (default) or skips the batch (counted in metrics).")
@click.option("--device", default=None, help="auto (CUDA when available), cpu, or cuda[:N] [auto].")
@click.option("--init", "init", type=click.Path(path_type=Path), default=None,
              help="Start from this checkpoint's weights (fresh optimiser, step 0).")
@click.option("--resume", type=click.Path(path_type=Path), default=None,
              help="Continue this checkpoint (or run directory) exactly where it stopped, in its directory.")
@click.option("-o", "--output", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Run directory [runs/<task>-<time>].")
@overwrite_option
@click.pass_context
def train(ctx, recipe, init, resume, output, overwrite, **flags):
    """Train an energy network with IRED (denoising through the energy gradient + energy-landscape term).

    Writes OUTPUT/ckpt.safetensors and OUTPUT/metrics.h5. Example: ebmtool train --steps 300 -o runs/quick
    """
    from ebmtool.artifacts import resolve_checkpoint_path
    from ebmtool.train import RECIPES, TrainConfig, train as run_training

    given = {k: v for k, v in flags.items() if v is not None}
    if resume is not None:
        if init is not None:
            raise InputError("--resume and --init exclude each other: resume continues a run, init starts a new one")
        allowed = {"steps", "log_every", "eval_every", "ckpt_every", "keep", "device", "val_size"}
        fixed = sorted(set(given) - allowed)
        if ctx.get_parameter_source("recipe").name == "COMMANDLINE":
            fixed.insert(0, "recipe")
        if fixed:
            raise InputError(f"--{fixed[0].replace('_', '-')} cannot change on --resume: a resumed run keeps its "
                             "configuration (start a new run with --init to change it)")
        resume = resolve_checkpoint_path(resume)
        if output is not None and Path(output).resolve() != resume.parent.resolve():
            raise InputError("--resume continues in the checkpoint's own directory; leave out -o")
        output = resume.parent
        cfg = TrainConfig()
    else:
        values = {**RECIPES[recipe], **given, "recipe": recipe}
        if init is not None:
            init = resolve_checkpoint_path(init)
            values.update(init=str(init), init_sha256=sha256_file(init) if init.exists() else None)
            load_checkpoint(init)  # validate early: one sentence if it is not a checkpoint
        cfg = TrainConfig(**values)
        if output is None:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            output = Path("runs") / f"{Path(cfg.task).stem}-{stamp}"
        inputs = (init, Path(cfg.task) if Path(cfg.task).is_file() else None)
        for target in (output / "ckpt.safetensors", output / "metrics.h5"):
            check_output(target, True, inputs=inputs)  # never overwrite an input, even with --overwrite
        if (output / "ckpt.safetensors").exists() and not overwrite:
            raise InputError(f"{output} already holds a run; use --resume to continue it or --overwrite to "
                             "start again")
    result = run_training(cfg, output, resume=resume, overrides=given if resume else None, log=log)
    fe = result.final_eval
    click.echo(f"trained {result.step} steps in {result.seconds:.1f} s -> {output}/ckpt.safetensors")
    if fe:
        click.echo(f"validation mse {fe['mse_model']:.4g} (ema weights {fe['mse_ema']:.4g}) on "
                   f"{result.config['val_size']} problems")


# ------------------------------------------------------------------------------------------------ eval

@cli.command("eval")
@checkpoint_argument
@click.option("--data", type=click.Path(path_type=Path), default=None, help="Evaluate on this HDF5 data file.")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True)
@click.option("--harder", is_flag=True, help="The out-of-distribution split of the task.")
@click.option("-n", "--n", "n", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Number of held-out problems.")
@click.option("--weights", type=click.Choice(["both", "ema", "model"]), default="both", show_default=True,
              help="EMA weights (the reference evaluates these), the raw weights, or both.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@device_option
@json_option
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Also write the results (with per-problem errors) to this HDF5 file.")
@overwrite_option
def eval_cmd(checkpoint, data, split, harder, n, weights, batch_size, device, as_json, output, overwrite):
    """Sample a checkpoint on held-out problems and print its MSE beside trivial baselines.

    Never changes the checkpoint. Example: ebmtool eval runs/demo/ckpt.safetensors --harder
    """
    from ebmtool.evaluate import evaluate_model, evaluation_problems, load_model
    from ebmtool.train import resolve_device

    if output is not None:
        check_output(output, overwrite, inputs=(checkpoint, data))
    ckpt = load_checkpoint(checkpoint)
    dev = resolve_device(device)
    task, problems, desc = evaluation_problems(ckpt, data=data, split=split, harder=harder, n=n)
    which = ["ema", "model"] if weights == "both" else [weights]
    results, per_problem = {}, {}
    t0 = time.perf_counter()
    for w in which:
        errs = evaluate_model(load_model(ckpt, w, dev), task, problems, batch_size=batch_size, device=dev)
        results[w] = {k: float(v.mean()) for k, v in errs.items()}
        per_problem[w] = errs
    seconds = time.perf_counter() - t0
    baselines = {k: float(v.mean()) for k, v in task.baselines(problems).items()}
    sha = sha256_file(checkpoint)
    report = {"checkpoint": str(checkpoint), "sha256": sha, "step": ckpt.step, "problems": desc,
              "metric": task.metric, "results": results, "baselines": baselines, "seconds": seconds}
    if output is not None:
        datasets = {f"{w}/{k}": v for w, errs in per_problem.items() for k, v in errs.items()}
        datasets.update({f"baseline/{k}": v for k, v in task.baselines(problems).items()})
        write_h5(output, "evaluation", datasets, {"step": ckpt.step, "checkpoint_sha256": sha},
                 provenance("eval", {"split": split, "harder": harder, "n": n, "weights": weights},
                            inputs={"checkpoint": checkpoint}, problems=desc))
    if as_json:
        print_json(report)
        return
    click.echo(f"checkpoint  {checkpoint} (step {ckpt.step}, sha256 {sha[:12]})")
    where = desc.get("task", desc.get("data"))
    click.echo(f"problems    {where}, {desc.get('split', '')}{' harder' if harder else ''}, {len(problems)} problems")
    rows = [[f"model ({w} weights)", r["mse"], r["mse_ref_scaled"]] for w, r in results.items()]
    rows += [[f"baseline: {k}", v, ""] for k, v in baselines.items()]
    click.echo(table(rows, ["", "mse", "mse_ref_scaled"]))
    click.echo(f"({seconds:.1f} s; mse_ref_scaled = mse of 0.986*y_hat, the reference's reporting)")


# ------------------------------------------------------------------------------------------------ info

@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@json_option
def info(file, as_json):
    """Show any ebmtool artifact: kind, provenance and a summary of its contents.

    Example: ebmtool info runs/demo/metrics.h5
    """
    from ebmtool.info import describe, format_description

    d = describe(file)
    if as_json:
        print_json(d)
    else:
        click.echo(format_description(d))
