"""`landscape connect`: transition states of a database's minima, stored, verified from the file,
reproducible, resumable and killed without damage."""
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import landscape
from landscape import transitions
from landscape.cli import main
from landscape.database import Database
from landscape.identify import MinimaIndex, Point


@pytest.fixture(scope="module")
def minima(tmp_path_factory):
    """Iris 4-5(tanh)-3 minima from a short discovery run (test split 0.2)."""
    path = tmp_path_factory.mktemp("connect") / "m.h5"
    problem = landscape.Problem.create("iris", hidden=(5,), lam=1e-4)
    landscape.sample(problem, str(path), landscape.Settings(walkers=64, step=3.0, adaptive=False, start="uniform",
                                                            maxstep=0.3, memory=20), steps=3, seed=0, progress=False)
    return path


@pytest.fixture(scope="module")
def connected(minima, tmp_path_factory):
    path = tmp_path_factory.mktemp("connected") / "c.h5"
    shutil.copyfile(minima, path)
    assert main(["connect", str(path), "--lowest", "3", "--quiet"]) == 0
    return path


def test_every_stored_transition_state_is_an_index_1_saddle_joining_the_minima_it_records(connected):
    with Database(connected) as db:
        ts, m, problem = db.transition_states(), db.minima(), db.problem
    assert len(ts) >= 3
    energy = problem.energy()
    index = MinimaIndex.of(m, problem.model.unit_groups(), 2 * problem.lam, energy.energy_gradient)
    for i in range(len(ts)):
        x = ts.coords[i]
        E, g = energy.energy_gradient(x)
        assert E[0] == pytest.approx(ts.energy[i], abs=1e-12)
        assert np.sqrt(np.mean(g ** 2)) <= 1e-6 and ts.grad_rms[i] <= 1e-6
        values, vectors = np.linalg.eigh(energy.hessian(x))
        assert (values < -1e-8).sum() == 1 and values[0] == pytest.approx(ts.eigenvalues[i, 0], rel=1e-4)
        state = transitions.TransitionState.stored(ts.energy[i], x, ts.grad_rms[i], values[:3], vectors[:, 0])
        d = transitions.descend(energy, state)
        reached = set()
        for end in (d.plus, d.minus):
            match = index.match(Point(end.energy, end.x, end.grad_rms * np.sqrt(len(x)), grad=end.grad),
                                ambiguity=False)
            reached.add(match.same)
        assert reached == set(ts.minima[i].tolist())


def test_the_targets_are_joined_and_inspect_says_so(connected, capsys):
    with Database(connected) as db:
        m, ts, runs = db.minima(coords=False), db.transition_states(coords=False), db.runs(kind="connect")
    order = np.argsort(m.energy)
    import networkx as nx

    g = nx.Graph(ts.minima.tolist())
    for i in order[1:4]:
        assert nx.has_path(g, int(order[0]), int(i))
    assert runs[-1]["status"] == "completed" and runs[-1]["counters"]["transition_states"] == len(ts)
    assert main(["inspect", str(connected), "--lowest", "0"]) == 0
    assert f"{len(ts)} transition states;" in capsys.readouterr().out


def test_the_same_seed_gives_the_same_transition_states(minima, connected, tmp_path):
    again = tmp_path / "again.h5"
    shutil.copyfile(minima, again)
    assert main(["connect", str(again), "--lowest", "3", "--quiet"]) == 0
    with Database(connected) as a, Database(again) as b:
        ta, tb = a.transition_states(), b.transition_states()
        assert len(a) == len(b)
    np.testing.assert_array_equal(ta.coords, tb.coords)
    np.testing.assert_array_equal(ta.minima, tb.minima)


def test_a_second_run_continues_and_repeats_nothing(connected, tmp_path, capsys):
    path = tmp_path / "twice.h5"
    shutil.copyfile(connected, path)
    with Database(path) as db:
        n_ts, n_attempts = len(db.transition_states(coords=False)), len(db.attempts())
    assert main(["connect", str(path), "--lowest", "3", "--quiet"]) == 0
    assert "3 of 3 pairs joined; 0 pairs tried" in capsys.readouterr().out
    assert main(["connect", str(path), "--lowest", "5", "--quiet"]) == 0
    with Database(path) as db:
        tried = db.attempts()[:, :2].tolist()
        assert len(db.transition_states(coords=False)) >= n_ts
    assert len(tried) > n_attempts and len({tuple(sorted(p)) for p in tried}) == len(tried)  # no pair twice


@pytest.mark.parametrize("argv, message", [
    (["--pairs", "0,0"], "two different minimum ids"), (["--pairs", "0,100000"], "two different minimum ids"),
    (["--pairs", "0-1"], "A,B"), (["--lowest", "0"], "lowest must be"), (["--max-attempts", "0"], "max_attempts")])
def test_bad_connect_options_are_one_line_and_leave_the_file_alone(minima, tmp_path, capsys, argv, message):
    path = tmp_path / "bad.h5"
    shutil.copyfile(minima, path)
    before = path.read_bytes()
    try:  # the parser's errors exit
        code = main(["connect", str(path), *argv, "--quiet"])
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and path.read_bytes() == before


def test_a_killed_connect_leaves_a_file_the_next_run_continues(minima, tmp_path):
    path = tmp_path / "killed.h5"
    shutil.copyfile(minima, path)
    proc = subprocess.Popen([sys.executable, "-m", "landscape.cli", "connect", str(path), "--all", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill it once a round is stored
        time.sleep(0.2)
        try:
            with Database(path) as db:
                if len(db.attempts()):
                    break
        except ValueError:
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with Database(path) as db:
        stored = len(db.transition_states(coords=False))
        assert db.runs(kind="connect")[-1]["status"] == "killed (never ended)"
    done = subprocess.run([sys.executable, "-m", "landscape.cli", "connect", str(path), "--lowest", "2", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with Database(path) as db:
        assert len(db.transition_states(coords=False)) >= stored
