"""Basin-hopping split over worker processes (landscape.parallel): one writer, one set of minima."""
import os
import signal

import numpy as np
import pytest

import landscape
from landscape import basinhopping, identify, parallel
from landscape.database import Database, Minima
from landscape.identify import Point

import test_sampler
from test_sampler import SETTINGS

SPLIT = landscape.Settings(walkers=16, temperature=0.01, step=1.0)


@pytest.fixture(scope="module")
def merged(problem, tmp_path_factory):
    """A two-process run and the writer's verdict on each report of a new minimum (True:
    stored; False: joined to another worker's find): (path, result, verdicts)."""
    verdicts = []
    new = parallel._Merge._new

    def spy(self, *report):
        known = self.new
        new(self, *report)
        verdicts.append(self.new > known)

    mp = pytest.MonkeyPatch()
    mp.setattr(parallel._Merge, "_new", spy)
    path = tmp_path_factory.mktemp("par") / "p.h5"
    try:
        res = landscape.sample(problem, str(path), SPLIT, steps=6, seed=2, processes=2, progress=False)
    finally:
        mp.undo()
    return path, res, verdicts


def test_merged_minima_are_distinct_converged_and_all_counted(merged, problem):
    path, res, verdicts = merged
    test_sampler.test_stored_minima_recompute_from_the_file_alone((path, res))
    test_sampler.test_no_two_stored_minima_are_the_same((path, None), problem)
    assert res.status == "completed" and res.counters["steps"] == 6 * SPLIT.walkers
    assert res.counters["new_minima"] == res.n_minima == sum(verdicts)
    with Database(path) as db:
        m, run = db.minima(), db.runs()[0]
        first = db.walker_state(0)
    assert m.hits.sum() == res.counters["converged"]  # every converged quench counted once
    assert run["parameters"]["processes"] == 2 and run["counters"]["steps"] == res.counters["steps"]
    assert set(m.first_found[:, 1]) & set(range(8)) and set(m.first_found[:, 1]) & set(range(8, 16))
    assert np.all(first["steps"] == 6) and np.all((first["minimum"] >= 0) & (first["minimum"] < len(m)))


def test_a_minimum_both_workers_find_is_stored_once(merged):
    """Both halves of the walkers reach the same low minima; the writer stores each once."""
    *_, new = merged
    assert not all(new)  # some reported 'new' minima were another worker's finds


class _Recorder:
    """A store that keeps what the writer tells it: rows of new minima and repeat finds."""

    def __init__(self):
        self.rows, self.hits = 0, []

    def new_minimum(self, *report) -> int:
        self.rows += 1
        return self.rows - 1

    def hit(self, row: int) -> None:
        self.hits.append(row)

    def better_copy(self, *copy) -> None:
        pass


