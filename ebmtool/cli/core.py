"""Core commands: train, eval, info."""

from __future__ import annotations

from pathlib import Path

import click
from click_option_group import optgroup

from ebmtool.runtime import distributed
from ebmtool.io.artifacts import (
    check_output,
    write_evaluation,
)
from ebmtool.io.checkpoints import load_checkpoint, resolve_checkpoint_path
from ebmtool.cli import cli
from ebmtool.cli.common import (
    checkpoint_argument,
    command_line,
    device_option,
    json_option,
    log,
    overwrite_option,
    precision_option,
    print_json,
    RENAMED_PREFIX,
    renamed_option,
    seed_option,
    setting_options,
    table,
    take_renamed,
)
from ebmtool.cli.defaults import (
    TRAIN_DEFAULTS,
    per_task,
    task_blocks,
    task_width,
    train_default,
)
from ebmtool.method.compute import parse_flops
from ebmtool.config import (
    ON_NAN,
    check_given,
    NO_STEP_CAP,
    plugin_settings,
    RECIPES,
)
from ebmtool.runtime.devices import PRECISIONS, resolve_device
from ebmtool.runtime.errors import InputError, Interrupted
from ebmtool.analysis.evaluate import DEFAULT_WEIGHTS, EVAL_SPLITS, WEIGHT_CHOICES, evaluate_checkpoint, problems_label
from ebmtool.analysis.info import describe, format_description
from ebmtool.negatives import anm as anm_source
from ebmtool.negatives import registry
from ebmtool.io.negatives_file import negatives_k
from ebmtool.negatives.sans import ALPHA_SCHEDULES, LOSS_FORMS
from ebmtool.tasks.reference_negatives import CONNECTIVITY_NEGATIVES
from ebmtool.tasks.registry import names as task_names
from ebmtool.training.loop import train as run_training
from ebmtool.training.plan import plan_run
from ebmtool.training.state import checkpoint_budget
from ebmtool.training.trackers import TRACKERS

# the flags of every registered source's settings: the reference source's first, then the others' (plugins' too)
REFERENCE_SETTINGS = [st for st in registry.reference().settings if st.flag and st.training]
SOURCE_SETTINGS = [st for src in registry.sources() if not src.reference for st in src.settings
                   if st.flag and st.training]
SOURCES_TEXT = ", ".join(f"{src.name} ({src.describe})" if src.describe else src.name for src in registry.sources())
CONTINUOUS_SIZE = RECIPES[TRAIN_DEFAULTS["recipe"]]["size"]  # `data`'s matrix size: the default recipe's


# ------------------------------------------------------------------------------------------------ train



class TrainCommand(click.Command):
    """`train` takes no arguments: words left over after the options are an error, with a hint where they are
    the rest of a --seeds list written with spaces."""

    def parse_args(self, ctx, args):
        rest = super().parse_args(ctx, args)
        if ctx.args:
            extra = ctx.args
            if ctx.params.get("seeds") is not None and all(a.isdigit() for a in extra):
                raise InputError(f"--seeds takes one comma-separated list: --seeds "
                                 f"{','.join([ctx.params['seeds'], *extra])}")
            ctx.fail(f"Got unexpected extra argument{'s' if len(extra) > 1 else ''} ({' '.join(extra)})")
        return rest


# `train --help` shows its options in groups (click-option-group): a new option is one @optgroup.option line under
# the group it belongs to. Options outside a group at the end are the hidden old spellings of renamed flags.
@cli.command(cls=TrainCommand, context_settings={"allow_extra_args": True})
@optgroup.group("Task, model and budget")
@optgroup.option("--task", default=None, show_default=train_default("task"),
                 help=f"Built-in task ({', '.join(task_names())}) or an HDF5 data file with `inputs` and `targets`.")
@optgroup.option("--recipe", type=click.Choice(tuple(RECIPES)), default=TRAIN_DEFAULTS["recipe"], show_default=True,
                 help="Named budget: cpu = 8x8, 1500 steps, batch 256, lr 1e-3 (85 s on 2 cores); paper = 20x20, "
                 "100k steps, batch 2048, lr 1e-4 (a GPU job). Flags below override it.")
