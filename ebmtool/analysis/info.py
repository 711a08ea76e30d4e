"""`ebmtool info`: what any artifact is, where it came from, and what it holds."""

from __future__ import annotations

import math

import json
import shlex
import textwrap
from pathlib import Path

import numpy as np

from ebmtool.io.artifacts import artifact_kind, open_h5, read_provenance, sha256_file, sniff
from ebmtool.io.checkpoints import MODEL_FILE, MODEL_KIND, load_checkpoint, seed_runs
from ebmtool.method.compute import format_flops
from ebmtool.config import beside_defaults, format_settings, steps_text
from ebmtool.runtime.errors import InputError
from ebmtool.analysis.evaluate import checkpoint_model, problems_label
from ebmtool.method.models import parameter_count
from ebmtool.training.metrics import LIVE_LOG, live_progress, read_metrics, source_columns
from ebmtool.io.locks import lock_holder
from ebmtool.training.state import checkpoint_compute, checkpoint_compute_rule


INFO_READS = ("checkpoints, ebmtool's HDF5 files, run directories and the parents of train --seeds runs, a run's "
              f"{LIVE_LOG} and compare's --json-file reports")
COMPARE_KEYS = ("baseline", "groups", "comparisons", "metric", "direction", "problems", "weights")


def describe(path: Path) -> dict:
    """A JSON-able description: kind, provenance, and a summary of the contents."""
    path = Path(path)
    if path.is_dir() and (path / MODEL_FILE).exists() and not (path / "ckpt.safetensors").exists():
        path = path / MODEL_FILE  # an export directory: its weights file
    if path.is_dir():
        if (path / "ckpt.safetensors").exists() or (path / LIVE_LOG).exists():
            return describe_run(path)
        runs = seed_runs(path)
        if runs:
            return describe_seeds(path, runs)
        raise InputError(f"{path} is a directory that holds no run; info reads {INFO_READS}")
    text = describe_text(path)
    if text is not None:
        return text
    try:
        fmt = sniff(path)
    except InputError:
        if path.is_file() and path.stat().st_size:
            raise InputError(f"{path} is neither a safetensors nor an HDF5 file nor a text file ebmtool wrote; info "
                             f"reads {INFO_READS}") from None
        raise
    kind = artifact_kind(path)
    if fmt == "safetensors":
        return _describe_checkpoint(path)
    with open_h5(path, kind) as f:
        out = {"file": str(path), "format": "hdf5", "kind": kind, "provenance": read_provenance(f),
               "attributes": {k: _scalar(v) for k, v in f.attrs.items() if k != "provenance"},
               "datasets": {}}
        f.visititems(lambda name, obj: out["datasets"].update({name: _dataset_summary(obj)})
                     if is_dataset(obj) else None)
    if kind == "metrics":
        out["summary"] = metrics_summary(*read_metrics(path))
    return out


def describe_run(run_dir: Path) -> dict:
    """A run directory: whether a process trains in it now, its progress and latest row (from the live log), and
    its last checkpoint."""
    live = run_dir / LIVE_LOG
    ckpt = run_dir / "ckpt.safetensors"
    metrics = run_dir / "metrics.h5"  # sealed at checkpoints: the alarms of the curves saved so far
    summary = metrics_summary(*read_metrics(metrics)) if metrics.exists() else {}
    return {"file": str(run_dir), "format": "directory", "kind": "run",
            "training_pid": lock_holder(run_dir / ".lock"),
            "live": live_progress(live) if live.exists() else None,
            "checkpoint": _describe_checkpoint(ckpt) if ckpt.exists() else None,
            "alarms": summary.get("alarms", [])}


def describe_seeds(path: Path, runs: list[Path]) -> dict:
    """The parent of `train --seeds` runs: each seed's run, and the --group that compares them as one arm."""
    return {"file": str(path), "format": "directory", "kind": "seeds", "runs": [describe_run(d) for d in runs],
            "group": f"--group {path.name}='{path}/seed-*'"}


