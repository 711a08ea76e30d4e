"""The package as a user installs it: one version (from git, through setuptools-scm) everywhere, a licence and
complete metadata, py.typed, and a wheel built by `pip install .`'s own route that carries all of them."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import ebmtool
from ebmtool.io.artifacts import code_version
from ebmtool.cli import cli

ROOT = Path(__file__).resolve().parent.parent


def test_one_version_everywhere(runner):
    installed = importlib.metadata.version("ebmtool")
    assert ebmtool.__version__ == installed != "0+unknown"
    r = runner.invoke(cli, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"ebmtool, version {installed}"
    assert code_version()["ebmtool_version"] == installed  # what every artifact's provenance records


def test_licence_metadata_and_typing_marker():
    meta = importlib.metadata.metadata("ebmtool")
    assert meta["License-Expression"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert meta["Author"] == "the ebmtool developers"
    assert "Typing :: Typed" in meta.get_all("Classifier")
    assert (Path(ebmtool.__file__).parent / "py.typed").exists()
    assert any(r.startswith("torch>=") for r in meta.get_all("Requires-Dist"))


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout (the version comes from git)")
def test_a_built_wheel_knows_its_version_licence_and_types(tmp_path):
    """The wheel `pip install .` builds (isolated build, from PyPI: setuptools and setuptools-scm) of the committed
    tree (a clone, so that the build writes nothing into this checkout): its metadata and its ebmtool/_version.py
    agree, and installed on its own it reports that version."""
    src = tmp_path / "src"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(src)], check=True, capture_output=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src)],
                   check=True, capture_output=True, timeout=600)
    wheel = next(tmp_path.glob("ebmtool-*.whl"))
    version = wheel.name.split("-")[1]
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert {"ebmtool/py.typed", "ebmtool/_version.py", f"ebmtool-{version}.dist-info/licenses/LICENSE"} <= names
        assert f"\nVersion: {version}\n" in z.read(f"ebmtool-{version}.dist-info/METADATA").decode()
        assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    out = subprocess.run([sys.executable, "-c", "import ebmtool; print(ebmtool.__version__, ebmtool.__file__)"],
                         env={**os.environ, "PYTHONPATH": str(target)}, cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[0].replace("+", "_") == version.replace("+", "_") and out[1].startswith(str(target))


def test_import_loads_no_torch_and_the_api_documents_itself():
    """`import ebmtool` (every command, every torchrun worker) imports neither torch nor the library; the API's
    names load on first use and each has a docstring (help(ebmtool.train))."""
    code = ("import sys, ebmtool; assert 'torch' not in sys.modules and 'ebmtool.api' not in sys.modules; "
            "import pydoc; text = pydoc.render_doc(ebmtool.train); assert 'TrainResult' in text, text; "
            "assert 'torch' in sys.modules; print(sorted(n for n in ebmtool.API if not getattr(ebmtool, n).__doc__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert set(ebmtool.API) <= set(dir(ebmtool))
    with pytest.raises(AttributeError):
        ebmtool.no_such_name  # noqa: B018
