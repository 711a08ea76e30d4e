"""The training step and the sampler against the machine's limit, before and after a change, in one run.

`python -m benchmarks step` measures this tree; with EBMTOOL_BENCH_AGAINST=REV (a git revision) it checks REV out
into a temporary worktree and measures both, alternating between them round by round, so that a change of the
machine's load hits both alike (these machines are shared). Per setting (inverse SIZE x SIZE, the paper's MLP,
width 512, fp32, ired K = 1, T torch threads; each round a fresh process per tree):

- bare step: median seconds of `train_step` with no logged row (the loop's own step, benchmarks.common);
- logged step: mean seconds per step over rows of 10 steps with --log-every 10 semantics: every step's
  diagnostics, the row's last step measuring the energy term's gradient share, and the row's values read to
  the host (what the CLI's default pays), and its overhead over the bare step;
- fraction of the matmul limit: the step's counted FLOPs (the library's rule, what `compute_flops` records)
  per second over the dense fp32 matmul rate at (batch * (1 + K), width) x (width, width) measured in the same
  process, as `python -m benchmarks stages` computes it;
- sampler (settings with `sample`): seconds per problem of the annealed sampler at batch 256, its fraction of
  the limit at (256, width) x (width, width), and a checksum of the answers (equal answers: equal checksums);
- reference (settings with `reference`, CPU): the IRED reference's step and sampler on the same weights and
  problems (benchmarks/release.py: the release's loop re-implemented: 6 calls per step, double backward, FiLM
  per row, 110 sampler calls per problem), timed in fresh processes alternating with the trees, and this tree's
  step and sampler as fractions of it (and how far the two samplers' answers are apart);
- negative sources (settings with `negatives`): anm K = 16 and hnm K = 1 at 8x8, their step over the ired
  step of the same setting, per tree;
- `--device cuda`: 20x20 at batch 256 and 2048, eager against `compile_explicit` (inductor) and against it with
  CUDA graphs (mode="reduce-overhead"), first-step (compilation) seconds too; no recipe;
- recipe (not with --quick, CPU only): `ebmtool train --seed 0` (the CPU recipe: 8x8, batch 256, 1,500 steps), one thread,
  both trees' runs side by side (started together, as a study runs two jobs), wall seconds of training as the
  command reports them, and the final validation MSE.

Each figure is the median over rounds of the per-process medians; speed-up = before / after.
"""

from __future__ import annotations

import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = [  # name, size, batch, threads, measure the sampler too, time the reference too, negatives
    {"name": "inverse 20x20, batch 64, 2 threads", "size": 20, "batch": 64, "threads": 2, "sample": False},
    {"name": "inverse 20x20, batch 256, 2 threads", "size": 20, "batch": 256, "threads": 2, "sample": True,
     "reference": True},
    {"name": "inverse 8x8, batch 256, 1 thread", "size": 8, "batch": 256, "threads": 1, "sample": False},
    {"name": "inverse 8x8, batch 256, 1 thread, anm K=16", "size": 8, "batch": 256, "threads": 1, "sample": False,
     "negatives": "anm", "k": 16, "repeats": 5, "rows": 1},
    {"name": "inverse 8x8, batch 256, 1 thread, hnm K=1", "size": 8, "batch": 256, "threads": 1, "sample": False,
     "negatives": "hnm", "k": 1},
]
QUICK = [{"name": "inverse 8x8, batch 64, 1 thread", "size": 8, "batch": 64, "threads": 1, "sample": True,
          "reference": True}]
# on a GPU: eager against the compiled explicit gradient (models.compile_explicit), plain and with CUDA graphs
CUDA = [{"name": f"inverse 20x20, batch {b}, {arm}", "size": 20, "batch": b, "threads": 4, "sample": b == 256,
         "device": "cuda", "compile": mode}
        for b in (256, 2048) for arm, mode in (("eager", None), ("compiled", "default"),
                                               ("compiled + CUDA graphs", "reduce-overhead"))]
