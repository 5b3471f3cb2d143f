"""The study's per-minimum quantities (landscape.scoring, landscape.flatness) on a small Iris
database: each stored value against an independent computation, bounds against attacks, the SLQ
estimate against the full spectrum, and recomputation of stale values only."""
import shutil
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch
from scipy import stats
from torch.nn import functional as F

import landscape
import robustness
from landscape.cli import main
from landscape.database import Database
from landscape.flatness import Flatness, lanczos_quadrature, log_det, log_det_full, rademacher, spectrum_log_det
from landscape.scoring import PGD, QUANTITIES, score

SENSITIVITY = "sensitivity_logits_ibp_eps0.1_test"
LOG_MEAN = SENSITIVITY + "_log_mean"
PGD_ACCURACY = "pgd_accuracy_eps0.1_test_restarts1_steps40"
VERIFIED = "verified_accuracy_ibp+crown_eps0.1_test"
FULL, SLQ = "log_det_hessian_eigvalsh_cutoff1e-06", "log_det_hessian_slq_cutoff1e-06_probes30_steps43"
SLQ_STDERR = "log_det_hessian_stderr_slq_cutoff1e-06_probes30_steps43"


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    """About twenty minima of Iris 4-5-3 (P = 43)."""
    path = tmp_path_factory.mktemp("study") / "s.h5"
    problem = landscape.Problem.create("iris", hidden=(5,), lam=1e-4, test_fraction=0.3)
    landscape.sample(problem, str(path), landscape.Settings(walkers=16, step=3.0, adaptive=False, start="uniform"),
                     steps=10, seed=0, progress=False)
    return path


def _score_all(path) -> dict[str, int]:
    """Every quantity at eps 0.1 with both aggregations, then the flatness by SLQ as well."""
    done = score(str(path), 0.1, quantities=QUANTITIES, aggregation=("mean_log", "log_mean"), progress=False).computed
    done.update(score(str(path), quantities="flatness", flatness=Flatness(full_max=0), progress=False).computed)
    return done


@pytest.fixture(scope="module")
def scored(sampled, tmp_path_factory):
    path = tmp_path_factory.mktemp("study") / "scored.h5"
    shutil.copyfile(sampled, path)
    computed = _score_all(path)
    with Database(path) as db:
        assert len(db) >= 15 and set(computed.values()) == {len(db)}  # every kind, every minimum
        return dict(path=path, computed=computed, scores=db.scores(), coords=db.minima().coords, problem=db.problem)


def _net(problem, w):
    """The minimum as the robustness package sees its own nn.Module (not the batched path of scoring)."""
    return robustness.from_sequential(problem.model.to_module(w), (problem.model.n_inputs,))


def test_labels_are_distinct_and_readable(scored):
    assert set(scored["computed"]) == {
        SENSITIVITY, LOG_MEAN, "accuracy_train", "accuracy_test", "loss_train", "loss_test", PGD_ACCURACY, VERIFIED,
        FULL, "zero_modes_eigvalsh_cutoff1e-06", SLQ, SLQ_STDERR, "zero_modes_slq_cutoff1e-06_probes30_steps43",
        "zero_modes_stderr_slq_cutoff1e-06_probes30_steps43"}
    assert set(scored["scores"]) == set(scored["computed"])


def test_log_mean_is_the_log_of_the_mean_volume_and_ranks_minima_otherwise(scored):
    problem, coords = scored["problem"], scored["coords"]
    (mean_log, k1), (log_mean, k2) = scored["scores"][SENSITIVITY], scored["scores"][LOG_MEAN]
    assert (k1.aggregation, k2.aggregation) == ("mean_log", "log_mean") and replace(k2, aggregation="mean_log") == k1
    x = torch.from_numpy(problem.dataset().X_test)
    for i in (0, len(coords) - 1):
        v = robustness.log_volume(_net(problem, coords[i]), x, 0.1, method="ibp").values[0].detach().numpy()
        np.testing.assert_allclose(log_mean[i], np.log(np.mean(np.exp(v))), rtol=1e-12)
        np.testing.assert_allclose(mean_log[i], v.mean(), rtol=1e-12)
    assert np.all(log_mean > mean_log)  # Jensen: the points' log-volumes differ
    assert not np.array_equal(np.argsort(log_mean), np.argsort(mean_log))


