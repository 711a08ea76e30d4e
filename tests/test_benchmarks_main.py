"""`python -m benchmarks` writes its results into benchmarks/out/ (ignored by git); only --record writes the
committed benchmarks/results/ that the docs cite."""

from pathlib import Path

import benchmarks.__main__ as bench_main
from benchmarks import bench_generation

ROOT = Path(__file__).resolve().parents[1]
# a cheap stand-in for the generation benchmark's measurements (the real run takes minutes); its markdown is real
MEASURED = {"n": 2, "tasks": {"sudoku": {"n": 2, "seconds": 0.5, "per_second": 4.0, "size": 81}}}


def _files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def test_a_run_writes_to_out_and_only_record_writes_the_results(tmp_path, monkeypatch):
    committed = _files(ROOT / "benchmarks" / "results")
    results, out = tmp_path / "results", tmp_path / "out"
    results.mkdir()
    (results / "generation-quick.md").write_text("recorded\n")
    monkeypatch.setattr(bench_main, "RESULTS", results)
    monkeypatch.setattr(bench_main, "OUT", out)
    monkeypatch.setattr(bench_generation, "run", lambda quick=False: {**MEASURED})

    bench_main.main(["generation", "--quick"])
    assert _files(results) == {"generation-quick.md": b"recorded\n"}  # untouched
    assert sorted(_files(out)) == ["generation-quick.json", "generation-quick.md"]
    assert "| sudoku | 2 | 0.5 | 4 | 81 |" in _files(out)["generation-quick.md"].decode()

    bench_main.main(["generation", "--quick", "--record"])
    assert _files(results)["generation-quick.md"] == _files(out)["generation-quick.md"]
    assert sorted(_files(results)) == ["generation-quick.json", "generation-quick.md"]
    assert _files(ROOT / "benchmarks" / "results") == committed  # the repository's own record, untouched


def test_the_results_are_committed_and_out_is_ignored():
    assert bench_main.RESULTS == ROOT / "benchmarks" / "results" and bench_main.RESULTS.is_dir()
    assert bench_main.OUT == ROOT / "benchmarks" / "out"
    assert "/benchmarks/out/" in (ROOT / ".gitignore").read_text().splitlines()