@optgroup.option("--size", type=click.IntRange(min=2), default=None, help="Matrix size (the paper uses 20).")
@optgroup.option("--width", type=click.IntRange(min=1), default=None,
                 show_default=per_task(task_width),
                 help="Network width: MLP width; Sudoku CNN channels; graph hidden size.")
@optgroup.option("--blocks", type=click.IntRange(min=1), default=None,
                 show_default=per_task(task_blocks),
                 help="Depth of discrete tasks' networks: Sudoku residual blocks, connectivity layers.")
@optgroup.option("--steps", type=click.IntRange(min=1), default=None,
                 help="Total optimiser steps (also on --resume); with a budget, an upper bound.")
@optgroup.option("--budget", "budget", default=None, metavar="FLOPS",
                 help="Train until the run's cumulative compute reaches FLOPS (e.g. 3.1e13), stopping at the first "
                 "step at or past it; a curriculum is laid out over the budget.")
@optgroup.option("--budget-of", "budget_of", type=click.Path(path_type=Path), default=None, metavar="RUN",
                 help="Matched compute: the budget is RUN's (a checkpoint or run directory) cumulative compute.")
@optgroup.option("--batch-size", type=click.IntRange(min=1), default=None)
@optgroup.option("--lr", type=float, default=None,
                 help=f"Adam learning rate (betas {TRAIN_DEFAULTS['beta1']}, {TRAIN_DEFAULTS['beta2']}; clip "
                 f"{TRAIN_DEFAULTS['grad_clip']}).")
@optgroup.option("--train-size", type=click.IntRange(min=0), default=None,
                 show_default=train_default("train_size"),
                 help="Fixed training problems drawn from the seed; 0 = fresh problems every step.")
@optgroup.group("Run directory, seeds and resuming")
@optgroup.option("-o", "--output", type=click.Path(path_type=Path, file_okay=False), default=None,
                 help="Run directory; without it, runs/<task>-<time>.")
@overwrite_option(option=optgroup.option)
@seed_option(option=optgroup.option)
@optgroup.option("--seeds", "seeds", default=None, metavar="S1,S2,...",
                 help="Replicates: train one run per seed into OUTPUT/seed-<s>/ (for `ebmtool compare --group`).")
@optgroup.option("--resume", type=click.Path(path_type=Path), default=None,
                 help="Continue this checkpoint (or run directory) exactly where it stopped, in its directory.")
@optgroup.option("--autoresume", is_flag=True, default=False,
                 help="With -o DIR: start, continue the run DIR holds if its configuration is the same, or exit 0 at "
                 "once if it is finished; a different configuration is an error naming the first difference.")
@optgroup.option("--init", "init", type=click.Path(path_type=Path), default=None,
                 help="Start from this checkpoint's weights (fresh optimiser, step 0).")
@optgroup.group("Energy term and negatives")
@optgroup.option("--supervise-energy/--no-supervise-energy", default=None,
                 help="The energy-landscape (contrastive) term; on by default (full IRED).")
@optgroup.option("--energy-weight", type=float, default=None, show_default=per_task(lambda t: t.energy_weight),
                 help="λ of the energy term (the task's reference).")
@optgroup.option("--negatives-from", "negatives", default=None, metavar="SOURCE[:FRACTION],...",
                 help=f"Negative sources and their mix: {SOURCES_TEXT}; e.g. ired:0.5,anm:0.5.",
                 show_default=train_default("negatives"))
@optgroup.option("--anm", "anm_shorthand", is_flag=True, default=None,
                 help="Adversarial negatives: shorthand for --negatives-from anm (e.g. ebmtool train --anm --k 16).")
@optgroup.option("--k", "k", type=click.IntRange(min=1), default=None, show_default=train_default("k"),
                 help="Negatives per positive.")
