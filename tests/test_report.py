"""`landscape analyze`: the correlations, the files it writes, and what it says is missing."""
import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import landscape
from landscape.analysis import connectivity, correlations, spearman
from landscape.cli import main
from landscape.database import Database
from landscape.report import analyze
from landscape.scoring import score


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """Minima with neither scores nor transition states, and no test split."""
    path = tmp_path_factory.mktemp("report") / "bare.h5"
    problem = landscape.Problem.create("iris", hidden=(5,), lam=1e-4, test_fraction=0.0)
    landscape.sample(problem, str(path), landscape.Settings(walkers=16, step=3.0, adaptive=False, start="uniform"),
                     steps=4, seed=0, progress=False)
    return path


def test_spearman_matches_scipy_and_its_interval_covers_the_truth():
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    y = x + rng.normal(size=300)
    c = spearman(x, y, ("x", "y"), resamples=500, seed=1)
    assert c.rho == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12) and c.n == 300
    truth = 6 / np.pi * np.arcsin(0.5 * np.sqrt(0.5))  # Spearman's rho of a bivariate normal with r = 1/sqrt(2)
    assert c.ci[0] < truth < c.ci[1] and c.ci[0] < c.rho < c.ci[1] and c.p_value < 1e-20
    assert spearman(x, y, resamples=500, seed=1) == spearman(x, y, resamples=500, seed=1)  # seeded
    y[:290] = np.nan  # pairs with a NaN are left out
    assert spearman(x, y, resamples=100).n == 10
    with pytest.raises(ValueError, match="needs 3"):
        spearman(x[:2], x[:2])


def test_correlations_take_every_score_column_and_say_which_were_skipped():
    t = pd.DataFrame({"energy": [1.0, 2, 3, 4], "hits": [1, 2, 3, 4], "eigenvalue_0": [1.0, 1, 1, 1],
                      "a": [4.0, 3, 2, 1], "b": [np.nan, np.nan, 1, 2]})
    cors, skipped = correlations(t, resamples=50)
    assert [(c.x, c.y, c.rho) for c in cors] == [("energy", "a", -1.0)]
    assert list(skipped) == ["b vs energy"] and "2 minima" in skipped["b vs energy"]


def test_connectivity_counts_trees_and_the_global_minimums():
    assert connectivity(5, np.array([[0, 1], [1, 2], [3, 4]]), root=2) == {
        "components": 2, "connected_to_global_minimum": 3}
    assert connectivity(3, np.zeros((0, 2), np.int64), root=0) == {"components": 3, "connected_to_global_minimum": 1}


def test_analyze_names_what_is_missing_and_still_writes_the_graph(bare, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["analyze", str(bare), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "no scores" in err and "no transition states" in err and "no test split" in err and "Traceback" not in err
    s = json.loads((out / "summary.json").read_text())
    assert len(s["missing"]) == 3 and s["correlations"] == [] and s["n_transition_states"] == 0
    with Database(bare) as db:
        n = len(db)
    assert s["connectivity"] == {"components": n, "connected_to_global_minimum": 1}
    assert (out / "disconnectivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(pd.read_csv(out / "minima.csv")) == n
    page = (out / "report.html").read_text()
    assert "no scores" in page and "data:image/png;base64," in page and "http" not in page


def test_analyze_correlates_every_score_with_the_energy(bare, tmp_path):
    path = tmp_path / "scored.h5"
    shutil.copyfile(bare, path)
    score(str(path), [0.01, 0.1], progress=False)
    rep = analyze(str(path), tmp_path / "out", resamples=200)
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    with Database(path) as db:
        t = db.table()
    labels = [c for c in t.columns if c.startswith("sensitivity")]
    got = {(c["x"], c["y"]): c for c in s["correlations"]}
    for label in labels:
        c = got[("energy", label)]
        assert c["n"] == len(t) and c["rho"] == pytest.approx(stats.spearmanr(t["energy"], t[label]).statistic)
        assert c["ci"][0] <= c["rho"] <= c["ci"][1]
    assert set(rep.files) >= {"minima.csv", "summary.json", "report.html", "disconnectivity.png",
                              "energy_vs_scores.png"}
    assert len(rep.missing) == 2  # the scores are there now


def test_analyze_refuses_a_file_as_out_folder(bare, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["analyze", str(bare), "--out", str(f)]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and f.read_text() == "x"


@pytest.mark.slow
def test_the_report_opens_in_headless_chromium(bare, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    analyze(str(bare), tmp_path / "out", resamples=50)
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    f"--screenshot={shot}", "--window-size=1200,2000", (tmp_path / "out" / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
