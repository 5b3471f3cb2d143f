"""The soak of benchmarks/soak.py: random SIGKILL / SIGTERM / SIGINT sent to real `landscape`
processes during sample, score and the end of a run. A short form here (one trial of each kind),
the long form (100 trials) with -m slow."""
import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("soak", Path(__file__).parents[1] / "benchmarks" / "soak.py")
soak = sys.modules["soak"] = importlib.util.module_from_spec(_spec)  # dataclasses look the module up
_spec.loader.exec_module(soak)


def _check(results):
    table = soak.table(results)
    bad = [t for t in results if not t.opens or t.lost or t.duplicates or t.resume_did_nothing]
    assert not bad, f"{table}\n{bad}"


def test_a_random_signal_leaves_a_file_that_opens_loses_nothing_and_resumes(tmp_path):
    """One trial of each kind: during sample, around the end of a run, during score."""
    _check(soak.run_trials(3, seed=1, workdir=str(tmp_path), cycle=True, log=lambda line: None))


@pytest.mark.slow
def test_soak_100_trials(tmp_path):
    _check(soak.run_trials(100, seed=0, workdir=str(tmp_path), log=print))
