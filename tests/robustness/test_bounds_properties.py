"""Tightness, limits, batching and differentiability of the bounds."""
import pytest
import torch
from rb_nets import cnn, mlp
from torch import nn

from robustness import (
    Linear,
    Network,
    Tanh,
    crown,
    forward,
    from_sequential,
    ibp,
    log_volume,
    logit_differences,
    output_bounds,
    stack,
)
from robustness import bounds, sensitivity
from robustness.sensitivity import box_log_volume

METHODS = ("ibp", "crown", "ibp+crown")


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
def test_crown_tighter_than_ibp_on_trained_net(networks, digits, kind, act):
    net = networks[kind, act, True]
    x = digits[1][:20].view(20, *net.input_shape)
    for eps in (0.01, 0.1):
        v = {m: box_log_volume(*output_bounds(net, x, eps, m, domain=(0, 1))).mean() for m in METHODS}
        assert v["crown"] <= v["ibp"]
        assert v["ibp+crown"] <= v["crown"] + 1e-12


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
def test_bounds_collapse_to_output(networks, digits, kind, act):
    net = networks[kind, act, True]
    x = digits[1][:5].view(5, *net.input_shape)
    y = forward(net, x)
    for method in METHODS:
        for eps in (1e-6, 1e-9):
            lower, upper = output_bounds(net, x, eps, method)
            scale = 1e3 * eps * (1 + y.abs())
            assert ((y - lower).abs() <= scale).all() and ((upper - y).abs() <= scale).all()
        lower, upper = output_bounds(net, x, 0.0, method)
        assert torch.allclose(lower, y, rtol=0, atol=1e-12) and torch.allclose(upper, y, rtol=0, atol=1e-12)


