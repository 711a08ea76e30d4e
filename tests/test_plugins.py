"""ebmtool.plugins: modules named in EBMTOOL_PLUGINS are imported once; a bad name is one InputError."""

import sys

import pytest

from ebmtool import plugins
from ebmtool.runtime.errors import InputError


def test_env_plugins_are_imported_once_in_order(tmp_path, monkeypatch):
    (tmp_path / "plug_a.py").write_text("import builtins\nbuiltins.__dict__.setdefault('_plug_log', []).append('a')\n")
    (tmp_path / "plug_b.py").write_text("import builtins\nbuiltins.__dict__.setdefault('_plug_log', []).append('b')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(plugins.ENV_VAR, " plug_b, plug_a,plug_b ")
    monkeypatch.setattr(plugins, "_loaded", [])
    import builtins
    monkeypatch.setattr(builtins, "_plug_log", [], raising=False)
    assert plugins.plugin_modules()[:2] == ["plug_b", "plug_a"]
    assert plugins.load_plugins()[:2] == ["plug_b", "plug_a"]
    plugins.load_plugins()
    assert builtins._plug_log == ["b", "a"]  # each imported once, in the order named
    for m in ("plug_a", "plug_b"):
        sys.modules.pop(m, None)


def test_a_missing_plugin_is_one_input_error(monkeypatch):
    monkeypatch.setenv(plugins.ENV_VAR, "no_such_ebmtool_plugin_xyz")
    monkeypatch.setattr(plugins, "_loaded", [])
    with pytest.raises(InputError, match="cannot import the plugin module 'no_such_ebmtool_plugin_xyz'"):
        plugins.load_plugins()


def test_the_python_api_loads_plugins_as_the_command_line_does(tmp_path):
    """A plugin named in EBMTOOL_PLUGINS is imported when the Python API is first used, not only by the CLI."""
    import os
    import subprocess

    (tmp_path / "plug_api.py").write_text("from pathlib import Path\nPath(__file__).with_suffix('.loaded').touch()\n")
    env = {**os.environ, plugins.ENV_VAR: "plug_api",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    code = "import sys, ebmtool; assert 'plug_api' not in sys.modules; ebmtool.train; assert 'plug_api' in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "plug_api.loaded").exists()
