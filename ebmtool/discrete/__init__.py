"""Discrete reasoning tasks: Sudoku, graph connectivity, shortest path."""
