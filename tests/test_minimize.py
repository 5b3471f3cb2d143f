import numpy as np
import pytest

from landscape import kernel, models
from landscape.energy import Energy
from landscape.minimize import LBFGS, concat, minimize


def quadratic(A, b):
    def fun(x):
        g = x @ A.T - b
        return 0.5 * np.einsum("kp,kp->k", x, x @ A.T) - x @ b, g
    return fun


def rosenbrock(x):
    a, b = x[:, 0], x[:, 1]
    E = (1 - a) ** 2 + 100 * (b - a * a) ** 2
    g = np.stack([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)], 1)
    return E, g


def test_convex_quadratic_converges_to_the_solution():
    rng = np.random.default_rng(0)
    Q = rng.normal(size=(8, 8))
    A = Q @ Q.T + 0.5 * np.eye(8)
    b = rng.normal(size=8)
    r = minimize(quadratic(A, b), rng.normal(size=(5, 8)) * 3, tol=1e-10)
    assert r.converged.all() and (r.status == "converged").all()
    np.testing.assert_allclose(r.x, np.tile(np.linalg.solve(A, b), (5, 1)), atol=1e-8)


def test_rosenbrock_from_several_starts():
    starts = np.array([[-1.2, 1.0], [2.0, 2.0], [0.0, -1.0], [-2.0, 3.0]])
    r = minimize(rosenbrock, starts, tol=1e-10)
    assert r.converged.all()
    np.testing.assert_allclose(r.x, 1.0, atol=1e-7)
    assert np.all(r.nfev >= r.nit)


def test_iris_minima_are_converged_when_recomputed_independently(iris):
    model = models.MLP((4, 5, 3))
    E = Energy(model, iris.X_train, iris.y_train, lam=1e-4)
    x0 = np.concatenate([np.random.default_rng(s).normal(size=(2, 43)) for s in range(3)])
    r = minimize(E.energy_gradient, x0, tol=1e-10)
    assert r.converged.all()
    # independent recomputation: autograd backend, one walker at a time
    ref = Energy(model, iris.X_train, iris.y_train, lam=1e-4, backend="autograd")
    for k in range(len(x0)):
        e, g = ref.energy_gradient(r.x[k])
        assert np.sqrt(np.mean(g ** 2)) <= 1e-10
        np.testing.assert_allclose(e[0], r.energy[k], rtol=1e-12)
    assert np.min(r.energy) < 0.0258  # the known global minimum region, E ~ 0.025778...


def test_unconverged_runs_are_reported_as_such():
    r = minimize(rosenbrock, np.array([[-1.2, 1.0], [1.0, 1.0]]), tol=1e-10, maxiter=5)
    assert list(r.status) == ["maxiter", "converged"]
    assert list(r.converged) == [False, True]


def test_streaming_batch_takes_new_work_as_walkers_finish():
    opt = LBFGS(rosenbrock, 2, tol=1e-8)
    opt.add(np.array([[-1.2, 1.0], [0.5, 0.5]]), tags=np.array([10, 11]))
    finished = []
    while len(opt):
        out = opt.step()
        finished += list(out.tag)
        if 11 in out.tag:
            opt.add(np.array([[3.0, -3.0]]), tags=np.array([12]))
    assert sorted(finished) == [10, 11, 12]
    assert finished.index(11) < finished.index(10)


def test_dropped_problems_leave_without_a_result():
    """drop() abandons running problems by tag; the others finish as if alone."""
    fun = lambda x: (0.5 * (x ** 2).sum(1), x)  # noqa: E731
    opt = LBFGS(fun, 3, tol=1e-8)
    opt.add(np.ones((3, 3)), np.array([7, 8, 9]))
    opt.step()
    opt.drop(np.array([8]))
    parts = []
    while len(opt):
        parts.append(opt.step())
    res = concat(parts)
    assert sorted(res.tag) == [7, 9] and res.converged.all()


def test_nonfinite_energy_is_reported():
    def fun(x):
        E = np.where(x[:, 0] > 0.5, np.nan, (x ** 2).sum(1))
        return E, 2 * x
    r = minimize(fun, np.array([[0.6, 0.0], [0.1, 0.0]]), tol=1e-12)
    assert list(r.status) == ["non-finite energy", "converged"]
    with pytest.raises(ValueError, match=r"shape \(k, 2\)"):
        LBFGS(fun, 2).add(np.zeros((1, 3)))


