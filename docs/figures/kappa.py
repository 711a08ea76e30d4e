"""Draws docs/figures/kappa.png: the geometry of kappa (left) and `ebmtool preflight` of four source settings on
8x8 inverse (right). Run from the repository root: .venv/bin/python docs/figures/kappa.py"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ebmtool.config import TrainConfig  # noqa: E402
from ebmtool.analysis.preflight import preflight  # noqa: E402

SETTINGS = {"ired": {}, "anm": {"negatives": "anm"}, "anm, K = 16": {"negatives": "anm", "k": 16},
            "anm, --kappa-floor 1.2": {"negatives": "anm", "kappa_floor": 1.2}}


def geometry(ax):
    mode, pos = np.array([0.0, 0.0]), np.array([0.8, 0.3])
    r = np.linalg.norm(pos - mode)
    th = np.linspace(0, 2 * np.pi, 200)
    ax.fill(r * np.cos(th), r * np.sin(th), color="#f4cccc", label="kappa < 1: more probable than x+")
    ax.plot(1.2 * r * np.cos(th), 1.2 * r * np.sin(th), "--", color="#38761d", label="the floor, kappa = 1.2")
    ax.plot(*mode, "k+", ms=12)
    ax.annotate("noisy mode\nsqrt(ab_t) y", mode, (-1.1, -0.35), arrowprops=dict(arrowstyle="->"), fontsize=8)
    ax.plot(*pos, "o", color="#1155cc", zorder=3)
    ax.annotate("x+ (kappa 1)", pos, (0.45, 0.75), fontsize=8, color="#1155cc")
    start = 2 * pos  # ANM's clean start y + c eps, re-noised with eps: twice as far out as x+
    stop = 0.12 * pos + np.array([0.0, -0.08])
    ax.plot(*start, "s", color="#cc0000")
    ax.annotate("", stop, start, arrowprops=dict(arrowstyle="->", color="#cc0000"))
    ax.annotate("ANM's x- starts\n(kappa 2)", start, (1.05, 0.2), fontsize=8, color="#cc0000")
    ax.annotate("energy descent passes x+\nand stops near the mode", stop, (-1.7, 0.9), fontsize=8,
                color="#cc0000", arrowprops=dict(arrowstyle="-", color="#cc0000", lw=0.5))
    moved = 1.2 * r * (stop / np.linalg.norm(stop))
    ax.plot(*moved, "s", color="#38761d")
    ax.annotate("", moved, stop, arrowprops=dict(arrowstyle="->", color="#38761d"))
    ax.annotate("--kappa-floor: moved\nout to kappa 1.2", moved, (0.05, -1.2), fontsize=8, color="#38761d")
    ax.set_aspect("equal")
    ax.set_xlim(-1.8, 2.0)
    ax.set_ylim(-1.4, 1.4)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="lower left", fontsize=7)
    ax.set_title("kappa = |x- - mode| / |x+ - mode|  (noisy space)", fontsize=9)


def measured(ax):
    for name, kw in SETTINGS.items():
        rows = preflight(TrainConfig(**kw), n=512).rows
        ax.plot([r["level"] for r in rows], [100 * r["false_negative_fraction"] for r in rows], "o-", label=name)
    ax.set_xlabel("noise level t")
    ax.set_ylabel("false negatives (%)")
    ax.set_title("ebmtool preflight, 8x8 inverse, exact energy", fontsize=9)
    ax.legend(fontsize=7)


def main():
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    geometry(axes[0])
    measured(axes[1])
    fig.tight_layout()
    fig.savefig(Path(__file__).with_suffix(".png"), dpi=110)


if __name__ == "__main__":
    main()
