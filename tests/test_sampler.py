import math
import time

import numpy as np
import pytest

import landscape
from landscape import allocator, basinhopping, identify, kernel
from landscape.database import Database

SETTINGS = landscape.Settings(walkers=8, temperature=0.01, step=1.0)


@pytest.fixture(scope="module")
def sampled(problem, tmp_path_factory):
    path = tmp_path_factory.mktemp("bh") / "iris.h5"
    res = landscape.sample(problem, str(path), SETTINGS, steps=6, seed=1, progress=False)
    return path, res


def test_stored_minima_recompute_from_the_file_alone(sampled):
    path, res = sampled
    with Database(path) as db:
        m = db.minima()
        problem = db.problem  # rebuilt from the file: data spec, model, lam, data hash
        assert len(m) == res.n_minima >= 2
        assert m.hits.sum() == res.counters["converged"]
    E = problem.energy(backend="autograd")  # an independent implementation of the energy
    e, g = E.energy_gradient(m.coords)
    np.testing.assert_allclose(e, m.energy, rtol=1e-9)
    assert np.all(np.sqrt(np.mean(g ** 2, axis=1)) <= SETTINGS.refine_tol)
    assert np.all(m.eigenvalues[:, 0] > 0)  # minima, not saddles
    eig = np.linalg.eigvalsh(E.hessian(m.coords[0]))
    np.testing.assert_allclose(eig[:3], m.eigenvalues[0], rtol=1e-6, atol=1e-10)


def test_minima_without_coords_and_coords_of_some_rows(sampled):
    """`inspect` and the end of a run read the minima without their coordinates (most of a
    file: 2 GB for 100,000 digits minima); `score` reads the coordinates of the rows it scores."""
    with Database(sampled[0]) as db:
        m, light = db.minima(), db.minima(coords=False)
        for rows in ([0, len(m) - 1], [len(m) - 1, 0, 0], []):
            np.testing.assert_array_equal(db.coords(rows), m.coords[rows])
        for rows in ([0.5], [len(m)], [-1], [[0]]):
            with pytest.raises(ValueError, match="rows must be|ids must be in"):
                db.coords(rows)
    assert light.coords is None and len(light) == len(m)
    for name in ("energy", "grad_rms", "eigenvalues", "hits", "first_found"):
        np.testing.assert_array_equal(getattr(light, name), getattr(m, name))


def test_no_two_stored_minima_are_the_same(sampled, problem):
    path, _ = sampled
    with Database(path) as db:
        m = db.minima()
    groups = problem.model.unit_groups()
    for a in range(len(m)):
        for b in range(a + 1, len(m)):
            pa, pb = identify.stored_point(m, a), identify.stored_point(m, b)
            e_tol, d_tol = identify.tolerances(pa, pb, 2 * problem.lam)
            assert abs(m.energy[a] - m.energy[b]) > e_tol or identify.distance(m.coords[a], m.coords[b], groups) > d_tol


def test_symmetry_image_is_identified_and_close_minima_are_not(sampled, problem):
    path, _ = sampled
    with Database(path) as db:
        m = db.minima()
    groups = problem.model.unit_groups()
    E = problem.energy(backend="autograd")
    rng = np.random.default_rng(5)
    points = [identify.stored_point(m, i) for i in range(len(m))]
    index = identify.MinimaIndex.of(m, groups, 2 * problem.lam)
    for i, p in enumerate(points):
        image = identify.random_image(p.x, groups, rng)
        assert np.linalg.norm(image - p.x) > 1e-3  # really moved
        np.testing.assert_allclose(E(image), p.energy, rtol=1e-12)  # really a symmetry
        assert index.match(identify.Point(p.energy, image, p.gnorm)).same == i
    # the two stored minima closest in energy are told apart
    order = np.argsort(m.energy)
    gaps = np.diff(m.energy[order])
    a, b = order[np.argmin(gaps)], order[np.argmin(gaps) + 1]
    only_a = identify.MinimaIndex(groups, 2 * problem.lam)
    only_a.add(0, points[a])
    assert only_a.match(points[b]).same is None