@pytest.mark.skipif(not kernel.available(), reason="no C compiler")
@pytest.mark.parametrize("P, K, M", [(43, 7, 5), (43, 19, 5), (2410, 40, 20)])
def test_compiled_two_loop_equals_numpy(P, K, M):
    """The compiled two-loop recursion gives the NumPy one's direction, applies the pair scales,
    skips unusable pairs (rho = 0, scales holding NaN) and honours the ring order and a subset of
    slots. It runs each problem over its usable pairs only, at small P in interleaved groups
    (K = 19: whole groups and a rest); a problem's direction is the same whichever problems
    share the call."""
    rng = np.random.default_rng(P)
    opt = LBFGS(lambda x: (np.zeros(len(x)), x), P, memory=M)
    opt.add(rng.normal(size=(K, P)))
    opt._evaluate_pending()
    opt.S[...] = rng.integers(-127, 128, size=opt.S.shape)
    opt.Y[...] = np.clip(opt.S + rng.integers(-40, 41, size=opt.S.shape), -127, 127)
    opt.s_scale[...], opt.y_scale[...] = rng.uniform(1e-6, 1.0, (2, M, K))
    s, y = opt.S * opt.s_scale[..., None], opt.Y * opt.y_scale[..., None]
    opt.rho[...] = 1.0 / np.einsum("mkp,mkp->mk", s, y)
    opt.rho[1, 2], opt.s_scale[1, 2], opt.y_scale[1, 2] = 0.0, np.nan, np.nan
    opt.rho[[1, 0], 5] = 0.0  # problems started 2 and 0 iterations ago: no usable older pairs
    opt.rho[:, 6] = 0.0
    opt.gamma[...] = rng.uniform(0.1, 1.0, K)
    opt.pushes, opt.head = M - 1, 3  # a ring that is not full, newest pair not at the end
    for sel in (slice(None), np.array([2, 0])):
        opt.compiled = True
        opt.threads = 1
        fast = opt._direction(sel)
        opt.threads = 2
        np.testing.assert_array_equal(opt._direction(sel), fast)  # threads change nothing
        opt.compiled = False
        slow = opt._direction(sel)
        assert np.all(np.isfinite(fast))
        np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12 * np.abs(slow).max())
    opt.compiled = True
    together = opt._direction(slice(None))
    for k in (0, 2, K - 1):
        np.testing.assert_array_equal(opt._direction(np.array([k]))[0], together[k])


@pytest.mark.skipif(not kernel.available(), reason="no C compiler")
@pytest.mark.parametrize("P", [43, 2410])
def test_pairs_stored_in_eight_bits(P):
    """A pushed pair row v is round(127 v / max|v|) times max|v| / 127, so within max|v| / 254 of
    v, compiled and NumPy alike (the compiled rounding may fuse the multiply: at most one unit
    apart, rarely); s.y and y.y are those of the stored pair; NaN (and zeros stored) where a step
    or gradient change is not finite."""
    rng = np.random.default_rng(P)
    K, M = 5, 3
    x, g = rng.normal(size=(2, K, P))
    xn = x + 10.0 ** rng.uniform(-9, 1, (K, 1)) * rng.normal(size=(K, P))  # steps of 1e-9 to 10
    gn = g + 1e-3 * rng.normal(size=(K, P))
    gn[3, 7] = np.inf
    rows = np.array([4, 0, 2, 1, 3])
    fine = np.array([True, True, True, False, True])
    stored = []
    for compiled in (True, False):
        opt = LBFGS(lambda z: (np.zeros(len(z)), z), P, memory=M)
        opt.add(np.zeros((K, P)))
        opt.compiled = compiled
        sy, yy = opt._push(1, rows, x, xn, g, gn)
        s, y = opt._pair(1, rows)
        stored.append(np.stack([opt.S[1, rows], opt.Y[1, rows]]).astype(int))
        for got, want in ((s, xn - x), (y, gn - g)):
            top = np.abs(want[fine]).max(1, keepdims=True)
            assert np.all(np.abs(got[fine] - want[fine]) <= top / 254 * (1 + 1e-12))
        np.testing.assert_allclose(sy[fine], np.einsum("ap,ap->a", s, y)[fine], rtol=1e-12)
        np.testing.assert_allclose(yy[fine], np.einsum("ap,ap->a", y, y)[fine], rtol=1e-12)
        assert np.isnan(sy[~fine]).all() and np.isnan(yy[~fine]).all()
        assert not opt.S[1, rows[~fine]].any() and not opt.Y[1, rows[~fine]].any()
    off = np.abs(stored[0] - stored[1])
    assert off.max() <= 1 and off.mean() < 1e-3


