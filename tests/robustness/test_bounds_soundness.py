"""Every output reachable in the ball lies inside the IBP, CROWN and IBP+CROWN boxes.

Reachable outputs are probed with 10,000 uniform random points of the ball (clipped
to the domain when there is one) per data point, plus PGD toward the maximum and the
minimum of every output. Computations in float64; a sample counts as inside when
lower - TOL <= y <= upper + TOL with TOL = 1e-9 * (1 + |bound|).
"""
import pytest
import torch

from robustness import Linear, Network, ReLU, Sigmoid, Tanh, forward, logit_differences, output_bounds, pgd

TOL = 1e-9
METHODS = ("ibp", "crown", "ibp+crown")
N_POINTS = 3
N_SAMPLES = 10_000


def probe(net, x, eps, domain):
    """Outputs at random points of the box and at PGD optima of +-each output: (S, N, out)."""
    gen = torch.Generator().manual_seed(0)
    n, out = x.shape[0], net.n_outputs
    lo, hi = x - eps, x + eps
    if domain is not None:
        lo, hi = lo.clamp(*domain), hi.clamp(*domain)
    u = torch.rand(N_SAMPLES, *x.shape, dtype=x.dtype, generator=gen)
    ys = forward(net, (lo + (hi - lo) * u).flatten(0, 1))[0].view(N_SAMPLES, n, out)
    direction = torch.cat([torch.eye(out), -torch.eye(out)]).to(x.dtype).repeat_interleave(n, 0)
    xa = pgd(net, x.repeat(2 * out, *[1] * (x.dim() - 1)), eps, direction=direction.unsqueeze(0), steps=30,
             domain=domain, generator=gen)
    ya = forward(net, xa)[0].view(2 * out, n, out)
    return torch.cat([ys, ya])


def assert_inside(samples, lower, upper):
    assert torch.isfinite(lower).all() and torch.isfinite(upper).all()
    assert (samples >= lower - TOL * (1 + lower.abs())).all(), (lower - samples).max()
    assert (samples <= upper + TOL * (1 + upper.abs())).all(), (samples - upper).max()


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("trained", [False, True])
@pytest.mark.parametrize("eps, domain", [(0.01, None), (0.2, (0.0, 1.0))])
def test_outputs_inside_boxes(networks, digits, kind, act, trained, eps, domain):
    net = networks[kind, act, trained]
    x = digits[1][:N_POINTS].view(N_POINTS, *net.input_shape)
    samples = probe(net, x, eps, domain)
    for method in METHODS:
        lower, upper = output_bounds(net, x, eps, method, domain=domain)
        assert_inside(samples, lower[0], upper[0])


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_logit_differences_inside_bounds(networks, digits, kind, act):
    net = networks[kind, act, True]
    x = digits[1][:N_POINTS].view(N_POINTS, *net.input_shape)
    ref = digits[3][:N_POINTS]
    C = logit_differences(ref, net.n_outputs)
    samples = probe(net, x, 0.1, (0.0, 1.0))
    diffs = torch.einsum("nmo,sno->snm", C[0], samples)
    for method in METHODS:
        lower, upper = output_bounds(net, x, 0.1, method, C=C, domain=(0.0, 1.0))
        assert_inside(diffs, lower[0], upper[0])


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
def test_single_neuron_networks(act):
    """3,000 networks t -> a act(w t + b) + c t, t in [-1, 1] (x = 0, eps = 1), on a grid of 1,001
    inputs. The term c t (a second neuron kept in a nearly linear regime: act(1e-3 t + 1) for
    ReLU, act(1e-3 t) otherwise, scaled back) moves the maximum to either end, so the line of
    the first neuron's relaxation is probed at both ends, for every sign pattern and regime."""
    k = 3000
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return scale * torch.randn(*shape, dtype=torch.float64, generator=gen)

    delta = 1e-3
    shift, slope = (1.0, 1.0) if act == "relu" else ((0.0, 1.0) if act == "tanh" else (0.0, 0.25))
    w = rand(k, 1, 1, scale=3) * torch.rand(k, 1, 1, dtype=torch.float64, generator=gen)
    w1 = torch.cat([w, torch.full_like(w, delta)], 1)  # (K, 2, 1)
    b1 = torch.cat([rand(k, 1, scale=4), torch.full((k, 1), shift, dtype=torch.float64)], 1)
    a = torch.randint(0, 2, (k, 1, 1), generator=gen).double() * 2 - 1
    w2 = torch.cat([a, rand(k, 1, 1) / (delta * slope)], 2)  # (K, 1, 2)
    net = Network((Linear(w1, b1), {"relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid}[act](), Linear(w2)), (1,))
    samples = forward(net, torch.linspace(-1, 1, 1001, dtype=torch.float64).view(1001, 1))  # (K, 1001, 1)
    for method in METHODS:
        lower, upper = output_bounds(net, torch.zeros(1, 1, dtype=torch.float64), 1.0, method)  # (K, 1, 1)
        assert_inside(samples, lower, upper)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("trained", [False, True])
@pytest.mark.parametrize("eps, domain", [(0.001, None), (0.05, (0.0, 1.0)), (0.5, None), (1.0, (0.0, 1.0))])
def test_outputs_inside_boxes_wide_sweep(networks, digits, kind, act, trained, eps, domain):
    net = networks[kind, act, trained]
    x = digits[1][10:20].view(10, *net.input_shape)
    samples = probe(net, x, eps, domain)
    for method in METHODS:
        lower, upper = output_bounds(net, x, eps, method, domain=domain)
        assert_inside(samples, lower[0], upper[0])
