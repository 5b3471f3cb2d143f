"""Chao1: exact on small cases, and on simulated sampling it recovers an equal-odds population
and bounds an uneven one from below, as the module docstring says."""
import numpy as np
import pytest

from landscape.estimates import chao1


def test_chao1_small_cases():
    assert chao1(np.array([1, 1, 2, 3])) == 4 + 2 * 2 / (2 * 1)
    assert chao1(np.array([1, 1, 1, 5])) == 4 + 3 * 2 / 2  # no doubletons: the bias-corrected form
    assert chao1(np.array([4, 7])) == 2  # nothing found once: nothing missing
    assert chao1(np.zeros(0, np.int64)) == 0


def _draws(p: np.ndarray, n: int, rng: np.random.Generator) -> tuple[int, float]:
    hits = np.bincount(rng.choice(len(p), size=n, p=p), minlength=len(p))
    hits = hits[hits > 0]
    return len(hits), chao1(hits)


def test_chao1_recovers_an_equal_odds_population_and_bounds_an_uneven_one():
    rng = np.random.default_rng(0)
    S = 60
    seen, est = np.mean([_draws(np.full(S, 1 / S), 100, rng) for _ in range(300)], axis=0)
    assert seen < 0.85 * S and abs(est - S) < 0.1 * S
    p = 0.9 ** np.arange(S)
    seen, est = np.mean([_draws(p / p.sum(), 150, rng) for _ in range(300)], axis=0)
    assert seen + 5 < est < S


@pytest.mark.parametrize("hits", [np.array([0, 2]), np.array([1.5, 2.0]), np.ones((2, 2), np.int64)])
def test_chao1_refuses_what_are_not_counts(hits):
    with pytest.raises(ValueError, match="counts >= 1"):
        chao1(hits)