def describe_text(path: Path) -> dict | None:
    """A text file ebmtool wrote (a run's live log, a compare --json-file report), or None for any other file."""
    if not path.is_file():
        return None
    with open(path, "rb") as fh:
        if fh.read(1) != b"{":
            return None
    try:
        with open(path, encoding="utf-8") as fh:
            first = json.loads(fh.readline())
    except (ValueError, UnicodeDecodeError):
        first = None
    if isinstance(first, dict) and first.get("kind") == "run":
        return {"file": str(path), "format": "jsonl", "kind": "live log",
                "training_pid": lock_holder(path.parent / ".lock"), "live": live_progress(path), "checkpoint": None}
    try:
        rep = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(rep, dict) or any(k not in rep for k in COMPARE_KEYS):
        return None
    comps = {c["variant"]: c for c in rep["comparisons"]}
    arms = [{"name": g["name"], "n_seeds": g["n_seeds"], "mean": g["mean"], "ci": [g["ci_low"], g["ci_high"]],
             **({"diff": comps[g["name"]]["primary"]["mean_diff"], "verdict": comps[g["name"]]["verdict"]}
                if g["name"] in comps else {})} for g in rep["groups"]]
    return {"file": str(path), "format": "json", "kind": "compare report", "task": rep.get("task"),
            "metric": rep["metric"], "direction": rep["direction"], "problems": problems_label(rep["problems"]),
            "n_problems": rep.get("n_problems"), "weights": rep["weights"], "baseline": rep["baseline"], "arms": arms,
            "warnings": rep.get("warnings", [])}


def format_seeds(d: dict) -> list[str]:
    """The lines of `ebmtool info` for a --seeds parent: one per seed, then how to compare them."""
    lines = []
    for run in d["runs"]:
        ck, pid = run["checkpoint"], run["training_pid"]
        state = f"training now (process {pid})" if pid else "not training"
        saved = f"saved step {ck['step']} of {steps_text(ck['config'])}, {format_flops(ck['compute_flops'])} FLOPs" \
            if ck else "no checkpoint yet"
        lines.append(f"{Path(run['file']).name:<9} {state}; {saved}")
    return lines + [f"compare   these runs are one arm of seeds: ebmtool compare {d['group']} --group OTHER=..."]


def format_compare(d: dict) -> list[str]:
    """The lines of `ebmtool info` for a compare report: the problems, the baseline, each arm's mean and verdict."""
    lines = [f"task      {d['task']}; metric {d['metric']} ({d['direction']} is better)",
             f"problems  {d['problems']}, {d['n_problems']} problems, {d['weights']} weights",
             f"baseline  {d['baseline']}"]
    for a in d["arms"]:
        seeds = f"{a['n_seeds']} seed{'s' if a['n_seeds'] != 1 else ''}"
        vs = f"; diff {a['diff']:+.4g}, verdict {a['verdict']}" if "verdict" in a else ""
        lines.append(f"arm       {a['name']}: {d['metric']} {a['mean']:.4g} [{a['ci'][0]:.4g}, {a['ci'][1]:.4g}], "
                     f"{seeds}{vs}")
    return lines + [f"WARNING   {w}" for w in d["warnings"]]


def format_run(d: dict) -> list[str]:
    """The lines of `ebmtool info DIR`."""
    pid, live, ck = d["training_pid"], d["live"], d["checkpoint"]
    lines = [f"status    {'training now (process ' + str(pid) + ')' if pid else 'not training'}"]
    if live and live["latest"]:
        run, row = live["run"], live["latest"]
        if run.get("budget_flops"):
            done = f"compute {format_flops(row.get('compute_flops'))} of {format_flops(run['budget_flops'])} " \
                   f"FLOPs ({row.get('compute_flops', 0) / run['budget_flops']:.0%}), step {row['step']}"
        else:
            done = f"step {row['step']} of {run.get('steps', '?')}" + \
                (f" ({row['step'] / run['steps']:.0%})" if run.get("steps") else "")
        lines.append(f"progress  {done}; {live['rows']} rows in {LIVE_LOG}"
                     + (f", {live['torn_lines']} torn line(s) skipped" if live["torn_lines"] else ""))
        shown = [k for k in ("loss_total", "loss_denoise", "loss_energy", "p_hard", "margin", "grad_norm")
                 if isinstance(row.get(k), (int, float)) and row[k] == row[k]]
        lines.append("latest    " + ", ".join(f"{k} {row[k]:.4g}" for k in shown))
        if live["latest_eval"]:
            ev = live["latest_eval"]
            lines.append(f"val       step {ev['step']}: metric {ev.get('metric_model', float('nan')):.4g} "
                         f"(ema {ev.get('metric_ema', float('nan')):.4g})")
    if ck:
        lines.append(f"saved     step {ck['step']} in ckpt.safetensors ({format_flops(ck['compute_flops'])} FLOPs)")
    lines += [f"ALARM     {a}" for a in d.get("alarms", [])]
    return lines