# EBMTOOL_BENCH_CLOCK=cpu: every figure is the CPU time of its (one-thread) process, not wall time, for a machine
# whose cores other, higher-priority work keeps busy: there a process waits for a core most of the time, and wall
# time measures the wait. CPU time of a process with several threads would count their spin-waits, so these
# settings use one thread.
CPU_SETTINGS = [
    {"name": "inverse 20x20, batch 256, 1 thread", "size": 20, "batch": 256, "threads": 1, "sample": True,
     "reference": True, "repeats": 5, "rows": 1},
    {"name": "inverse 8x8, batch 256, 1 thread", "size": 8, "batch": 256, "threads": 1, "sample": False,
     "repeats": 7, "rows": 1},
    {"name": "inverse 8x8, batch 256, 1 thread, anm K=16", "size": 8, "batch": 256, "threads": 1, "sample": False,
     "negatives": "anm", "k": 16, "repeats": 3, "rows": 0},
    {"name": "inverse 8x8, batch 256, 1 thread, hnm K=1", "size": 8, "batch": 256, "threads": 1, "sample": False,
     "negatives": "hnm", "k": 1, "repeats": 5, "rows": 0},
]
WIDTH, ROWS, LOG_EVERY = 512, 3, 10


def _clock(setting: dict):
    return time.process_time if setting.get("clock") == "cpu" else time.perf_counter


def _timeit(fn, repeats: int, warmup: int, now, sync=None) -> float:
    """Median seconds of fn() by the clock `now` (this file's, so both trees are timed alike)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        t0 = now()
        fn()
        if sync:
            sync()
        times.append(now() - t0)
    return statistics.median(times)


def _matmul_rate(m: int, k: int, n: int, now, device="cpu") -> float:
    """The dense fp32 matmul rate at (m, k) x (k, n) by the clock `now`: the machine's limit there."""
    import torch

    from benchmarks.common import sync_for

    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    return 2.0 * m * k * n / _timeit(lambda: a @ b, 10, 3, now, sync_for(device))


