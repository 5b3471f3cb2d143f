import copy

import networkx as nx
import numpy as np
import pytest
import torch

from landscape import hessian, identify, transitions
from landscape.identify import MinimaIndex, Point
from landscape.minimize import minimize

# The Mueller-Brown surface (Mueller & Brown 1979): V = sum_k A_k exp(a_k dx^2 + b_k dx dy + c_k dy^2)
MB_A = np.array([-200.0, -100.0, -170.0, 15.0])
MB_a = np.array([-1.0, -1.0, -6.5, 0.7])
MB_b = np.array([0.0, 0.0, 11.0, 0.6])
MB_c = np.array([-10.0, -10.0, -6.5, 0.7])
MB_X = np.array([1.0, 0.0, -0.5, -1.0])
MB_Y = np.array([0.0, 0.5, 1.5, 1.0])
# literature values, refined below by Newton's method: minima A, B, C and the saddles A-C, C-B
MB_MINIMA = {"A": (-0.558, 1.442), "B": (0.623, 0.028), "C": (-0.050, 0.467)}
MB_SADDLES = {("A", "C"): (-0.822, 0.624, -40.665), ("B", "C"): (0.212, 0.293, -72.249)}


class MuellerBrown:
    """The Mueller-Brown potential in closed form, with the interface the module takes."""

    n_params = 2

    def _terms(self, w):
        w = np.atleast_2d(w)
        dx, dy = w[:, :1] - MB_X, w[:, 1:] - MB_Y
        return dx, dy, MB_A * np.exp(MB_a * dx ** 2 + MB_b * dx * dy + MB_c * dy ** 2)

    def energy_gradient(self, w):
        dx, dy, e = self._terms(w)
        gx, gy = (e * (2 * MB_a * dx + MB_b * dy)).sum(1), (e * (MB_b * dx + 2 * MB_c * dy)).sum(1)
        return e.sum(1), np.stack([gx, gy], 1)

    def hessians(self, w):
        dx, dy, e = self._terms(w)
        px, py = 2 * MB_a * dx + MB_b * dy, MB_b * dx + 2 * MB_c * dy
        xx, yy, xy = (e * (px * px + 2 * MB_a)).sum(1), (e * (py * py + 2 * MB_c)).sum(1), (e * (px * py + MB_b)).sum(1)
        return np.stack([np.stack([xx, xy], -1), np.stack([xy, yy], -1)], -2)

    def hvp(self, w, v):
        return np.einsum("kij,kj->ki", self.hessians(w), np.atleast_2d(v))

    def hessian(self, w):
        return self.hessians(w)[0]


def newton(mb: MuellerBrown, x: tuple) -> np.ndarray:
    """The stationary point near ``x``, by Newton's method on the gradient to machine precision."""
    x = np.array(x[:2], float)
    for _ in range(50):
        x = x - np.linalg.solve(mb.hessian(x), mb.energy_gradient(x)[1][0])
    assert np.abs(mb.energy_gradient(x)[1]).max() < 1e-11
    return x


@pytest.fixture(scope="module")
def mb():
    mb = MuellerBrown()
    minima = {k: newton(mb, v) for k, v in MB_MINIMA.items()}
    saddles = {k: newton(mb, v) for k, v in MB_SADDLES.items()}
    for k, (_, _, E) in MB_SADDLES.items():  # Newton converged to the saddles of the literature
        assert mb.energy_gradient(saddles[k])[0][0] == pytest.approx(E, abs=1e-3)
    return mb, minima, saddles