def test_both_aggregations_come_from_one_bound_computation_and_each_is_computed_where_missing(sampled, tmp_path,
                                                                                            monkeypatch):
    path = tmp_path / "agg.h5"
    shutil.copyfile(sampled, path)
    calls = []
    log_volume = robustness.log_volume
    monkeypatch.setattr(robustness, "log_volume", lambda *a, **k: calls.append(a[2]) or log_volume(*a, **k))
    n = score(str(path), 0.1, progress=False).computed[SENSITIVITY]
    with h5py.File(path, "r") as f:
        rows = f["scores/value"].shape[0]
    assert score(str(path), 0.1, aggregation=("mean_log", "log_mean"), progress=False).computed == {
        SENSITIVITY: 0, LOG_MEAN: n}
    with h5py.File(path, "r") as f:
        assert f["scores/value"].shape[0] == rows + n  # the current mean_log values are not written again
    path.unlink()
    shutil.copyfile(sampled, path)
    assert score(str(path), 0.1, aggregation=("log_mean", "mean_log"), progress=False).computed == {
        SENSITIVITY: n, LOG_MEAN: n}
    assert calls == [0.1, 0.1, 0.1]  # one batch per call: both aggregations from one computation


def test_accuracy_and_loss_equal_the_minimum_module_on_each_split(scored):
    problem, coords, scores = scored["problem"], scored["coords"], scored["scores"]
    ds = problem.dataset()
    for split, X, y in (("train", ds.X_train, ds.y_train), ("test", ds.X_test, ds.y_test)):
        (accuracy, kind), (loss, _) = scores[f"accuracy_{split}"], scores[f"loss_{split}"]
        assert kind.n_points == len(y)
        with torch.no_grad():
            logits = [problem.model.to_module(w)(torch.from_numpy(X)) for w in coords]
        y = torch.from_numpy(y)
        np.testing.assert_allclose(accuracy, [(z.argmax(1) == y).double().mean().item() for z in logits], rtol=1e-12)
        np.testing.assert_allclose(loss, [F.cross_entropy(z, y).item() for z in logits], rtol=1e-12)


def test_verified_accuracy_is_below_pgd_accuracy_which_is_below_clean_accuracy(scored):
    problem, coords, scores = scored["problem"], scored["coords"], scored["scores"]
    clean, pgd, verified = (scores[label][0] for label in ("accuracy_test", PGD_ACCURACY, VERIFIED))
    assert np.all(verified <= pgd) and np.all(pgd <= clean)
    assert np.any(pgd < clean) and np.all(verified > 0)  # the attack finds adversaries; the bounds prove points
    ds = problem.dataset()
    x, y = torch.from_numpy(ds.X_test), torch.from_numpy(ds.y_test)
    direct = [robustness.verified_accuracy(_net(problem, w), x, y, 0.1, method="ibp+crown").item() for w in coords]
    np.testing.assert_array_equal(verified, direct)
    fgsm = []  # PGD is at least as strong as FGSM, its one-step special case, on every minimum here
    for w in coords:
        net = _net(problem, w)
        with torch.no_grad():
            ok = [robustness.forward(net, z).argmax(-1) == y for z in (x, robustness.fgsm(net, x, y, 0.1))]
        fgsm.append((ok[0] & ok[1]).double().mean().item())
    assert np.all(pgd <= fgsm)
    kind = scores[PGD_ACCURACY][1]
    assert (kind.eps, kind.split, kind.options) == (0.1, "test", '{"restarts": 1, "steps": 40}')


