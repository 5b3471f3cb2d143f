import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("LANDSCAPE_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def iris():
    from landscape import data
    return data.load(data.DataSpec("iris", test_fraction=0))


@pytest.fixture(scope="session")
def problem():
    """A small Iris problem for sampler tests: 4-3(tanh)-3, lam 1e-3, all 150 samples."""
    import landscape
    return landscape.Problem.create("iris", hidden=(3,), lam=1e-3, test_fraction=0.0)