def _describe_checkpoint(path: Path) -> dict:
    ck = load_checkpoint(path, exported=True)
    groups: dict[str, int] = {}
    for k in ck.tensors:
        g = k.split("/", 1)[0]
        groups[g] = groups.get(g, 0) + 1
    model = checkpoint_model(ck)
    return {
        "file": str(path), "format": "safetensors", "kind": ck.meta["ebmtool.kind"], "sha256": sha256_file(path),
        "task": ck.task, "step": ck.step, "seed": ck.seed,
        "model": {**ck.dims, "parameters": parameter_count(model)},
        "data_fingerprint": ck.meta.get("ebmtool.data_fingerprint"),
        "ebmtool_version": ck.meta.get("ebmtool.version"),
        "format_version": int(ck.meta.get("ebmtool.format_version", "0")),
        "git_commit": ck.meta.get("ebmtool.git_commit"), "git_dirty_hash": ck.meta.get("ebmtool.git_dirty_hash"),
        "compute_flops": checkpoint_compute(ck), "compute_rule": checkpoint_compute_rule(ck),
        "environment": json.loads(ck.meta.get("ebmtool.environment", "null")),
        "config": ck.config, "tensor_groups": groups,
    }


def is_dataset(obj) -> bool:
    """Whether an HDF5 member is a dataset (groups have no shape); h5py itself is artifacts' to import."""
    return hasattr(obj, "shape")


def _dataset_summary(ds) -> dict:
    d = {"shape": list(ds.shape), "dtype": str(ds.dtype)}
    if ds.dtype.kind in "fiu" and 0 < ds.size <= 50_000_000:
        a = ds[()]
        finite = a[np.isfinite(a)] if a.dtype.kind == "f" else a
        if finite.size:
            d.update(min=float(finite.min()), mean=float(finite.mean()), max=float(finite.max()))
    return d


def _scalar(v):
    if isinstance(v, bytes):
        return v.decode()
    if hasattr(v, "item"):
        return v.item()
    return v


def metrics_summary(columns: dict[str, np.ndarray], eval_columns: dict[str, np.ndarray]) -> dict:
    """First and last logged values of each metric, plus alarms for curves that look broken (read_metrics'
    columns)."""
    if "step" not in columns or columns["step"].shape[0] == 0:
        return {"rows": 0}
    steps = columns["step"]
    out = {"rows": int(len(steps)), "first_step": int(steps[0]), "last_step": int(steps[-1]), "first": {},
           "last": {}, "alarms": []}
    for name, a in columns.items():
        if "/" not in name and name != "step":  # top-level columns; per-source ones are summarised below
            out["first"][name], out["last"][name] = float(a[0]), float(a[-1])
    if "step" in eval_columns and eval_columns["step"].shape[0]:
        out["eval"] = {c: float(a[-1]) for c, a in eval_columns.items()}
    if "p_hard" in columns:
        p = columns["p_hard"]
        if np.all(np.nan_to_num(p) == 0) and len(p) > 1:
            out["alarms"].append("p_hard is 0 throughout: every negative is easy, the energy term teaches little")
    if "loss_energy" in columns:
        le = columns["loss_energy"]
        le = le[np.isfinite(le)]
        if len(le) > 5 and np.ptp(le) < 1e-7:
            out["alarms"].append("loss_energy is constant: the energy term is not training")
        if len(le) == 0 and len(steps) > 0:
            out["alarms"].append("no energy loss was logged: energy supervision is off")
    if "norm_ratio" in columns:
        nr = columns["norm_ratio"]
        nr = nr[np.isfinite(nr)]
        if len(nr) and (np.median(nr) < 0.5 or np.median(nr) > 2.0):
            out["alarms"].append(f"median |x-|/|x+| is {np.median(nr):.2f}: negatives are separable by norm alone")
    out["alarms"] += _negative_alarms(columns)
    sources = source_columns(columns)
    if sources:
        out["sources"] = {name: {m: _finite_mean(a) for m, a in grp.items()} for name, grp in sources.items()}
        for name, grp in sources.items():
            out["alarms"] += [f"source {name}: {a}" for a in source_alarms(grp)]
    return out


