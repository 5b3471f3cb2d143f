import h5py
import numpy as np
import pytest
import torch

import landscape
import robustness
from landscape.cli import main
from landscape.database import Database
from landscape.scoring import score


@pytest.fixture(scope="module")
def db_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("score") / "s.h5"
    problem = landscape.Problem.create("iris", hidden=(3,), lam=1e-3, test_fraction=0.3)
    landscape.sample(problem, str(path), landscape.Settings(walkers=6), steps=4, seed=0, progress=False)
    return path


def test_score_stores_one_value_per_minimum_and_is_idempotent(db_path):
    done = score(str(db_path), [0.01, 0.1], method="ibp", progress=False)
    with Database(db_path) as db:
        n = len(db)
        scores = db.scores()
        m = db.minima()
        problem = db.problem
    assert done.computed == {"sensitivity_logits_ibp_eps0.01_test": n, "sensitivity_logits_ibp_eps0.1_test": n}
    assert (done.split, done.n_points) == ("test", 45)  # the default: the test split, as the problem has one
    values, kind = scores["sensitivity_logits_ibp_eps0.1_test"]
    assert values.shape == (n,) and np.all(np.isfinite(values))
    assert (kind.quantity, kind.eps, kind.method, kind.split, kind.n_points) == ("sensitivity", 0.1, "ibp", "test", 45)
    assert kind.eps_unit == "standardised features" and kind.aggregation == "mean_log"
    assert np.all(values > scores["sensitivity_logits_ibp_eps0.01_test"][0])  # a larger ball, a larger box
    # the stored score of a minimum is the sensitivity of its own nn.Module
    ds = problem.dataset()
    net = robustness.from_sequential(problem.model.to_module(m.coords[-1]), (4,))
    direct = robustness.log_volume(net, torch.from_numpy(ds.X_test), 0.1, method="ibp").mean.item()
    np.testing.assert_allclose(values[-1], direct, rtol=1e-12)
    before = db_path.read_bytes()
    assert score(str(db_path), [0.01], method="ibp", progress=False).computed == {
        "sensitivity_logits_ibp_eps0.01_test": 0}
    with h5py.File(db_path, "r") as f:  # one row per computed value in the long table
        assert f["scores/value"].shape == (2 * n,) and f["scores/kinds"].shape == (2,)
    assert db_path.read_bytes() == before  # nothing to compute: the file is left as it was


def test_new_minima_get_scored_on_rerun(db_path):
    score(str(db_path), [0.05], method="crown", space="logit_diff", progress=False)
    problem = landscape.Problem.from_json(h5py.File(db_path, "r")["problem"].attrs["problem"])
    landscape.sample(problem, str(db_path), landscape.Settings(walkers=6), steps=4, seed=7, progress=False)
    with Database(db_path) as db:
        n_new = len(db)
        old = np.isfinite(db.scores()["sensitivity_logit_diff_crown_eps0.05_test"][0]).sum()
    done = score(str(db_path), [0.05], method="crown", space="logit_diff", progress=False)
    assert done.computed["sensitivity_logit_diff_crown_eps0.05_test"] == n_new - old


def test_score_cli_errors(db_path, capsys):
    assert main(["score", str(db_path), "--eps", "-1"]) == 2
    assert "eps" in capsys.readouterr().err
    assert main(["score", str(db_path), "--eps", "0.1", "--split", "train", "--quiet"]) == 0


@pytest.mark.parametrize("eps", [[], [float("inf")], ["0.1"], "0.1", [True]])
def test_score_refuses_eps_that_are_not_finite_numbers(db_path, eps):
    with pytest.raises(ValueError, match="eps must be"):
        score(str(db_path), eps, progress=False)


def test_score_takes_one_eps_or_an_array(db_path):
    assert set(score(str(db_path), 0.02, progress=False).computed) == {"sensitivity_logits_ibp_eps0.02_test"}
    done = score(str(db_path), np.array([0.02, 0.03]), progress=False).computed
    assert done["sensitivity_logits_ibp_eps0.02_test"] == 0 and done["sensitivity_logits_ibp_eps0.03_test"] > 0


def test_each_eps_gets_its_own_score_and_a_repeated_eps_is_computed_once(db_path, monkeypatch):
    """eps 0.1000001 used to be named like 0.1 (6 significant digits) and was reported as already
    scored, with 0.1's values; an eps given twice was computed twice."""
    calls = []
    log_volume = robustness.log_volume
    monkeypatch.setattr(robustness, "log_volume", lambda *a, **k: calls.append(a[2]) or log_volume(*a, **k))
    done = score(str(db_path), [0.1000001, 0.1, 0.1000001], method="crown", space="softmax", progress=False)
    with Database(db_path) as db:
        n, scores = len(db), db.scores()
    assert done.computed == {"sensitivity_softmax_crown_eps0.1000001_test": n,
                             "sensitivity_softmax_crown_eps0.1_test": n}
    assert sorted(set(calls)) == [0.1, 0.1000001] and len(calls) == 2 * -(-n // 128)
    close, exact = (scores[f"sensitivity_softmax_crown_eps{e}_test"] for e in ("0.1000001", "0.1"))
    assert close[1].eps == 0.1000001 and exact[1].eps == 0.1
    assert np.all(close[0] > exact[0])  # the larger ball, the larger box


def test_alpha_crown_scores_are_never_looser_than_crown(db_path):
    """``--method alpha-crown`` (optimised slopes, robustness.alpha_crown) is offered by score and
    gives each minimum a box no larger than CROWN's."""
    score(str(db_path), [0.1], method="crown", progress=False)
    done = score(str(db_path), [0.1], method="alpha-crown", progress=False)
    with Database(db_path) as db:
        scores, n = db.scores(), len(db)
    assert done.computed == {"sensitivity_logits_alpha-crown_eps0.1_test": n}
    alpha, crown = (scores[f"sensitivity_logits_{m}_eps0.1_test"][0] for m in ("alpha-crown", "crown"))
    assert np.all(np.isfinite(alpha)) and np.all(alpha <= crown + 1e-9) and np.any(alpha < crown - 1e-3)
