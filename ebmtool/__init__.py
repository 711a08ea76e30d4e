"""ebmtool: train and debug energy-based diffusion reasoning models (the IRED family)."""

__version__ = "0.1.0"

# Format version of every artifact ebmtool writes. Readers refuse files with a newer version.
FORMAT_VERSION = 1
