"""`ebmtool export`: a run's model as a directory to share, in Hugging Face's save_pretrained layout.

    DIR/model.safetensors   one weight set (EMA or raw) under its plain state-dict names, with the checkpoint's
                            descriptive metadata and a content checksum (no optimiser, EMA copy or RNG state)
    DIR/config.json         the network's description, the task, the training configuration, compute, the
                            evaluation and provenance, as JSON
    DIR/README.md           the model card: task, recipe, compute, evaluation beside trivial predictors, provenance

`ebmtool eval DIR`, `ebmtool.evaluate_run(DIR)`, `ebmtool.load_model(DIR)` and `ebmtool.sample(DIR, x)` read it;
it gives the numbers the run's checkpoint gives with the same weight set (tested). Nothing but ebmtool and
safetensors is needed to read it.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path

from ebmtool import FORMAT_VERSION, __version__
from ebmtool.io.artifacts import check_output, code_version, sha256_file, write_json, write_text
from ebmtool.io.checkpoints import MODEL_FILE, MODEL_KIND, load_checkpoint, resolve_checkpoint_path, save_checkpoint
from ebmtool.method.compute import format_flops
from ebmtool.runtime.errors import InputError
from ebmtool.analysis.evaluate import DEFAULT_WEIGHTS, WEIGHTS, checkpoint_model, checkpoint_task, evaluate_checkpoint
from ebmtool.method.models import parameter_count

CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
EXPORT_FILES = (MODEL_FILE, CONFIG_FILE, CARD_FILE)
# what an export keeps of a checkpoint's metadata: what the network and its task are, how it was trained and by what
KEPT_META = ("ebmtool.version", "ebmtool.task", "ebmtool.task_size", "ebmtool.config", "ebmtool.config_sha256",
             "ebmtool.model", "ebmtool.step", "ebmtool.compute_flops", "ebmtool.seed", "ebmtool.data_fingerprint",
             "ebmtool.git_commit", "ebmtool.git_dirty_hash", "ebmtool.environment")
WEIGHT_NAMES = {"ema": "EMA", "model": "raw"}


@dataclass
class Export:
    path: Path
    weights: str
    config: dict
    evaluation: dict | None


def export_run(run: Path, output: Path, *, weights: str = DEFAULT_WEIGHTS, eval_n: int = 1024, overwrite: bool = False,
               batch_size: int = 256, device="cpu") -> Export:
    """Write `run`'s `weights` set ("ema" or "model") to the directory `output` (see the module's docstring),
    with an evaluation on `eval_n` problems of the task's fixed test split for the model card (0: none)."""
    if weights not in WEIGHTS:
        raise InputError(f"--weights must be one of {', '.join(WEIGHTS)}")
    ckpt_path = resolve_checkpoint_path(Path(run))
    ckpt = load_checkpoint(ckpt_path)  # a training checkpoint (an export is not exported again)
    output = Path(output)
    if output.resolve() == ckpt_path.parent.resolve():
        raise InputError(f"{output} is the run's own directory; export into another one")
    for name in EXPORT_FILES:
        check_output(output / name, overwrite, inputs=(ckpt_path,))
    evaluation = None
    if eval_n:
        ev = evaluate_checkpoint(ckpt_path, n=eval_n, weights=weights, batch_size=batch_size, device=device)
        rep = ev.report
        evaluation = {"problems": rep["problems"], "metric": rep["metric"],
                      "higher_is_better": bool(ev.task.higher_is_better), "results": rep["results"][weights],
                      "baselines": rep["baselines"]}
    source = {"path": str(ckpt_path), "sha256": sha256_file(ckpt_path)}
    meta = {k: ckpt.meta[k] for k in KEPT_META if k in ckpt.meta}
    meta.update({"ebmtool.weights": weights, "ebmtool.source_checkpoint_sha256": source["sha256"],
                 "ebmtool.exported_by": __version__})
    config = export_config(ckpt, weights, source, evaluation)
    save_checkpoint(output / MODEL_FILE, ckpt.group(weights), meta, kind=MODEL_KIND)
    write_json(output / CONFIG_FILE, config)
    write_text(output / CARD_FILE, model_card(config))
    return Export(output, weights, config, evaluation)


