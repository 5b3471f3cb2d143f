"""The loss as data (landscape.loss): terms, their composition in Energy, and their storage in Problem."""
import json
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import landscape
import robustness
from landscape import data, loss, models
from landscape.cli import main
from landscape.database import Database
from landscape.energy import Energy

V1_DATABASE = os.path.join(os.path.dirname(__file__), "data", "v1_iris.h5")


# --------------------------------------------------------------------------- the loss by hand

def hand_interval(module: nn.Sequential, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval bounds through ``module``, layer by layer, in centre/radius form for affine layers."""
    for layer in module:
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            c, r = (lo + hi) / 2, (hi - lo) / 2
            c = layer(c)
            r = F.linear(r, layer.weight.abs()) if isinstance(layer, nn.Linear) else F.conv2d(
                r, layer.weight.abs(), padding=layer.padding)
            lo, hi = c - r, c + r
        else:  # monotone activations, average pooling (positive weights), reshapes
            lo, hi = layer(lo), layer(hi)
    return lo, hi


def hand_loss(model, w: np.ndarray, X: np.ndarray, y: np.ndarray, lam: float, weight: float, eps: float,
              domain) -> tuple[float, np.ndarray]:
    """CE + lam ||w||^2 + weight * mean_n sum_j log(u_j - l_j) of one network, and its flat gradient, written out
    on the nn.Sequential of ``w`` (the gradient read back through the module's parameters)."""
    module = model.to_module(w)
    x = torch.from_numpy(X)
    lo, hi = x - eps, x + eps
    if domain is not None:
        lo, hi = lo.clamp(min=domain[0]), hi.clamp(max=domain[1])
    lo, hi = hand_interval(module, lo, hi)
    assert (hi - lo).min() > 1e-6  # far above the floor robustness puts under widths
    params = list(module.parameters())
    E = (F.cross_entropy(module(x), torch.from_numpy(y).long()) + lam * sum((p * p).sum() for p in params)
         + weight * (hi - lo).log().sum(1).mean())
    E.backward()
    with torch.no_grad():
        for p in params:
            p.copy_(p.grad)
    return E.item(), model.from_module(module)


def iris_mlp(iris):
    return models.MLP((4, 5, 3)), iris.X_train, iris.y_train, None


def digits_cnn():
    ds = data.load(data.DataSpec("digits", test_fraction=0, limit=40))
    return models.CNN(ds.image_shape, ds.n_classes, channels=(2,)), ds.X_train, ds.y_train, (0.0, 1.0)


@pytest.fixture(params=["iris_mlp", "digits_cnn"])
def case(request, iris):
    return iris_mlp(iris) if request.param == "iris_mlp" else digits_cnn()


def with_sensitivity(lam=1e-3, weight=0.3, eps=0.05, **options):
    return (*loss.default_loss(lam), loss.Sensitivity(weight, eps, **options))


def test_energy_and_gradient_equal_the_loss_written_by_hand(case):
    model, X, y, domain = case
    E = Energy(model, X, y, with_sensitivity(), domain=domain)
    assert E.backend == "autograd" and E.lam == 1e-3
    w = np.random.default_rng(0).normal(scale=0.5, size=(3, model.n_params))
    e, g = E.energy_gradient(w)
    for k in range(3):
        e_ref, g_ref = hand_loss(model, w[k], X, y, 1e-3, 0.3, 0.05, domain)
        np.testing.assert_allclose(e[k], e_ref, rtol=1e-13)
        np.testing.assert_allclose(g[k], g_ref, rtol=1e-10, atol=1e-12 * np.abs(g_ref).max())


def test_the_ball_is_clipped_to_the_domain_given():
    model, X, y, domain = digits_cnn()
    w = np.random.default_rng(1).normal(scale=0.5, size=model.n_params)
    clipped = Energy(model, X, y, with_sensitivity(), domain=domain)(w)[0]
    free = Energy(model, X, y, with_sensitivity(), domain=None)(w)[0]
    assert clipped < free  # digits have many 0 pixels: clipping shrinks the input box, so the output box
    np.testing.assert_allclose(free, hand_loss(model, w, X, y, 1e-3, 0.3, 0.05, None)[0], rtol=1e-13)


@pytest.mark.parametrize("space", ["logits", "logit_diff", "softmax"])
def test_gradient_and_hvp_match_finite_differences(case, space):
    """(IBP: CROWN's term has kinks and small jumps in w, where differences do not give the gradient.)"""
    model, X, y, domain = case
    E = Energy(model, X, y, with_sensitivity(space=space), domain=domain)
    rng = np.random.default_rng(2)
    w = rng.normal(scale=0.5, size=(2, model.n_params))
    _, g = E.energy_gradient(w)
    h = 1e-5
    for _ in range(2):
        v = rng.normal(size=w.shape)
        fd = (E(w + h * v) - E(w - h * v)) / (2 * h)
        np.testing.assert_allclose(np.einsum("kp,kp->k", g, v), fd, rtol=1e-6, atol=1e-8)
        fd_hv = (E.energy_gradient(w + h * v)[1] - E.energy_gradient(w - h * v)[1]) / (2 * h)
        np.testing.assert_allclose(E.hvp(w, v), fd_hv, rtol=1e-4, atol=1e-6 * np.abs(fd_hv).max())


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_sensitivity_term_is_the_robustness_log_volume_with_true_labels(case, method):
    """The term passes its method, space, the true classes (logit_diff reference) and the domain on."""
    model, X, y, domain = case
    w = np.random.default_rng(7).normal(scale=0.5, size=(2, model.n_params))
    plain = Energy(model, X, y, 1e-3)(w)
    s = robustness.log_volume(model.to_network(w), torch.from_numpy(X).reshape(len(X), *model.input_shape), 0.05,
                              method=method, space="logit_diff", labels=torch.from_numpy(y), domain=domain)
    E = Energy(model, X, y, with_sensitivity(method=method, space="logit_diff"), domain=domain)
    np.testing.assert_allclose(E(w), plain + 0.3 * s.mean.numpy(), rtol=1e-13)


def test_no_networks_give_no_energies(case):
    model, X, y, domain = case
    E, w = Energy(model, X, y, with_sensitivity(), domain=domain), np.zeros((0, model.n_params))
    e, g = E.energy_gradient(w)
    assert e.shape == (0,) and g.shape == E.hvp(w, w).shape == (0, model.n_params)


def test_sensitivity_of_k_networks_is_one_batched_call(iris, monkeypatch):
    model, X, y, _ = iris_mlp(iris)
    E = Energy(model, X, y, with_sensitivity(space="logit_diff"))
    w = np.random.default_rng(3).normal(size=(5, model.n_params))
    single = [E.energy_gradient(w[k]) for k in range(5)]
    calls = []
    log_volume = loss.robustness.log_volume
    monkeypatch.setattr(loss.robustness, "log_volume", lambda net, *a, **kw: calls.append(net.k) or log_volume(
        net, *a, **kw))
    e, g = E.energy_gradient(w)
    assert calls == [5]
    np.testing.assert_allclose(e, [s[0][0] for s in single], rtol=1e-14)
    np.testing.assert_allclose(g, [s[1][0] for s in single], rtol=1e-12, atol=1e-15)


def test_kernel_serves_the_plain_loss_given_as_terms(iris):
    """The kernel is chosen for (CrossEntropy(), L2(lam)) given as terms, as for a number lam, and agrees with
    autograd; a loss with a sensitivity term is autograd's, and refused by the kernel."""
    model = models.MLP((4, 5, 3))
    fast = Energy(model, iris.X_train, iris.y_train, loss.default_loss(1e-3))
    if fast.backend != "kernel":
        pytest.skip("compiled kernel unavailable")
    exact = Energy(model, iris.X_train, iris.y_train, 1e-3, backend="autograd")
    w = np.random.default_rng(4).normal(size=(3, model.n_params))
    (e1, g1), (e2, g2) = fast.energy_gradient(w), exact.energy_gradient(w)
    np.testing.assert_allclose(e1, e2, rtol=1e-12)
    np.testing.assert_allclose(g1, g2, rtol=1e-12, atol=1e-12 * np.abs(g2).max())
    assert Energy(model, iris.X_train, iris.y_train, with_sensitivity()).backend == "autograd"
    with pytest.raises(ValueError, match="cross-entropy \\+ L2 only"):
        Energy(model, iris.X_train, iris.y_train, with_sensitivity(), backend="kernel")


# --------------------------------------------------------------------------- the loss as data

def test_problem_round_trip_keeps_the_sensitivity_term():
    p = landscape.Problem.create("digits", arch="cnn", channels=(2,), lam=1e-3, test_fraction=0, limit=40,
                                 sensitivity={"weight": 0.3, "eps": 0.05, "space": "softmax"})
    assert p.loss == (loss.CrossEntropy(), loss.L2(1e-3), loss.Sensitivity(0.3, 0.05, "ibp", "softmax"))
    assert p.lam == 1e-3 and "lam" not in p.to_dict()
    assert json.loads(p.to_json())["loss"][2] == {"term": "sensitivity", "weight": 0.3, "eps": 0.05,
                                                   "method": "ibp", "space": "softmax"}
    q = landscape.Problem.from_json(p.to_json())
    assert q == p
    w = np.random.default_rng(5).normal(scale=0.5, size=(2, p.model.n_params))
    E = q.energy()
    ds = p.dataset()  # digits are scaled to [0, 1]: the problem's energy clips the ball to it
    np.testing.assert_array_equal(E(w), Energy(p.model, ds.X_train, ds.y_train, p.loss, domain=(0.0, 1.0))(w))
    assert q.with_lam(2e-3).loss == (loss.CrossEntropy(), loss.L2(2e-3), p.loss[2])


def test_schema_1_problem_rebuilds_cross_entropy_and_l2(iris):
    new = landscape.Problem.create("iris", hidden=(5,), lam=1e-3, test_fraction=0)
    old = {k: v for k, v in new.to_dict().items() if k != "loss"} | {"lam": 1e-3}
    p = landscape.Problem.from_dict(old)
    assert p == new and p.loss == (loss.CrossEntropy(), loss.L2(1e-3))
    w = np.random.default_rng(6).normal(size=p.model.n_params)
    x, y, t = torch.from_numpy(iris.X_train), torch.from_numpy(iris.y_train), torch.from_numpy(w)
    W0, b0, W1, b1 = t[:20].reshape(4, 5), t[20:25], t[25:40].reshape(5, 3), t[40:]
    ref = F.cross_entropy(torch.tanh(x @ W0 + b0) @ W1 + b1, y) + 1e-3 * t @ t
    np.testing.assert_allclose(p.energy()(w)[0], ref.item(), rtol=1e-14)


def test_schema_1_database_gives_back_its_stored_energies():
    with Database(V1_DATABASE) as db:
        problem, minima = db.problem, db.minima()
    assert problem.loss == loss.default_loss(problem.lam)
    np.testing.assert_allclose(problem.energy()(minima.coords), minima.energy, rtol=1e-13)


BAD_TERMS = [
    ([{"term": "huber"}, {"term": "l2", "lam": 1e-4}], "unknown loss term 'huber'"),
    ([{"lam": 1e-4}], "unknown loss term None"),
    ([{"term": "l2"}], "loss term 'l2' needs lam"),
    ([{"term": "l2", "lam": 0.0}], "lam must be a finite number > 0"),
    ([{"term": "l2", "lam": "1e-4"}], "lam must be a finite number > 0"),
    ([{"term": "l2", "lam": 1e-4, "mu": 1}], "loss term 'l2' has unknown key\\(s\\) mu"),
    ([{"term": "cross_entropy"}], "needs an l2 term"),
    ([{"term": "l2", "lam": 1e-4}, {"term": "l2", "lam": 1e-3}], "more than one l2 term"),
    ([{"term": "l2", "lam": 1e-4}, {"term": "sensitivity", "weight": 0.1}], "'sensitivity' needs eps"),
    ([{"term": "l2", "lam": 1e-4}, {"term": "sensitivity", "weight": -0.1, "eps": 0.1}], "weight must be .* >= 0"),
    ([{"term": "l2", "lam": 1e-4}, {"term": "sensitivity", "weight": True, "eps": 0.1}], "weight must be .* >= 0"),
    ([{"term": "l2", "lam": 1e-4}, {"term": "sensitivity", "weight": 0.1, "eps": 0}], "eps must be .* > 0"),
    ([{"term": "l2", "lam": 1e-4}, {"term": "sensitivity", "weight": 0.1, "eps": float("inf")}], "eps must be"),
    ([{"term": "l2", "lam": 1e-4}, {"term": "sensitivity", "weight": 0.1, "eps": 0.1, "method": "ibp+crown"}],
     "unknown sensitivity method 'ibp\\+crown': choose one of ibp, crown"),
    ([{"term": "l2", "lam": 1e-4}, {"term": "sensitivity", "weight": 0.1, "eps": 0.1, "space": "probs"}],
     "unknown sensitivity space 'probs'"),
    ({"term": "l2", "lam": 1e-4}, "a loss is a list of terms"),
]


@pytest.mark.parametrize("items,message", BAD_TERMS)
def test_bad_terms_are_refused_in_one_line(items, message):
    with pytest.raises(ValueError, match=message) as e:
        loss.from_dicts(items)
    assert "\n" not in str(e.value)


def test_bad_losses_of_energy_and_problem_are_refused_in_one_line(iris):
    model, X, y = models.MLP((4, 5, 3)), iris.X_train, iris.y_train
    for bad, message in [((loss.CrossEntropy(),), "needs an l2 term"), ("l2", "a loss is a list of terms"),
                         ((loss.L2(1e-3), "l2"), "unknown loss term 'l2'"), (0.0, "lam must be a finite number > 0")]:
        with pytest.raises(ValueError, match=message):
            Energy(model, X, y, bad)
    with pytest.raises(ValueError, match="give the loss or lam, not both"):
        Energy(model, X, y, loss.default_loss(1e-3), lam=1e-3)
    with pytest.raises(ValueError, match="sensitivity must be a dict"):
        landscape.Problem.create("iris", sensitivity=0.1)
    with pytest.raises(ValueError, match="'sensitivity' needs eps"):
        landscape.Problem.create("iris", sensitivity={"weight": 0.1})
    with pytest.raises(ValueError, match="malformed problem description"):
        landscape.Problem.from_dict({"model": model.to_dict(), "lam": 1e-3})


# --------------------------------------------------------------------------- the command line

def test_command_line_samples_a_loss_with_a_sensitivity_term(tmp_path, capsys):
    cfg = tmp_path / "s.toml"
    # lam 1e-2 keeps the weights small: with lam 1e-4 the term drives hidden units into saturation, where box
    # widths reach the floor of robustness.box_log_volume and quenches do not converge
    cfg.write_text('[problem]\nhidden = [2]\nlam = 1e-2\ntest_fraction = 0\nsensitivity_weight = 0.01\n'
                   'sensitivity_eps = 0.1\nsensitivity_method = "crown"\n')
    db = str(tmp_path / "s.h5")
    assert main(["sample", db, "--config", str(cfg), "--sensitivity-method", "ibp", "--sensitivity-space",
                 "logit_diff", "--walkers", "4", "--steps", "1", "--quiet"]) == 0
    with Database(db) as d:
        problem, minima = d.problem, d.minima()
    assert problem.loss[2] == loss.Sensitivity(0.01, 0.1, "ibp", "logit_diff") and len(minima.energy) >= 1
    _, g = problem.energy().energy_gradient(minima.coords)
    assert np.sqrt((g ** 2).mean(1)).max() < 1e-8  # minima of the loss with the term
    capsys.readouterr()
    assert main(["inspect", db]) == 0
    assert "sensitivity(weight=0.01, eps=0.1, method=ibp, space=logit_diff)" in capsys.readouterr().out


def test_command_line_needs_weight_and_eps_together(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "e.h5"), "--sensitivity-weight", "0.1", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "needs both --sensitivity-weight and --sensitivity-eps" in err and err.count("\n") == 1
