"""Softplus layers, log(1 + exp(beta x)) / beta: the function, its relaxation and sound bounds.

Soundness is probed as in test_bounds_soundness.py (random points of the ball and PGD toward
every output's extremes, same tolerance), for random networks of several sharpnesses.
"""
import math

import pytest
import torch
from test_bounds_soundness import METHODS, N_POINTS, assert_inside, probe
from torch import nn

from robustness import Linear, Network, Softplus, forward, from_sequential, output_bounds, relaxations, stack
from robustness.network import softplus

BETAS = (0.5, 10.0, 200.0)


def test_function_is_stable_and_tends_to_relu():
    x = torch.tensor([-1e300, -1e4, -3.0, 0.0, 3.0, 1e4, 1e300], dtype=torch.float64)
    for beta in BETAS:
        exact = torch.logaddexp(beta * x, torch.zeros_like(x)) / beta
        torch.testing.assert_close(softplus(x, beta), exact, rtol=1e-15, atol=0)
    assert softplus(torch.tensor(0.0, dtype=torch.float64), 4.0) == math.log(2) / 4
    assert (softplus(x, 1e6) - torch.relu(x)).abs().max() <= math.log(2) / 1e6


@pytest.mark.parametrize("beta", BETAS)
def test_relaxation_on_extreme_intervals(beta):
    """No overflow for intervals up to the float64 range, the tangent at a point interval, and
    lines that stay on the right side of the function on a grid."""
    l = torch.tensor([-1e300, -1e300, 1e300, -50.0, 2.0, -1e-300, 0.0, 7.5], dtype=torch.float64)
    u = torch.tensor([1e300, -1e299, 1e300, 50.0, 2.0, 1e-300, 0.0, 7.5], dtype=torch.float64)
    r = relaxations.softplus(l, u, beta)
    assert all(torch.isfinite(t).all() for t in r)
    point = l == u
    torch.testing.assert_close(r.upper_slope[point], torch.sigmoid(beta * l[point]), rtol=1e-15, atol=0)
    torch.testing.assert_close(r.lower_slope[point], torch.sigmoid(beta * l[point]), rtol=1e-15, atol=0)
    x = torch.lerp(l.unsqueeze(0), u.unsqueeze(0), torch.linspace(0, 1, 1001, dtype=torch.float64).unsqueeze(1))
    y = softplus(x, beta)
    tol = 1e-13 * (1 + x.abs())
    assert (r.lower_slope * x + r.lower_intercept <= y + tol).all()
    assert (r.upper_slope * x + r.upper_intercept >= y - tol).all()


def sequential(kind: str, beta: float) -> nn.Sequential:
    if kind == "mlp":
        return nn.Sequential(nn.Linear(64, 16), nn.Softplus(beta), nn.Linear(16, 16), nn.Softplus(beta),
                             nn.Linear(16, 10))
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Softplus(beta), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(48, 10))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("eps, domain", [(0.01, None), (0.2, (0.0, 1.0)), (1.0, None)])
def test_outputs_inside_boxes(digits, kind, beta, eps, domain):
    torch.manual_seed(2)
    module = sequential(kind, beta).double().requires_grad_(False)
    shape = (64,) if kind == "mlp" else (1, 8, 8)
    net = from_sequential(module, shape)
    assert [layer.beta for layer in net.layers if isinstance(layer, Softplus)] == [beta] * (2 if kind == "mlp" else 1)
    x = digits[1][:N_POINTS].view(N_POINTS, *shape)
    samples = probe(net, x, eps, domain)
    for method in METHODS:
        lower, upper = output_bounds(net, x, eps, method, domain=domain)
        assert_inside(samples, lower[0], upper[0])


@pytest.mark.parametrize("beta", BETAS)
def test_single_neuron_networks(beta):
    """3,000 networks t -> a softplus(w t + b) + c t, t in [-1, 1], on a grid of 1,001 inputs; the
    term c t (a second neuron kept nearly linear: softplus(1e-3 t + 4 / beta), scaled back) moves
    the maximum to either end, so both lines are probed at both ends in every regime."""
    k, delta, shift = 3000, 1e-3, 4.0 / beta
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return scale * torch.randn(*shape, dtype=torch.float64, generator=gen)

    w = rand(k, 1, 1, scale=3) * torch.rand(k, 1, 1, dtype=torch.float64, generator=gen)
    w1 = torch.cat([w, torch.full_like(w, delta)], 1)
    b1 = torch.cat([rand(k, 1, scale=4), torch.full((k, 1), shift, dtype=torch.float64)], 1)
    a = torch.randint(0, 2, (k, 1, 1), generator=gen).double() * 2 - 1
    slope = torch.sigmoid(torch.tensor(beta * shift, dtype=torch.float64))
    w2 = torch.cat([a, rand(k, 1, 1) / (delta * slope)], 2)
    net = Network((Linear(w1, b1), Softplus(beta), Linear(w2)), (1,))
    samples = forward(net, torch.linspace(-1, 1, 1001, dtype=torch.float64).view(1001, 1))
    for method in METHODS:
        lower, upper = output_bounds(net, torch.zeros(1, 1, dtype=torch.float64), 1.0, method)
        assert_inside(samples, lower, upper)


def test_from_sequential_and_stack():
    torch.manual_seed(0)
    x = torch.randn(50, 4, dtype=torch.float64) * 3
    for threshold in (40.0, 20.0):  # torch's module is linear above beta x > threshold
        module = nn.Sequential(nn.Linear(4, 6), nn.Softplus(2.0, threshold), nn.Linear(6, 3)).double()
        net = from_sequential(module)
        gap = (forward(net, x)[0] - module(x)).abs().max().item()
        assert gap <= 1e-14 if threshold == 40.0 else gap <= 1e-14 + 6 * math.log1p(math.exp(-threshold)) / 2.0
    other = from_sequential(nn.Sequential(nn.Linear(4, 6), nn.Softplus(3.0), nn.Linear(6, 3)).double())
    with pytest.raises(ValueError, match="one architecture"):
        stack([net, other])
    assert stack([net, net]).k == 2
    for beta in (0.0, -1.0, math.inf, True, "2"):
        with pytest.raises(ValueError, match="Softplus beta must be a finite number > 0"):
            Softplus(beta)
