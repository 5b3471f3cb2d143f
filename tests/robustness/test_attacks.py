"""FGSM, PGD and DeepFool."""
import pytest
import torch

from robustness import deepfool, fgsm, forward, pgd, stack


@pytest.mark.parametrize("domain", [None, (0.0, 1.0)])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_fgsm_and_pgd_stay_in_ball_and_domain(networks, digits, kind, domain):
    net = networks[kind, "relu", True]
    x = digits[1][:20].view(20, *net.input_shape)
    y = digits[3][:20]
    eps = 0.1
    lo, hi = x - eps, x + eps
    if domain is not None:
        lo, hi = lo.clamp(*domain), hi.clamp(*domain)
    gen = torch.Generator().manual_seed(0)
    candidates = [fgsm(net, x, y, eps, domain=domain),
                  pgd(net, x, eps, labels=y, steps=10, restarts=2, domain=domain, generator=gen),
                  pgd(net, x, eps, labels=y, steps=5, step_size=1.0, domain=domain, generator=gen),
                  pgd(net, x, eps, direction=-torch.eye(10, dtype=x.dtype)[y], domain=domain, generator=gen)]
    for xa in candidates:
        assert xa.shape == (1, *x.shape)
        assert (xa[0] >= lo).all() and (xa[0] <= hi).all()


def test_pgd_increases_loss_and_reaches_fgsm_strength(networks, digits):
    net = networks["mlp", "tanh", True]
    x, y = digits[1][:50], digits[3][:50]

    def loss(xa):
        return torch.nn.functional.cross_entropy(forward(net, xa)[0], y)

    eps = 0.05
    clean, fast = loss(x), loss(fgsm(net, x, y, eps))
    strong = loss(pgd(net, x, eps, labels=y, steps=20, generator=torch.Generator().manual_seed(0)))
    assert clean < fast <= strong + 1e-9


def test_pgd_direction_maximises_chosen_output(networks, digits):
    net = networks["mlp", "relu", True]
    x = digits[1][:5]
    d = torch.zeros(10, dtype=x.dtype)
    d[3] = 1.0
    up = forward(net, pgd(net, x, 0.1, direction=d, generator=torch.Generator().manual_seed(0)))[0, :, 3]
    down = forward(net, pgd(net, x, 0.1, direction=-d, generator=torch.Generator().manual_seed(0)))[0, :, 3]
    y0 = forward(net, x)[0, :, 3]
    assert (up > y0).all() and (down < y0).all()


def test_attacks_batched_over_networks(networks, digits):
    """Two different networks of one architecture (trained and random): each batch member's attack
    is its own network's, and the two differ, so a mix-up of members would show."""
    nets = [networks["mlp", "relu", trained] for trained in (True, False)]
    batched = stack(nets)
    x, y = digits[1][:8], digits[3][:8]
    for attack in (lambda net: fgsm(net, x, y, 0.05),
                   lambda net: pgd(net, x, 0.05, labels=y, steps=5, random_start=False)):
        xa = attack(batched)
        assert xa.shape == (2, 8, 64)
        own = [attack(net)[0] for net in nets]
        assert not torch.equal(own[0], own[1])
        for k in range(2):
            torch.testing.assert_close(xa[k], own[k])


@pytest.mark.parametrize("kind, act", [("mlp", "tanh"), ("mlp", "relu"), ("cnn", "sigmoid")])
def test_deepfool_flips_label(networks, digits, kind, act):
    net = networks[kind, act, True]
    x = digits[1][:30].view(30, *net.input_shape)
    r, flipped = deepfool(net, x)
    assert r.shape == (1, *x.shape) and flipped.shape == (1, 30)
    assert flipped.all()
    before, after = forward(net, x).argmax(-1), forward(net, x + r[0]).argmax(-1)
    assert (before != after).all()
    # minimal: halving the perturbation mostly keeps the label
    assert (forward(net, x + 0.5 * r[0]).argmax(-1) == before).double().mean() > 0.8


def test_attacks_work_inside_no_grad(networks, digits):
    net = networks["mlp", "sigmoid", True]
    x, y = digits[1][:5], digits[3][:5]
    with torch.no_grad():
        expected = fgsm(net, x, y, 0.05)
        assert not torch.equal(expected[0], x)
        r, _ = deepfool(net, x, max_iter=3)
        assert r.abs().sum() > 0