def export_config(ckpt, weights: str, source: dict, evaluation: dict | None) -> dict:
    """config.json: everything an export says about itself, as JSON."""
    task = checkpoint_task(ckpt)
    return {
        "library": "ebmtool", "kind": MODEL_KIND, "format_version": FORMAT_VERSION, "weights": weights,
        "weights_file": MODEL_FILE, "architecture": ckpt.dims, "parameters": parameter_count(checkpoint_model(ckpt)),
        "task": {"name": ckpt.task, "label": task.label, "size": json.loads(ckpt.meta.get("ebmtool.task_size", "null")),
                 "x_dim": task.x_dim, "y_dim": task.y_dim, "metric": task.metric},
        "step": ckpt.step, "seed": ckpt.seed,
        "compute_flops": json.loads(ckpt.meta.get("ebmtool.compute_flops", "null")),
        "data_fingerprint": ckpt.meta.get("ebmtool.data_fingerprint"),
        "train_config": ckpt.config, "evaluation": evaluation,
        "provenance": {"source_checkpoint": source, "trained_with": ckpt.meta.get("ebmtool.version"),
                       "git_commit": ckpt.meta.get("ebmtool.git_commit"),
                       "exported_by": {**code_version(), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(
                           timespec="seconds")}},
    }


def _table(rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(r) + " |" for r in rows[:1]] + ["|" + "---|" * len(rows[0])] + \
        ["| " + " | ".join(r) + " |" for r in rows[1:]]


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def model_card(config: dict) -> str:
    """README.md of an export: the model card (YAML front matter as on the Hugging Face Hub, then Markdown)."""
    task, cfg, ev, prov = config["task"], config["train_config"], config["evaluation"], config["provenance"]
    w = WEIGHT_NAMES[config["weights"]]
    negatives = (cfg.get("curriculum") or cfg.get("negatives")) if cfg.get("supervise_energy") else \
        "none (denoise only)"
    lines = ["---", "library_name: ebmtool", "tags:", "- energy-based-model", "- diffusion", "- ired",
             f"- {task['name']}", "---", "", f"# {task['label']}: an IRED energy network ({w} weights)", "",
             f"An energy network E(x, y, t) trained with IRED by ebmtool on {task['label']} (inputs of {task['x_dim']} "
             f"numbers, answers of {task['y_dim']}): its input gradient in y denoises answers, and answers are sampled "
             "by IRED's annealed energy descent. This directory holds one weight set "
             f"({w}), its description (config.json) and this card.", "", "## Training", ""]
    lines += _table([["", ""], ["task", task["label"]], ["recipe", str(cfg.get("recipe"))],
                     ["steps", str(config["step"])], ["seed", str(config["seed"])],
                     ["negatives", f"{negatives}, K = {cfg.get('k')}" + (", SANS" if cfg.get("sans") else "")],
                     ["batch size, learning rate", f"{cfg.get('batch_size')}, {cfg.get('lr')}"],
                     ["compute", f"{format_flops(config['compute_flops'])} FLOPs"],
                     ["network", f"{config['architecture'].get('arch')}, {config['parameters']:,} parameters"]])
    lines += ["", "The full training configuration is `train_config` in config.json.", "", "## Evaluation", ""]
    if ev is None:
        lines.append("Not evaluated at export (`ebmtool eval DIR` evaluates it).")
    else:
        p, metric = ev["problems"], ev["metric"]
        where = f"{p.get('n', '')} problems of the task's fixed, seeded {p.get('split', '')} split" if "split" in p \
            else f"the problems of {p.get('data')}"
        lines += [f"Sampled on {where}, beside trivial predictors ({metric}, "
                  f"{'higher' if ev['higher_is_better'] else 'lower'} is better):", ""]
        cols = [metric] + sorted(k for k in ev["results"] if k != metric)
        lines += _table([["predictor", *cols], [f"this model ({w} weights)", *(_fmt(ev["results"][c]) for c in cols)],
                         *([f"baseline: {k}", _fmt(v), *([""] * (len(cols) - 1))] for k, v in ev["baselines"].items())])
    lines += ["", "## Use", "", "```sh", "pip install ebmtool        # the package this was made with",
              "ebmtool eval DIR           # the evaluation above, again", "```", "", "```python", "import ebmtool",
              "", 'model = ebmtool.load_model("DIR")      # E(x, y, t): one energy per row',
              'answers = ebmtool.sample("DIR", x)     # x: problems (N, x_dim) -> answers (N, y_dim)', "```",
              "", "## Provenance", ""]
    src, by = prov["source_checkpoint"], prov["exported_by"]
    lines += _table([["", ""], ["source checkpoint", f"`{src['path']}` (sha256 `{src['sha256'][:16]}`)"],
                     ["trained with", f"ebmtool {prov['trained_with']}, commit {prov['git_commit']}"],
                     ["training data", f"fingerprint `{(config['data_fingerprint'] or '')[:16]}`"],
                     ["exported", f"{by['created']} by ebmtool {by['ebmtool_version']}"]])
    return "\n".join(lines) + "\n"
