"""robustness.training (objectives, loop, evaluation) and `landscape train` (driver, database, CLI).

One small problem for all: digits (8x8 pixels in [0, 1]), a 64-32-10 ReLU MLP, a few epochs at
eps 0.1, every objective from the same seed; each objective must move its own quantity the right
way against plain training."""
import json
import math
import os

import pytest
import torch

import robustness
from landscape import data
from landscape import training as lt
from landscape.cli import main
from landscape.database import Database
from landscape.problem import Problem
from robustness import training as rt

EPS = 0.1
DOMAIN = (0.0, 1.0)
EPOCHS = 8


@pytest.fixture(scope="module")
def digits():
    ds = data.load(data.DataSpec("digits"))
    return (torch.tensor(ds.X_train), torch.tensor(ds.y_train), torch.tensor(ds.X_test[:200]),
            torch.tensor(ds.y_test[:200]))


def _train(digits, objective, seed=0, epochs=EPOCHS):
    x, y, _, _ = digits
    module = rt.reset_parameters(rt.mlp((64, 32, 10), "relu"), seed)
    config = rt.TrainConfig(epochs=epochs, eps=EPS, domain=DOMAIN, seed=seed, warmup=0.1, ramp=0.3)
    return rt.train(module, x, y, objective, config)


@pytest.fixture(scope="module")
def trained(digits):
    objectives = {"plain": rt.Plain(), "l2": rt.L2(lam=1e-2), "sensitivity": rt.SensitivityLoss(lambda_s=0.02),
                  "input_gradient": rt.InputGradient(lambda_g=1.0), "jacobian": rt.Jacobian(lambda_j=0.1),
                  "pgd": rt.PGDTraining(steps=5),
                  "trades": rt.TRADES(steps=5), "ibp": rt.IBPTraining(), "crown_ibp": rt.CROWNIBPTraining()}
    return {name: _train(digits, obj).module for name, obj in objectives.items()}


def _net(module):
    return robustness.from_sequential(module, dtype=torch.float64)


def _log_volume(module, x):
    return robustness.log_volume(_net(module), x, EPS, domain=DOMAIN).mean.item()


def _pgd_accuracy(module, x, y):
    return robustness.robust_accuracy(_net(module), x, y, EPS, steps=20, domain=DOMAIN,
                                      generator=torch.Generator().manual_seed(0)).item()


def _verified(module, x, y):
    return robustness.verified_accuracy(_net(module), x, y, EPS, method="ibp", domain=DOMAIN).item()


def test_every_objective_is_registered_and_refuses_unknown_parameters():
    assert set(rt.OBJECTIVES) == {"plain", "l2", "sensitivity", "input_gradient", "jacobian", "pgd", "trades", "ibp",
                                  "crown_ibp"}
    with pytest.raises(ValueError, match="no parameter"):
        rt.make_objective("pgd", lambda_s=1.0)
    with pytest.raises(ValueError, match="unknown objective"):
        rt.make_objective("adversarial")
    with pytest.raises(ValueError, match="kappa"):
        rt.make_objective("ibp", kappa=1.5)


def test_l2_lowers_the_squared_norm(trained):
    assert rt.l2_penalty(trained["l2"]).item() < 0.8 * rt.l2_penalty(trained["plain"]).item()


def test_sensitivity_term_lowers_the_log_volume(trained, digits):
    _, _, xt, yt = digits
    plain, sens = _log_volume(trained["plain"], xt), _log_volume(trained["sensitivity"], xt)
    assert -100 < sens < plain - 3.0, (plain, sens)  # lower, without collapsing the outputs to a constant
    assert _pgd_accuracy(trained["sensitivity"], xt, yt) > 0.5


def test_input_gradient_term_lowers_the_input_gradient(trained, digits):
    _, _, xt, yt = digits

    def grad_norm(module):
        x = xt.float().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(module(x), yt, reduction="sum")
        g, = torch.autograd.grad(loss, x)
        return g.pow(2).sum(1).mean().item()

    assert grad_norm(trained["input_gradient"]) < 0.5 * grad_norm(trained["plain"])


