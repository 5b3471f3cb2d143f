"""Clean, robust and verified accuracy, and rho_adv."""
import torch

from robustness import clean_accuracy, forward, rho_adv, robust_accuracy, stack, verified_accuracy


def test_accuracies_are_ordered(networks, digits):
    net = networks["mlp", "relu", True]
    x, y = digits[1][:100], digits[3][:100]
    clean = clean_accuracy(net, x, y)
    assert clean.shape == (1,) and clean > 0.85
    gen = torch.Generator().manual_seed(0)
    for eps in (0.01, 0.05):
        robust = robust_accuracy(net, x, y, eps, steps=10, domain=(0, 1), generator=gen)
        for method in ("ibp", "crown", "ibp+crown"):
            verified = verified_accuracy(net, x, y, eps, method=method, domain=(0, 1))
            assert verified <= robust <= clean
    assert verified_accuracy(net, x, y, 0.01, method="ibp") <= verified_accuracy(net, x, y, 0.01, method="crown")


def test_zero_eps_accuracies_equal_clean(networks, digits):
    net = networks["cnn", "tanh", True]
    x, y = digits[1][:60].view(60, 1, 8, 8), digits[3][:60]
    clean = clean_accuracy(net, x, y)
    torch.testing.assert_close(robust_accuracy(net, x, y, 0.0, steps=2), clean)
    torch.testing.assert_close(verified_accuracy(net, x, y, 0.0), clean)


def test_clean_accuracy_matches_forward_and_batches(networks, digits):
    nets = [networks["mlp", "relu", True], networks["mlp", "relu", False]]
    x, y = digits[1], digits[3]
    acc = clean_accuracy(stack(nets), x, y)
    expected = [(forward(n, x)[0].argmax(-1) == y).double().mean() for n in nets]
    torch.testing.assert_close(acc, torch.stack(expected))


def test_rho_adv_positive_and_finite(networks, digits):
    net = networks["mlp", "tanh", True]
    rho = rho_adv(net, digits[1][:20])
    assert rho.shape == (1,) and torch.isfinite(rho).all() and (rho > 0).all() and (rho < 1).all()


def test_rho_adv_leaves_out_points_with_no_boundary_to_step_to():
    """A network whose output differences have zero input gradient gives DeepFool nothing to
    follow: those points stay unmoved and unflipped, and rho_adv leaves them out (NaN when that is
    every point) instead of failing on a 0/0 step. The other network of a stack is unaffected."""
    from torch import nn

    from robustness import deepfool, from_sequential

    live = nn.Sequential(nn.Linear(4, 3)).double()
    dead = nn.Sequential(nn.Linear(4, 3)).double()
    nn.init.zeros_(dead[0].weight)
    nets = stack([from_sequential(live, (4,)), from_sequential(dead, (4,))])
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    r, flipped = deepfool(nets, x)
    assert torch.isfinite(r).all() and (r[1] == 0).all() and not flipped[1].any() and flipped[0].all()
    rho = rho_adv(nets, x)
    assert torch.isfinite(rho[0]) and rho[0] > 0 and torch.isnan(rho[1])
