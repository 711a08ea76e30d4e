"""docs/python-api.md's examples run: every ```python block of the page, in order, in one namespace, in a temporary
directory. Only their size changes: each `ebmtool.train(...)` call gets the tiny network and a few steps, and the
number of held-out problems (`n=`, `eval_n=`) shrinks; the code is otherwise the page's own (no function is replaced)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import ebmtool

PAGE = Path(__file__).resolve().parent.parent / "docs" / "python-api.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
# the tests' tiny inverse problem and network (tests/helpers.py TINY), and few steps
TINY_TRAIN = dict(size=4, width=32, train_size=256, batch_size=32, val_size=8, time_dim=16, log_every=2,
                  eval_every=0, ckpt_every=0, device="cpu")
TINY_STEPS = 4
TINY_N = 16


class Shrink(ast.NodeTransformer):
    """ebmtool.train(...) calls: TINY_TRAIN added and steps=TINY_STEPS; any call's n=... or eval_n=...: TINY_N."""

    def __init__(self):
        self.trains = self.ns = 0

    def visit_Call(self, node):
        self.generic_visit(node)
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "ebmtool" \
                and func.attr == "train":
            self.trains += 1
            given = {k.arg for k in node.keywords}
            node.keywords += [ast.keyword(k, ast.Constant(v)) for k, v in TINY_TRAIN.items() if k not in given]
        for kw in node.keywords:
            if kw.arg == "steps":
                kw.value = ast.Constant(TINY_STEPS)
            elif kw.arg in ("n", "eval_n"):
                kw.value, self.ns = ast.Constant(TINY_N), self.ns + 1
        return node


def blocks() -> list[str]:
    return BLOCK.findall(PAGE.read_text(encoding="utf-8"))


def test_the_page_has_examples_of_every_function():
    code = "\n".join(blocks())
    missing = [name for name in ebmtool.API if name[0].islower() and f"ebmtool.{name}(" not in code]
    assert not missing, f"docs/python-api.md shows no example of: {', '.join(missing)}"


def test_every_example_on_the_page_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shrink, namespace = Shrink(), {}
    for i, source in enumerate(blocks()):
        tree = ast.fix_missing_locations(shrink.visit(ast.parse(source)))
        exec(compile(tree, f"docs/python-api.md block {i + 1}", "exec"), namespace)  # noqa: S102 (the page's code)
    assert shrink.trains >= 5 and shrink.ns >= 2  # the page's calls were the ones shrunk
    # what the examples claim, checked on what they produced
    assert namespace["again"].step == namespace["result"].step == TINY_STEPS
    assert {c["variant"] for c in namespace["report"]["comparisons"]} == {"anm"}
    assert (tmp_path / "runs/refined/ckpt.safetensors").exists() and (tmp_path / "weights.h5").exists()
    assert namespace["refined"].config["offline_negatives"] == "negs.h5"
