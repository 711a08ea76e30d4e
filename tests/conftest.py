import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op thread for every test: tiny models gain nothing from two, and on a shared, loaded CPU two
    spinning threads make them several times slower. Session-scoped, so it is in place before any module
    fixture trains; the previous setting comes back at the end. (Subprocesses get OMP_NUM_THREADS=1 instead.)"""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def runner():
    from click.testing import CliRunner

    return CliRunner()
