"""The landscape of the paper's loss, E = CE + lam |w|^2 + weight * mean IBP log-volume: sampled
minima (on the kinks of |W|, see landscape.identify), their check from the file, the comparison."""
import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import landscape
import robustness
from landscape import loss
from landscape.cli import main
from landscape.database import Database
from landscape.identify import minimum_conditions

LAM, WEIGHT, EPS = 1e-3, 1e-3, 0.05


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    """Iris 4-5(tanh)-3 sampled with and without the term (few steps), as two files."""
    d = tmp_path_factory.mktemp("sens")
    paths = {}
    for name, sens in (("plain", None), ("term", {"weight": WEIGHT, "eps": EPS})):
        problem = landscape.Problem.create("iris", hidden=(5,), lam=LAM, sensitivity=sens)
        paths[name] = str(d / f"{name}.h5")
        r = landscape.sample(problem, paths[name], landscape.Settings(walkers=8), steps=4, seed=1, progress=False)
        assert r.n_minima >= 1, r.reason
    return paths


def test_sampled_energy_is_the_loss_term_by_term(sampled):
    with Database(sampled["term"]) as db:
        problem, m = db.problem, db.minima()
        ds = problem.dataset()
    assert problem.loss == (loss.CrossEntropy(), loss.L2(LAM), loss.Sensitivity(WEIGHT, EPS))
    w = torch.from_numpy(m.coords)
    X, y = torch.from_numpy(ds.X_train), torch.from_numpy(ds.y_train)
    logits = problem.model.forward(w, X)
    ce = torch.stack([F.cross_entropy(z, y) for z in logits])
    l2 = LAM * (w ** 2).sum(1)
    s = robustness.log_volume(problem.model.to_network(w), X, EPS, method="ibp", space="logits").mean
    np.testing.assert_allclose(m.energy, (ce + l2 + WEIGHT * s).detach().numpy(), rtol=1e-12, atol=1e-12)


def test_every_stored_minimum_satisfies_the_minimum_conditions(sampled):
    with Database(sampled["term"]) as db:
        energy, m = db.problem.energy(), db.minima()
    assert energy.kinks is not None and energy.kinks.sum() == 4 * 5 + 5 * 3  # weight entries, not biases
    zeros = 0
    for i, x in enumerate(m.coords):
        c = minimum_conditions(energy, x)
        assert np.isclose(c["energy"], m.energy[i], rtol=1e-13)
        assert c["pseudo_grad_rms"] <= 1e-9 and np.isclose(c["pseudo_grad_rms"], m.grad_rms[i], rtol=0.5, atol=1e-11)
        assert (c["margins"] >= 0).all()  # |g_i| <= s_i at every zero weight
        assert c["eigenvalues"][0] >= -c["eig_tol"] and c["minimum"]
        np.testing.assert_allclose(m.eigenvalues[i], c["eigenvalues"], rtol=1e-6, atol=1e-9)
        zeros += len(c["zeros"])
        # the ordinary gradient is large on a minimum with zero weights: the kinks are what it sits on
        if len(c["zeros"]):
            _, g = energy.energy_gradient(x)
            assert np.sqrt((g ** 2).mean()) > 1e-6
    assert zeros > 0  # the kinks were exercised


def test_plain_minima_have_no_kinks_and_a_small_gradient(sampled):
    with Database(sampled["plain"]) as db:
        energy, m = db.problem.energy(), db.minima()
    assert energy.kinks is None and energy.backend == "kernel"
    _, g = energy.energy_gradient(m.coords)
    assert np.sqrt((g ** 2).mean(1)).max() <= 1e-9


@pytest.mark.parametrize("options, message", [
    (["--sensitivity-method", "crown"], "kinks and jumps everywhere"),
    (["--activation", "relu"], "interval ends crossing zero"),
])
def test_sampling_refuses_what_cannot_converge_in_one_line(tmp_path, capsys, options, message):
    args = ["sample", str(tmp_path / "r.h5"), "--sensitivity-weight", "0.01", "--sensitivity-eps", "0.05",
            "--steps", "1", "--walkers", "2", "--quiet", *options]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "r.h5").exists()


