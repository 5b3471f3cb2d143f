import numpy as np
import pytest
import torch

from landscape import models
from landscape.energy import Energy

ACTS = ["tanh", "sigmoid", "relu", "softplus"]


def small_problem(arch, act, bias, seed=0, n=23):
    rng = np.random.default_rng(seed)
    if arch == "mlp":
        model = models.MLP((5, 4, 3, 3), act, bias)
        X = rng.normal(size=(n, 5))
    else:
        model = models.CNN((1, 6, 6), 3, channels=(2,), activation=act, bias=bias)
        X = rng.uniform(size=(n, 36))
    y = rng.integers(0, 3, size=n)
    return model, Energy(model, X, y, lam=1e-3, backend="autograd"), rng


def central_difference(f, w, v, h=1e-5):
    return (f(w + h * v) - f(w - h * v)) / (2 * h)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("bias", [True, False])
def test_gradient_and_hvp_match_finite_differences(arch, act, bias):
    model, E, rng = small_problem(arch, act, bias)
    w = rng.normal(scale=0.7, size=(2, model.n_params))
    e, g = E.energy_gradient(w)
    for _ in range(3):
        v = rng.normal(size=w.shape)
        fd = central_difference(E, w, v)
        np.testing.assert_allclose(np.einsum("kp,kp->k", g, v), fd, rtol=1e-6, atol=1e-8)
        # Hessian-vector product against differences of the gradient
        fd_hv = (E.energy_gradient(w + 1e-5 * v)[1] - E.energy_gradient(w - 1e-5 * v)[1]) / 2e-5
        np.testing.assert_allclose(E.hvp(w, v), fd_hv, rtol=1e-4, atol=1e-6)