def test_band_and_refinement_find_the_mueller_brown_saddles(mb):
    """A band from A to B passes C: its two climbing images refine to the two exact saddles."""
    mb, minima, saddles = mb
    bands = transitions.band(mb, minima["A"], minima["B"])
    which = np.argwhere(bands.climbing)
    states = transitions.refine(mb, bands.x[which[:, 0], which[:, 1] + 1], bands.tangent[which[:, 0], which[:, 1]])
    found = [ts for ts in states if ts.verified]
    assert len(found) == 2
    for ts in found:
        exact = min(saddles.values(), key=lambda s: np.linalg.norm(s - ts.x))
        np.testing.assert_allclose(ts.x, exact, atol=1e-8)
        assert ts.energy == pytest.approx(mb.energy_gradient(exact)[0][0], abs=1e-8)
        assert ts.converged and ts.grad_rms <= 1e-10
        lam = np.linalg.eigvalsh(mb.hessian(ts.x))
        assert lam[0] < -100 and lam[1] > 100  # exactly one negative eigenvalue
        assert ts.eigenvalue == pytest.approx(lam[0], rel=1e-10) and ts.index == 1
    assert {tuple(np.round(ts.x, 6)) for ts in found} == {tuple(np.round(s, 6)) for s in saddles.values()}


@pytest.mark.parametrize("spring", [1e-3, 1e-2, 1e-1])
def test_a_climbing_image_that_tears_its_band_does_not_run_away(mb, spring):
    """With springs too weak to hold it (as barrier-scaled springs are on the soft digits
    landscape), the climbing image of a band from A to C ran uphill without bound (energies of
    1e144) and dragged its band apart; torn bands now get stiffer springs and their climbing
    image stops climbing, and the band still leads to the A-C saddle."""
    mb, minima, saddles = mb
    bands = transitions.band(mb, minima["A"], minima["C"], transitions.Settings(spring=spring))
    segments = np.linalg.norm(np.diff(bands.x[0], axis=0), axis=1)
    straight = np.linalg.norm(minima["C"] - minima["A"]) / len(segments)
    assert np.isfinite(bands.energy).all() and bands.energy.max() < -40.0
    assert segments.max() < 2 * transitions.Settings().spacing_limit * straight
    assert bands.spring[0] > spring
    which = np.argwhere(bands.climbing)
    states = transitions.refine(mb, bands.x[which[:, 0], which[:, 1] + 1], bands.tangent[which[:, 0], which[:, 1]])
    assert any(ts.verified and np.linalg.norm(ts.x - saddles[("A", "C")]) < 1e-8 for ts in states)


def test_descent_from_each_mueller_brown_saddle_reaches_its_two_minima(mb):
    mb, minima, saddles = mb
    for (m1, m2), x in saddles.items():
        ts = transitions.refine(mb, x + 1e-3)[0]
        d = transitions.descend(mb, ts)
        assert d.plus.converged and d.minus.converged and d.plus.grad_rms <= 1e-10
        reached = [min(minima, key=lambda k: np.linalg.norm(minima[k] - end.x)) for end in (d.plus, d.minus)]
        assert set(reached) == {m1, m2}
        for name, end in zip(reached, (d.plus, d.minus)):
            np.testing.assert_allclose(end.x, minima[name], atol=1e-8)


def mb_index(mb: MuellerBrown, minima: dict, names: str) -> MinimaIndex:
    """An index of the Mueller-Brown minima ``names``, ids in that order (no symmetries)."""
    index = MinimaIndex([], 1.0, mb.energy_gradient)
    for i, k in enumerate(names):
        x = minima[k]
        index.add(i, Point(mb.energy_gradient(x)[0][0], x, 0.0, np.linalg.eigvalsh(mb.hessian(x))[0]))
    return index


def test_connect_finds_the_intermediate_mueller_brown_minimum(mb):
    """Connecting A and B needs C, which the driver finds by descent and returns as new."""
    mb, minima, saddles = mb
    index = mb_index(mb, minima, "AB")
    res = transitions.connect(mb, [], index, [(0, 1)])
    assert res.connected.tolist() == [True] and res.paths == [[0, 2, 1]]
    assert [m.id for m in res.minima] == [2]
    np.testing.assert_allclose(res.minima[0].x, minima["C"], atol=1e-8)
    assert res.minima[0].eigenvalues.min() > 0
    assert sorted(sorted((c.minimum_plus, c.minimum_minus)) for c in res.connections) == [[0, 2], [1, 2]]
    for c in res.connections:
        exact = min(saddles.values(), key=lambda s: np.linalg.norm(s - c.ts.x))
        np.testing.assert_allclose(c.ts.x, exact, atol=1e-8)