@optgroup.option("--curriculum", default=None, metavar="SPEC|PRESET",
                 help="Stages over the run, e.g. 0:ired,0.3:ired=0.5+anm=0.5,0.7:anm, or a preset (ired-to-anm, "
                 "ired-to-hnm, ired-anm-hnm). Each stage's mix must sum to 1.")
@optgroup.option("--dup-threshold", type=float, default=None,
                 help="Negatives with clean-space RMS(y- - y) at or below this are near-duplicates: dropped, counted.",
                 show_default=train_default("dup_threshold"))
@optgroup.option("--kappa-floor", type=float, default=None, show_default=train_default("kappa_floor"),
                 help="Positive-aware negatives: move every negative (any source, offline too) out to kappa >= this, "
                 "kappa = |x- - sqrt(ab_t) y| / |x+ - sqrt(ab_t) y|, so none is more probable than its positive; "
                 "no network call. 0 = off.")
@optgroup.group("Settings of the negative sources")
@setting_options(REFERENCE_SETTINGS, option=optgroup.option)
@optgroup.option("--connectivity-negative", type=click.Choice(CONNECTIVITY_NEGATIVES), default=None,
                 help="connectivity only: the reference negative sets chosen closure entries to -1 (reference, as the "
                 "published method) or flips them both ways (flip).", show_default=CONNECTIVITY_NEGATIVES[0])
@setting_options(SOURCE_SETTINGS, option=optgroup.option)
@optgroup.group("SANS")
@optgroup.option("--sans", is_flag=True, default=None,
                 help="Weight the K negatives of each positive by softmax(-alpha * E-) (detached).")
@optgroup.option("--alpha", type=float, default=None, show_default=train_default("alpha"),
                 help="SANS inverse temperature (0 = uniform).")
@optgroup.option("--alpha-schedule", type=click.Choice(ALPHA_SCHEDULES), default=None,
                 show_default=train_default("alpha_schedule"),
                 help="SANS alpha over levels: constant, or linear = max(floor, alpha (1 - t/9)).")
@optgroup.option("--alpha-floor", type=float, default=None, show_default=train_default("alpha_floor"),
                 help="Floor of --alpha-schedule linear.")
@optgroup.option("--sans-loss", type=click.Choice(LOSS_FORMS), default=None, show_default=train_default("sans_loss"),
                 help="Weighted loss form.")
@optgroup.option("--margin", type=float, default=None, show_default=train_default("margin"),
                 help="Margin gamma of --sans-loss logistic.")
@optgroup.group("Offline negatives")
@optgroup.option("--offline-negatives", "offline_negatives", type=click.Path(path_type=Path, dir_okay=False),
                 default=None, metavar="FILE",
                 help="Offline negatives (from mine-negatives, on this run's training data) for a fraction of each "
                 "batch; --k defaults to the file's K.")
@optgroup.option("--offline-weights", "offline_weights", type=click.Path(path_type=Path, dir_okay=False), default=None,
                 metavar="FILE",
                 help="SANS weights for the offline negatives (from `ebmtool weights`), replacing uniform weights.")
@optgroup.option("--offline-fraction", "offline_fraction", type=float, default=None,
                 show_default=train_default("offline_fraction"),
                 help="Fraction of each batch's examples that use the offline negatives.")
@optgroup.option("--force", is_flag=True, default=None,
                 help="Use --offline-negatives/--offline-weights files whose provenance does not match this run "
                 "(recorded).")
@optgroup.group("EMA")
@optgroup.option("--ema-beta", type=click.FloatRange(0, 1), default=None, show_default=train_default("ema_beta"),
                 help="EMA decay ceiling.")
@optgroup.option("--ema-every", type=click.IntRange(min=1), default=None, show_default=train_default("ema_every"),
                 help="EMA update period in steps.")
@optgroup.group("Logging, evaluation and checkpoints")
@optgroup.option("--log-every", type=click.IntRange(min=1), default=None, show_default=train_default("log_every"),
                 help="Steps per metrics row.")