def test_full_hessian_is_symmetric_and_matches_hvp():
    model, E, rng = small_problem("mlp", "tanh", True)
    w = rng.normal(size=model.n_params)
    H = E.hessian(w, chunk=7)
    np.testing.assert_allclose(H, H.T, atol=1e-12)
    v = rng.normal(size=model.n_params)
    np.testing.assert_allclose(H @ v, E.hvp(w, v)[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_batched_energy_equals_separate_evaluations(arch):
    model, E, rng = small_problem(arch, "tanh", True)
    w = rng.normal(size=(6, model.n_params))
    eb, gb = E.energy_gradient(w)
    for k in range(6):
        e1, g1 = E.energy_gradient(w[k])
        np.testing.assert_allclose(eb[k], e1[0], rtol=1e-14)
        np.testing.assert_allclose(gb[k], g1[0], rtol=1e-12, atol=1e-15)


def test_energy_equals_plain_numpy_formula(iris):
    model = models.MLP((4, 5, 3))
    E = Energy(model, iris.X_train, iris.y_train, lam=1e-4, backend="autograd")
    w = np.random.default_rng(2).normal(size=model.n_params)
    W1, b1, W2, b2 = w[:20].reshape(4, 5), w[20:25], w[25:40].reshape(5, 3), w[40:]
    Z = np.tanh(iris.X_train @ W1 + b1) @ W2 + b2
    logp = Z - np.log(np.exp(Z).sum(1, keepdims=True))
    ref = -logp[np.arange(150), iris.y_train].mean() + 1e-4 * w @ w
    np.testing.assert_allclose(E(w)[0], ref, rtol=1e-14)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("act", ACTS)
def test_module_round_trip_gives_identical_outputs(arch, act):
    model, E, rng = small_problem(arch, act, True)
    w = rng.normal(size=model.n_params)
    module = model.to_module(w)
    X = E.X
    # identical up to the summation order of the matrix products (nn.Linear multiplies by W^T)
    np.testing.assert_allclose(module(X).detach().numpy(), model.forward(torch.from_numpy(w)[None], X)[0].numpy(),
                               rtol=1e-13, atol=1e-14)
    np.testing.assert_array_equal(model.from_module(module), w)


def test_energy_rejects_bad_input(iris):
    model = models.MLP((4, 5, 3))
    with pytest.raises(ValueError, match="lam must be .* > 0"):
        Energy(model, iris.X_train, iris.y_train, lam=0.0)
    with pytest.raises(ValueError, match=r"X must have shape \(N, 4\)"):
        Energy(model, iris.X_train[:, :3], iris.y_train)
    X = iris.X_train.copy()
    X[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Energy(model, X, iris.y_train)
    with pytest.raises(ValueError, match="class indices"):
        Energy(model, iris.X_train, iris.y_train + 1)
    with pytest.raises(ValueError, match="unknown energy backend"):
        Energy(model, iris.X_train, iris.y_train, backend="gpu")
    E = Energy(model, iris.X_train, iris.y_train)
    with pytest.raises(ValueError, match=r"w must have shape \(K, 43\)"):
        E.energy_gradient(np.zeros((2, 42)))
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        models.MLP((4, 5, 3), "swish")
    with pytest.raises(ValueError, match="bias must be true or false, got 'yes'"):
        models.MLP((4, 5, 3), "tanh", "yes")
    with pytest.raises(ValueError, match="bias must be true or false"):
        models.CNN((1, 8, 8), 10, (4,), bias=1)
    with pytest.raises(ValueError, match="parameter vector has 5 entries"):
        model.to_module(np.zeros(5))


@pytest.mark.parametrize("act", ["tanh", "softplus"])
def test_kernel_hvp_and_hessian_match_autograd(iris, act):
    model = models.MLP((4, 5, 3), act)
    fast = Energy(model, iris.X_train, iris.y_train, lam=1e-4)
    if fast.backend != "kernel":
        pytest.skip("compiled kernel unavailable")
    exact = Energy(model, iris.X_train, iris.y_train, lam=1e-4, backend="autograd")
    rng = np.random.default_rng(4)
    w, v = rng.normal(size=(3, 43)), rng.normal(size=(3, 43))
    for a, b in zip(fast.energy_gradient(w), exact.energy_gradient(w)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(fast.hvp(w, v), exact.hvp(w, v), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(fast.hessian(w[0]), exact.hessian(w[0]), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("widths", [(4, 2.5, 3), (4, float("nan"), 3), (4, "5", 3), (4, True, 3)])
def test_mlp_widths_must_be_whole_numbers(widths):
    with pytest.raises(ValueError, match="whole numbers"):
        models.MLP(widths)


def test_cnn_channels_must_be_whole_numbers():
    with pytest.raises(ValueError, match="whole numbers"):
        models.CNN((1, 8, 8), 10, channels=(3.5,))
    assert models.MLP((4, 5.0, 3)).widths == (4, 5, 3)


def test_softplus_sharpness_in_the_spec():
    """softplus(x) = log(1 + exp(beta x)) / beta with beta = sharpness (default 10), stored only for
    softplus: a spec dict of another activation (as older files hold them) reads as before."""
    model = models.MLP((2, 3, 2), "softplus", sharpness=4.0)
    w = np.random.default_rng(3).normal(size=(1, model.n_params)) * 30  # beta z far beyond exp's range
    X = torch.tensor([[0.5, -1.0], [20.0, 3.0], [-40.0, 7.0]], dtype=torch.float64)
    (W0, b0), (W1, b1) = [(W[0].numpy(), b[0].numpy()) for W, b in model.layers(torch.from_numpy(w))]
    hidden = np.logaddexp(0.0, 4.0 * (X.numpy() @ W0 + b0)) / 4.0
    np.testing.assert_allclose(model.forward(torch.from_numpy(w), X)[0].numpy(), hidden @ W1 + b1, rtol=1e-13,
                               atol=1e-13)
    assert models.MLP((2, 3, 2), "softplus").sharpness == models.DEFAULT_SHARPNESS == 10.0
    assert models.from_dict(model.to_dict()) == model and model.to_dict()["sharpness"] == 4.0
    old = {"kind": "mlp", "widths": [4, 5, 3], "activation": "tanh", "bias": True}
    assert models.from_dict(old).to_dict() == old
    cnn = models.CNN((1, 6, 6), 3, (2,), activation="softplus", sharpness=2)
    assert models.from_dict(cnn.to_dict()) == cnn and cnn.sharpness == 2.0
    for kwargs, message in ((dict(activation="tanh", sharpness=10.0), "sharpness is the beta of softplus"),
                            (dict(activation="softplus", sharpness=0.0), "finite number > 0"),
                            (dict(activation="softplus", sharpness=float("inf")), "finite number > 0"),
                            (dict(activation="softplus", sharpness="5"), "finite number > 0")):
        with pytest.raises(ValueError, match=message):
            models.MLP((4, 5, 3), **kwargs)


def test_softplus_units_have_no_sign_flip_symmetry():
    """Relabelling softplus units leaves E unchanged; negating one (a symmetry for tanh) does not."""
    model, E, rng = small_problem("mlp", "softplus", True)
    (group, *_) = model.unit_groups()
    assert not group.odd
    w = rng.normal(size=model.n_params)
    swapped, flipped = w.copy(), w.copy()
    for part in (group.incoming, group.outgoing):
        swapped[part[[0, 1]].ravel()] = w[part[[1, 0]].ravel()]
        flipped[part[0]] = -w[part[0]]
    assert E(swapped)[0] == pytest.approx(E(w)[0], rel=1e-13)
    assert abs(E(flipped)[0] - E(w)[0]) > 1e-3


def test_the_kernel_covers_every_activation():
    """Energy hands every MLP to the kernel when it is available, whatever its activation."""
    from landscape import kernel
    assert tuple(models.ACTIVATIONS) == kernel.ACTIVATIONS

