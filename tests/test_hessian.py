import numpy as np
import pytest

from landscape import hessian, models
from landscape.energy import Energy
from landscape.minimize import minimize


@pytest.fixture(scope="module")
def symmetric_stationary_point(iris):
    """Minimise Iris 4-4(tanh)-3 from a start whose hidden units 0 and 1 are identical: gradient flow
    keeps them identical, so L-BFGS converges inside that subspace - typically to a saddle."""
    model = models.MLP((4, 4, 3))
    E = Energy(model, iris.X_train, iris.y_train, lam=1e-4)
    b = {blk.name: blk.indices() for blk in model.blocks()}
    for seed in range(10):
        x0 = np.random.default_rng(seed).normal(size=model.n_params)
        x0[b["W0"][:, 1]], x0[b["b0"][1]], x0[b["W1"][1]] = x0[b["W0"][:, 0]], x0[b["b0"][0]], x0[b["W1"][0]]
        r = minimize(E.energy_gradient, x0, tol=1e-9)
        if hessian.check(E, r.x[0]).saddle:
            return E, r.x[0]
    pytest.skip("no saddle found on the symmetric subspace")


def test_full_and_lanczos_agree_and_find_the_saddle(symmetric_stationary_point):
    E, x = symmetric_stationary_point
    full = hessian.check(E, x, "full")
    lanczos = hessian.check(E, x, "lanczos")
    assert full.saddle and lanczos.saddle and full.index >= 1
    np.testing.assert_allclose(lanczos.eigenvalues, full.eigenvalues, rtol=1e-5, atol=1e-9)
    # the eigenvector is a direction of negative curvature
    v = full.vector
    assert v @ E.hvp(x, v)[0] < -full.eig_tol


def test_pushing_off_a_saddle_reaches_a_lower_true_minimum(symmetric_stationary_point):
    """As the sampler does: push off along the negative-curvature direction and minimise, at most
    three times (a weak negative mode can lead back near the subspace; which rounding does so
    depends on the build's vector length)."""
    E, x = symmetric_stationary_point
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
