"""ebmtool: train and debug energy-based diffusion reasoning models (the IRED family)."""

try:  # written by setuptools-scm when this tree was built or installed (pip install ., pip install -e .)
    from ebmtool._version import version as __version__
except ImportError:  # a source tree put on sys.path without being installed: no version is known
    __version__ = "0+unknown"

# Format version of every artifact ebmtool writes. Readers refuse files with a newer version.
FORMAT_VERSION = 1
