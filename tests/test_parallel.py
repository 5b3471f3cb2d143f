"""Basin-hopping split over worker processes (landscape.parallel): one writer, one set of minima."""
import os
import signal

import numpy as np
import pytest

import landscape
from landscape import basinhopping, parallel
from landscape.database import Database

import test_sampler
from test_sampler import SETTINGS

SPLIT = landscape.Settings(walkers=16, temperature=0.01, step=1.0)


def _sample_recording_merges(problem, path, settings, **kw):
    """Run ``sample`` with two processes, recording each report the writer merges as (reporting
    worker's first walker, database row, stored as new?)."""
    verdicts = []
    new = parallel._Merge._new

    def spy(self, w, id_, *rest):
        known = len(self.index)
        new(self, w, id_, *rest)
        verdicts.append((w.first, w.ids[id_], len(self.index) > known))

    mp = pytest.MonkeyPatch()
    mp.setattr(parallel._Merge, "_new", spy)
    try:
        res = landscape.sample(problem, str(path), settings, processes=2, progress=False, **kw)
    finally:
        mp.undo()
    return res, verdicts


def _merged_into_own_finds(verdicts) -> int:
    """Reports merged into a minimum their own worker reported first: a worker stores a minimum
    once, so each is a verdict of the writer that the worker's index contradicts."""
    first = {row: worker for worker, row, new in verdicts if new}
    return sum(not new and first.get(row) == worker for worker, row, new in verdicts)


@pytest.fixture(scope="module")
def merged(problem, tmp_path_factory):
    """A two-process run and the writer's verdicts: (path, result, verdicts)."""
    path = tmp_path_factory.mktemp("par") / "p.h5"
    res, verdicts = _sample_recording_merges(problem, path, SPLIT, steps=6, seed=2)
    return path, res, [new for *_, new in verdicts], verdicts


def test_merged_minima_are_distinct_converged_and_all_counted(merged, problem):
    path, res, verdicts, _ = merged
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
    *_, new, verdicts = merged
    assert not all(new)  # some reported 'new' minima were another worker's finds
    assert _merged_into_own_finds(verdicts) == 0


def test_the_writer_tells_neighbouring_minima_apart_as_a_worker_does(tmp_path):
    """On a soft landscape (digits subset, minima stored at RMS 1e-6 without a Hessian, so the
    curvature is unknown) only the Newton test, which needs each report's gradient, separates
    neighbouring minima. The writer must not merge what a worker's own index kept apart
    (without the gradient it merged 40 of 67 reports so)."""
    soft = landscape.Problem.create("digits", hidden=(8,), lam=1e-4, test_fraction=0.0, scaling="standardize",
                                    limit=300)
    settings = landscape.Settings(walkers=16, temperature=0.01, step=0.3, hessian="none", refine_tol=1e-6)
    res, verdicts = _sample_recording_merges(soft, tmp_path / "soft.h5", settings, steps=10, seed=2)
    assert len(verdicts) >= 20 and _merged_into_own_finds(verdicts) == 0
    assert res.n_minima == sum(new for *_, new in verdicts)


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
    message = "boom in a worker" if how == "raises" else "exited without reporting .exit code 3"
    with pytest.raises(RuntimeError, match=message):
        landscape.sample(problem, path, SETTINGS, steps=50, seed=0, processes=2, progress=False)
    with Database(path) as db:
        m, run = db.minima(), db.runs()[0]
    assert run["status"] == "failed" and run["ended"]
    assert len(m) >= 1 and m.hits.sum() == run["counters"]["converged"]
    test_sampler.test_no_two_stored_minima_are_the_same((path, None), problem)


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