@pytest.mark.parametrize("build, shape", [(mlp, (64,)), (cnn, (1, 8, 8))])
@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
def test_batched_bounds_equal_per_network_bounds(digits, build, shape, act):
    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        nets.append(from_sequential(build(act).requires_grad_(False), shape))
    batched = stack(nets)
    assert batched.k == 3
    shared = digits[1][:4].view(4, *shape)
    own = digits[1][:12].view(3, 4, *shape)  # different points for every network
    C = torch.randn(3, 4, 2, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for method in METHODS:
        for x in (shared, own):
            lower, upper = output_bounds(batched, x, 0.1, method, domain=(0, 1))
            clo, cup = output_bounds(batched, x, 0.1, method, C=C, domain=(0, 1))
            for k, net in enumerate(nets):
                xk = x if x is shared else x[k]
                lo, up = output_bounds(net, xk, 0.1, method, domain=(0, 1))
                torch.testing.assert_close(lower[k], lo[0], rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(upper[k], up[0], rtol=1e-12, atol=1e-12)
                lo, up = output_bounds(net, xk, 0.1, method, C=C[k:k + 1], domain=(0, 1))
                torch.testing.assert_close(clo[k], lo[0], rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(cup[k], up[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(forward(batched, shared)[1], forward(nets[1], shared)[0])


@pytest.mark.parametrize("build, shape", [(mlp, (64,)), (cnn, (1, 8, 8))])
def test_bounds_and_log_volumes_in_chunks_equal_those_in_one_piece(digits, build, shape, monkeypatch):
    """Points are bounded in chunks (robustness.bounds.CHUNK_BYTES); each point's bounds are
    computed alone, so chunks of 3 of 7 points (3 + 3 + 1) give what one piece gives."""
    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        nets.append(from_sequential(build("tanh").requires_grad_(False), shape))
    net = stack(nets)
    shared = digits[1][:7].view(7, *shape)
    own = digits[1][:21].view(3, 7, *shape)
    labels = digits[3][:7]
    C = torch.randn(3, 7, 2, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def everything():
        out = []
        for x in (shared, own):
            for method in METHODS:
                for domain in (None, (0, 1)):
                    out += [*output_bounds(net, x, 0.05, method, domain=domain),
                            *output_bounds(net, x, 0.05, method, C=C, domain=domain)]
                for space, given in (("logits", None), ("logit_diff", None), ("logit_diff", labels),
                                     ("softmax", None)):
                    out.append(log_volume(net, x, 0.05, method=method, space=space, labels=given).values)
        return out

    monkeypatch.setattr(bounds, "CHUNK_BYTES", 1 << 50)
    whole = everything()
    for module in (bounds, sensitivity):
        monkeypatch.setattr(module, "points_per_chunk", lambda net, method, rows: 3)
    for a, b in zip(everything(), whole, strict=True):
        assert a.shape == b.shape and a.shape[1] == 7
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_float32_network_gives_float32_bounds(networks, digits):
    net64 = networks["mlp", "tanh", True]
    net32 = Network(tuple(Linear(l.weight.float(), l.bias.float()) if isinstance(l, Linear) else l
                          for l in net64.layers), net64.input_shape)
    x = digits[1][:10]
    for method in METHODS:
        lo32, up32 = output_bounds(net32, x, 0.05, method)
        lo64, up64 = output_bounds(net64, x, 0.05, method)
        assert lo32.dtype == torch.float32
        torch.testing.assert_close(lo32.double(), lo64, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(up32.double(), up64, rtol=1e-4, atol=1e-4)


def test_ibp_and_crown_agree_with_output_bounds(networks, digits):
    net = networks["mlp", "relu", True]
    x = digits[1][:5]
    torch.testing.assert_close(ibp(net, x, 0.1), output_bounds(net, x, 0.1, "ibp"))
    torch.testing.assert_close(crown(net, x, 0.1), output_bounds(net, x, 0.1, "crown"))


def test_ibp_sensitivity_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(0)
    w1 = torch.randn(1, 4, 3, dtype=torch.float64, generator=gen).requires_grad_(True)
    b1 = torch.randn(1, 4, dtype=torch.float64, generator=gen).requires_grad_(True)
    w2 = torch.randn(1, 2, 4, dtype=torch.float64, generator=gen).requires_grad_(True)
    x = torch.randn(5, 3, dtype=torch.float64, generator=gen)

    def score(w1, b1, w2):
        net = Network((Linear(w1, b1), Tanh(), Linear(w2)), (3,))
        return log_volume(net, x, 0.1, method="ibp").mean

    assert torch.autograd.gradcheck(score, (w1, b1, w2), eps=1e-6, atol=1e-6)


def test_gradient_reaches_sequential_parameters(digits):
    torch.manual_seed(0)
    model = mlp("tanh")
    net = from_sequential(model)
    log_volume(net, digits[1][:5], 0.05, method="ibp").mean.sum().backward()
    *hidden, last_bias = model.parameters()  # widths do not depend on the output bias
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in hidden)
    assert (last_bias.grad == 0).all()


def test_network_without_bias_and_ending_in_activation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False), nn.Sigmoid())
    net = from_sequential(model.requires_grad_(False))
    x = torch.rand(4, 3, dtype=torch.float64)
    xs = x + 0.3 * (2 * torch.rand(5000, 4, 3, dtype=torch.float64) - 1)
    ys = forward(net, xs.view(-1, 3))[0].view(5000, 4, 2)
    for method in METHODS:
        lower, upper = output_bounds(net, x, 0.3, method)
        assert (ys >= lower[0] - 1e-12).all() and (ys <= upper[0] + 1e-12).all()
        assert (upper <= 1).all() and (lower >= 0).all()


def test_logit_differences_rows():
    C = logit_differences(torch.tensor([2, 0]), 3)
    assert C.shape == (1, 2, 2, 3)
    expected = torch.tensor([[[1.0, 0, -1], [0, 1, -1]], [[-1.0, 1, 0], [-1, 0, 1]]], dtype=torch.float64)
    torch.testing.assert_close(C[0], expected)
    assert logit_differences(torch.zeros(4, 5, dtype=torch.long), 3).shape == (4, 5, 2, 3)