def test_pixels_are_attacked_and_bounded_within_the_domain(tmp_path):
    """On images the ball is clipped to [0, 1] for the attack as for the bounds."""
    path = tmp_path / "digits.h5"
    problem = landscape.Problem.create("digits", hidden=(4,), lam=1e-3, limit=100, test_fraction=0.3)
    landscape.sample(problem, str(path), landscape.Settings(walkers=4), steps=2, seed=0, progress=False)
    score(str(path), 0.1, quantities=("pgd", "verified"), progress=False)
    with Database(path) as db:
        scores, coords = db.scores(), db.minima().coords
    (pgd, kind), (verified, _) = scores[PGD_ACCURACY], scores[VERIFIED]
    assert kind.eps_unit == "[0, 1] pixels" and np.all(verified <= pgd)
    ds = problem.dataset()
    x, y = torch.from_numpy(ds.X_test), torch.from_numpy(ds.y_test)
    for domain, same in (((0.0, 1.0), True), (None, False)):
        direct = [robustness.verified_accuracy(_net(problem, w), x, y, 0.1, domain=domain).item() for w in coords]
        attacked = robustness.robust_accuracy(problem.model.to_network(coords), x, y, 0.1, domain=domain,
                                              generator=torch.Generator().manual_seed(0)).numpy()  # scoring's batch
        assert np.array_equal(verified, direct) == same and np.array_equal(pgd, attacked) == same


def test_flatness_from_the_full_spectrum_is_the_sum_of_log_eigenvalues_above_the_cutoff(scored):
    problem, coords, scores = scored["problem"], scored["coords"], scored["scores"]
    energy = problem.energy()
    expected, zero_modes = [], []
    for w in coords:
        lam = np.linalg.eigvalsh(energy.hessian(w))
        keep = lam > 1e-6 * lam.max()
        expected.append(np.log(lam[keep]).sum())
        zero_modes.append((~keep).sum())
    np.testing.assert_allclose(scores[FULL][0], expected, rtol=1e-12)
    np.testing.assert_array_equal(scores["zero_modes_eigvalsh_cutoff1e-06"][0], zero_modes)
    exact = log_det_full(problem.energy(backend="autograd"), coords)  # exact Hessian-vector products
    np.testing.assert_allclose(scores[FULL][0], exact.value, atol=1e-4)


def test_the_slq_estimate_is_calibrated_against_the_full_spectrum(scored):
    """At one seed 2 of the ~20 minima lie just beyond 3 standard errors (30 probes of a skewed
    quadratic form), so the error bars are tested together: no minimum beyond 4, and the sum of
    squared deviations in the central 99.8% of its chi-square distribution."""
    scores = scored["scores"]
    z = (scores[SLQ][0] - scores[FULL][0]) / scores[SLQ_STDERR][0]
    assert np.all(np.abs(z) < 4)
    assert stats.chi2.ppf(0.001, len(z)) < np.sum(z ** 2) < stats.chi2.ppf(0.999, len(z))


def test_slq_counts_zero_modes_within_its_error_bar(scored):
    """With cutoff 1e-3 of the largest eigenvalue the directions held by the L2 term alone (2 lam =
    2e-4) count as zero modes: the estimate of their number matches the spectrum's."""
    problem, coords = scored["problem"], scored["coords"]
    energy, settings = problem.energy(), Flatness(full_max=0, cutoff=1e-3, probes=60)
    exact, slq = log_det_full(energy, coords, 1e-3), log_det(energy, coords, np.arange(len(coords)), settings)
    assert np.all(exact.zero_modes > 10)
    for estimate, error, value in ((slq.zero_modes, slq.zero_modes_stderr, exact.zero_modes),
                                   (slq.value, slq.stderr, exact.value)):
        assert np.all(np.abs(estimate - value) < 4 * error)


def test_lanczos_quadrature_is_exact_with_as_many_steps_as_parameters(scored):
    problem, w = scored["problem"], scored["coords"][0]
    H = problem.energy().hessian(w)
    lam, U = np.linalg.eigh(H)
    v = rademacher(0, 0, 1, len(w))
    theta, tau2 = lanczos_quadrature(lambda q: q @ H, v, steps=10 * len(w))
    used = tau2[0] > 0  # a start vector meets only as many distinct eigenvalues as its Krylov space holds
    np.testing.assert_allclose(len(w) * (tau2[0, used] * np.log(theta[0, used])).sum(),
                               ((v[0] @ U) ** 2 * np.log(lam)).sum(), rtol=1e-9)


