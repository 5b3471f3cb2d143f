"""Sampler defects a new user met (issue 17): a temperature that accepts every step, a time budget
overrun without a word, a run that stores nothing without saying why, a resumed run's seed, and
process-wide state changed by a library call."""
import time
import warnings

import numpy as np
import pytest
import torch

import landscape
from landscape import allocator, basinhopping, hessian
from landscape.basinhopping import SamplingWarning
from landscape.cli import main
from landscape.database import Database

FAST = ["--hidden", "3", "--test-fraction", "0", "--walkers", "4", "--quiet"]


@pytest.fixture(scope="module")
def close_minima():
    """Iris 4-8(tanh)-3 at lam 1e-2: its minima lie within 1e-4 of each other in energy, far below
    the default temperature 0.01."""
    return landscape.Problem.create("iris", hidden=(8,), lam=1e-2, test_fraction=0.0)


def _walk(problem, path, temperature):
    """A run of 16 walkers, 40 steps each; returns its result, its recorded parameters, the energies
    of the minima and the SamplingWarnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = landscape.sample(problem, str(path), landscape.Settings(walkers=16, temperature=temperature),
                               steps=40, seed=0, progress=False)
    with Database(path) as db:
        params, energies = db.runs()[0]["parameters"], db.minima(coords=False).energy
    return res, params, energies, [w for w in caught if issubclass(w.category, SamplingWarning)]


def test_the_default_temperature_on_close_minima_warns_and_auto_fits(close_minima, tmp_path):
    res, _, energies, warned = _walk(close_minima, tmp_path / "default.h5", 0.01)
    c = res.counters
    assert len(energies) >= 2 and np.ptp(energies) < 1e-3  # minima far closer than T
    assert c["uphill"] >= basinhopping.JUDGE_MIN_UPHILL and c["uphill_accepted"] / c["uphill"] > 0.95
    assert len(warned) == 1 and "large against the energy differences" in str(warned[0].message)
    assert "--temperature auto" in str(warned[0].message)

    res, params, energies, warned = _walk(close_minima, tmp_path / "auto.h5", "auto")
    c = res.counters
    assert not warned
    assert params["temperature_auto"] is True and isinstance(params["temperature"], float)
    assert 0 < params["temperature"] <= 1.01 * np.ptp(energies)  # a gap between minima (at the quench tolerance)
    assert c["uphill"] >= basinhopping.JUDGE_MIN_UPHILL
    assert 0.05 < c["uphill_accepted"] / c["uphill"] < 0.95 and 0.05 < c["accepted"] / c["steps"] < 0.95


def test_a_temperature_too_low_for_the_gaps_warns(close_minima, tmp_path):
    _, _, _, warned = _walk(close_minima, tmp_path / "cold.h5", 1e-9)
    assert len(warned) == 1 and "small against the energy differences" in str(warned[0].message)


def test_auto_temperature_without_distinct_minima_is_refused_before_the_file_is_made(tmp_path):
    """Iris 4-3-3 at lam 1e-3: every walker's first quench ends in the one deep minimum."""
    problem = landscape.Problem.create("iris", hidden=(3,), lam=1e-3, test_fraction=0.0)
    path = tmp_path / "one.h5"
    with pytest.raises(ValueError, match="all have one energy"):
        landscape.sample(problem, str(path), landscape.Settings(walkers=8, temperature="auto"), steps=2,
                         progress=False)
    assert not path.exists()


@pytest.mark.parametrize("bad, message", [(dict(temperature="hot"), "temperature must be a number or 'auto'"),
                                          (dict(temperature="auto", walkers=1), "walkers >= 2")])
def test_settings_refuse_a_bad_temperature(bad, message):
    with pytest.raises(ValueError, match=message):
        landscape.Settings(**bad)


def test_cli_temperature_auto_records_the_number_and_resume_keeps_it(tmp_path, capsys):
    db = str(tmp_path / "a.h5")
    assert main(["sample", db, "--hidden", "8", "--lam", "1e-2", "--test-fraction", "0", "--walkers", "8",
                 "--temperature", "auto", "--steps", "2", "--quiet"]) == 0
    assert main(["sample", db, "--resume", "--steps", "1", "--quiet"]) == 0
    with Database(db) as d:
        first, second = (r["parameters"] for r in d.runs())
    assert first["temperature_auto"] and not second["temperature_auto"]
    assert second["temperature"] == first["temperature"] > 0


@pytest.fixture
def slow_hessian_check(monkeypatch):
    """Every Hessian check of a new minimum takes 0.3 s more, as the Lanczos check of a large network
    does; the grace period is 0.5 s."""
    check = hessian.check

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return check(*args, **kwargs)

    monkeypatch.setattr(hessian, "check", slow)
    monkeypatch.setattr(basinhopping, "GRACE_MIN_SECONDS", 0.5)