def test_alignment_undoes_a_random_symmetry_with_near_ties():
    from landscape.models import MLP
    model = MLP((3, 6, 4, 2), "tanh")
    groups = model.unit_groups()
    rng = np.random.default_rng(0)
    x = rng.normal(size=model.n_params)
    x[model.blocks()[0].indices()[:, 1]] = x[model.blocks()[0].indices()[:, 0]] + 1e-9  # two near-identical units
    y = identify.random_image(x, groups, rng)
    assert identify.distance(x, y, groups) < 1e-6


def test_signature_bound_never_exceeds_the_aligned_distance():
    from landscape.models import CNN, MLP
    rng = np.random.default_rng(1)
    for model in (MLP((3, 6, 4, 2), "tanh"), MLP((3, 5, 2), "relu"), CNN((1, 4, 4), 2, (3,))):
        index = identify.MinimaIndex(model.unit_groups(), 1e-3)
        for _ in range(20):
            a, b = rng.normal(size=(2, model.n_params))
            bound = max(np.linalg.norm(u - v) for u, v in zip(index._signature(a), index._signature(b)))
            assert bound <= identify.distance(a, b, model.unit_groups()) + 1e-12
            assert max(np.linalg.norm(u - v) for u, v in zip(
                index._signature(a), index._signature(identify.random_image(a, model.unit_groups(), rng)))) < 1e-12


def test_same_seed_gives_the_same_minima(problem, tmp_path):
    runs = []
    for name in ("a.h5", "b.h5"):
        landscape.sample(problem, str(tmp_path / name), SETTINGS, steps=4, seed=3, progress=False)
        with Database(tmp_path / name) as db:
            runs.append(db.minima())
    np.testing.assert_array_equal(runs[0].energy, runs[1].energy)
    np.testing.assert_array_equal(runs[0].coords, runs[1].coords)
    np.testing.assert_array_equal(runs[0].hits, runs[1].hits)


@pytest.mark.skipif(not kernel.available(), reason="no C compiler: torch's results may depend on threads")
def test_thread_count_does_not_change_the_minima(problem, tmp_path):
    """The compiled energy, two-loop recursion and bounds split work over threads without changing
    a result, so a run on two threads stores exactly the minima of a run on one (128 walkers:
    enough work per call for the kernel to use both)."""
    runs = []
    for threads in (1, 2):
        path = tmp_path / f"t{threads}.h5"
        settings = landscape.Settings(walkers=128, temperature=0.01, step=1.0)
        landscape.sample(problem, str(path), settings, steps=3, seed=3, threads=threads, progress=False)
        with Database(path) as db:
            runs.append(db.minima())
    np.testing.assert_array_equal(runs[0].energy, runs[1].energy)
    np.testing.assert_array_equal(runs[0].coords, runs[1].coords)
    np.testing.assert_array_equal(runs[0].hits, runs[1].hits)


def test_time_limit_finishes_refinements_in_flight(problem, tmp_path, monkeypatch):
    """A new point is refined before it is stored. When the time budget runs out, quenches in
    flight are abandoned but refinements are finished, so no minimum already reached is lost.
    Here the clock stands still until the first refinement starts, then the minute is over."""
    calls = []
    identify_ = basinhopping._Sampler._identify

    def spy(self, walker, x, grad, E, grad_rms, refined):
        out = identify_(self, walker, x, grad, E, grad_rms, refined)
        calls.append((walker, refined, out[0]))
        return out

    class Clock:
        @staticmethod
        def perf_counter() -> float:
            return 1e9 if any(outcome == "refine" for _, _, outcome in calls) else 0.0

        process_time = staticmethod(time.process_time)

    monkeypatch.setattr(basinhopping._Sampler, "_identify", spy)
    monkeypatch.setattr(basinhopping, "time", Clock)
    path = str(tmp_path / "t.h5")
    res = landscape.sample(problem, path, SETTINGS, minutes=1.0, seed=0, progress=False)
    assert res.status == "time budget reached"
    refining = {w for w, _, outcome in calls if outcome == "refine"}
    finished = {w for w, refined, _ in calls if refined}
    assert refining and refining <= finished
    new = sum(outcome == "new" for _, _, outcome in calls)
    with Database(path) as db:
        assert new >= 1 and len(db.minima()) == new


