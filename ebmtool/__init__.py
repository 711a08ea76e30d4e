"""ebmtool: train and debug energy-based diffusion reasoning models (the IRED family).

The Python API (docs/python-api.md), one function per command:

    train            ebmtool train: train (or resume) a run into a directory; returns a TrainResult
    evaluate_run     ebmtool eval: sample a run on held-out problems beside trivial predictors
    compare_runs     ebmtool compare: arms of seeds on identical problems, intervals, paired tests, verdicts
    mine_negatives   ebmtool mine-negatives: hard negatives per training problem, into a negatives file
    score_negatives  ebmtool score: energies of a negatives file's positives and negatives under a run
    sans_weights     ebmtool weights: SANS weights per row from a scores file
    load_model       a run's (or exported model's) frozen energy network E(x, y, t)
    load_run         a run directory read back: configuration, step, compute, curves, model
    sample           answers to problems from a run's (or exported model's) network, by IRED's sampler
    export_model     ebmtool export: one weight set, config.json and a model card, to share

`import ebmtool` is cheap: these names are imported (with torch) when first used.
"""

import importlib

try:  # written by setuptools-scm when this tree was built or installed (pip install ., pip install -e .)
    from ebmtool._version import version as __version__
except ImportError:  # a source tree put on sys.path without being installed: no version is known
    __version__ = "0+unknown"

# Format version of every artifact ebmtool writes. Readers refuse files with a newer version.
FORMAT_VERSION = 1

API = ("train", "evaluate_run", "compare_runs", "mine_negatives", "score_negatives", "sans_weights", "load_model",
       "load_run", "sample", "export_model", "Run", "TrainConfig", "TrainResult")
__all__ = [*API, "__version__", "FORMAT_VERSION"]


def __getattr__(name: str):
    """The API's names, imported from ebmtool.api on first use (PEP 562), so that `import ebmtool` (done by every
    command and every torchrun worker) loads neither torch nor the library."""
    if name in API:
        value = getattr(importlib.import_module("ebmtool.api"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ebmtool' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *API})
