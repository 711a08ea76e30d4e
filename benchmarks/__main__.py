"""Run benchmark modules: python -m benchmarks [--quick] [--record] [topic ...].

Results go to benchmarks/out/ (ignored by git); with --record to benchmarks/results/, the committed record that
the docs cite.
"""

import argparse
import importlib
import inspect
import json
import pkgutil
import sys
from pathlib import Path

from benchmarks.common import machine

RESULTS = Path(__file__).parent / "results"  # the committed record (--record)
OUT = Path(__file__).parent / "out"  # every other run (ignored by git)


def main(argv=None):
    topics = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                    if m.name.startswith("bench_"))
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("topics", nargs="*", help=f"any of {topics} (default: all)")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, smaller sizes (a smoke run)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="device for benchmarks that take one (results get a -cuda suffix)")
    ap.add_argument("--record", action="store_true",
                    help=f"write the results into {RESULTS.parent.name}/{RESULTS.name}/ (committed) instead of "
                         f"{OUT.parent.name}/{OUT.name}/ (ignored)")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.topics) - set(topics))
    if unknown:
        ap.error(f"unknown benchmark {unknown[0]!r}; choose from {topics}")
    dest = RESULTS if args.record else OUT
    dest.mkdir(exist_ok=True)
    for topic in args.topics or topics:
        mod = importlib.import_module(f"benchmarks.bench_{topic}")
        kw = {"device": args.device} if "device" in inspect.signature(mod.run).parameters else {}
        if args.device != "cpu" and not kw:
            print(f"skipping {topic}: it has no --device option", file=sys.stderr)
            continue
        result = mod.run(quick=args.quick, **kw)
        result.setdefault("machine", machine())
        result.setdefault("command", f"python -m benchmarks {topic}" + (" --quick" if args.quick else "")
                          + (f" --device {args.device}" if kw and args.device != "cpu" else ""))
        suffix = ("-quick" if args.quick else "") + (f"-{args.device}" if args.device != "cpu" else "") \
            + (f"-{result['clock']}-clock" if result.get("clock", "wall") != "wall" else "")  # e.g. step-cpu-clock
        (dest / f"{topic}{suffix}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        md = mod.markdown(result)
        (dest / f"{topic}{suffix}.md").write_text(md + "\n")
        print(md)
        print(f"wrote {dest / topic}{suffix}.json and .md", file=sys.stderr)


if __name__ == "__main__":
    main()
