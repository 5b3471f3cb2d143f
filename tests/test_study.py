"""runs/iris_study.toml: sample, score, connect and analyze, each reading its own table, end to end
(with a small budget here)."""
import json
import os
import tomllib

import pytest

from landscape.cli import main
from landscape.database import Database

STUDY = os.path.join(os.path.dirname(__file__), os.pardir, "runs", "iris_study.toml")


def test_the_study_config_runs_every_command_end_to_end(tmp_path, capsys):
    db, out = str(tmp_path / "study.h5"), tmp_path / "report"
    with open(STUDY, "rb") as fh:
        cfg = tomllib.load(fh)
    assert main(["sample", db, "--config", STUDY, "--steps", "2", "--walkers", "32", "--quiet"]) == 0
    assert main(["score", db, "--config", STUDY, "--quiet"]) == 0
    assert main(["score", db, "--config", STUDY, "--method", "crown", "--quantity", "sensitivity", "--quiet"]) == 0
    assert main(["connect", db, "--config", STUDY, "--max-attempts", "3", "--quiet"]) == 0
    assert main(["analyze", db, "--config", STUDY, "--out", str(out), "--resamples", "50"]) == 0
    capsys.readouterr()
    with Database(db) as d:
        kinds = d.score_kinds()
        runs = d.runs()
    assert [r["kind"] for r in runs] == ["sample", "score", "score", "connect"]
    assert runs[-1]["parameters"]["max_attempts"] == 3  # the command line wins over the table
    eps = {k.eps for k in kinds if k.quantity == "sensitivity"}
    assert eps == set(cfg["score"]["eps"])
    assert {(k.method, k.aggregation) for k in kinds if k.quantity == "sensitivity"} == {
        ("ibp", "mean_log"), ("ibp", "log_mean"), ("crown", "mean_log"), ("crown", "log_mean")}
    assert {"accuracy", "loss", "pgd_accuracy", "verified_accuracy"} <= {k.quantity for k in kinds}
    s = json.loads((out / "summary.json").read_text())
    assert s["correlations"] and all(c["x"] in ("energy",) or c["x"].startswith("sensitivity")
                                     for c in s["correlations"])


@pytest.mark.parametrize("table, key", [("score", "epsilon"), ("connect", "pairz"), ("analyze", "outdir")])
def test_an_unknown_key_in_a_command_table_is_one_line(tmp_path, capsys, table, key):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[{table}]\n{key} = 1\n")
    db = tmp_path / "x.h5"
    assert main(["sample", str(db), "--steps", "1", "--walkers", "2", "--hidden", "3", "--quiet"]) == 0
    capsys.readouterr()
    before = db.read_bytes()
    argv = [table, str(db), "--config", str(cfg)] + (["--eps", "0.1"] if table == "score" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"unknown key {key!r} in [{table}]" in err and db.read_bytes() == before
