"""Training: the loop (`train`), one step (`draw_batch`, `train_step`), the objective, the run's state and
files. Read loop.py first; docs/architecture.md draws the data flow of one step."""

from ebmtool.training.loop import TrainResult, prepare, train  # noqa: F401
from ebmtool.training.step import StepResult, draw_batch, train_step  # noqa: F401