def test_connect_stops_at_its_attempt_budget(mb):
    mb, minima, _ = mb
    res = transitions.connect(mb, [], mb_index(mb, minima, "AB"), [(0, 1)], max_attempts=0)
    assert res.connected.tolist() == [False] and res.paths == [None] and not res.tried
    assert res.status == "attempt budget (0) spent"


def test_a_known_transition_state_is_a_connection_and_is_not_reported_again(mb):
    """The band from A to B finds both saddles; the one already known (A-C) is recognised."""
    mb, minima, saddles = mb
    index = mb_index(mb, minima, "ABC")
    found = transitions.refine(mb, saddles[("A", "C")] + 1e-3)[0]
    assert found.verified
    known = transitions.TransitionState.stored(found.energy, found.x, found.grad_rms, found.eigenvalues[:1])
    res = transitions.connect(mb, [], index, [(0, 1)], known=[transitions.Connection(known, 0, 2)])
    assert res.connected.tolist() == [True] and res.paths == [[0, 2, 1]] and res.tried == [(0, 1)]
    assert res.rejected == {"found before": 1} and not res.minima
    assert len(res.connections) == 1 and {res.connections[0].minimum_plus, res.connections[0].minimum_minus} == {1, 2}
    np.testing.assert_allclose(res.connections[0].ts.x, saddles[("B", "C")], atol=1e-8)


# -- Iris 4-3(tanh)-3 ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def iris_pair(problem):
    """Two distinct minima from seeded random starts, in an index (ids 0 and 1)."""
    energy, groups = problem.energy(), problem.model.unit_groups()
    r = minimize(energy.energy_gradient, np.random.default_rng(0).normal(size=(32, energy.n_params)), tol=1e-10)
    order = np.argsort(r.energy)
    first = order[0]
    second = next(j for j in order if identify.distance(r.x[first], r.x[j], groups) > 1e-2)
    assert r.converged[[first, second]].all() and r.energy[second] - r.energy[first] > 1e-6
    index = MinimaIndex(groups, 2.0 * problem.lam, energy.energy_gradient)
    for i, j in enumerate((first, second)):
        h = hessian.check(energy, r.x[j], "full")
        assert not h.saddle
        index.add(i, Point(float(r.energy[j]), r.x[j], float(r.grad_rms[j]) * np.sqrt(energy.n_params),
                           float(h.eigenvalues[0]), r.grad[j]))
    return energy, groups, index


@pytest.fixture(scope="module")
def iris_connected(iris_pair):
    energy, groups, index = iris_pair
    index = copy.deepcopy(index)
    return transitions.connect(energy, groups, index, [(0, 1)], seed=3), index


def test_align_pair_is_the_closest_symmetric_image(iris_pair):
    energy, groups, index = iris_pair
    a, b = index.points[0].x, index.points[1].x
    image = transitions.align_pair(a, b, groups)
    assert energy(image)[0] == pytest.approx(energy(b)[0], abs=1e-14)
    assert np.linalg.norm(a - image) == pytest.approx(identify.distance(a, b, groups))
    assert np.linalg.norm(a - image) < np.linalg.norm(a - b)


