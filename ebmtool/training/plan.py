"""Planning a run before it trains: a new run, a resume or an --autoresume, and the rules between them.

`ebmtool train` parses its flags into TrainConfig fields and calls `plan_run`; TrainConfig.validate checks the
fields' values, this module the run-level rules (which of --resume, --init, -o and --autoresume go together,
what a resume may change, where a new run writes and what it must not overwrite). The CLI re-checks nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

from ebmtool.runtime import distributed
from ebmtool.io.artifacts import check_output, sha256_file
from ebmtool.io.checkpoints import load_checkpoint, resolve_checkpoint_path
from ebmtool.config import RECIPES, plugin_settings, TrainConfig, first_difference, flag_name, reference_fields, resume_overrides
from ebmtool.negatives import registry
from ebmtool.negatives.curriculum import sources_of
from ebmtool.runtime.errors import InputError
from ebmtool.tasks.registry import builtin_task
from ebmtool.training.state import run_is_complete

RUNS_DIR = Path("runs")  # where a new run without -o goes: runs/<task>-<YYYYmmdd-HHMMSS>


@dataclass
class RunPlan:
    """What `train` does: a new run of `config`, or continue the checkpoint `resume` with the cadence flags
    `overrides` changes; `complete`: --autoresume found the run finished (nothing to do)."""

    config: TrainConfig
    output: Path
    resume: Path | None = None
    overrides: dict | None = None
    complete: bool = False


def plan_run(given: dict, *, recipe: str, recipe_given: bool, init, resume, output, overwrite: bool,
             autoresume: bool) -> RunPlan:
    """The run `train` starts from the TrainConfig fields given on the command line (`given`) and its run flags;
    InputError, naming the flag, for a combination that cannot run. `recipe_given`: --recipe was typed."""
    if autoresume:
        if resume is not None or output is None:
            raise InputError("--autoresume takes the run directory from -o DIR (and excludes --resume)")
        if overwrite:
            raise InputError("--autoresume continues what DIR holds; --overwrite would discard it")
        resume = autoresume_target(recipe, init, output, given)
        if resume == "complete":
            return RunPlan(TrainConfig(), output, complete=True)
    if resume is not None:
        if init is not None and not autoresume:
            raise InputError("--resume and --init exclude each other: resume continues a run, init starts a new one")
        return resume_plan(given, recipe=recipe, recipe_given=recipe_given, resume=resume, output=output)
    return new_plan(given, recipe=recipe, init=init, output=output, overwrite=overwrite)


def resume_plan(given: dict, *, recipe: str, recipe_given: bool, resume, output) -> RunPlan:
    """Continue a checkpoint in its own directory; flags repeated on the command line must match the run's own
    values, except the cadence fields, which become the overrides."""
    resume = resolve_checkpoint_path(resume)
    if output is not None and Path(output).resolve() != resume.parent.resolve():
        raise InputError("--resume continues in the checkpoint's own directory; leave out -o")
    stored = TrainConfig.from_dict(load_checkpoint(resume).config, where=str(resume))
    if recipe_given and recipe != stored.recipe:
        raise InputError(f"--recipe {recipe} differs from the run's {stored.recipe}: a resumed run keeps its "
                         "configuration (start a new run with --init to change it)")
    overrides = resume_overrides(stored, {k: v for k, v in given.items() if k not in ("init", "init_sha256")})
    return RunPlan(TrainConfig(), resume.parent, resume=resume, overrides=overrides)


def new_plan(given: dict, *, recipe: str, init, output, overwrite: bool) -> RunPlan:
    """A new run: its configuration, and its directory (-o, or runs/<task>-<time>), which may not hold a run
    unless --overwrite, nor be any of the run's inputs."""
    cfg = new_config(recipe, init, given)
    init = None if cfg.init is None else Path(cfg.init)
    if output is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        output = Path(distributed.broadcast_json(str(RUNS_DIR / f"{Path(cfg.task).stem}-{stamp}")))
    inputs = (init, Path(cfg.task) if Path(cfg.task).is_file() else None,
              *(Path(p) for p in (cfg.offline_negatives, cfg.offline_weights) if p))
    for target in (output / "ckpt.safetensors", output / "metrics.h5"):
        check_output(target, True, inputs=inputs)  # never overwrite an input, even with --overwrite
    if (output / "ckpt.safetensors").exists() and not overwrite:
        raise InputError(f"{output} already holds a run; use --resume to continue it or --overwrite to "
                         "start again")
    return RunPlan(cfg, output)


# What a run started with --init takes from the init's run unless given: its seed and training data (so negatives
# mined from the init fit the new run) and its model shape (so its weights fit).
INIT_KEEPS = ("seed", "task", "size", "train_size", "width", "blocks", "time_dim")


def new_config(recipe: str, init, given: dict) -> TrainConfig:
    """The configuration of a new run from its recipe and the flags given (not yet resolved); an ired setting
    given for a run that does not use the ired source is refused. With --init, INIT_KEEPS come from the init's
    run unless given."""
    values = {**RECIPES[recipe], **given, "recipe": recipe}
    if init is not None:
        init = resolve_checkpoint_path(init)
        stored = load_checkpoint(init).config  # validate early: one sentence if it is not a checkpoint
        values.update({k: stored[k] for k in INIT_KEEPS if k not in given and k in stored})
        values.update(init=str(init), init_sha256=sha256_file(init) if init.exists() else None)
    task = builtin_task(values.get("task"))
    if task is not None and not task.recipe_size_applies and "size" not in given and init is None:
        values["size"] = None  # the recipes' matrix sizes are for continuous tasks; use the task's own
    cfg = TrainConfig(**plugin_settings(values))
    if cfg.supervise_energy:
        ref = registry.reference().name
        ref_given = [f for f in reference_fields() if f in given]
        if ref_given and ref not in sources_of(cfg.stages()):
            raise InputError(f"--{flag_name(ref_given[0])} is a setting of the {ref} source, which this run does "
                             "not use")
    return cfg


def autoresume_target(recipe: str, init, output: Path, given: dict):
    """--autoresume: None (start a new run), "complete" (nothing to do) or the checkpoint to continue; a run of
    another configuration in OUTPUT is refused, naming the first difference."""
    ckpt_path = Path(output) / "ckpt.safetensors"
    if not ckpt_path.exists():
        return None
    ckpt = load_checkpoint(ckpt_path)
    stored = TrainConfig.from_dict(ckpt.config, where=str(ckpt_path))
    new = new_config(recipe, init, given)
    if new.seed is None:
        new.seed = stored.seed  # a seed drawn for the stored run is that run's seed
    new = dataclasses.replace(new, curriculum_total=stored.curriculum_total, init_steps=stored.init_steps).validate()
    name = first_difference(stored, new)
    if name is not None:
        raise InputError(f"{output} holds a run with another configuration: --{flag_name(name)} is "
                         f"{getattr(stored, name)} there and {getattr(new, name)} here (use another -o, or "
                         "--overwrite without --autoresume to start again)")
    return "complete" if run_is_complete(ckpt, new) else ckpt_path
