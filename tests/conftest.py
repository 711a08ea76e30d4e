import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def runner():
    from click.testing import CliRunner

    return CliRunner()