def test_jacobian_term_lowers_the_jacobian_norm(trained, digits):
    """Hoffman et al.'s random-projection estimate, trained on, lowers the exact Frobenius norm."""
    _, _, xt, _ = digits

    def frobenius(module):
        J = torch.func.vmap(torch.func.jacrev(module))(xt[:50].float())  # (50, 10, 64)
        return J.pow(2).sum((1, 2)).mean().item()

    assert frobenius(trained["jacobian"]) < 0.5 * frobenius(trained["plain"])


@pytest.mark.parametrize("name", ["pgd", "trades"])
def test_adversarial_training_raises_pgd_accuracy(trained, digits, name):
    _, _, xt, yt = digits
    assert _pgd_accuracy(trained[name], xt, yt) > _pgd_accuracy(trained["plain"], xt, yt) + 0.05


@pytest.mark.parametrize("name", ["ibp", "crown_ibp"])
def test_certified_training_raises_verified_accuracy(trained, digits, name):
    _, _, xt, yt = digits
    assert _verified(trained[name], xt, yt) > _verified(trained["plain"], xt, yt) + 0.1


def test_training_is_reproducible_with_a_seed(digits):
    a = _train(digits, rt.SensitivityLoss(lambda_s=0.03), seed=3, epochs=2)
    b = _train(digits, rt.SensitivityLoss(lambda_s=0.03), seed=3, epochs=2)
    c = _train(digits, rt.SensitivityLoss(lambda_s=0.03), seed=4, epochs=2)
    pa, pb, pc = (torch.cat([p.flatten() for p in r.module.parameters()]) for r in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    d = _train(digits, rt.PGDTraining(steps=2), seed=3, epochs=1)
    e = _train(digits, rt.PGDTraining(steps=2), seed=3, epochs=1)
    assert all(torch.equal(p, q) for p, q in zip(d.module.parameters(), e.module.parameters()))


def test_schedule_warms_up_then_ramps():
    c = rt.TrainConfig(warmup=0.2, ramp=0.5)
    assert [c.schedule(t) for t in (0.0, 0.19, 0.2, 0.45, 0.7, 1.0)] == pytest.approx([0, 0, 0, 0.5, 1, 1])
    assert rt.TrainConfig(warmup=0.0, ramp=0.0).schedule(0.0) == 1.0


@pytest.mark.parametrize("shape,module", [
    ((64,), lambda: rt.mlp((64, 16, 16, 10), "relu")),
    ((4,), lambda: rt.mlp((4, 5, 3), "tanh")),
    ((1, 8, 8), lambda: torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Sigmoid(),
                                            torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(64, 10))),
])
def test_interval_bounds_equal_robustness_ibp(shape, module):
    torch.manual_seed(0)
    m = module().double()
    x = torch.rand(9, *shape, dtype=torch.float64)
    net = robustness.from_sequential(m, shape)
    y = torch.randint(0, net.n_outputs, (9,))
    lo, hi = rt.interval_bounds(m, x, 0.07, DOMAIN)
    rlo, rhi = robustness.ibp(net, x, 0.07, domain=DOMAIN)
    torch.testing.assert_close((lo, hi), (rlo[0], rhi[0]), rtol=0, atol=1e-12)
    worst = rt.interval_bounds(m, x, 0.07, DOMAIN, labels=y)[1]
    torch.testing.assert_close(worst, rt.worst_case_logits(net, x, y, 0.07, "ibp", DOMAIN), rtol=0, atol=1e-12)
    assert (worst.gather(1, y[:, None]) == 0).all()


def test_evaluation_reports_per_output_widths_summing_to_the_log_volume(trained, digits):
    _, _, xt, yt = digits
    ev = rt.evaluate(trained["sensitivity"], xt[:50], yt[:50], rt.EvalConfig(eps=(0.05,), pgd_steps=5),
                     domain=DOMAIN)
    d = ev.per_eps[0.05]
    assert len(d["log_widths_ibp"]) == 10
    assert sum(d["log_widths_ibp"]) == pytest.approx(d["sensitivity_ibp"], abs=1e-9)
    assert 0 <= d["verified_accuracy"] <= d["pgd_accuracy"] <= d["fgsm_accuracy"] + 0.02 <= ev.clean_accuracy + 0.02
    assert d["verified_ibp"] <= d["verified_accuracy"] and d["sensitivity_crown"] <= d["sensitivity_ibp"] + 1e-9
    assert ev.rho_adv > 0 and ev.n_points == 50


