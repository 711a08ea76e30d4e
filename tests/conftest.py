
import pytest
import torch

# One thread: tiny models gain nothing from two, and two threads oversubscribe a shared machine badly.
torch.set_num_threads(1)


@pytest.fixture
def runner():
    from click.testing import CliRunner

    return CliRunner()
