"""Reports of a comparison as text tables and Markdown, and the number formats `study` shares."""

from __future__ import annotations

import math


from ebmtool.analysis import stats as S
from ebmtool.analysis.evaluate import problems_label

def fmt_number(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _ci(lo, hi) -> str:
    return f"[{fmt_number(lo)}, {fmt_number(hi)}]"


def fmt_p(p) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else "<1e-4"


def _flops(v) -> str:
    """FLOPs in three significant digits, compactly: 31000000000000.0 -> '3.10e13'."""
    if v is None:
        return "n/a"
    mantissa, exponent = f"{v:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _ratio(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def summary_lines(report: dict) -> dict[str, list[list[str]]]:
    """Rows of the three tables (config diff, per group, per comparison), shared by text and markdown."""
    pct = f"{round(report['confidence'] * 100)}%"
    cd = report["config_diff"]
    names = [g["name"] for g in report["groups"]]

    def label(k):
        if k in cd["derived"]:
            return f"{k} (derived)"
        return f"{k} (follows matched compute)" if k == "steps" and cd["steps_follow_compute"] else k

    diff_rows = [[label(k)] + [v[n] for n in names] for k, v in cd["keys"].items()]
    diff_rows += [[f"{k} (cadence only)"] + [v[n] for n in names] for k, v in cd["cadence"].items()]
    diff_rows.append(["seed (replicates)"] + [", ".join(map(str, cd["seeds"][n])) for n in names])
    group_rows = []
    for g in report["groups"]:
        spread = f"{fmt_number(g['seed_mean'])} ± {fmt_number(g['seed_sd'], 2)}" if g["n_seeds"] > 1 else "-"
        group_rows.append([g["name"] + (" (baseline)" if g["name"] == report["baseline"] else ""),
                           str(g["n_seeds"]), _flops(g["compute_flops_mean"]), _ratio(g["compute_ratio"]),
                           fmt_number(g["mean"]), _ci(g["ci_low"], g["ci_high"]), spread])
    comp_rows, verdict_rows = [], []
    for c in report["comparisons"]:
        pr, pm = c["problems"], c["primary"]
        label = f"{c['variant']} - {c['baseline']}"
        comp_rows.append([label, fmt_number(pr["mean_diff"]), _ci(pr["ci_low"], pr["ci_high"]), fmt_number(pr["relative_diff"], 3),
                          fmt_p(pr["p"]), fmt_p(pr["p_wilcoxon"]), fmt_number(pr["d_z"], 3),
                          f"{pr['n_variant_better']}/{pr['n_variant_worse']}/{pr['n_tied']}"])
        basis = "seeds (paired t)" if pm["test"] == S.SEED_TEST_PAIRED else \
            "seeds (Welch t)" if pm["test"] == S.SEED_TEST_WELCH else "problems (sign-flip)"
        verdict_rows.append([label, basis, fmt_number(pm["mean_diff"]), _ci(pm["ci_low"], pm["ci_high"]), fmt_p(pm["p"]),
                             fmt_p(pm["p_holm"]), c["verdict"].upper()])
    return {"diff": diff_rows, "diff_header": ["config key"] + names,
            "groups": group_rows,
            "groups_header": ["arm", "seeds", "compute", "x base", f"{report['metric']} (mean)",
                              f"{pct} CI (problems)", "per-seed mean ± SD"],
            "comps": comp_rows,
            "comps_header": ["paired over problems", "mean diff", f"{pct} CI", "relative", "p sign-flip",
                             "p Wilcoxon", "d_z", "better/worse/tied"],
            "verdicts": verdict_rows,
            "verdicts_header": ["variant - baseline", "basis", "mean diff", f"{pct} CI", "p", "p Holm", "verdict"]}


def md_table(rows, header) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def diagnostics_rows(report: dict) -> tuple[list[list[str]], list[str]]:
    """(rows, header) of compare's training-diagnostics table: the columns any arm logged."""
    diag = report["diagnostics"]
    cols = [c for c in dict.fromkeys(c for d in diag.values() for c in d)]
    return [[arm, *(fmt_number(d[c]) if c in d else "–" for c in cols)] for arm, d in diag.items()], ["arm", *cols]


def arm_mean_table(values: dict[str, list[dict]], cols, missing: str = "–") -> str:
    """A Markdown table, one row per arm: its number of runs, then per column the mean over the runs' finite
    values (`missing` where no run has the column, n/a where none is finite)."""
    rows = []
    for arm, runs in values.items():
        row = [arm, str(len(runs))]
        for c in cols:
            vals = [r[c] for r in runs if c in r]
            finite = [v for v in vals if math.isfinite(v)]
            row.append(missing if not vals else fmt_number(sum(finite) / len(finite)) if finite else "n/a")
        rows.append(row)
    return md_table(rows, ["arm", "runs", *cols])


def format_markdown(report: dict) -> str:
    rows = summary_lines(report)
    desc = report["problems"]
    out = [f"# Comparison: {report['task']}", "",
           f"Primary metric **{report['metric']}** ({report['direction']} is better), declared by the task. "
           f"{report['n_problems']} held-out problems ({problems_label(desc)}; fingerprint `{desc.get('fingerprint', '')[:12]}`), "
           f"{report['weights']} weights. Baseline: **{report['baseline']}**.", "",
           "## Configuration differences", "", md_table(rows["diff"], rows["diff_header"]), "",
           "## Results", "", md_table(rows["groups"], rows["groups_header"]), ""]
    if rows["comps"]:
        out += [md_table(rows["comps"], rows["comps_header"]), "", md_table(rows["verdicts"], rows["verdicts_header"]),
                ""]
    out += [f"Differences are variant − baseline. Problem-level test: {report['tests']['problems']} (Wilcoxon "
            f"signed-rank shown as a check). Across seeds: {report['tests']['seeds_paired']}, or "
            f"{report['tests']['seeds_unpaired']}. {report['tests']['correction']}. Bootstrap: "
            f"{report['bootstrap']} resamples, seed {report['seed']}; alpha {report['alpha']:.3g}. Compute is "
            "training FLOPs (mean over the arm's runs); x base is its ratio to the baseline arm's.", "",
            "Trivial predictors: " + ", ".join(f"{k} {fmt_number(v)}" for k, v in report["trivial_baselines"].items()),
            "", "## Runs", "",
            md_table([[r["name"], r["path"], str(r["step"]), str(r["seed"]), _flops(r["compute_flops"]),
                        fmt_number(r["mean"]), _ci(r["ci_low"], r["ci_high"]), r["sha256"][:12]] for r in report["runs"]],
                      ["run", "checkpoint", "step", "seed", "compute", report["metric"], "CI", "sha256"])]
    if report.get("diagnostics"):
        out += ["", "## Training diagnostics", "", "Tail means (last 10 % of each run's logged rows), averaged over the "
                "arm's runs. kappa < 1 marks a false negative (more probable than its positive); grad_cosine < 0 "
                "means the energy term's gradient opposes the denoiser's.", "",
                md_table(*diagnostics_rows(report))]
    if report["energies"]:
        out += ["", "Energies of positives and IRED negatives (same t and noise for every model):", "",
                md_table([[k, fmt_number(v["mean_e_pos"]), fmt_number(v["mean_e_neg"]), fmt_number(v["p_hard"], 3)]
                           for k, v in report["energies"].items()], ["run", "mean E+", "mean E-", "p_hard"])]
    if report["notes"] or report["warnings"]:
        out += [""] + [f"- note: {n}" for n in report["notes"]] + [f"- **WARNING:** {w}" for w in report["warnings"]]
    return "\n".join(out) + "\n"
