"""Shared networks for the robustness tests: random and briefly trained, every activation."""
import numpy as np
import pytest
import torch
from rb_nets import ACTIVATIONS, cnn, mlp
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from robustness import from_sequential


@pytest.fixture(scope="session")
def digits():
    """sklearn digits, pixels / 16 in [0, 1], float64: (x_train, x_test, y_train, y_test), x of shape (N, 64)."""
    X, y = load_digits(return_X_y=True)
    parts = train_test_split(X / 16.0, y, test_size=0.3, random_state=0, stratify=y)
    return tuple(torch.tensor(np.asarray(p)) for p in parts)


def _train(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> nn.Sequential:
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(steps):
        batch = torch.randint(0, len(x), (64,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        opt.step()
    return model.requires_grad_(False)


@pytest.fixture(scope="session")
def networks(digits):
    """{(kind, act, trained): Network} for kind in mlp/cnn, every activation, random or trained (float64)."""
    x_train, _, y_train, _ = digits
    nets = {}
    for kind, build, shape in (("mlp", mlp, (64,)), ("cnn", cnn, (1, 8, 8))):
        xt = x_train.float().view(-1, *shape)
        for act in ACTIVATIONS:
            torch.manual_seed(1)
            nets[kind, act, False] = from_sequential(build(act).requires_grad_(False), shape)
            torch.manual_seed(1)
            nets[kind, act, True] = from_sequential(_train(build(act), xt, y_train), shape)
    return nets
