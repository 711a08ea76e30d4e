"""`ebmtool data`: a task's problems as an HDF5 dataset (generated, or Sudoku puzzles from the user's files)."""

from __future__ import annotations

import secrets
from pathlib import Path

import click

from ebmtool.io.artifacts import (
    check_output,
    provenance,
    write_dataset,
)
from ebmtool.cli import cli
from ebmtool.cli.common import (
    overwrite_option,
    seed_option,
)
from ebmtool.cli.defaults import (
    TRAIN_DEFAULTS,
    per_task,
)
from ebmtool.config import (
    RECIPES,
)
from ebmtool.runtime.errors import InputError
from ebmtool.tasks.problems import SPLITS
from ebmtool.tasks.registry import get_task, names as task_names

CONTINUOUS_SIZE = RECIPES[TRAIN_DEFAULTS["recipe"]]["size"]  # `data`'s matrix size: the default recipe's


# ------------------------------------------------------------------------------------------------ data

@cli.command()
@click.argument("task", type=click.Choice(task_names()))
@click.option("-n", "n", type=click.IntRange(min=1), default=1024, show_default=True, help="Number of problems.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="HDF5 file to write.")
@click.option("--size", type=click.IntRange(min=2), default=None,
              show_default=f"{CONTINUOUS_SIZE} for continuous tasks; graph nodes "
              + per_task(lambda t: t.size if t.size_unit == "nodes" else None),
              help="Matrix size of continuous tasks (the paper uses 20); node count of graph tasks; Sudoku is 9x9.")
@click.option("--split", type=click.Choice(SPLITS), default=SPLITS[0], show_default=True,
              help="train draws from --seed; val and test are the fixed evaluation sets every model shares.")
@click.option("--harder", is_flag=True, help="The out-of-distribution variant of the task.")
@seed_option("Seed of a train split; drawn and recorded when not given (val/test use their fixed seed).")
@click.option("--from", "source", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="sudoku only: convert puzzles you have on disk instead of generating them: an RRN/Kaggle CSV "
              "(rows quiz,solution) or SAT-Net features.npy (with --labels).")
@click.option("--labels", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="With --from features.npy: the SAT-Net solutions (labels.npy).")
@overwrite_option
@click.pass_context
def data(ctx, task, n, output, size, split, harder, seed, source, labels, overwrite):
    """Write a data set of a built-in task to HDF5 (`inputs`, `targets`, provenance).

    Examples: ebmtool data inverse -n 4096 --size 8 -o train.h5
              ebmtool data sudoku --from sudoku-hard.csv -o rrn-hard.h5
    """
    check_output(output, overwrite, inputs=tuple(p for p in (source, labels) if p is not None))
    if source is not None or labels is not None:
        return _data_from_files(ctx, task, n, output, split, source, labels)
    if split == "train" and seed is None:
        seed = secrets.randbelow(2**31)
    t = get_task(task, size if size is not None or not get_task(task).recipe_size_applies else CONTINUOUS_SIZE)
    problems = t.generate(n, split, seed=seed, harder=harder, size=size if harder else None)
    size = problems.description["size"]
    prov = provenance("data", {"task": task, "size": size, "split": split, "harder": harder, "n": n,
                               "seed": problems.description["seed"]}, data=problems.description)
    write_dataset(output, problems, {"task": task, "size": size, "split": split, "harder": harder, "n": n,
                                     "seed": problems.description["seed"]}, prov)
    label = f"{task} ({size} nodes)" if t.size_unit == "nodes" else t.label
    click.echo(f"wrote {n} {label} problems ({split}{', harder' if harder else ''}, seed "
               f"{problems.description['seed']}) to {output}")


def _data_from_files(ctx, task, n, output, split, source, labels):
    """`data sudoku --from FILE`: the user's puzzles in the dataset layout that train/eval/compare read."""
    if source is None:
        raise InputError("--labels goes with --from features.npy")
    t = get_task(task)
    if not t.converts_files:
        raise InputError(f"--from converts Sudoku files; {task} data is generated (leave out --from)")
    given = [name for name in ("size", "harder", "seed") if ctx.get_parameter_source(name).name == "COMMANDLINE"]
    if given:
        raise InputError(f"--{given[0]} does not apply to --from: the file decides the puzzles")
    problems = t.problems_from_files(source, labels)
    if ctx.get_parameter_source("n").name == "COMMANDLINE":
        problems = problems.subset(n)
    desc = problems.description
    desc.update(n=len(problems), split=split)
    prov = provenance("data", {"task": task, "size": t.size, "split": split, "from": str(source),
                               "labels": str(labels) if labels else None, "n": len(problems)},
                      inputs={"source": source, **({"labels": labels} if labels else {})}, data=desc)
    write_dataset(output, problems, {"task": task, "size": t.size, "split": split, "harder": False,
                                     "n": len(problems), "seed": -1, "source": str(source)}, prov)
    click.echo(f"wrote {len(problems)} {t.label} problems from {source} (givens {desc['givens_min']}-"
               f"{desc['givens_max']}) to {output}")