def test_resume_continues_without_duplicates(problem, tmp_path):
    path = str(tmp_path / "r.h5")
    first = landscape.sample(problem, path, SETTINGS, steps=4, seed=0, progress=False)
    with Database(path) as db:
        walkers = db.walker_state(0)
    assert np.all(np.isfinite(walkers["energy"]))
    second = landscape.sample(problem, path, SETTINGS, steps=4, seed=0, resume=True, progress=False)
    with Database(path) as db:
        m, runs = db.minima(), db.runs()
    assert [r["status"] for r in runs] == ["completed", "completed"]
    assert runs[1]["parameters"]["resume"] is True
    assert len(m) == second.n_minima >= first.n_minima
    assert m.hits.sum() == first.counters["converged"] + second.counters["converged"]
    test_no_two_stored_minima_are_the_same((path, None), problem)


def test_resume_of_a_file_without_walker_minima(problem, tmp_path):
    """Files written before visit_bias existed store no walker minima; resume still works."""
    import h5py
    path = str(tmp_path / "old.h5")
    landscape.sample(problem, path, SETTINGS, steps=2, seed=0, progress=False)
    with h5py.File(path, "a") as f:
        del f["runs/0/walkers/minimum"]
    biased = landscape.Settings(walkers=8, temperature=0.01, step=1.0, visit_bias=2.0)
    landscape.sample(problem, path, biased, steps=2, seed=0, resume=True, progress=False)
    with Database(path) as db:
        assert np.all(db.walker_state(1)["minimum"] >= 0)  # every walker has accepted a stored minimum
        assert [r["status"] for r in db.runs()] == ["completed", "completed"]


def test_visit_bias_spreads_walkers_over_rarely_found_minima(tmp_path):
    """Plain Metropolis at T = 0.01 keeps returning to the lowest minima; the visit bias moves the
    walkers on to minima found rarely, so finds spread over more minima: the effective number of
    minima found (exp of the entropy of the hit shares) grows, and the most-found minimum's share
    falls."""
    problem = landscape.Problem.create("iris", hidden=(5,), lam=1e-4, test_fraction=0.0)
    out = {}
    for bias in (0.0, 4.0):
        path = str(tmp_path / f"b{bias}.h5")
        s = landscape.Settings(walkers=32, temperature=0.01, step=3.0, adaptive=False, visit_bias=bias)
        landscape.sample(problem, path, s, steps=20, seed=0, progress=False)
        with Database(path) as db:
            hits, minimum = db.minima().hits, db.walker_state(0)["minimum"]
        assert np.all((minimum >= 0) & (minimum < len(hits)))
        share = hits / hits.sum()
        out[bias] = share.max(), np.exp(-(share * np.log(share)).sum())
    # seeds 0-3, AVX-512 and AVX2 builds: effective number x1.21-1.75, top share x0.69-0.87
    assert out[4.0][1] > 1.15 * out[0.0][1]
    assert out[4.0][0] < 0.95 * out[0.0][0]


def test_uniform_start_steps_from_every_known_minimum_alike(sampled, problem):
    """With start 'uniform' a step displaces a known minimum drawn uniformly, not the walker's own
    point: each displaced point lies within the step (per coordinate) of a stored minimum, and
    every stored minimum is drawn about equally often."""
    path, _ = sampled
    with Database(path) as db:
        stored = db.minima()
    n, P = len(stored.energy), problem.model.n_params
    s = landscape.Settings(walkers=1, step=0.05, adaptive=False, start="uniform")
    walkers = basinhopping._Walkers(1, P, 0, s)
    walkers.x[0] = 100.0  # far from every minimum: a step from it would be found out
    sampler = basinhopping._Sampler(problem, problem.energy(), s, "full", walkers, stored, 1, out=None)
    draws = 200 * n
    origin = []
    for _ in range(draws):
        x = sampler._perturb(0)
        near = np.flatnonzero(np.abs(stored.coords - x).max(1) <= s.step)
        assert len(near) == 1  # the minima lie further apart than two steps
        origin.append(near[0])
    counts = np.bincount(origin, minlength=n)
    assert n >= 2 and np.all(np.abs(counts - 200) < 5 * np.sqrt(200))  # binomial sd < sqrt(200)