def test_connect_iris_minima_with_verified_transition_states(problem, iris_connected):
    res, index = iris_connected
    assert res.connected.tolist() == [True] and res.connections
    graph = nx.Graph([(c.minimum_plus, c.minimum_minus) for c in res.connections])
    assert nx.has_path(graph, 0, 1) and res.paths[0][0] == 0 and res.paths[0][-1] == 1
    energy = problem.energy()
    autograd = problem.energy(backend="autograd")
    for c in res.connections:
        g = energy.energy_gradient(c.ts.x)[1][0]
        assert np.sqrt(np.mean(g ** 2)) <= 1e-10 and c.ts.grad_rms <= 1e-10
        H = torch.autograd.functional.hessian(lambda w: autograd.energy_t(w[None])[0], torch.from_numpy(c.ts.x))
        lam = np.linalg.eigvalsh(H.numpy())
        tol = 1e-6 * max(1.0, abs(lam[-1]))
        assert (lam < -tol).sum() == 1 and lam[0] < -100 * tol
        assert c.ts.eigenvalue == pytest.approx(lam[0], rel=1e-4)
        # descending again, the sampler's identification names the minima the connection records
        d = transitions.descend(energy, c.ts)
        ends = [index.match(Point(m.energy, m.x, m.grad_rms * np.sqrt(len(m.x)), grad=m.grad), ambiguity=False).same
                for m in (d.plus, d.minus)]
        assert ends == [c.minimum_plus, c.minimum_minus]
    for m in res.minima:  # new minima are minima, numbered after the known ones
        assert m.id >= 2 and m.grad_rms <= 1e-10 and m.eigenvalues[0] > 0


def test_same_seed_same_result(iris_pair, iris_connected):
    energy, groups, index = iris_pair
    first, _ = iris_connected
    again = transitions.connect(energy, groups, copy.deepcopy(index), [(0, 1)], seed=3)
    assert again.tried == first.tried and again.paths == first.paths
    assert len(again.connections) == len(first.connections) and len(again.minima) == len(first.minima)
    for a, b in zip(again.connections, first.connections):
        assert (a.minimum_plus, a.minimum_minus) == (b.minimum_plus, b.minimum_minus)
        assert np.array_equal(a.ts.x, b.ts.x) and a.ts.energy == b.ts.energy
    for a, b in zip(again.minima, first.minima):
        assert np.array_equal(a.x, b.x)


def test_unknown_minimum_and_bad_settings_are_refused(iris_pair):
    energy, groups, index = iris_pair
    with pytest.raises(ValueError, match="both minima must be in the index"):
        transitions.connect(energy, groups, index, [(0, 7)])
    with pytest.raises(ValueError, match="joined to itself"):
        transitions.connect(energy, groups, index, [(1, 1)])
    with pytest.raises(ValueError, match="images must be >= 1"):
        transitions.Settings(images=0)
    with pytest.raises(ValueError, match="unknown Hessian mode"):
        transitions.Settings(hessian="exact")


@pytest.mark.slow
def test_connect_the_lowest_iris_4_5_3_minima():
    """As benchmarks/connect.py: the lowest minimum of Iris 4-5(tanh)-3 to each of the next four,
    every transition state with one negative eigenvalue and RMS gradient <= 1e-10."""
    import landscape

    problem = landscape.Problem.create("iris", hidden=(5,), lam=1e-4, test_fraction=0.0)
    energy, groups = problem.energy(), problem.model.unit_groups()
    r = minimize(energy.energy_gradient, np.random.default_rng(0).normal(size=(500, energy.n_params)), tol=1e-10,
                 memory=60)
    index = MinimaIndex(groups, 2.0 * problem.lam, energy.energy_gradient)
    for j in np.argsort(r.energy):
        p = Point(float(r.energy[j]), r.x[j], float(r.grad_rms[j]) * np.sqrt(energy.n_params), grad=r.grad[j])
        if len(index) < 5 and r.converged[j] and index.match(p, ambiguity=False).same is None:
            h = hessian.check(energy, r.x[j], "full")
            if not h.saddle:
                index.add(len(index), Point(p.energy, p.x, p.gnorm, float(h.eigenvalues[0]), p.grad))
    res = transitions.connect(energy, groups, index, [(0, i) for i in range(1, 5)])
    assert res.connected.all()
    for c in res.connections:
        lam = np.linalg.eigvalsh(energy.hessian(c.ts.x))
        assert (lam < -1e-6 * max(1.0, abs(lam[-1]))).sum() == 1 and c.ts.grad_rms <= 1e-10
