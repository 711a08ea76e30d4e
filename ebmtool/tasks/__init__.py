"""Tasks: the `Task` interface and `Problems` (problems.py), the registry of every task a run can name
(registry.py), the built-in families (continuous.py; sudoku.py, connectivity.py, shortest_path.py on the discrete
base of discrete.py, with graphs.py and reference_negatives.py) and user data files (files.py).

This package's own import loads nothing: import the module you need (`from ebmtool.tasks.registry import
get_task`), so that low layers can read `Problems` without loading the tasks.
"""