@pytest.fixture(scope="module")
def many_minima():
    """Iris 4-5(tanh)-3 at lam 1e-4: 16 walkers' first quenches end in several distinct minima."""
    return landscape.Problem.create("iris", hidden=(5,), lam=1e-4, test_fraction=0.0)


def test_a_time_budget_overruns_by_at_most_the_grace_period(many_minima, tmp_path, slow_hessian_check):
    """16 walkers whose new minima each take 0.3 s to check, within 0.6 s: before, every refinement
    in flight was finished and checked (seconds); now those left after the 0.5-s grace period are
    abandoned and counted."""
    path = tmp_path / "t.h5"
    start = time.perf_counter()
    res = landscape.sample(many_minima, str(path), landscape.Settings(walkers=16), minutes=0.01, seed=0,
                           progress=False)
    elapsed = time.perf_counter() - start
    assert res.status == "time budget reached" and res.counters["abandoned"] >= 1
    assert 0 < res.overrun_seconds <= 0.5 + 0.3 + 0.3  # grace + the check in progress + one batch and the close
    assert elapsed <= 0.6 + 0.5 + 0.3 + 0.5
    with Database(path) as db:
        (run,) = db.runs()
        assert run["counters"]["abandoned"] == res.counters["abandoned"]
        assert len(db) == res.counters["new_minima"] >= 1  # what was checked in time is stored


def test_the_summary_line_says_how_far_over_budget_and_what_was_abandoned(tmp_path, capsys, slow_hessian_check):
    code = main(["sample", str(tmp_path / "t.h5"), "--hidden", "5", "--test-fraction", "0", "--walkers", "16",
                 "--minutes", "0.01", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "(time budget reached)" in out
    assert "time budget exceeded by " in out and " refinements abandoned after the grace period" in out


def test_a_run_that_stores_nothing_says_why(problem, tmp_path, capsys):
    """maxiter 1: no quench converges. The result says why; the command prints it in one line and
    exits 2; a run on a database that holds minima has no such reason."""
    path = str(tmp_path / "n.h5")
    res = landscape.sample(problem, path, landscape.Settings(walkers=4, maxiter=1), steps=2, progress=False)
    assert res.n_minima == 0 and res.counters["converged"] == 0
    assert res.reason.startswith("none of the 8 quenches converged to RMS gradient <= tol (1e-06) within maxiter (1)")
    code = main(["sample", str(tmp_path / "c.h5"), *FAST, "--maxiter", "1", "--steps", "2"])
    out, err = capsys.readouterr()
    assert code == 2 and "0 minima" in out
    assert err.count("\n") == 1 and err.startswith("landscape: error: none of the 8 quenches converged")
    landscape.sample(problem, path, landscape.Settings(walkers=4), steps=2, progress=False)
    res = landscape.sample(problem, path, landscape.Settings(walkers=4, maxiter=1), steps=1, progress=False)
    assert res.n_minima > 0 and res.reason is None


def test_a_resumed_run_records_the_seed_its_walkers_came_from(problem, tmp_path, capsys):
    path = str(tmp_path / "s.h5")
    settings = landscape.Settings(walkers=4)
    landscape.sample(problem, path, settings, steps=1, seed=7, progress=False)
    landscape.sample(problem, path, settings, steps=1, resume=True, progress=False)
    assert main(["sample", path, "--resume", "--steps", "1", "--quiet"]) == 0  # a resume of a resume
    landscape.sample(problem, path, settings, steps=1, seed=3, progress=False)  # new walkers
    landscape.sample(problem, path, settings, steps=1, resume=True, progress=False)
    with Database(path) as db:
        assert [r["seed"] for r in db.runs()] == [7, 7, 7, 3, 3]


def test_sample_restores_torch_threads_and_leaves_the_allocator_alone(problem, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    before = torch.get_num_threads()
    path = str(tmp_path / "p.h5")
    landscape.sample(problem, path, landscape.Settings(walkers=4), steps=1, threads=before + 1, progress=False)
    assert torch.get_num_threads() == before and not calls
    other = landscape.Problem.create("iris", hidden=(4,), lam=1e-3, test_fraction=0.0)
    with pytest.raises(ValueError, match="different problem"):  # refused inside the run
        landscape.sample(other, path, landscape.Settings(walkers=4), steps=1, threads=before + 1, progress=False)
    assert torch.get_num_threads() == before and not calls
    assert main(["sample", path, "--steps", "1", "--walkers", "4", "--quiet"]) == 0
    assert len(calls) == 1  # the command sets it
