import numpy as np
import pytest
import torch

from landscape import hessian, models
from landscape.energy import Energy
from landscape.minimize import minimize

LAM = 1e-4


def _plain_loss(model: models.MLP, X: np.ndarray, y: np.ndarray):
    """The energy written here in plain torch, from the flat layout [W0 (in x out), b0, W1, b1]:
    nothing of landscape.energy or landscape.hessian."""
    b = {blk.name: torch.from_numpy(blk.indices()) for blk in model.blocks()}
    Xt, yt = torch.from_numpy(X), torch.from_numpy(np.asarray(y, dtype=np.int64))

    def energy(w: torch.Tensor) -> torch.Tensor:
        logits = torch.tanh(Xt @ w[b["W0"]] + w[b["b0"]]) @ w[b["W1"]] + w[b["b1"]]
        return torch.nn.functional.cross_entropy(logits, yt) + LAM * (w ** 2).sum()

    return energy


def _independent_eigenvalues(model: models.MLP, X: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """All Hessian eigenvalues at ``x``, ascending: torch.autograd.functional.hessian of the plain
    loss, and numpy.linalg.eigvalsh."""
    H = torch.autograd.functional.hessian(_plain_loss(model, X, y), torch.from_numpy(x.copy()))
    return np.linalg.eigvalsh(H.numpy())


@pytest.fixture(scope="module")
def symmetric_stationary_point(iris):
    """Minimise Iris 4-4(tanh)-3 from a start whose hidden units 0 and 1 are identical: gradient flow
    keeps them identical, so L-BFGS converges inside that subspace - typically to a saddle. The
    saddle is picked by the independent eigenvalues, not by the function under test, and a
    search that finds none fails."""
    model = models.MLP((4, 4, 3))
    E = Energy(model, iris.X_train, iris.y_train, lam=LAM)
    b = {blk.name: blk.indices() for blk in model.blocks()}
    for seed in range(10):
        x0 = np.random.default_rng(seed).normal(size=model.n_params)
        x0[b["W0"][:, 1]], x0[b["b0"][1]], x0[b["W1"][1]] = x0[b["W0"][:, 0]], x0[b["b0"][0]], x0[b["W1"][0]]
        r = minimize(E.energy_gradient, x0, tol=1e-9)
        eig = _independent_eigenvalues(model, iris.X_train, iris.y_train, r.x[0])
        if r.converged[0] and eig[0] < -1e-6 * max(1.0, abs(eig[-1])):
            return E, r.x[0], eig
    pytest.fail("no saddle on the symmetric subspace by the independent eigenvalues: the fixture needs other starts")


def test_the_independent_loss_is_the_energy(iris, symmetric_stationary_point):
    """The plain loss is the energy under test (else its eigenvalues would prove nothing)."""
    E, x, _ = symmetric_stationary_point
    rng = np.random.default_rng(1)
    for w in (x, x + rng.normal(size=x.size)):
        plain = _plain_loss(E.model, iris.X_train, iris.y_train)(torch.from_numpy(w)).item()
        np.testing.assert_allclose(E(w)[0], plain, rtol=1e-12)


def test_full_and_lanczos_agree_and_find_the_saddle(symmetric_stationary_point):
    E, x, eig = symmetric_stationary_point
    full = hessian.check(E, x, "full")
    lanczos = hessian.check(E, x, "lanczos")
    assert full.saddle and lanczos.saddle and full.index == int((eig < -full.eig_tol).sum()) >= 1
    np.testing.assert_allclose(full.eigenvalues, eig[:hessian.N_LOWEST], rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(lanczos.eigenvalues, full.eigenvalues, rtol=1e-5, atol=1e-9)
    # the eigenvector is a direction of negative curvature
    v = full.vector
    assert v @ E.hvp(x, v)[0] < -full.eig_tol


def test_pushing_off_a_saddle_reaches_a_lower_true_minimum(symmetric_stationary_point):
    """As the sampler does: push off along the negative-curvature direction and minimise, at most
    three times (a weak negative mode can lead back near the subspace; which rounding does so
    depends on the build's vector length)."""
    E, x, _ = symmetric_stationary_point
    y, h = x, hessian.check(E, x)
    for _ in range(3):
        r = minimize(E.energy_gradient, y + 1e-2 * h.vector, tol=1e-9)
        assert r.converged[0] and r.energy[0] < E(y)[0]
        y, h = r.x[0], hessian.check(E, r.x[0])
        if not h.saddle:
            break
    assert not h.saddle and E(y)[0] < E(x)[0]


def test_unknown_mode(iris):
    E = Energy(models.MLP((4, 2, 3)), iris.X_train, iris.y_train)
    with pytest.raises(ValueError, match="unknown Hessian mode"):
        hessian.check(E, np.zeros(E.n_params), "exact")
