"""Schema 2: the version policy, stable ids with coordinate versions, scores as plain data, the
transition-state table, and the notebook API (table, network, a reader of a live run)."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import landscape
import robustness
from landscape.cli import main
from landscape.database import SCHEMA_VERSION, Database, DatabaseError, ScoreKind
from landscape.scoring import score

V1 = Path(__file__).parent / "data" / "v1_iris.h5"  # written by 882b6b1 (schema 1): 2 minima, 2 runs, 3 scores
V1_SCORES = {"sensitivity_logit_diff_crown_eps0.05_test", "sensitivity_logits_ibp_eps0.01_test",
             "sensitivity_logits_ibp_eps0.1_test"}


@pytest.fixture
def v1(tmp_path):
    path = tmp_path / "v1.h5"
    shutil.copyfile(V1, path)
    return path


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    path = tmp_path_factory.mktemp("v2") / "s.h5"
    problem = landscape.Problem.create("iris", hidden=(3,), lam=1e-3, test_fraction=0.3)
    landscape.sample(problem, str(path), landscape.Settings(walkers=16, step=3.0, adaptive=False, start="uniform"),
                     steps=4, seed=0, progress=False)
    return path


def _v1_values(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {name: ds[()] for name, ds in f["scores"].items()}


def test_a_schema_1_file_is_read_as_it_is(v1):
    before = v1.read_bytes()
    raw = _v1_values(v1)
    with Database(v1) as db:
        assert db.schema == 1 and len(db) == 2
        scores = db.scores()
        assert set(scores) == V1_SCORES
        for name, (values, kind) in scores.items():
            np.testing.assert_array_equal(values, raw[name])
            assert kind.quantity == "sensitivity" and kind.n_points == 45
        assert [r["kind"] for r in db.runs()] == ["sample", "sample"]
        assert len(db.transition_states()) == 0 and np.all(db.minima().version == 0)
        assert db.problem.lam == 1e-3
    assert v1.read_bytes() == before


def test_a_schema_1_file_is_upgraded_when_first_opened_for_writing(v1):
    raw = _v1_values(v1)
    with Database(v1) as db:
        m1 = db.minima()
    with Database(v1, mode="a") as db:
        assert db.schema == SCHEMA_VERSION
    with Database(v1) as db:
        assert db.schema == SCHEMA_VERSION
        upgrades = __import__("json").loads(db.f.attrs["upgrades"])
        assert [(u["from"], u["to"]) for u in upgrades] == [(1, SCHEMA_VERSION)]
        m2 = db.minima()
        for field in ("energy", "coords", "hits", "first_found", "eigenvalues"):
            np.testing.assert_array_equal(getattr(m1, field), getattr(m2, field))
        scores = db.scores()
        assert set(scores) == V1_SCORES
        for name, (values, _) in scores.items():
            np.testing.assert_array_equal(values, raw[name])
        shift, scale = db.preprocessing()  # schema 1 did not store it: the upgrade did
        assert "shift" in db.f["problem"] and shift.shape == scale.shape == (4,)
    assert not [p for p in os.listdir(v1.parent) if "upgrade" in p]  # no copy left behind


def test_a_newer_file_is_refused_naming_both_versions(v1, capsys):
    with h5py.File(v1, "a") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
    before = v1.read_bytes()
    with pytest.raises(DatabaseError, match=f"schema version {SCHEMA_VERSION + 1} is newer .*up to {SCHEMA_VERSION}"):
        Database(v1)
    for argv in (["inspect", str(v1)], ["score", str(v1), "--eps", "0.1", "--quiet"],
                 ["sample", str(v1), "--steps", "1", "--quiet"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"schema version {SCHEMA_VERSION + 1}" in err
    assert v1.read_bytes() == before


def test_scores_go_stale_when_a_minimum_is_refined_and_are_recomputed(sampled, tmp_path):
    path = tmp_path / "stale.h5"
    shutil.copyfile(sampled, path)
    first = score(str(path), [0.1], progress=False)
    with Database(path, mode="a") as db:
        n, version = len(db), db.minima(coords=False).version[0]
        x = db.coords(np.array([0]))[0] * (1 + 1e-3)  # a 'refined' copy with other coordinates
        db.update_minimum(0, 0.5, x, 1e-11)
        values = db.scores()["sensitivity_logits_ibp_eps0.1_test"][0]
        assert np.isnan(values[0]) and np.all(np.isfinite(values[1:]))
        assert db.minima(coords=False).version[0] == version + 1
    again = score(str(path), [0.1], progress=False)
    assert first.computed == {"sensitivity_logits_ibp_eps0.1_test": n}
    assert again.computed == {"sensitivity_logits_ibp_eps0.1_test": 1}  # only the refined minimum
    with Database(path) as db:
        value = db.scores()["sensitivity_logits_ibp_eps0.1_test"][0][0]
        problem, runs = db.problem, db.runs(kind="score")
    ds = problem.dataset()
    net = robustness.from_sequential(problem.model.to_module(x), (4,))
    direct = robustness.log_volume(net, torch.from_numpy(ds.X_test), 0.1, method="ibp").mean.item()
    np.testing.assert_allclose(value, direct, rtol=1e-12)  # computed from the new coordinates
    assert [r["counters"]["computed"] for r in runs] == [n, 1]


def test_table_holds_every_minimum_and_score(sampled, tmp_path):
    path = tmp_path / "t.h5"
    shutil.copyfile(sampled, path)
    score(str(path), [0.01, 0.1], progress=False)
    score(str(path), [0.05], method="crown", space="softmax", progress=False)
    with Database(path) as db:
        t = db.table()
        m = db.minima(coords=False)
        scores = db.scores()
    assert list(t.index) == list(range(len(m))) and t.index.name == "id"
    np.testing.assert_array_equal(t["energy"], m.energy)
    np.testing.assert_array_equal(t["eigenvalue_0"], m.eigenvalues[:, 0])
    np.testing.assert_array_equal(t["hits"], m.hits)
    assert len(scores) == 3
    for label, (values, _) in scores.items():
        np.testing.assert_array_equal(t[label], values)
        assert np.all(np.isfinite(values))


@pytest.mark.parametrize("case", ["iris", "digits-cnn"])
def test_network_on_raw_inputs_gives_the_stored_energys_logits(tmp_path, case):
    from sklearn import datasets

    if case == "iris":
        problem = landscape.Problem.create("iris", hidden=(3,), lam=1e-3, test_fraction=0.3)
        raw = datasets.load_iris().data
    else:
        problem = landscape.Problem.create("digits", arch="cnn", channels=(2,), lam=1e-3, limit=60, test_fraction=0)
        raw = datasets.load_digits().images[:60]  # (N, 8, 8) pixels in 0..16
    path = tmp_path / "n.h5"
    landscape.sample(problem, str(path), landscape.Settings(walkers=2, hessian="none"), steps=1, seed=0,
                     progress=False)
    with Database(path) as db:
        net, w = db.network(0), db.coords(np.array([0]))
    ds = problem.dataset()
    order = np.argsort(np.concatenate([ds.train_index, ds.test_index]))
    X = np.concatenate([ds.X_train, ds.X_test])[order]  # the network inputs, rows as in the source
    expected = problem.model.forward(torch.from_numpy(w), torch.from_numpy(X))[0]
    with torch.no_grad():
        got = net(torch.from_numpy(np.asarray(raw, dtype=np.float64)))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_transition_states_are_stored_and_read_back(sampled, tmp_path):
    path = tmp_path / "ts.h5"
    shutil.copyfile(sampled, path)
    with Database(path, mode="a") as db:
        P = db.problem.model.n_params
        x = np.linspace(-1, 1, P)
        assert db.add_transition_state(0.3, x, (0, 1), np.array([-0.01, 0.02]), 1e-11, (5, 0, 1)) == 0
    with Database(path) as db:
        ts = db.transition_states()
    assert len(ts) == 1 and ts.energy[0] == 0.3 and np.array_equal(ts.coords[0], x)
    assert ts.minima.tolist() == [[0, 1]] and ts.eigenvalues[0, 0] == -0.01 and np.isnan(ts.eigenvalues[0, 2]) and ts.found.tolist() == [[5, 0, 1]]
    with Database(path, mode="a") as db:
        db.add_attempt(0, 1, 1, 5)
        db.add_attempt(1, 2, 0, 5)
    with Database(path) as db:
        assert db.attempts().tolist() == [[0, 1, 1], [1, 2, 0]]


def test_score_without_a_test_split_uses_the_training_split_and_says_so(tmp_path, capsys):
    path = tmp_path / "train.h5"
    problem = landscape.Problem.create("iris", hidden=(3,), lam=1e-3, test_fraction=0.0)
    landscape.sample(problem, str(path), landscape.Settings(walkers=2), steps=1, seed=0, progress=False)
    assert main(["score", str(path), "--eps", "0.1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "on the train split (150 points), the default" in out and "eps0.1_train: 1 minima scored" in out


def test_score_finds_moved_data_with_data_path_and_checks_its_hash(tmp_path, capsys):
    from sklearn import datasets

    iris = datasets.load_iris()
    csv = tmp_path / "iris.csv"
    rows = ["a,b,c,d,label"] + [",".join(map(str, [*x, y])) for x, y in zip(iris.data, iris.target)]
    csv.write_text("\n".join(rows) + "\n")
    path = tmp_path / "csv.h5"
    problem = landscape.Problem.create("csv", path=str(csv), label_column="label", hidden=(3,), lam=1e-3)
    landscape.sample(problem, str(path), landscape.Settings(walkers=2), steps=1, seed=0, progress=False)
    moved = tmp_path / "elsewhere.csv"
    csv.rename(moved)
    before = path.read_bytes()
    assert main(["score", str(path), "--eps", "0.1", "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err and path.read_bytes() == before
    assert main(["score", str(path), "--eps", "0.1", "--quiet", "--data-path", str(moved)]) == 0
    capsys.readouterr()
    moved.write_text("\n".join(rows[:-1]) + "\n")  # other data at that path
    before = path.read_bytes()
    assert main(["score", str(path), "--eps", "0.2", "--quiet", "--data-path", str(moved)]) == 2
    assert "content hash" in capsys.readouterr().err and path.read_bytes() == before


def test_a_reader_held_open_sees_the_rows_a_running_sample_adds(tmp_path):
    path = tmp_path / "live.h5"
    proc = subprocess.Popen([sys.executable, "-m", "landscape.cli", "sample", str(path), "--hidden", "5",
                             "--walkers", "64", "--step", "3", "--fixed-step", "--start", "uniform", "--minutes", "0.5",
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        db = _open_when_written(path, proc)
        with db:
            first = len(db)
            deadline = time.monotonic() + 20
            while len(db) <= first and time.monotonic() < deadline:
                time.sleep(0.2)
            n = len(db)  # the run goes on adding rows: a later read holds at least as many
            assert n > first and len(db.minima(coords=False)) >= n
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _open_when_written(path: Path, proc: subprocess.Popen) -> Database:
    """A reader of ``path`` once the run writes it in SWMR mode (before that, HDF5's lock refuses)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            db = Database(path)
            if db.f.swmr_mode and len(db):
                return db
            db.close()
        except DatabaseError:
            pass
        time.sleep(0.05)
    raise AssertionError("the run never started writing")


def test_score_kind_identity_ignores_the_point_count_and_labels_are_readable():
    a = ScoreKind("sensitivity", 0.1, "standardised features", "ibp", "logits", "test", "mean_log", 45)
    b = ScoreKind("sensitivity", 0.1, "standardised features", "ibp", "logits", "test", "mean_log", 30)
    assert a.key() == b.key() and a.label() == "sensitivity_logits_ibp_eps0.1_test"
    assert ScoreKind("accuracy", split="test").label() == "accuracy_test"


def test_a_killed_score_leaves_a_file_every_command_takes(sampled, tmp_path, capsys):
    """score writes in SWMR mode, as sample does: SIGKILLed mid-run, its file is read by inspect and
    taken over by the next score (before, every command refused it as damaged)."""
    path = tmp_path / "killed.h5"
    shutil.copyfile(sampled, path)
    eps = [str(0.3 + 0.01 * i) for i in range(20)]
    proc = subprocess.Popen([sys.executable, "-m", "landscape.cli", "score", str(path), "--quantity", "pgd",
                             "--pgd-steps", "2000", "--pgd-restarts", "4", "--quiet", "--eps", *eps],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until its run is recorded and it writes
        try:
            with Database(path) as db:
                if db.runs(kind="score"):
                    break
        except DatabaseError:
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the score run ended before it could be killed"
    proc.kill()
    proc.wait(timeout=30)
    assert main(["inspect", str(path), "--lowest", "0"]) == 0
    assert "killed (never ended)" in capsys.readouterr().out
    assert main(["score", str(path), "--eps", "0.2", "--quiet"]) == 0
    with Database(path) as db:
        assert [r["status"] for r in db.runs(kind="score")] == ["killed (never ended)", "completed"]