def _finite_mean(a) -> float:
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if len(a) else float("nan")


def _finite(f, name):
    if name not in f:
        return np.zeros(0)
    a = f[name][()]
    return a[np.isfinite(a)]


def _negative_alarms(f) -> list[str]:
    """Alarms on the negatives' diagnostics: each names what looks broken."""
    alarms = []
    dup = _finite(f, "dup_fraction")
    if len(dup) and dup.mean() > 0.5:
        alarms.append(f"{dup.mean():.0%} of negative candidates were near-duplicates of their positive and dropped")
    exc = _finite(f, "excluded_fraction")
    if len(exc) and exc.max() > 0:
        alarms.append(f"up to {exc.max():.1%} of examples had no valid negative and were left out of the energy term")
    ess, k = _finite(f, "weight_ess"), _finite(f, "k")
    if len(ess) and len(k) and k.max() > 1 and np.median(ess) < 1.5:
        alarms.append(f"SANS weights collapsed: median effective sample size {np.median(ess):.2f} of K = "
                      f"{int(k.max())} (alpha too large for these energies)")
    gs = _finite(f, "grad_share_energy")
    if len(gs) and np.median(gs) < 0.01:
        alarms.append(f"the energy term carries {np.median(gs):.2%} of the gradient norm: it barely trains")
    act = _finite(f, "active_fraction")
    if len(act) > 1 and np.all(act < 0.05):
        alarms.append("fewer than 5% of negative pairs have an active gradient throughout")
    cos = np.asarray(f["grad_cosine"][()], dtype=np.float64) if "grad_cosine" in f else np.zeros(0)
    cos = cos[len(cos) - math.ceil(len(cos) / 4):]  # the last quarter of the run's rows
    cos = cos[np.isfinite(cos)]
    if len(cos) and np.mean(cos < 0) >= COSINE_ALARM_SHARE:
        alarms.append(f"the energy term's gradient opposes the denoiser's over the last quarter of the run (median "
                      f"cosine {np.median(cos):.2f}): it trains the network against denoising")
    return alarms


def source_alarms(g) -> list[str]:
    """Alarms about one negative source's columns of a metrics file (`g`: {metric: array}, source_columns'):
    all-easy negatives, norm-separable ones, a realised fraction off the configured one, near-duplicates, and
    descent steps that were almost never accepted."""
    alarms = []
    p = _finite(g, "p_hard")
    if len(p) > 1 and np.all(p == 0):
        alarms.append("p_hard is 0 throughout: its negatives are all easy")
    nr = _finite(g, "norm_ratio")
    if len(nr) and (np.median(nr) < 0.5 or np.median(nr) > 2.0):
        alarms.append(f"median |x-|/|x+| is {np.median(nr):.2f}: separable by norm alone")
    if "fraction" in g and "configured" in g:
        real, conf = g["fraction"][()], g["configured"][()]
        ok = np.isfinite(real) & np.isfinite(conf)
        if ok.any() and abs(real[ok].mean() - conf[ok].mean()) > 0.1:
            alarms.append(f"realised fraction {real[ok].mean():.2f} vs configured {conf[ok].mean():.2f}")
    dup = _finite(g, "dup_fraction")
    if len(dup) and dup.mean() > 0.5:
        alarms.append(f"{dup.mean():.0%} of its candidates were near-duplicates")
    fn = _finite(g, "false_negative_fraction")
    if len(fn) and fn.mean() > FALSE_NEGATIVE_ALARM:
        alarms.append(f"{fn.mean():.0%} of its negatives are false negatives (kappa < 1: more probable than their "
                      "positive under the true noisy density), which the energy term ranks backwards "
                      "(train --kappa-floor moves them out)")
    acc = _finite(g, "accept_fraction")
    if len(acc) and acc.mean() < ACCEPT_ALARM:
        alarms.append(f"only {acc.mean():.1%} of its descent steps were accepted: its negatives barely move from "
                      "where they start (smaller step size?)")
    return alarms


FALSE_NEGATIVE_ALARM = 0.05  # mean false-negative fraction (kappa < 1) of a source above which info raises an alarm
COSINE_ALARM_SHARE = 0.8  # share of the last quarter's rows with a negative gradient cosine that raises an alarm
ACCEPT_ALARM = 0.05  # mean accepted fraction of a refining source's descent steps below which info raises an alarm