def test_analyze_compares_two_landscapes(sampled, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["analyze", sampled["plain"], "--compare", sampled["term"], "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| file | minima | E min |" in printed and "sensitivity(weight=0.001" in printed
    rows = json.loads((out / "comparison.json").read_text())
    assert [r["file"] for r in rows] == [sampled["plain"], sampled["term"]]
    for r, name in zip(rows, ("plain", "term")):
        with Database(sampled[name]) as db:
            m = db.minima(coords=False)
        assert r["n_minima"] == len(m) and r["energy_min"] == m.energy.min() and r["energy_max"] == m.energy.max()
        assert r["eps"] == EPS and r["split"] == "test" and r["sensitivity_source"] == "computed"
        assert 0 <= r["accuracy_median"] <= 1 and np.isfinite(r["log_det_median"])
    assert rows[0]["zeros_median"] == 0
    assert (out / "comparison.csv").exists() and (out / "comparison.md").read_text().startswith("| file |")


def test_compare_takes_a_stored_sensitivity_score(sampled, tmp_path):
    landscape.score(sampled["plain"], [EPS], method="ibp", progress=False)
    with Database(sampled["plain"]) as db:
        rows = landscape.analysis.compare([db])
    assert rows[0]["sensitivity_source"] == "stored"


def test_connect_refuses_a_loss_with_kinks_in_one_line(sampled, capsys):
    """The band and the saddle search follow the gradient, undefined on the kinks the minima of the
    paper's loss sit on: connect says so, exit 2, and leaves the file byte-identical."""
    before = open(sampled["term"], "rb").read()
    assert main(["connect", sampled["term"], "--lowest", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sensitivity term" in err and "connect takes a smooth loss" in err
    assert open(sampled["term"], "rb").read() == before


def test_flatness_of_a_minimum_on_a_face_is_that_of_the_face(sampled, tmp_path):
    """A minimum with zero weights sits on a face of E: flatness is the log-determinant of the
    Hessian restricted to it (its zero weights are not modes), from the full spectrum and, within
    its error bar, from SLQ."""
    import shutil

    from landscape import flatness
    from landscape.identify import face

    path = str(tmp_path / "flat.h5")
    shutil.copy(sampled["term"], path)
    landscape.score(path, quantities="flatness", progress=False)
    with Database(path) as db:
        energy, m = db.problem.energy(), db.minima()
        values = db.scores()["log_det_hessian_eigvalsh_cutoff1e-06"][0]
    on_face = [i for i, x in enumerate(m.coords) if not face(energy, x).all()]
    assert on_face
    for i in on_face:
        free = face(energy, m.coords[i])
        lam = np.linalg.eigvalsh(energy.hessian(m.coords[i])[np.ix_(free, free)])
        np.testing.assert_allclose(values[i], flatness.spectrum_log_det(lam)[0], rtol=1e-10)
    i = on_face[0]
    probes = flatness.rademacher(0, i, 200, len(m.coords[i]))[None]
    slq = flatness.log_det_slq(energy, m.coords[i][None], probes, steps=len(m.coords[i]))
    assert abs(slq.value[0] - values[i]) < 4 * slq.stderr[0] + 1e-6


def test_a_run_whose_quenches_all_end_on_the_floor_says_why(tmp_path):
    """At a sensitivity weight large against lam the quenches drive output widths to the
    log-volume's floor and none converges: the run says so and what to change."""
    problem = landscape.Problem.create("iris", hidden=(5,), lam=1e-3, test_fraction=0.0,
                                       sensitivity={"weight": 0.1, "eps": EPS})
    r = landscape.sample(problem, str(tmp_path / "floor.h5"), landscape.Settings(walkers=4, maxiter=300), steps=1,
                         seed=0, progress=False)
    assert r.n_minima == 0 and r.counters["converged"] == 0
    assert r.reason.startswith("none of the 4 quenches converged: with a sensitivity weight of 100 x lam")
    assert "lower --sensitivity-weight against --lam" in r.reason
