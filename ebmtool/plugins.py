"""Extensions from outside the package: a plugin is an importable module that, when imported, registers what it
adds (a negative source, a task, a model) with the registries' `register` functions.

Plugins are named in the environment variable EBMTOOL_PLUGINS (comma-separated module names) or declared by an
installed distribution as entry points of the group "ebmtool.plugins". `load_plugins()` imports them once per
process: the CLI calls it before it builds its commands (so a plugin's options appear in `--help`), and every
worker process does the same on start, since the environment is inherited.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from ebmtool.runtime.errors import InputError

ENV_VAR = "EBMTOOL_PLUGINS"
ENTRY_POINT_GROUP = "ebmtool.plugins"
_loaded: list[str] = []
# what a plugin module's own code may raise while it is imported (named: the project allows no blind except)
LOAD_ERRORS = (SyntaxError, NameError, AttributeError, TypeError, ValueError, LookupError, ArithmeticError,
               AssertionError, RuntimeError, OSError)


def plugin_modules() -> list[str]:
    """The modules to import: EBMTOOL_PLUGINS's, then the installed entry points', each once, in that order."""
    names = [n.strip() for n in os.environ.get(ENV_VAR, "").split(",") if n.strip()]
    names += [ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)]
    return list(dict.fromkeys(names))


def load_plugins() -> list[str]:
    """Import every plugin module not imported yet by this function; returns the modules loaded so far. A module
    that cannot be imported is an InputError naming it and where it was named, and so is one whose own code fails
while it loads; a registry's refusal (a name registered twice) is that registry's sentence."""
    for name in plugin_modules():
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise InputError(f"cannot import the plugin module {name!r} (named in {ENV_VAR} or an "
                             f"{ENTRY_POINT_GROUP!r} entry point): {e}") from e
        except InputError:
            raise  # a registry's own sentence (a name registered twice, ...)
        except LOAD_ERRORS as e:  # a failure of the module's own code: one sentence, not a traceback
            raise InputError(f"the plugin module {name!r} failed while loading: {type(e).__name__}: {e}") from e
        _loaded.append(name)
    return list(_loaded)
