"""Discrete reasoning tasks (ired-algorithm.md §7.2-7.4): Sudoku, graph connectivity, shortest path."""
