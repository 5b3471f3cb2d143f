"""What a new user met (issue 17, item 6): a data path that was ignored, and ReLU runs that stored
nothing. A data path now selects its format; ReLU sampling is refused up front, and softplus (a
smooth ReLU) has true minima."""
import numpy as np
import pytest

from landscape.cli import main
from landscape.database import Database

TINY = ["--hidden", "2", "--test-fraction", "0", "--walkers", "2", "--steps", "2", "--quiet"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, db, *argv) -> str:
    """The one-line error of a refused ``sample`` that left no file."""
    code, out, err = run(capsys, "sample", db, *argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("landscape: error: ")
    assert not db.exists()
    return err[len("landscape: error: "):].strip()


def test_a_data_path_selects_its_format(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(24, 3)), np.arange(24) % 2
    (tmp_path / "d.csv").write_text("a,b,target,c\n" + "".join(f"{r[0]},{r[1]},{c},{r[2]}\n" for r, c in zip(X, y)))
    np.savez(tmp_path / "d.npz", X=X[:, :2], y=y)
    np.savez(tmp_path / "mnist.npz", x_train=rng.integers(0, 256, size=(24, 2, 2)), y_train=y)
    for name, options, source, inputs in (("d.csv", ["--label-column", "target"], "csv", 3), ("d.npz", [], "npz", 2),
                                          ("mnist.npz", [], "mnist", 4)):
        db = tmp_path / f"{name}.h5"
        code, _, err = run(capsys, "sample", db, "--data-path", tmp_path / name, *options, *TINY)
        assert code == 0, err
        with Database(str(db)) as d:
            assert (d.problem.data.name, d.problem.data.path) == (source, str(tmp_path / name))
            assert d.problem.model.n_inputs == inputs


def test_a_path_of_unknown_format_or_with_a_built_in_source_is_refused(tmp_path, capsys):
    (tmp_path / "d.txt").write_text("1,2,x\n")
    message = refused(capsys, tmp_path / "a.h5", "--data-path", tmp_path / "d.txt", *TINY)
    assert message.startswith("cannot tell the format of data path") and message.endswith("give --data csv|npz|mnist")
    message = refused(capsys, tmp_path / "b.h5", "--data", "iris", "--data-path", tmp_path / "d.csv", *TINY)
    assert message == "iris ships with scikit-learn; drop --data-path or give --data csv|npz|mnist"


def test_relu_sampling_is_refused_in_one_line(tmp_path, capsys):
    message = refused(capsys, tmp_path / "relu.h5", "--activation", "relu", *TINY)
    assert message == ("ReLU minima sit on kinks where the gradient test cannot pass; use --activation softplus "
                       "(--sharpness B, default 10) for a smooth ReLU-like network")


def test_sharpness_belongs_to_softplus(tmp_path, capsys):
    message = refused(capsys, tmp_path / "s.h5", "--sharpness", "4", *TINY)
    assert "sharpness is the beta of softplus" in message
    assert "finite number > 0" in refused(capsys, tmp_path / "s.h5", "--activation", "softplus", "--sharpness", "0",
                                          *TINY)


@pytest.mark.parametrize("how", ["options", "config"])
def test_softplus_runs_store_true_minima(tmp_path, capsys, how):
    """Iris 4-3(softplus)-3: every stored minimum has a vanishing gradient and a positive definite
    Hessian (recomputed here with autograd), and the sharpness is the one asked for."""
    db = tmp_path / "softplus.h5"
    problem = ["--activation", "softplus", "--sharpness", "4", "--hidden", "3"]
    if how == "config":
        (tmp_path / "c.toml").write_text('[problem]\nactivation = "softplus"\nsharpness = 4.0\nhidden = [3]\n')
        problem = ["--config", tmp_path / "c.toml"]
    code, out, err = run(capsys, "sample", db, *problem, "--test-fraction", "0", "--walkers", "4", "--steps", "3",
                         "--seed", "1", "--quiet")
    assert code == 0, err
    with Database(str(db)) as d:
        assert d.problem.model.sharpness == 4.0
        m = d.minima()
        energy = d.problem.energy(backend="autograd")
    assert len(m) >= 1 and f"holds {len(m)} minima" in out
    _, grad = energy.energy_gradient(m.coords)
    assert np.sqrt((grad ** 2).mean(1)).max() < 1e-8
    lowest = np.array([np.linalg.eigvalsh(energy.hessian(w))[0] for w in m.coords])
    assert (lowest > 0).all()
    np.testing.assert_allclose(m.eigenvalues[:, 0], lowest, rtol=1e-3)