def probe(setting: dict, quick: bool) -> dict:
    """One process's measurements of `setting`, with the ebmtool (and benchmarks.common) found on sys.path:
    this tree's or the other revision's."""
    import torch

    from benchmarks.common import setup_training, sync_for
    from ebmtool.training import draw_batch, train_step
    try:
        from ebmtool.training.diagnostics import to_host  # rows keep device values until logged
    except ImportError:  # a revision whose rows are floats already
        def to_host(rows):
            return rows

    torch.set_num_threads(setting["threads"])
    if setting.get("impl") == "reference":
        return probe_reference(setting, quick)
    size, b, device, width = setting["size"], setting["batch"], setting.get("device", "cpu"), setting.get("width", WIDTH)
    repeats, sync, now = (5 if quick else setting.get("repeats", 15)), sync_for(device), _clock(setting)
    _, _, st = setup_training(size, b, width, device, **{k: setting[k] for k in ("negatives", "k") if k in setting})
    if setting.get("compile"):
        from ebmtool.method.models import compile_explicit

        compile_explicit(st.model, **({} if setting["compile"] == "default" else {"mode": setting["compile"]}))

    def bare():
        train_step(st, draw_batch(st, st.step % 8))

    compute0 = st.compute
    t_first = now()
    bare()
    if sync:
        sync()
    t_first = now() - t_first  # with --compile: the compilation
    flops = st.compute - compute0  # the rule's count of one step (every step of ired K = 1 costs the same)
    t_bare = _timeit(bare, repeats, 3, now, sync)
    st.cfg.log_every = LOG_EVERY
    st.step = (st.step // LOG_EVERY + 1) * LOG_EVERY  # the first timed row starts at a row boundary
    rows, t0 = (1 if quick else setting.get("rows", ROWS)), now()
    for _ in range(rows):
        window = [train_step(st, draw_batch(st, st.step % 8)).row for _ in range(LOG_EVERY)]
        to_host(window)
    if sync:
        sync()
    t_logged = (now() - t0) / (rows * LOG_EVERY) if rows else float("nan")  # rows 0: not measured
    limit = _matmul_rate(b * 2, width, width, now, device)
    out = {"bare_step_s": t_bare, "logged_step_s": t_logged, "logging_overhead": t_logged / t_bare - 1,
           "first_step_s": t_first,
           "flops_per_step": flops, "matmul_flops_per_s": limit, "fraction_of_limit": flops / t_bare / limit}
    if setting["sample"]:
        out.update(sampler(size, quick, device, setting.get("compile"), width, now))
    return out


def probe_reference(setting: dict, quick: bool) -> dict:
    """The IRED reference's step and sampler (benchmarks/release.py: the release's loop re-implemented) on the
    weights and problems `probe` uses, and how far its sampler's answers are from ebmtool's: the fraction of
    problems answered alike to 1e-4 (a check that the two compute the same thing; where a descent step's two
    energies are equal to rounding, the two acceptance tests can decide differently, which moves that problem's
    answer further) and the largest difference."""
    import torch

    from benchmarks import release
    from benchmarks.common import setup_training
    from ebmtool.method.diffusion import SamplerSettings, cosine_schedule, sample
    from ebmtool.method.models import EnergyMLP

    size, b, width = setting["size"], setting["batch"], setting.get("width", WIDTH)
    _, data, st = setup_training(size, b, width)
    step = release.ReleaseStep(st.model, cosine_schedule())
    batches = [data.batch_with_mask(i, "cpu")[:2] for i in range(8)]
    gen, count = torch.Generator().manual_seed(0), [0]

    def one():
        x, y = batches[count[0] % 8]
        count[0] += 1
        step(x, y, gen)

    now = _clock(setting)
    out = {"bare_step_s": _timeit(one, 5 if quick else setting.get("repeats", 15), 3, now)}
    if setting["sample"]:
        d = size * size
        torch.manual_seed(0)
        model = EnergyMLP(d, d, width).eval().requires_grad_(False)  # the same weights as `sampler`'s
        x = torch.randn(256, d, generator=torch.Generator().manual_seed(1))
        sched = cosine_schedule()

        def run():
            return release.sample(model, x, sched, d, torch.Generator().manual_seed(0))

        answers = run()
        with torch.no_grad():
            ours = sample(model, x, sched, d, SamplerSettings(), torch.Generator().manual_seed(0))
        t = _timeit(run, 2 if quick else 3, 1, now)
        apart = (answers - ours).abs().amax(dim=1)
        out.update(sample_s_per_problem=t / 256, sample_max_answer_difference=float(apart.max()),
                   sample_rows_agreeing=float((apart <= 1e-4).float().mean()))
    return out


def sampler(size: int, quick: bool, device: str = "cpu", compile_mode: str | None = None, width: int = WIDTH,
            now=time.perf_counter) -> dict:
    """Seconds per problem of the sampler at batch 256, the network's initial weights of seed 0 (the same in
    every tree, so equal answers mean an equal sampler)."""
    import torch

    from benchmarks.common import counted_flops, flop_rule, sync_for
    from ebmtool.method.diffusion import SamplerSettings, cosine_schedule, sample
    from ebmtool.method.models import EnergyMLP, compile_explicit

    b, d = 256, size * size
    torch.manual_seed(0)
    model = EnergyMLP(d, d, width).to(device).eval().requires_grad_(False)
    if compile_mode:
        compile_explicit(model, **({} if compile_mode == "default" else {"mode": compile_mode}))
    x = torch.randn(b, d, generator=torch.Generator().manual_seed(1)).to(device)
    sched = cosine_schedule().to(device)

    def run():
        return sample(model, x, sched, d, SamplerSettings(), torch.Generator().manual_seed(0))

    model.counter.reset()
    answers = run()
    flops = counted_flops(flop_rule(model), model.counter)
    t = _timeit(run, 2 if quick else 3, 1, now, sync_for(device))
    limit = _matmul_rate(b, width, width, now, device)
    return {"sample_s_per_problem": t / b, "sample_fraction_of_limit": flops / t / limit,
            "sample_answer_checksum": float(answers.double().abs().sum())}


def _probe_in(tree: Path, setting: dict, quick: bool) -> dict:
    """`probe` in a fresh interpreter whose ebmtool and benchmarks packages are `tree`'s."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(setting["threads"])}
    out = subprocess.run([sys.executable, __file__, json.dumps(setting), "1" if quick else "0"], cwd=tree, env=env,
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"probe in {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def recipe(trees: dict, steps: int) -> dict:
    """`ebmtool train --seed 0 --steps STEPS` in every tree at once, one thread each: the training seconds the
    command reports (wall) and the CPU seconds of the whole process (start-up and evaluation included)."""
    procs = {}
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = usage.ru_utime + usage.ru_stime  # the probes' CPU time so far
    with tempfile.TemporaryDirectory() as tmp:
        for name, tree in trees.items():
            env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "ebmtool", "train", "--seed", "0", "--steps", str(steps), "-o",
                 str(Path(tmp) / name)], cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out = {}
        for name, p in procs.items():
            stdout, stderr = p.communicate()
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # every child so far, less those read before
            cpu = usage.ru_utime + usage.ru_stime - sum(v.get("cpu_seconds", 0.0) for v in out.values()) - cpu0
            if p.returncode:
                raise RuntimeError(f"recipe run in {trees[name]} failed:\n{stderr[-3000:]}")
            secs = re.search(r"trained \d+ steps in ([0-9.]+) s", stdout)
            mse = re.search(r"validation mse ([0-9.e-]+)", stdout)
            out[name] = {"train_seconds": float(secs.group(1)), "val_mse": float(mse.group(1)) if mse else None,
                         "cpu_seconds": cpu}
    return out


def run(quick: bool = False, device: str = "cpu") -> dict:
    against, clock = os.environ.get("EBMTOOL_BENCH_AGAINST"), os.environ.get("EBMTOOL_BENCH_CLOCK", "wall")
    rounds = 1 if quick else int(os.environ.get("EBMTOOL_BENCH_ROUNDS", "3"))
    recipe_steps = int(os.environ.get("EBMTOOL_BENCH_RECIPE_STEPS", "1500"))
    settings = (QUICK if quick else CPU_SETTINGS if clock == "cpu" else SETTINGS) if device == "cpu" else [
        {**s, "device": device} for s in (CUDA[:3] if quick else CUDA)]
    settings = [{**s, "clock": clock} for s in settings]
    t0, load0 = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"after": ROOT}
        if against:
            subprocess.run(["git", "worktree", "add", "--detach", "-f", f"{tmp}/before", against], cwd=ROOT,
                           check=True, capture_output=True)
            trees = {"before": Path(tmp) / "before", **trees}
        try:
            res = {"against": against, "quick": quick, "width": WIDTH, "device": device, "clock": clock,
                   "rounds": rounds, "settings": {}}
            for setting in settings:
                arms = {**trees, **({"reference": ROOT} if setting.get("reference") else {})}
                per = {name: [] for name in arms}
                for _ in range(rounds):
                    for name, tree in arms.items():
                        probed = {**setting, "impl": "reference"} if name == "reference" else setting
                        try:
                            per[name].append(_probe_in(tree, probed, quick))
                        except RuntimeError as exc:  # e.g. a compile mode this device refuses: say so, go on
                            per[name].append({"error": str(exc).strip().splitlines()[-1][:300]})
                res["settings"][setting["name"]] = {name: _medians(r) for name, r in per.items()}
                print(f"  {setting['name']} done", file=sys.stderr)
            if not quick and device == "cpu" and recipe_steps:
                res["recipe"] = {"steps": recipe_steps, **recipe(trees, recipe_steps)}
        finally:
            if against:
                subprocess.run(["git", "worktree", "remove", "--force", f"{tmp}/before"], cwd=ROOT, capture_output=True)
    res.update(load_average_at_start=load0, load_average_at_end=os.getloadavg(), wall_seconds=time.time() - t0)
    return res


def _medians(rounds: list[dict]) -> dict:
    failed = [r["error"] for r in rounds if "error" in r]
    if failed:
        return {"error": failed[0], "rounds": len(rounds)}
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]} | {"rounds": len(rounds)}


def _reference_rows(name: str, per: dict) -> list[str]:
    """The reference's row of a setting, and this tree's step and sampler as fractions of the reference's."""
    ref, a = per["reference"], per["after"]
    if "error" in ref or "error" in a:
        return [f"| {name} | reference | failed: {ref.get('error') or a.get('error')} | | | | |"]
    samp = f"{1e3 * ref['sample_s_per_problem']:.2f}" if "sample_s_per_problem" in ref else ""
    lines = [f"| {name} | reference (release loop) | {1e3 * ref['bare_step_s']:.1f} | | | {samp} | |"]
    frac = f"{a['sample_s_per_problem'] / ref['sample_s_per_problem']:.2f}x ({ref['sample_rows_agreeing']:.0%} of " \
        f"answers within 1e-4, largest difference {ref['sample_max_answer_difference']:.1e})" if samp else ""
    lines.append(f"| {name} | after / reference | {a['bare_step_s'] / ref['bare_step_s']:.2f}x | "
                 f"{a['logged_step_s'] / ref['bare_step_s']:.2f}x | | {frac} | |")
    return lines


def _source_ratios(r: dict) -> list[str]:
    """Each negative source's step over the ired step of the same size, batch and threads, per tree."""
    known = list({s["name"]: s for s in SETTINGS + CPU_SETTINGS}.values())  # the clocks' lists share names
    base = {(s["size"], s["batch"], s["threads"]): s["name"] for s in known if "negatives" not in s}
    lines = []
    for s in known:
        key = (s["size"], s["batch"], s["threads"])
        if "negatives" not in s or s["name"] not in r["settings"] or base.get(key) not in r["settings"]:
            continue
        per, ired = r["settings"][s["name"]], r["settings"][base[key]]
        cells = [f"{per[t]['bare_step_s'] / ired[t]['bare_step_s']:.2f}x" if "error" not in per[t] and
                 "error" not in ired[t] else "failed" for t in _trees(per) if t in ired]
        lines.append(f"| {s['negatives']} K={s['k']} over ired ({base[key]}) | " + " | ".join(cells) + " |")
    if not lines:
        return []
    trees = _trees(next(iter(r["settings"].values())))
    return ["", "Step cost of a negative source over the ired step of the same setting, per tree (bare steps):",
            "", "| source | " + " | ".join(trees) + " |", "|---|" + "---|" * len(trees), *lines]


def _trees(per: dict) -> list[str]:
    """The measured trees of a result in reading order (a recorded JSON has its keys sorted)."""
    return [t for t in ("before", "after") if t in per]


def _ms(v: float) -> str:
    return "—" if v != v else f"{1e3 * v:.1f}"  # NaN: not measured


def _recipe_rows(r: dict) -> list[str]:
    rec = {k: v for k, v in r["recipe"].items() if k != "steps"}
    steps = r["recipe"].get("steps", 1500)
    lines = ["", f"The CPU recipe end to end (`ebmtool train --seed 0 --steps {steps}`, 1 thread, the trees' runs "
             "side by side): training seconds as the command reports them (wall), and the CPU seconds of the whole "
             "process (start-up and the final evaluation included):", "",
             "| tree | training seconds (wall) | process CPU seconds | validation MSE |", "|---|---|---|---|"]
    for tree, m in ((t, rec[t]) for t in _trees(rec)):
        lines.append(f"| {tree} | {m['train_seconds']:.1f} | {m.get('cpu_seconds', float('nan')):.1f} | "
                     f"{m['val_mse']} |")
    if "before" in rec:
        b, a = rec["before"], rec["after"]
        cpu = f"{b['cpu_seconds'] / a['cpu_seconds']:.2f}x" if "cpu_seconds" in a else ""
        lines.append(f"| speed-up | {b['train_seconds'] / a['train_seconds']:.2f}x | {cpu} | |")
    return lines


def _setting_rows(name: str, per: dict) -> list[str]:
    lines = []
    for tree in _trees(per):
        m = per[tree]
        if "error" in m:
            lines.append(f"| {name} | {tree} | failed: {m['error']} | | | | |")
            continue
        samp = f"{1e3 * m['sample_s_per_problem']:.2f} ({m['sample_fraction_of_limit']:.2f})" \
            if "sample_s_per_problem" in m else ""
        over = m["logged_step_s"] / m["bare_step_s"] - 1
        lines.append(f"| {name} | {tree} | {_ms(m['bare_step_s'])} | {_ms(m['logged_step_s'])}"
                     + ("" if over != over else f" ({100 * over:+.0f} %)") + f" | {m['fraction_of_limit']:.2f} | "
                     f"{samp} | {m.get('first_step_s', float('nan')):.2f} |")
    if "before" in per and not any("error" in m for m in per.values()):
        b, a = per["before"], per["after"]
        same = ""
        if "sample_answer_checksum" in a:
            ca, cb = a["sample_answer_checksum"], b["sample_answer_checksum"]
            same = ", sampler answers " + ("equal" if ca == cb else f"differ (checksums {cb:.9g} / {ca:.9g}: "
                                           f"{abs(ca - cb) / abs(cb):.0e} relative)")
        logged = b["logged_step_s"] / a["logged_step_s"]
        lines.append(f"| {name} | speed-up | {b['bare_step_s'] / a['bare_step_s']:.2f}x | "
                     + ("—" if logged != logged else f"{logged:.2f}x") + " | | "
                     + (f"{b['sample_s_per_problem'] / a['sample_s_per_problem']:.2f}x{same}" if same else "")
                     + " | |")
    if "reference" in per:
        lines += _reference_rows(name, per)
    return lines


def markdown(r: dict) -> str:
    cpu = r.get("clock") == "cpu"
    rounds = r.get("rounds", 1 if r["quick"] else 3)
    lines = [f"## The training step and the sampler ({'vs ' + r['against'] if r['against'] else 'this tree'}, "
             f"{r.get('device', 'cpu')})", "",
             f"Width {r['width']}, fp32, ired K = 1 unless a setting names a source; medians over {rounds} "
             f"round{'s' if rounds > 1 else ''} of fresh processes, the trees alternating; "
             + ("times are CPU seconds of the one-thread process (EBMTOOL_BENCH_CLOCK=cpu), not wall time. "
                if cpu else "") +
             "fraction = counted FLOP/s over the fp32 matmul rate at the step's shapes, same process and clock. "
             "logged = --log-every 10 (diagnostics every step, the gradient share and one read of the row on its "
             "last step).", "",
             "| setting | tree | bare step ms | logged step ms (overhead) | fraction of limit | sampler ms/problem "
             "(fraction) | first step s |", "|---|---|---|---|---|---|---|"]
    for name, per in r["settings"].items():
        lines += _setting_rows(name, per)
    lines += _source_ratios(r)
    if "recipe" in r:
        lines += _recipe_rows(r)
    env = " ".join(f"{k}={v}" for k, v in (("EBMTOOL_BENCH_AGAINST", r["against"] or "REV"),
                                           ("EBMTOOL_BENCH_CLOCK", "cpu" if cpu else None),
                                           ("EBMTOOL_BENCH_ROUNDS", rounds if rounds != 3 and not r["quick"] else None),
                                           ("EBMTOOL_BENCH_RECIPE_STEPS", r.get("recipe", {}).get("steps")
                                            if r.get("recipe", {}).get("steps", 1500) != 1500 else None)) if v)
    lines += ["", f"Load average {r['load_average_at_start'][0]:.2f} at the start, {r['load_average_at_end'][0]:.2f} "
              f"at the end; {r['wall_seconds']:.0f} s. Reproduce: `{env} "
              f"python -m benchmarks step{' --quick' if r['quick'] else ''}"
              f"{' --device ' + r['device'] if r.get('device', 'cpu') != 'cpu' else ''}`."]
    return "\n".join(lines)


if __name__ == "__main__":  # a probe: python bench_step.py SETTING_JSON QUICK (run by _probe_in)
    sys.path[0] = os.environ.get("PYTHONPATH", sys.path[0])  # the measured tree's packages, not this file's folder
    print(json.dumps(probe(json.loads(sys.argv[1]), sys.argv[2] == "1")))