@optgroup.option("--eval-every", type=click.IntRange(min=0), default=None,
                 show_default=train_default("eval_every"),
                 help="Steps between validation sampling (0 = only at the end).")
@optgroup.option("--val-size", type=click.IntRange(min=0), default=None, show_default=train_default("val_size"),
                 help="Validation problems.")
@optgroup.option("--ckpt-every", type=click.IntRange(min=0), default=None, show_default=train_default("ckpt_every"),
                 help="Steps between checkpoints.")
@optgroup.option("--keep", type=click.IntRange(min=0), default=None,
                 help="Also keep the newest N periodic checkpoints as OUTPUT/ckpt-stepNNNNNNN.safetensors "
                 "(0 = only the latest, OUTPUT/ckpt.safetensors).", show_default=train_default("keep"))
@optgroup.option("--tensorboard", is_flag=True, default=False,
                 help="Also write every metrics column as TensorBoard scalars into OUTPUT/tensorboard "
                 "(needs pip install 'ebmtool[tensorboard]').")
@optgroup.option("--tracker", "trackers", type=click.Choice(TRACKERS), multiple=True,
                 help="Also send the curves to: csv (OUTPUT/metrics.csv), tensorboard (= --tensorboard, with "
                 "HParams), mlflow (MLFLOW_TRACKING_URI; pip install 'ebmtool[mlflow]'). Repeatable.")
@optgroup.option("--on-nan", type=click.Choice(ON_NAN), default=None,
                 show_default=train_default("on_nan"),
                 help="A non-finite loss stops the run or skips the batch (counted in metrics).")
@optgroup.group("Device and speed")
@optgroup.option("--device", default=None, show_default=train_default("device"),
                 help="auto (CUDA when available), cpu, or cuda[:N].")
@precision_option(option=optgroup.option)
@optgroup.option("--compile", "compile", is_flag=True, default=None,
                 help="torch.compile the MLP's explicit input gradient (the denoiser). On a 2-core CPU (cold compile "
                 "cache, 1 thread, python -m benchmarks compile) compiling took 26-33 s of CPU time and a compiled "
                 "step ran 0.7x-1.1x as fast as an eager one: it never paid within a 1,500-step run, and at best "
                 "after about 4,000 steps (docs/performance.md). Not measured on a GPU. Results equal the eager "
                 "ones within float tolerance.")
# old spellings of renamed flags (hidden)
@renamed_option("--negatives-fraction", "offline_fraction", type=float)
@renamed_option("--negatives", None, "give mined negatives with --offline-negatives FILE, or negative sources "
                "with --negatives-from SOURCE")
@renamed_option("--weights", None, "give the offline negatives' SANS weights with --offline-weights FILE "
                "(--weights ema|model chooses the weight set of eval and compare)")
@click.pass_context
def train(ctx, recipe, init, resume, output, overwrite, seeds, budget, budget_of, autoresume, tensorboard, trackers,
          **flags):
    """Train an energy network with IRED (denoising through the energy gradient + energy-landscape term).

    Writes OUTPUT/ckpt.safetensors and OUTPUT/metrics.h5 (sealed at checkpoints), and the live log
    OUTPUT/metrics.jsonl (a row as it is logged).

    \b
    Examples:
      ebmtool train --steps 300 -o runs/quick
      ebmtool train --anm --k 4 --budget-of runs/quick -o runs/anm      (the same compute as runs/quick)
    """
    distributed.init_from_env()  # under torchrun: join the other processes (a no-op otherwise)
    flags = take_renamed(flags, log)
    if seeds is not None:
        return _train_seeds(ctx, seeds, output, flags)
    given, force = _given_flags(flags, budget, budget_of, resume)
    source = ctx.get_parameter_source("recipe")  # None under --seeds' ctx.invoke: nothing was typed there
    plan = plan_run(given, recipe=recipe, recipe_given=source is not None and source.name == "COMMANDLINE",
                    init=init, resume=resume, output=output, overwrite=overwrite, autoresume=autoresume)
    if plan.complete:
        click.echo(f"{output} already holds the finished run; nothing to do")
        return
    output = plan.output
    result = run_training(plan.config, output, resume=plan.resume, overrides=plan.overrides, log=log, force=force,
                          trackers=(*trackers, "tensorboard") if tensorboard else trackers)
    if not distributed.is_main():
        return  # process 0 reports for the job
    fe = result.final_eval
    trained = result.step - result.start_step
    steps = f"{trained} more steps ({result.start_step} -> {result.step})" if result.start_step else f"{trained} steps"
    click.echo(f"trained {steps} in {result.seconds:.1f} s -> {output}/ckpt.safetensors")
    if fe:
        metric = fe["metric_name"]
        click.echo(f"validation {metric} {fe['metric_model']:.4g} (ema weights {fe['metric_ema']:.4g}) on "
                   f"{result.config['val_size']} problems")


