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