def test_uniform_start_run_is_reproducible_and_accepts_every_quench(tmp_path):
    problem = landscape.Problem.create("iris", hidden=(5,), lam=1e-4, test_fraction=0.0)
    s = landscape.Settings(walkers=8, step=3.0, adaptive=False, start="uniform")
    runs = []
    for name in ("a.h5", "b.h5"):
        res = landscape.sample(problem, str(tmp_path / name), s, steps=4, seed=2, progress=False)
        assert res.counters["accepted"] == res.counters["converged"] == res.counters["steps"] == 32
        with Database(tmp_path / name) as db:
            runs.append(db.minima())
    assert len(runs[0].energy) >= 2
    np.testing.assert_array_equal(runs[0].coords, runs[1].coords)
    np.testing.assert_array_equal(runs[0].hits, runs[1].hits)


def test_other_problem_is_refused_and_file_unchanged(sampled, problem):
    path, _ = sampled
    before = path.read_bytes()
    with pytest.raises(landscape.database.DatabaseError, match="different problem"):
        landscape.sample(problem.with_lam(2e-3), str(path), SETTINGS, steps=1, progress=False)
    assert path.read_bytes() == before


def test_quench_endpoints_are_matched_by_the_newton_test(sampled, problem):
    """A loosely converged quench ending near a stored minimum is recognised (the quadratic model of
    the stored minimum predicts its gradient); one ending near another minimum is not."""
    from landscape.minimize import minimize
    path, _ = sampled
    with Database(path) as db:
        m = db.minima()
    E = problem.energy()
    P = problem.model.n_params
    index = identify.MinimaIndex.of(m, problem.model.unit_groups(), 2 * problem.lam, energy_gradient=E.energy_gradient)
    rng = np.random.default_rng(2)
    r = minimize(E.energy_gradient, m.coords + rng.normal(scale=0.02, size=m.coords.shape), tol=1e-6)
    for i in range(len(m)):
        p = identify.Point(r.energy[i], r.x[i], r.grad_rms[i] * np.sqrt(P), grad=r.grad[i])
        assert np.linalg.norm(r.x[i] - m.coords[i]) > 1e-6
        assert index.match(p).same == i
        # the same coordinates with a gradient the stored minimum's curvature cannot produce
        inconsistent = identify.Point(p.energy, p.x, p.gnorm, grad=-r.grad[i])
        assert index.match(inconsistent).same is None


def test_halving_minimum_equals_numpy():
    rng = np.random.default_rng(8)
    for shape in [(5, 7, 7), (3, 32, 32), (4, 5, 3), (2, 1, 1), (2, 12, 9)]:
        a = rng.normal(size=shape).astype(np.float32)
        np.testing.assert_array_equal(identify._min_last(a), a.min(-1))
        np.testing.assert_array_equal(identify._min_last(a.swapaxes(1, 2)), a.min(1))


def test_assignment_bound_never_exceeds_the_optimal_assignment():
    """The float32 bound less its rounding margin stays below the exact (float64) assignment cost,
    also for near-identical rows, where float32 rounding matters most; compiled and NumPy alike,
    and both close to the exact row-minimum sum."""
    from scipy.optimize import linear_sum_assignment
    rng = np.random.default_rng(3)
    for odd, shape in ((True, (12, 9)), (False, (12, 9)), (True, (70, 4))):  # 70 units: beyond the compiled tiles
        for scale in (1e-3, 1.0, 30.0):
            x = scale * rng.normal(size=shape)
            refs = np.stack([x + scale * s * rng.normal(size=x.shape) for s in (0.0, 1e-7, 1e-3, 1.0)] * 3)
            ids = rng.permutation(len(refs))[:9]
            for compiled in (False, True) if kernel.available() else (False,):
                bound = identify._assignment_bound(refs.astype(np.float32), (refs ** 2).sum(-1), ids, x, odd, compiled)
                for ref, b in zip(refs[ids], bound):
                    cost, _ = identify._group_cost(ref, x, odd)
                    r, c = linear_sum_assignment(cost)
                    assert b <= cost[r, c].sum() * (1 + 1e-12) + 1e-300
                    assert b >= cost.min(1).sum() - 1e-3 * (ref ** 2).sum() - 1e-3 * (x ** 2).sum()  # not vacuous
    refs = rng.normal(size=(300, 32, 20)).astype(np.float32)  # enough work for two threads
    args = refs, (refs.astype(np.float64) ** 2).sum(-1), rng.permutation(300), rng.normal(size=(32, 20)), True
    np.testing.assert_array_equal(identify._assignment_bound(*args, threads=2), identify._assignment_bound(*args))