def _given_flags(flags: dict, budget, budget_of, resume) -> tuple[dict, bool]:
    """The TrainConfig fields the command line gives (shorthands expanded, paths as strings), and --force.
    Their validation is TrainConfig's."""
    given = {k: v for k, v in flags.items() if v is not None}
    given.update(_budget_flags(budget, budget_of, given))
    force = bool(given.pop("force", False))
    for name in ("offline_negatives", "offline_weights"):
        if name in given:
            given[name] = str(given[name])
    if "offline_negatives" in given and "k" not in given and resume is None:
        given["k"] = negatives_k(Path(given["offline_negatives"]))  # K follows the file unless given
    if given.pop("anm_shorthand", None):
        if "negatives" in given or "curriculum" in given:
            raise InputError("--anm is shorthand for --negatives-from anm; give one of --anm, --negatives-from, "
                             "--curriculum")
        given["negatives"] = anm_source.SOURCE.name
    given = plugin_settings(given)
    check_given(given)
    return given, force


def _budget_flags(budget, budget_of, given: dict) -> dict:
    """--budget FLOPS / --budget-of RUN as config fields; a budgeted run without --steps has no step cap."""
    if budget is None and budget_of is None:
        return {}
    if budget is not None and budget_of is not None:
        raise InputError("--budget and --budget-of exclude each other: give the number or the run to match")
    out = {} if "steps" in given else {"steps": NO_STEP_CAP}
    if budget is not None:
        try:
            return {**out, "budget_flops": parse_flops(budget)}
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--budget") from None
    path = resolve_checkpoint_path(budget_of)
    flops = checkpoint_budget(load_checkpoint(path))
    if flops is None:
        raise InputError(f"{path} records no compute (it was written before ebmtool counted compute); "
                         "give --budget FLOPS instead")
    return {**out, "budget_flops": flops, "budget_of": str(path)}


def _train_seeds(ctx, seeds: str, output, flags: dict):
    """--seeds 0,1,2: the same configuration once per seed, into OUTPUT/seed-<s>/ (replicates for compare)."""
    try:
        values = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{seeds!r}: give comma-separated non-negative integers, e.g. 0,1,2",
                                 param_hint="--seeds") from None
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise click.BadParameter(f"{seeds!r}: give distinct non-negative integers, e.g. 0,1,2", param_hint="--seeds")
    if ctx.params.get("seed") is not None:
        raise InputError("--seed and --seeds exclude each other")
    if ctx.params.get("resume") is not None:
        raise InputError("--seeds starts new runs; resume each one with --resume OUTPUT/seed-<s>")
    if output is None:
        raise InputError("--seeds needs -o OUTPUT (runs go to OUTPUT/seed-<s>/)")

    for s in values:
        if distributed.is_main():
            log(f"--seeds: seed {s} -> {Path(output) / f'seed-{s}'}")
        params = {k: v for k, v in ctx.params.items() if not k.startswith(RENAMED_PREFIX)}
        try:
            ctx.invoke(train, **{**params, **flags, "seeds": None, "seed": s, "output": Path(output) / f"seed-{s}",
                                  "autoresume": not ctx.params.get("overwrite")})  # finished seeds are skipped
        except Interrupted as exc:  # the same command without --overwrite continues this seed and trains the rest
            raise Interrupted(f"{exc.saved}; continue every seed with: {command_line(ctx, drop=('overwrite',))}",
                              exc.exit_code, saved=exc.saved).on_every_process() from None


