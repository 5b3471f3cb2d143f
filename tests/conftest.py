import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("LANDSCAPE_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def iris():
    from landscape import data
    return data.load(data.DataSpec("iris", test_fraction=0))