def test_the_writer_tells_neighbouring_minima_apart_and_joins_images(tmp_path):
    """On a soft landscape (digits subset, minima stored at RMS 1e-6 without a Hessian, so the
    curvature is unknown) the Newton test, which needs each report's gradient, is what separates
    neighbouring minima. A one-process run's minima are reported alternately by two workers: the
    writer joins no pair that one index of all the reports, with the same test, keeps apart. A symmetry image of one of them,
    reported by the other worker, is joined to it. (Without the reports' gradients the writer
    joined 24 of 67 distinct minima.)"""
    soft = landscape.Problem.create("digits", hidden=(8,), lam=1e-4, test_fraction=0.0, scaling="standardize",
                                    limit=300)
    settings = landscape.Settings(walkers=16, temperature=0.01, step=0.3, hessian="none", refine_tol=1e-6)
    path = tmp_path / "one.h5"
    landscape.sample(soft, str(path), settings, steps=10, seed=2, progress=False)
    with Database(path) as db:
        m = db.minima()
    E = soft.energy()
    _, G = E.energy_gradient(m.coords)
    none = Minima(**{name: a[:0] for name, a in vars(m).items()})
    store = _Recorder()
    merge = parallel._Merge(store, none, lambda: basinhopping._index(soft, E, 1), 2)
    workers = [parallel._Worker(None, None, {}) for _ in range(2)]
    def report(n: int, id_: int, i: int, x: np.ndarray, g: np.ndarray) -> None:  # minimum i at x, from worker n
        merge._new(n, workers[n], id_, m.energy[i], x, g, m.grad_rms[i], np.zeros(0), 0, 0)

    for i in range(len(m)):
        report(i % 2, i, i, m.coords[i], G[i])
    # what one index of every report, with the same test, joins (the run's own index may have kept a
    # pair apart that it met before refinement): the writer joins no more than that
    full, joined = basinhopping._index(soft, E, 1), {}
    for i in range(len(m)):
        p = Point(m.energy[i], m.coords[i], m.grad_rms[i] * np.sqrt(m.coords.shape[1]), np.nan, G[i])
        match = full.match(p, ambiguity=False) if len(full) else None
        if match is not None and match.same is not None:
            joined[i] = match.same
        full.add(i, p)
    assert len(m) >= 20 and len(joined) <= 3 and merge.new == store.rows >= len(m) - len(joined)
    assert set(store.hits) <= {workers[j % 2].ids[j] for j in joined.values()}
    hits = len(store.hits)
    groups = soft.model.unit_groups()
    image = identify.random_image(m.coords[0], groups, np.random.default_rng(0))
    grad = identify.apply(G[0], identify.alignment(image, m.coords[0], groups))
    report(1, len(m), 0, image, grad)
    assert store.hits[hits:] == [workers[0].ids[0]] and workers[1].ids[len(m)] == workers[0].ids[0]


def test_same_seed_and_processes_give_the_same_minima(merged, problem, tmp_path):
    path, *_ = merged
    again = tmp_path / "again.h5"
    landscape.sample(problem, str(again), SPLIT, steps=6, seed=2, processes=2, progress=False)
    with Database(path) as a, Database(again) as b:
        ma, mb = a.minima(), b.minima()
    np.testing.assert_array_equal(ma.energy, mb.energy)
    np.testing.assert_array_equal(ma.coords, mb.coords)
    np.testing.assert_array_equal(ma.hits, mb.hits)
    np.testing.assert_array_equal(ma.first_found, mb.first_found)


@pytest.mark.parametrize("counts", [(2, 1), (1, 3)])
def test_resume_across_process_counts(problem, tmp_path, counts):
    path = str(tmp_path / "r.h5")
    first = landscape.sample(problem, path, SETTINGS, steps=3, seed=0, processes=counts[0], progress=False)
    second = landscape.sample(problem, path, SETTINGS, steps=3, seed=0, processes=counts[1], resume=True,
                              progress=False)
    with Database(path) as db:
        m = db.minima()
        assert [r["status"] for r in db.runs()] == ["completed", "completed"]
    assert len(m) == second.n_minima >= first.n_minima
    assert m.hits.sum() == first.counters["converged"] + second.counters["converged"]
    test_sampler.test_no_two_stored_minima_are_the_same((path, None), problem)


@pytest.mark.parametrize("how", ["raises", "dies"])
def test_a_failing_worker_stops_the_run_and_keeps_what_was_stored(problem, tmp_path, monkeypatch, how):
    """The second worker fails at its second step; the writer stops the other, stores what was
    reported and raises with the worker's error. The file stays a valid database."""
    finish = basinhopping._Sampler._finish_quench

    def failing(self, k, r, j):
        if self.out.first == 4 and self.walkers.steps[k] == 1:
            if how == "dies":
                os._exit(3)
            raise FloatingPointError("boom in a worker")
        return finish(self, k, r, j)

    monkeypatch.setattr(basinhopping._Sampler, "_finish_quench", failing)
    path = str(tmp_path / "f.h5")
    message = ("landscape-walkers-4-7 failed: " + ("FloatingPointError: boom in a worker" if how == "raises"
                                                  else "worker process exited without reporting .exit code 3"))
    with pytest.raises(RuntimeError, match=message):
        landscape.sample(problem, path, SETTINGS, steps=50, seed=0, processes=2, progress=False)
    with Database(path) as db:
        m, run = db.minima(), db.runs()[0]
    assert run["status"] == "failed" and run["ended"]
    assert len(m) >= 1 and m.hits.sum() == run["counters"]["converged"]
    test_sampler.test_no_two_stored_minima_are_the_same((path, None), problem)


