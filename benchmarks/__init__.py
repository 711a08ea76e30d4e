"""Benchmarks, run on demand (`make bench` or `python -m benchmarks [NAME ...]`), never as timed unit tests.

Convention: each module `benchmarks/bench_<topic>.py` defines `run(quick: bool = False) -> dict` returning
JSON-able results (with the command that reproduces them and the machine it ran on) and `markdown(result) -> str`.
`python -m benchmarks <topic>` runs it and writes benchmarks/out/<topic>.json and .md (ignored); with --record it writes
benchmarks/results/ instead: commit those when the docs cite the new numbers.
"""
