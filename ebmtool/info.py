"""`ebmtool info`: what any artifact is, where it came from, and what it holds."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from ebmtool.artifacts import artifact_kind, load_checkpoint, open_h5, read_provenance, sha256_file, sniff
from ebmtool.evaluate import checkpoint_model
from ebmtool.models import parameter_count


def describe(path: Path) -> dict:
    """A JSON-able description: kind, provenance, and a summary of the contents."""
    path = Path(path)
    fmt = sniff(path)
    kind = artifact_kind(path)
    if fmt == "safetensors":
        return _describe_checkpoint(path)
    with open_h5(path, kind) as f:
        out = {"file": str(path), "format": "hdf5", "kind": kind, "provenance": read_provenance(f),
               "attributes": {k: _scalar(v) for k, v in f.attrs.items() if k != "provenance"},
               "datasets": {}}
        f.visititems(lambda name, obj: out["datasets"].update({name: _dataset_summary(obj)})
                     if isinstance(obj, h5py.Dataset) else None)
        if kind == "metrics":
            out["summary"] = metrics_summary(f)
    return out


def _describe_checkpoint(path: Path) -> dict:
    ck = load_checkpoint(path)
    groups: dict[str, int] = {}
    for k in ck.tensors:
        g = k.split("/", 1)[0]
        groups[g] = groups.get(g, 0) + 1
    model = checkpoint_model(ck)
    return {
        "file": str(path), "format": "safetensors", "kind": "checkpoint", "sha256": sha256_file(path),
        "task": ck.task, "step": ck.step, "seed": ck.seed,
        "model": {**ck.dims, "parameters": parameter_count(model)},
        "data_fingerprint": ck.meta.get("ebmtool.data_fingerprint"),
        "ebmtool_version": ck.meta.get("ebmtool.version"),
        "format_version": int(ck.meta.get("ebmtool.format_version", "0")),
        "git_commit": ck.meta.get("ebmtool.git_commit"), "git_dirty_hash": ck.meta.get("ebmtool.git_dirty_hash"),
        "config": ck.config, "tensor_groups": groups,
    }


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


def metrics_summary(f) -> dict:
    """First and last logged values of each metric, plus alarms for curves that look broken."""
    if "step" not in f or f["step"].shape[0] == 0:
        return {"rows": 0}
    steps = f["step"][()]
    out = {"rows": int(len(steps)), "first_step": int(steps[0]), "last_step": int(steps[-1]), "first": {},
           "last": {}, "alarms": []}
    for name in f:
        if isinstance(f[name], h5py.Dataset) and name != "step":
            a = f[name][()]
            out["first"][name], out["last"][name] = float(a[0]), float(a[-1])
    if "eval" in f and "step" in f["eval"] and f["eval/step"].shape[0]:
        out["eval"] = {c: float(f["eval"][c][-1]) for c in f["eval"]}
    if "p_hard" in f:
        p = f["p_hard"][()]
        if np.all(np.nan_to_num(p) == 0) and len(p) > 1:
            out["alarms"].append("p_hard is 0 throughout: every negative is easy, the energy term teaches little")
    if "loss_energy" in f:
        le = f["loss_energy"][()]
        le = le[np.isfinite(le)]
        if len(le) > 5 and np.ptp(le) < 1e-7:
            out["alarms"].append("loss_energy is constant: the energy term is not training")
        if len(le) == 0 and len(steps) > 0:
            out["alarms"].append("no energy loss was logged: energy supervision is off")
    if "norm_ratio" in f:
        nr = f["norm_ratio"][()]
        nr = nr[np.isfinite(nr)]
        if len(nr) and (np.median(nr) < 0.5 or np.median(nr) > 2.0):
            out["alarms"].append(f"median |x-|/|x+| is {np.median(nr):.2f}: negatives are separable by norm alone")
    return out


def format_description(d: dict) -> str:
    lines = [f"file      {d['file']}", f"kind      {d['kind']} ({d['format']})"]
    if d["kind"] == "checkpoint":
        m = d["model"]
        lines += [f"task      {d['task']}", f"step      {d['step']}", f"seed      {d['seed']}",
                  f"model     {m['arch']} x_dim={m['x_dim']} y_dim={m['y_dim']} width={m['width']} "
                  f"({m['parameters']:,} parameters)",
                  f"data      {d['data_fingerprint']}", f"sha256    {d['sha256']}",
                  f"version   ebmtool {d['ebmtool_version']}, format {d['format_version']}, "
                  f"git {d['git_commit'][:12]} ({d['git_dirty_hash']})",
                  "tensors   " + ", ".join(f"{k}: {v}" for k, v in sorted(d["tensor_groups"].items())),
                  "config"]
        lines += [f"  {k} = {json.dumps(v)}" for k, v in sorted(d["config"].items())]
        return "\n".join(lines)
    prov = d.get("provenance", {})
    if prov:
        lines.append(f"made by   ebmtool {prov.get('ebmtool_version')} `{prov.get('command')}` on "
                     f"{prov.get('created')}, git {str(prov.get('git_commit'))[:12]}")
        for name, inp in prov.get("inputs", {}).items():
            lines.append(f"input     {name}: {inp['path']} (sha256 {inp['sha256'][:16]})")
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
        for k, v in sorted(summ.get("eval", {}).items()):
            lines.append(f"  eval/{k:<17} last {v:.4g}")
        for a in summ["alarms"]:
            lines.append(f"ALARM     {a}")
    return "\n".join(lines)
