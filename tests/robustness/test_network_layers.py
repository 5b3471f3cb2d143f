"""Building networks and the forward pass."""
import pytest
import torch
from rb_nets import cnn, mlp
from torch import nn

from robustness import AvgPool2d, Conv2d, Flatten, Linear, Network, ReLU, Tanh, crown, forward, from_sequential, stack


@pytest.mark.parametrize("build, shape", [(mlp, (64,)), (cnn, (1, 8, 8))])
@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
def test_forward_matches_sequential(build, shape, act):
    torch.manual_seed(0)
    model = build(act).double()
    net = from_sequential(model, shape)
    x = torch.rand(7, *shape, dtype=torch.float64)
    y = forward(net, x)
    assert y.shape == (1, 7, 10) and y.dtype == torch.float64
    torch.testing.assert_close(y[0], model(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(forward(net, x.unsqueeze(0)), y)


def test_from_sequential_defaults_to_float64_and_keeps_float32_on_request():
    model = mlp("relu")
    assert from_sequential(model).dtype == torch.float64
    assert from_sequential(model, dtype=torch.float32).dtype == torch.float32
    assert from_sequential(model).input_shape == (64,)


def test_network_from_explicit_batched_tensors():
    k = 4
    gen = torch.Generator().manual_seed(0)
    w1, b1 = torch.randn(k, 5, 4, generator=gen), torch.randn(k, 5, generator=gen)
    w2, b2 = torch.randn(k, 3, 5, generator=gen), torch.randn(k, 3, generator=gen)
    net = Network((Linear(w1, b1), Tanh(), Linear(w2, b2)), (4,))
    assert (net.k, net.n_outputs, net.dtype, net.shapes) == (k, 3, torch.float32, ((4,), (5,), (5,), (3,)))
    x = torch.randn(6, 4, generator=gen)
    y = forward(net, x)
    expected = torch.tanh(x @ w1.transpose(1, 2) + b1[:, None]) @ w2.transpose(1, 2) + b2[:, None]
    torch.testing.assert_close(y, expected)
    xs = torch.randn(k, 6, 4, generator=gen)  # different points per network
    torch.testing.assert_close(forward(net, xs)[2], forward(Network((Linear(w1[2:3], b1[2:3]), Tanh(),
                                                                    Linear(w2[2:3], b2[2:3])), (4,)), xs[2])[0])


def test_batched_convolution_matches_per_network():
    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        nets.append(from_sequential(cnn("relu"), (1, 8, 8)))
    batched = stack(nets)
    x = torch.rand(3, 5, 1, 8, 8, dtype=torch.float64)
    y = forward(batched, x)
    for k, net in enumerate(nets):
        torch.testing.assert_close(y[k], forward(net, x[k])[0])


def test_layers_without_bias_and_avgpool_stride():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), nn.ReLU(), nn.AvgPool2d(2, stride=1), nn.Flatten(),
                          nn.Linear(75, 2, bias=False)).double()
    net = from_sequential(model, (2, 8, 8))
    assert isinstance(net.layers[2], AvgPool2d) and net.layers[0].bias is None
    x = torch.rand(3, 2, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(forward(net, x)[0], model(x))
    samples = forward(net, (x + 0.1 * (2 * torch.rand(2000, *x.shape, dtype=torch.float64) - 1)).flatten(0, 1))
    lower, upper = crown(net, x, 0.1)
    samples = samples[0].view(2000, 3, 2)
    assert (samples >= lower[0] - 1e-12).all() and (samples <= upper[0] + 1e-12).all()


def test_layer_types_are_plain_data():
    w = torch.zeros(1, 2, 1, 3, 3)
    conv = Conv2d(w, stride=2, padding=1)
    assert conv.stride == (2, 2) and conv.padding == (1, 1)
    assert Flatten() == Flatten() and ReLU() == ReLU() and AvgPool2d(2) == AvgPool2d((2, 2), (2, 2))
