"""Bad input raises ValueError with a one-line message naming the problem."""
import pytest
import torch
from torch import nn

from robustness import (
    Linear,
    Network,
    Tanh,
    clean_accuracy,
    crown,
    deepfool,
    fgsm,
    forward,
    from_sequential,
    ibp,
    log_volume,
    output_bounds,
    pgd,
    stack,
    verified_accuracy,
)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return from_sequential(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))


X = torch.rand(5, 3, dtype=torch.float64)
Y = torch.tensor([0, 1, 0, 1, 1])


def raises(match, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_bad_inputs(net):
    raises("x has shape", forward, net, torch.rand(5, 4))
    raises("x has shape", ibp, net, torch.rand(3), 0.1)
    raises("x has shape", crown, net, torch.rand(2, 5, 3), 0.1)  # K = 1, not 2
    raises("no data points", ibp, net, torch.rand(0, 3), 0.1)
    raises("NaN", crown, net, torch.tensor([[0.0, float("nan"), 1.0]]), 0.1)
    raises("eps must be finite and >= 0", ibp, net, X, -0.1)
    raises("eps must be finite and >= 0", crown, net, X, float("nan"))
    raises("eps must be a number", ibp, net, X, "big")
    raises("unknown method 'alpha'", output_bounds, net, X, 0.1, "alpha")
    raises("unknown space 'probs'", log_volume, net, X, 0.1, space="probs")
    raises("unknown method", log_volume, net, X, 0.1, method="lp")
    raises("C has shape", crown, net, X, 0.1, C=torch.ones(1, 5, 2, 3))
    raises("C contains NaN", crown, net, X, 0.1, C=torch.full((1, 1, 1, 2), float("nan")))
    raises("outside the domain", ibp, net, X + 2, 0.1, domain=(0, 1))
    raises("domain must be None or a pair", ibp, net, X, 0.1, domain=(0, 1, 2))
    raises("lower <= upper", ibp, net, X, 0.1, domain=(1, 0))
    raises("does not broadcast", ibp, net, X, 0.1, domain=(torch.zeros(4), 1))
    raises("labels have shape", clean_accuracy, net, X, Y[:3])
    raises("labels must lie in", verified_accuracy, net, X, Y + 5, 0.1)
    raises("labels must be integers", fgsm, net, X, Y.double(), 0.1)
    raises("exactly one of labels and direction", pgd, net, X, 0.1)
    raises("steps must be an integer >= 1", pgd, net, X, 0.1, labels=Y, steps=0)
    raises("direction of shape", pgd, net, X, 0.1, direction=torch.ones(3))
    raises("step_size must be finite and >= 0", pgd, net, X, 0.1, labels=Y, step_size=-1.0)
    raises("overshoot must be finite and >= 0", deepfool, net, X, overshoot=float("inf"))
    raises("max_iter must be", deepfool, net, X, max_iter=0)
    raises("floor must be > 0", log_volume, net, X, 0.1, floor=0.0)
    raises("split must be a string", log_volume, net, X, 0.1, split=1)


def test_bad_networks():
    w = torch.randn(1, 4, 3, dtype=torch.float64)
    raises("Linear weight must be a tensor with 3 dimensions", Linear, w[0])
    raises("bias has shape", Linear, w, torch.zeros(1, 3, dtype=torch.float64))
    raises("contains NaN", Linear, w * float("nan"))
    raises("float32 or float64", Linear, w.long())
    raises("expects inputs of shape", Network, (Linear(w),), (5,))
    raises("same number K", Network, (Linear(w), Tanh(), Linear(torch.randn(2, 2, 4, dtype=torch.float64))), (3,))
    raises("at least one Linear or Conv2d", Network, (Tanh(),), (3,))
    raises("unsupported layer", Network, (Linear(w), "relu"), (3,))
    raises("unsupported module MaxPool2d", from_sequential, nn.Sequential(nn.Conv2d(1, 1, 3), nn.MaxPool2d(2)),
           (1, 8, 8))
    raises("input_shape is required", from_sequential, nn.Sequential(nn.Conv2d(1, 1, 3)))
    raises("output of one input must be a vector", from_sequential, nn.Sequential(nn.Conv2d(1, 1, 3)), (1, 5, 5))
    a = Network((Linear(w),), (3,))
    raises("one architecture", stack, [a, Network((Linear(torch.randn(1, 5, 3, dtype=torch.float64)),), (3,))])
    raises("at least one network", stack, [])