# ------------------------------------------------------------------------------------------------ eval

@cli.command("eval")
@checkpoint_argument
@click.option("--data", type=click.Path(path_type=Path), default=None, help="Evaluate on this HDF5 data file.")
@click.option("--split", type=click.Choice(EVAL_SPLITS), default=None, show_default=EVAL_SPLITS[0],
              help="The task's held-out split (not with --data).")
@click.option("--harder", is_flag=True, help="The out-of-distribution split of the task (not with --data).")
@click.option("-n", "--n", "n", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Number of held-out problems.")
@click.option("--weights", type=click.Choice(WEIGHT_CHOICES), default=None,
              show_default=f"{DEFAULT_WEIGHTS}; an exported model: the set it holds",
              help="The raw weights (model; every command's default, docs/compare.md says why), the EMA weights "
              "(what the reference evaluates), or both.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@device_option
@precision_option
@json_option
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Also write the results (with per-problem errors) to this HDF5 file.")
@overwrite_option
def eval_cmd(checkpoint, data, split, harder, n, weights, batch_size, device, precision, as_json, output,
             overwrite):
    """Sample a checkpoint on held-out problems and print its MSE beside trivial baselines.

    Never changes the checkpoint. Example: ebmtool eval runs/demo/ckpt.safetensors --harder
    """
    if output is not None:
        check_output(output, overwrite, inputs=(checkpoint, data))
    ev = evaluate_checkpoint(checkpoint, data=data, split=split, harder=harder, n=n, weights=weights,
                             batch_size=batch_size, device=resolve_device(device),
                             precision=precision or PRECISIONS[0])
    rep = ev.report
    if output is not None:
        write_evaluation(output, ev.errors, ev.baselines, step=rep["step"], checkpoint=checkpoint,
                         checkpoint_sha256=rep["sha256"],
                         config={"split": rep["problems"].get("split"), "harder": harder, "n": n,
                                 "weights": weights or "+".join(rep["results"]),
                                 "data": None if data is None else str(data)},
                         problems=rep["problems"])
    if as_json:
        print_json(rep)
    else:
        click.echo(format_evaluation(ev))


def format_evaluation(ev) -> str:
    """`ebmtool eval`'s text report: the checkpoint, the problems, one row per weights set and per baseline."""
    rep, task = ev.report, ev.task
    desc, results, baselines, seconds = rep["problems"], rep["results"], rep["baselines"], rep["seconds"]
    out = [f"checkpoint  {rep['checkpoint']} (step {rep['step']}, sha256 {rep['sha256'][:12]})",
           f"problems    {problems_label(desc)}, {len(ev.problems)} problems"]
    cols = [task.metric] + sorted(k for k in next(iter(results.values())) if k != task.metric)
    rows = [[f"model ({w} weights)", *(r[c] for c in cols)] for w, r in results.items()]
    rows += [[f"baseline: {k}", v, *([""] * (len(cols) - 1))] for k, v in baselines.items()]
    note = "mse_ref_scaled = mse of 0.986*y_hat, the reference's reporting" if "mse_ref_scaled" in cols else \
        f"{task.metric} is the primary metric, {'higher' if task.higher_is_better else 'lower'} is better"
    out += [table(rows, ["", *cols]), f"({seconds:.1f} s; {note})"]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ info

@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@json_option
def info(file, as_json):
    """Show any ebmtool artifact: kind, provenance and a summary of its contents.

    Example: ebmtool info runs/demo/metrics.h5
    """
    d = describe(file)
    if as_json:
        print_json(d)
    else:
        click.echo(format_description(d))