def environment_lines(env: dict | None) -> list[str]:
    """The command line, library versions and machine an artifact was made with (none for older files)."""
    if not env:
        return ["made on   (not recorded: written before ebmtool recorded its environment)"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    where = f"{env['device']} ({env['device_name']}), " if env.get("device") else ""
    return [f"command   {shlex.join(env['argv'])}", f"versions  {versions}",
            f"made on   {where}host {env['host']}, {env['threads']} threads"]


def config_lines(config: dict) -> list[str]:
    """A checkpoint's configuration: what was set or resolved, one per line; the fields at their defaults wrapped
    on a few lines; empty (null) fields left out (`info --json` has every field)."""
    changed, kept = beside_defaults(config)
    out = ["config    (beside the defaults; empty fields left out, --json shows every field)"]
    out += [f"  {k} = {steps_text(config) if k == 'steps' else json.dumps(v)}" for k, v in sorted(changed.items())]
    out += textwrap.wrap(f"defaults  {format_settings(kept, config)}", width=100, subsequent_indent="          ")
    return out


def format_description(d: dict) -> str:
    lines = [f"file      {d['file']}", f"kind      {d['kind']} ({d['format']})"]
    text = {"run": format_run, "live log": format_run, "seeds": format_seeds, "compare report": format_compare}
    if d["kind"] in text:
        return "\n".join(lines + text[d["kind"]](d))
    if d["kind"] in ("checkpoint", MODEL_KIND):
        m = d["model"]
        lines += [f"task      {d['task']}", f"step      {d['step']}", f"seed      {d['seed']}",
                  f"compute   {format_flops(d['compute_flops'])} FLOPs (training, inherited included; "
                  f"counted under compute rule {d['compute_rule']})",
                  f"model     {m['arch']} x_dim={m['x_dim']} y_dim={m['y_dim']} width={m['width']} "
                  f"({m['parameters']:,} parameters)",
                  f"data      {d['data_fingerprint']}", f"sha256    {d['sha256']}",
                  f"version   ebmtool {d['ebmtool_version']}, format {d['format_version']}, "
                  f"git {d['git_commit'][:12]} ({d['git_dirty_hash']})",
                  *environment_lines(d["environment"]),
                  "tensors   " + ", ".join(f"{k}: {v}" for k, v in sorted(d["tensor_groups"].items())),
                  *config_lines(d["config"])]
        return "\n".join(lines)
    prov = d.get("provenance", {})
    if prov:
        lines.append(f"made by   ebmtool {prov.get('ebmtool_version')} `{prov.get('command')}` on "
                     f"{prov.get('created')}, git {str(prov.get('git_commit'))[:12]}")
        for name, inp in prov.get("inputs", {}).items():
            lines.append(f"input     {name}: {inp['path']} (sha256 {inp['sha256'][:16]})")
        lines += environment_lines(prov.get("environment"))
    for k, v in sorted(d["attributes"].items()):
        lines.append(f"  @{k} = {v}")
    lines.append("datasets")
    for name, s in sorted(d["datasets"].items()):
        stats = f"  min {s['min']:.4g} mean {s['mean']:.4g} max {s['max']:.4g}" if "mean" in s else ""
        lines.append(f"  {name:<28} {str(tuple(s['shape'])):<16} {s['dtype']}{stats}")
    summ = d.get("summary")
    if summ and summ.get("rows"):
        lines.append(f"summary   {summ['rows']} logged rows, steps {summ['first_step']}..{summ['last_step']}")
        for k in sorted(summ["last"]):
            lines.append(f"  {k:<22} first {summ['first'][k]:<12.4g} last {summ['last'][k]:.4g}")
        if summ.get("sources"):
            metrics = ["fraction", "configured", "energy_pos", "energy_neg", "margin", "p_hard", "norm_ratio",
                       "dup_fraction", "seconds"]
            lines.append("sources   (means over logged rows)")
            lines.append("  " + f"{'source':<10}" + "".join(f"{m:>13}" for m in metrics))
            for name, v in sorted(summ["sources"].items()):
                lines.append("  " + f"{name:<10}" + "".join(f"{v.get(m, float('nan')):>13.4g}" for m in metrics))
        for k, v in sorted(summ.get("eval", {}).items()):
            lines.append(f"  eval/{k:<17} last {v:.4g}")
        for a in summ["alarms"]:
            lines.append(f"ALARM     {a}")
    return "\n".join(lines)