def test_our_pgd_is_never_weaker_than_foolbox(trained, digits):
    fb = pytest.importorskip("foolbox")
    _, _, xt, yt = digits
    for name in ("plain", "pgd"):
        module = trained[name].eval()
        fmodel = fb.PyTorchModel(module, bounds=DOMAIN)
        x = xt.float()
        clean = module(x).argmax(-1) == yt
        for eps in (0.05, 0.1):
            _, _, success = fb.attacks.LinfPGD(steps=40)(fmodel, x, yt, epsilons=eps)
            theirs = (clean & ~success).double().mean().item()
            ours = robustness.robust_accuracy(_net(module), xt, yt, eps, steps=40, domain=DOMAIN,
                                              generator=torch.Generator().manual_seed(0)).item()
            assert ours <= theirs, (name, eps, ours, theirs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_runs_the_same_code_path(digits):
    x, y, xt, yt = digits
    module = rt.reset_parameters(rt.mlp((64, 32, 10), "relu"), 0)
    config = rt.TrainConfig(epochs=1, eps=EPS, domain=DOMAIN, device="cuda", warmup=0, ramp=0)
    r = rt.train(module, x, y, rt.IBPTraining(), config)
    assert next(r.module.parameters()).is_cuda
    ev = rt.evaluate(r.module, xt[:20], yt[:20], rt.EvalConfig(eps=(0.05,), pgd_steps=3), domain=DOMAIN, device="cuda")
    assert 0 <= ev.clean_accuracy <= 1


# -- landscape train ------------------------------------------------------------------------------
SMALL = ["--data", "digits", "--limit", "400", "--hidden", "16", "--activation", "relu", "--epochs", "2",
         "--eval-eps", "0.05", "--pgd-steps", "5", "--quiet"]


def test_a_trained_network_is_stored_reopened_and_re_evaluates_to_the_same_numbers(tmp_path, capsys):
    db = str(tmp_path / "t.h5")
    assert main(["train", db, *SMALL, "--objective", "sensitivity", "--lambda-s", "0.01", "--seed", "5"]) == 0
    assert "network 0 (sensitivity, seed 5)" in capsys.readouterr().out
    with Database(db) as d:
        nets = d.networks()
        assert len(nets) == 1 and nets.seed[0] == 5 and nets.objective[0]["objective"] == "sensitivity"
        assert nets.objective[0]["params"]["lambda_s"] == 0.01 and nets.objective[0]["train"]["domain"] == [0, 1]
        stored = {label: values[0] for label, (values, _) in d.network_scores().items()}
        again = lt.evaluate_stored(d, 0)
        module = d.trained_network(0)
        raw = d.problem.dataset().X_test * 16  # raw digits pixels: the module scales them itself
        assert (module(torch.as_tensor(raw)).argmax(-1).numpy() == d.problem.dataset().y_test).mean() == \
            pytest.approx(again.clean_accuracy)
    assert stored["accuracy_test"] == again.clean_accuracy
    assert stored["pgd_accuracy_pgd_eps0.05_test_restarts1_steps5"] == again.per_eps[0.05]["pgd_accuracy"]
    assert stored["sensitivity_logits_ibp_eps0.05_test"] == again.per_eps[0.05]["sensitivity_ibp"]
    assert stored["verified_accuracy_ibp+crown_eps0.05_test"] == again.per_eps[0.05]["verified_accuracy"]
    assert stored["rho_adv_deepfool_test"] == again.rho_adv and stored["train_seconds_train"] > 0
    assert main(["inspect", db]) == 0
    out = capsys.readouterr().out
    assert "network 0 (sensitivity(lam=0.0001, lambda_s=0.01" in out and "accuracy_test" in out
    assert "minima; lowest minima" not in out  # the networks' scores are not listed as scores of minima
    # a second run appends to the same database
    assert main(["train", db, "--objective", "plain", "--epochs", "1", "--eval-eps", "0.05", "--quiet"]) == 0
    with Database(db) as d:
        assert len(d.networks()) == 2 and [r["kind"] for r in d.runs()] == ["train", "train"]


def test_compare_writes_tables_and_figures(tmp_path, capsys):
    db, out = str(tmp_path / "c.h5"), tmp_path / "cmp"
    assert main(["train", db, *SMALL, "--compare", str(out), "--objectives", "plain", "ibp", "--seeds", "0", "1"]) == 0
    files = {"results.csv", "results.json", "results.md", "robust_accuracy.png", "accuracy_vs_sensitivity.png",
             "training_time.png"}
    assert files <= set(os.listdir(out))
    md = (out / "results.md").read_text()
    assert "| plain (2) |" in md and "| ibp (2) |" in md and "±" in md
    rows = json.loads((out / "results.json").read_text())
    assert [(r["objective"], r["train"]["seed"]) for r in rows] == [("plain", 0), ("plain", 1), ("ibp", 0), ("ibp", 1)]
    with Database(db) as d:
        assert len(d.networks()) == 4


def _exit_code(argv):
    """main's status, or the status of the SystemExit that argparse's errors raise."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("argv,message", [
    (["--objective", "nope"], "invalid choice"),
    (["--epochs", "0"], "epochs must be an integer >= 1"),
    (["--eps", "-1"], "eps must be a number"),
    (["--objective", "sensitivity", "--lambda-s", "-0.1"], "lambda_s must be a number"),
    (["--objective", "ibp", "--kappa", "2"], "kappa must be a number in [0, 1]"),
    (["--seeds", "1", "2"], "--objectives and --seeds belong to --compare"),
    (["--optimizer", "lbfgs"], "invalid choice"),
    (["--eval-eps", "nan"], "eps must be a number"),
    (["--device", "tpu"], "unknown device"),
])
def test_bad_configurations_give_one_line_and_exit_2(tmp_path, capsys, argv, message):
    code = _exit_code(["train", str(tmp_path / "b.h5"), "--data", "iris", "--quiet", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not os.path.exists(tmp_path / "b.h5")


def test_bad_config_file_and_other_model_give_one_line_and_exit_2(tmp_path, capsys):
    cfg = tmp_path / "t.toml"
    cfg.write_text('[train]\nepochz = 3\n')
    assert main(["train", str(tmp_path / "x.h5"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'epochz'" in err and err.count("\n") == 1
    db = str(tmp_path / "m.h5")
    assert main(["train", db, "--data", "iris", "--hidden", "3", "--epochs", "1", "--eval-eps", "0.1", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["train", db, "--data", "iris", "--hidden", "4", "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds another model" in err and err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_refused(tmp_path, capsys):
    assert main(["train", str(tmp_path / "g.h5"), "--device", "cuda", "--quiet"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_run_configs_parse(tmp_path):
    """The runs/ training configs name only known keys and build their problems."""
    from landscape.cli import _parse
    from landscape.train_cli import _problem

    for name in ("iris_train.toml", "digits_train.toml", "digits_cnn_train.toml"):
        path = os.path.join(os.path.dirname(__file__), "..", "runs", name)
        args = _parse(["train", str(tmp_path / "x.h5"), "--config", path])
        problem = _problem(args)
        assert isinstance(problem, Problem) and args.compare
        if name.startswith("digits"):
            assert problem.dataset().scaling == "unit" and problem.dataset().X_train.max() <= 1.0
        assert math.isfinite(args.eps)


def test_evaluation_of_a_network_with_constant_outputs_does_not_fail(digits):
    """A network collapsed by too large a lambda_s: DeepFool has no gradient to follow, rho_adv is NaN."""
    _, _, xt, yt = digits
    module = rt.mlp((64, 8, 10), "relu")
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    ev = rt.evaluate(module, xt[:20], yt[:20], rt.EvalConfig(eps=(0.1,), pgd_steps=2), domain=DOMAIN)
    assert math.isnan(ev.rho_adv) and ev.per_eps[0.1]["sensitivity_ibp"] < -200