# -- OWL-QN on kinks ------------------------------------------------------------------------------------------

def lasso(A, b, c, kinks):
    """E = x.A.x / 2 - b.x + c sum |x_i| over the kinks, as (E, G with sign(0) = 0, S)."""
    def fun(x):
        E0, g = quadratic(A, b)(x)
        S = np.where(kinks, c, 0.0) * np.ones_like(x)
        return E0 + (S * np.abs(x)).sum(1), g + np.sign(x) * S, S
    return fun


def lasso_reference(A, b, c, kinks, iters=200000):
    """The minimiser by proximal gradient (ISTA), to float64 precision."""
    x = np.zeros(len(b))
    t = 1.0 / np.linalg.eigvalsh(A).max()
    for _ in range(iters):
        z = x - t * (A @ x - b)
        x = np.where(kinks, np.sign(z) * np.maximum(np.abs(z) - t * c, 0.0), z)
    return x


def test_owlqn_lands_exactly_on_the_kinks_of_an_l1_penalty():
    rng = np.random.default_rng(1)
    P = 12
    Q = rng.normal(size=(P, P))
    A = Q @ Q.T / P + 0.2 * np.eye(P)
    b = rng.normal(size=P)
    kinks = np.arange(P) % 3 != 0  # every third coordinate smooth
    fun = lasso(A, b, 0.6, kinks)
    ref = lasso_reference(A, b, 0.6, kinks)
    assert 2 <= (ref[kinks] == 0).sum() < kinks.sum()  # a test with kinks that matter
    r = minimize(fun, rng.normal(size=(6, P)) * 3, tol=1e-10, kinks=kinks)
    assert r.converged.all()
    np.testing.assert_allclose(r.x, np.tile(ref, (6, 1)), atol=1e-8)
    np.testing.assert_array_equal(r.x == 0, np.tile(ref == 0, (6, 1)))  # exactly 0, not 1e-12
    # convergence is on the pseudo-gradient; the gradient itself stays large at the kinks
    assert (r.grad_rms <= 1e-10).all()
    E, G, S = fun(r.x)
    assert np.abs(G).max() > 1e-3 and (np.abs(G[r.x == 0]) <= S[r.x == 0]).all()
    # plain L-BFGS on the same function does not converge there
    plain = minimize(lambda x: fun(x)[:2], rng.normal(size=(6, P)) * 3, tol=1e-10, maxiter=500)
    assert not plain.converged.any()


def test_pseudo_gradient_picks_the_descending_side():
    from landscape.minimize import pseudo_gradient

    x = np.array([[0.0, 0.0, 0.0, 0.0, 1.0, 0.0]])
    G = np.array([[0.5, -0.5, 2.0, -2.0, 3.0, 0.3]])
    S = np.array([[1.0, 1.0, 1.0, 1.0, 1.0, -1.0]])
    kinks = np.array([True, True, True, True, True, False])
    # |g| <= s: 0; g + s < 0: g + s; g - s > 0: g - s; a non-zero or smooth coordinate keeps its gradient
    np.testing.assert_allclose(pseudo_gradient(x, G, S, kinks), [[0.0, 0.0, 1.0, -1.0, 3.0, 0.3]])
    # a concave kink (s < 0) descends both ways: the steeper side
    np.testing.assert_allclose(pseudo_gradient(np.zeros((1, 1)), np.array([[0.2]]), np.array([[-1.0]]),
                                               np.array([True])), [[1.2]])


def test_a_kink_mask_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="kinks must be"):
        LBFGS(rosenbrock, 2, kinks=np.ones(3, bool))