def test_spectrum_log_det_leaves_out_and_counts_what_is_below_the_cutoff():
    value, zero_modes = spectrum_log_det(np.array([-1e-9, 0.0, 1e-7, 0.5, 2.0]), cutoff=1e-6)
    assert value == pytest.approx(np.log(0.5) + np.log(2.0), rel=1e-15) and zero_modes == 3


def test_only_a_refined_minimum_is_recomputed_for_every_kind(scored, tmp_path):
    """Minimum 0 is given minimum 1's coordinates: every kind recomputes minimum 0 alone, and its
    deterministic values become minimum 1's."""
    path = tmp_path / "stale.h5"
    shutil.copyfile(scored["path"], path)
    with Database(path, mode="a") as db:
        m = db.minima()
        db.update_minimum(0, m.energy[1], m.coords[1], m.grad_rms[1])
    with h5py.File(path, "r") as f:
        rows = f["scores/value"].shape[0]
    computed = _score_all(path)
    assert computed == dict.fromkeys(scored["computed"], 1)
    with h5py.File(path, "r") as f:
        assert f["scores/value"].shape[0] == rows + len(computed)
    with Database(path) as db:
        scores = db.scores()
    for label in (SENSITIVITY, LOG_MEAN, "accuracy_train", "accuracy_test", "loss_train", "loss_test", VERIFIED, FULL):
        np.testing.assert_allclose(scores[label][0][0], scores[label][0][1], rtol=1e-12, err_msg=label)
        np.testing.assert_array_equal(scores[label][0][2:], scored["scores"][label][0][2:], err_msg=label)
    assert scores[VERIFIED][0][0] <= scores[PGD_ACCURACY][0][0] <= scores["accuracy_test"][0][0]
    before = path.read_bytes()
    assert set(_score_all(path).values()) == {0} and path.read_bytes() == before


def test_cli_scores_the_quantities_asked_for(sampled, tmp_path, capsys):
    path = tmp_path / "cli.h5"
    shutil.copyfile(sampled, path)
    assert main(["score", str(path), "--eps", "0.1", "--quantity", "accuracy", "verified", "--aggregation",
                 "log_mean", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "accuracy_test: " in out and f"{VERIFIED}: " in out and "sensitivity" not in out
    assert main(["score", str(path), "--eps", "0.1", "--aggregation", "mean_log", "log_mean", "--quiet"]) == 0
    assert f"{LOG_MEAN}: " in capsys.readouterr().out
    assert main(["score", str(path), "--quantity", "pgd", "--quiet"]) == 2
    assert "eps must be one or more finite numbers >= 0 (for pgd)" in capsys.readouterr().err
    assert main(["score", str(path), "--quantity", "flatness", "--probes", "1", "--quiet"]) == 2
    assert "flatness probes must be an integer >= 2" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, message", [
    (dict(quantities=("sharpness",)), "unknown quantity 'sharpness'"),
    (dict(quantities=()), "give at least one quantity"),
    (dict(aggregation="mean"), "unknown aggregation 'mean'"),
    (dict(verify_method="exact"), "unknown verify_method 'exact'"),
    (dict(batch=0), "batch must be an integer >= 1"),
])
def test_score_refuses_what_it_does_not_know(sampled, kwargs, message):
    with pytest.raises(ValueError, match=message):
        score(str(sampled), 0.1, progress=False, **kwargs)


@pytest.mark.parametrize("make, message", [
    (lambda: PGD(steps=0), r"pgd steps must be an integer in \[1, 2\*\*63\)"),
    (lambda: PGD(restarts=1.5), r"pgd restarts must be an integer in \[1, 2\*\*63\)"),
    (lambda: PGD(seed=2 ** 64), r"pgd seed must be an integer in \[0, 2\*\*63\), got 18446744073709551616"),
    (lambda: Flatness(cutoff=0), r"flatness cutoff must be a number in \(0, 1\)"),
    (lambda: Flatness(full_max=-1), "flatness full_max must be an integer >= 0"),
])
def test_settings_refuse_bad_values(make, message):
    with pytest.raises(ValueError, match=message):
        make()