def test_each_report_of_a_worker_counts_only_the_finds_reported_by_then(problem, monkeypatch):
    """A worker's last report is all the writer keeps of it when it dies, so the converged quenches
    each report counts are the finds (new minima, hits; and saddles) sent so far, even when a
    report leaves while a new point is still being refined. (They were counted when the quench
    ended: a worker that died within 0.05 s of such a report left its run counting a find the
    file never got, in 1 of 4 runs of the test above.) Here every batch is reported."""
    P = problem.model.n_params
    walkers = basinhopping._Walkers(SETTINGS.walkers, P, 0, SETTINGS)
    for k, r in enumerate(walkers.rngs):
        walkers.x[k] = r.normal(0.0, SETTINGS.init_scale, P)
    none = Minima(energy=np.zeros(0), coords=np.zeros((0, P)), grad_rms=np.zeros(0), eigenvalues=np.zeros((0, 3)),
                  hits=np.zeros(0, np.int64), first_found=np.zeros((0, 3), np.int64), version=np.zeros(0, np.int64))
    packets = []

    class Pipe:  # a worker's end of the pipe, keeping each packet and whether a refinement was running
        @staticmethod
        def send(p: dict) -> None:
            packets.append((p, bool(sampler.refining.any())))

    monkeypatch.setattr(parallel, "SEND_EVERY", -1.0)
    sampler = basinhopping._Sampler(problem, problem.energy(), SETTINGS, basinhopping._hessian_mode(SETTINGS, problem),
                                    walkers, none, 1, parallel._Outbox(Pipe, 0, 0))
    sampler.run(np.inf, 6)
    reported = 0
    for p, _ in packets:
        reported += sum(e[1] in ("new", "hit") for e in p["events"])
        assert p["counters"]["converged"] == reported + p["counters"]["saddles"]
    assert any(refining for _, refining in packets)  # some reports left with refinements in flight
    assert reported > 0 and packets[-1][0]["counters"]["converged"] == sampler.counters["converged"]


def test_ctrl_c_stops_the_workers_and_saves_their_walkers(problem, tmp_path, monkeypatch):
    """Ctrl-C once the first steps are reported: the run ends as interrupted, with every
    worker's walkers saved, and the caller's SIGINT handler is back."""
    batch = basinhopping._Store.batch

    def interrupting(self, finished, n_minima, counters, walkers):
        if counters["steps"] > 0:
            os.kill(os.getpid(), signal.SIGINT)
        batch(self, finished, n_minima, counters, walkers)

    monkeypatch.setattr(basinhopping._Store, "batch", interrupting)
    path = str(tmp_path / "i.h5")
    handler = signal.getsignal(signal.SIGINT)
    res = landscape.sample(problem, path, SETTINGS, minutes=2.0, seed=0, processes=2, progress=False)
    assert res.status == "interrupted by user" and res.counters["steps"] > 0
    assert res.counters["wall_seconds"] < 60
    with Database(path) as db:
        state, run = db.walker_state(0), db.runs()[0]
    assert run["status"] == "interrupted by user"
    assert state["steps"].sum() == res.counters["steps"]
    assert signal.getsignal(signal.SIGINT) is handler


def test_more_processes_than_walkers_is_refused(problem, tmp_path):
    path = tmp_path / "n.h5"
    with pytest.raises(ValueError, match="at least one walker per process"):
        landscape.sample(problem, str(path), SETTINGS, steps=1, processes=9, progress=False)