def test_tracked_queries_give_the_same_verdicts(sampled, problem, monkeypatch):
    """Reusing a walker's bounds (the triangle inequality) changes no verdict: a random walk
    of queries, near stored minima and far from them, matched with and without a track."""
    monkeypatch.setattr(identify, "TRACK_MIN", 0)  # track however few minima the window holds
    path, _ = sampled
    with Database(path) as db:
        m = db.minima()
    groups = problem.model.unit_groups()
    plain = identify.MinimaIndex.of(m, groups, 2 * problem.lam)
    tracked = identify.MinimaIndex.of(m, groups, 2 * problem.lam)
    rng = np.random.default_rng(4)
    for step in range(30):
        i = step % len(m)
        p = identify.stored_point(m, i)
        x = identify.random_image(p.x, groups, rng) + rng.normal(scale=[1e-9, 1e-2, 1.0][step % 3], size=p.x.shape)
        q = identify.Point(p.energy, x, p.gnorm)
        a, b = plain.match(q), tracked.match(q, track=0)
        assert (a.same, a.ambiguous) == (b.same, b.ambiguous)
        if step % 3 == 0:
            assert b.same == i


def test_projected_bounds_give_the_same_verdicts(monkeypatch):
    """Bounding wide unit rows in a projection first (digits 64-32-10: rows of 75) excludes
    candidates only where the full bound would, so verdicts (and the distance of a match) are those
    without it, and those of aligning every candidate without bounds (as for windows of at most
    ALIGN_DIRECTLY candidates); the bounds stay below the aligned distances."""
    model = landscape.Problem.create("digits", hidden=(32,), lam=1e-4, test_fraction=0.0).model
    groups, P = model.unit_groups(), model.n_params
    rng = np.random.default_rng(5)
    bases = rng.normal(size=(8, P))
    stored = [identify.random_image(bases[i % 8], groups, rng) + rng.normal(scale=0.05 * (i // 8), size=P)
              for i in range(2 * identify.PROJECTION_FROM)]
    gnorm = 4e-5  # with curvature 2e-4: distance tolerance ~4
    indexes = {}
    for projected in (True, False):
        monkeypatch.setattr(identify, "PROJECTION_FROM", identify.PROJECTION_FROM if projected else 10 ** 9)
        index = identify.MinimaIndex(groups, 2e-4)
        for i, x in enumerate(stored):
            index.add(i, identify.Point(0.5, x, gnorm))
        indexes[projected] = index
    assert indexes[True]._basis is not None and indexes[False]._basis is None
    excluded = 0
    for k in range(12):
        x = identify.random_image(bases[k % 8], groups, rng) + rng.normal(scale=[0.0, 0.1, 1.0][k % 3], size=P)
        p = identify.Point(0.5, x, gnorm)
        a, b = (indexes[t].match(p) for t in (True, False))
        assert (a.same, a.ambiguous) == (b.same, b.ambiguous)
        with monkeypatch.context() as m:  # no bounds at all: every candidate aligned
            m.setattr(identify, "ALIGN_DIRECTLY", 10 ** 9)
            c = indexes[True].match(p)
        assert (c.same, sorted(c.ambiguous)) == (a.same, sorted(a.ambiguous))
        if a.same is not None:
            assert a.distance == pytest.approx(b.distance, rel=1e-12)
            assert a.distance == pytest.approx(c.distance, rel=1e-12)
        ids = np.arange(len(stored))
        bounds = indexes[True]._lower_bounds(p, ids, np.full(len(ids), np.inf))
        exact = np.array([identify.distance(q, x, groups) for q in stored])
        assert np.all(bounds <= exact * (1 + 1e-9))
        index, rows = indexes[True], identify._unit_rows(x, groups[0], True)
        projected = identify._assignment_bound(index._prows, index._prows_sq, ids, rows @ index._basis, True)
        excluded += int((np.sqrt(projected) > 4.0).sum())
    assert excluded > 0  # the projection did exclude candidates
    assert any(indexes[True].match(identify.Point(0.5, x, gnorm)).same is not None for x in stored[:8])


def test_newton_test_with_known_gradients(problem):
    """With the stored minimum's gradient known, quench endpoints of one minimum pass the energy
    (trapezoid) and Newton tests; an endpoint with a gradient its curvature cannot produce, or
    with an energy off by more than the cubic term allows, does not."""
    from landscape.minimize import minimize
    E = problem.energy()
    P = problem.model.n_params
    groups = problem.model.unit_groups()
    rng = np.random.default_rng(6)
    x0 = minimize(E.energy_gradient, rng.normal(size=(1, P)), tol=1e-10).x[0]
    r = minimize(E.energy_gradient, x0 + rng.normal(scale=0.02, size=(6, P)), tol=1e-6)
    assert r.converged.all()
    point = lambda k, **kw: identify.Point(kw.get("energy", r.energy[k]), r.x[k], r.grad_rms[k] * np.sqrt(P),
                                           grad=kw.get("grad", r.grad[k]))
    index = identify.MinimaIndex(groups, 2 * problem.lam, energy_gradient=E.energy_gradient)
    index.add(0, point(0))
    for k in range(1, 6):
        image = identify.random_image(r.x[k], groups, rng)
        assert index.match(point(k)).same == 0
        assert index.match(identify.Point(r.energy[k], image, r.grad_rms[k] * np.sqrt(P),
                                          grad=identify.apply(r.grad[k], identify.alignment(image, r.x[k], groups)))).same == 0
        assert index.match(point(k, grad=-r.grad[k])).same is None
        e_tol = identify.tolerances(point(k), point(0), 2 * problem.lam)[0]
        assert index.match(point(k, energy=r.energy[0] + e_tol / 2)).same is None  # within e_tol, not the trapezoid


def test_a_torn_row_left_by_a_killed_writer_is_not_a_minimum(sampled, problem, tmp_path):
    """A writer killed inside add_minimum leaves some /minima datasets one row longer: readers
    ignore that row and the next append overwrites it."""
    import shutil

    import h5py
    path = tmp_path / "torn.h5"
    shutil.copy(sampled[0], path)
    with Database(path) as db:
        before = db.minima()
    with h5py.File(path, "a") as f:  # as if killed after writing the energy, before the coordinates
        e = f["minima/energy"]
        e.resize(len(before) + 1, axis=0)
        e[len(before)] = -1.0
    with Database(path) as db:
        m = db.minima()
        assert len(db) == len(m) == len(before)
        np.testing.assert_array_equal(m.energy, before.energy)
    with Database(path, problem, mode="a") as db:
        i = db.add_minimum(1.0, before.coords[0], 1e-11, before.eigenvalues[0], (9, 0, 0))
        assert i == len(before)
        m = db.minima()
    assert len(m) == len(before) + 1 and m.energy[-1] == 1.0 and m.coords.shape[0] == len(m)


def test_allocator_settings_are_taken_where_the_c_library_is_glibc():
    import platform
    assert allocator.keep_freed_memory() is (platform.libc_ver()[0] == "glibc")


@pytest.mark.parametrize("bad", [dict(step=math.inf), dict(temperature=math.nan), dict(tol=-1e-6),
                                 dict(maxstep=math.inf), dict(visit_bias=math.nan), dict(walkers=0),
                                 dict(walkers=2.5), dict(hessian="exact"), dict(start="random"),
                                 dict(adaptive=True, start="uniform"), dict(memory=0), dict(maxiter=0),
                                 dict(reseed_after=0), dict(adapt_every=0), dict(refine_tol=0.0),
                                 dict(init_scale=-1.0), dict(adapt_factor=1.5),
                                 dict(maxstep=0.0)])
def test_settings_refuse_bad_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        landscape.Settings(**bad)


@pytest.mark.parametrize("bad", [dict(steps=2.5), dict(steps=math.nan), dict(steps=True), dict(minutes=math.inf),
                                 dict(minutes="1"), dict(steps=1, threads=1.5), dict(steps=1, seed=1.0),
                                 dict(steps=1, processes="2")])
def test_sample_refuses_bad_budgets_and_counts_before_creating_the_file(problem, tmp_path, bad):
    path = tmp_path / "x.h5"
    with pytest.raises(ValueError, match=next(k for k in bad if k != "steps" or len(bad) == 1)):
        landscape.sample(problem, str(path), landscape.Settings(walkers=4), progress=False, **bad)
    assert not path.exists()


def test_a_quench_tolerance_tighter_than_the_refinement_one_is_kept(problem, tmp_path):
    """tol below refine_tol (1e-10) needs no refinement: every stored minimum is at tol."""
    landscape.sample(problem, str(tmp_path / "x.h5"), landscape.Settings(walkers=4, tol=1e-11), steps=2,
                     progress=False)
    with Database(tmp_path / "x.h5") as db:
        m = db.minima()
        assert len(m) > 0 and (m.grad_rms <= 1e-11).all()


def test_sample_refuses_a_problem_or_settings_of_another_type(problem, tmp_path):
    path = tmp_path / "x.h5"
    with pytest.raises(TypeError, match="problem must be a landscape.Problem"):
        landscape.sample("iris", str(path), landscape.Settings(walkers=4), steps=1, progress=False)
    with pytest.raises(TypeError, match="settings must be a landscape.Settings"):
        landscape.sample(problem, str(path), {"walkers": 4}, steps=1, progress=False)
    with pytest.raises(ValueError, match="hidden must be a list of widths"):
        landscape.Problem.create("iris", hidden=5)
    assert not path.exists()
    assert landscape.Problem.create("iris", lam=np.float32(0.5)).lam == 0.5  # NumPy numbers are numbers


def test_sample_takes_numpy_numbers(problem, tmp_path):
    settings = landscape.Settings(walkers=np.int64(4), step=np.float32(0.5), temperature=np.int32(1))
    assert settings == landscape.Settings(walkers=4, step=0.5, temperature=1.0) and type(settings.walkers) is int
    res = landscape.sample(problem, str(tmp_path / "x.h5"), settings, steps=np.int64(1), seed=np.int32(3),
                           progress=False)
    with Database(tmp_path / "x.h5") as db:
        assert res.counters["steps"] == 4 and db.runs()[0]["seed"] == 3
        assert db.runs()[0]["parameters"]["walkers"] == 4 and db.runs()[0]["parameters"]["step"] == 0.5


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped interrupt
def test_ctrl_c_landing_in_a_finaliser_still_ends_the_run(problem, tmp_path, monkeypatch):
    """Python prints and drops a KeyboardInterrupt raised inside a finaliser (``__del__``, a
    weakref callback). A SIGINT arriving there must still end the run as interrupted, with its
    walkers saved, rather than be lost (the run then went on to its budget: CI saw a SIGTERM'd
    sample run its full 5 minutes)."""
    import os
    import signal

    class Finaliser:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10 ** 6):  # the handler runs at the next bytecode check, inside this finaliser
                pass

    step, calls = basinhopping.LBFGS.step, []

    def step_then_finalise(self):
        calls.append(1)
        if len(calls) == 300:
            Finaliser()  # created and collected at once
        return step(self)

    monkeypatch.setattr(basinhopping.LBFGS, "step", step_then_finalise)
    path = str(tmp_path / "f.h5")
    res = landscape.sample(problem, path, SETTINGS, minutes=0.5, seed=0, progress=False)
    assert res.status == "interrupted by user" and len(calls) == 300
    with Database(path) as db:
        assert db.runs()[0]["status"] == "interrupted by user"
        assert np.isfinite(db.walker_state(0)["energy"]).any()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
