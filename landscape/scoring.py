"""Robustness scores of stored minima: the sensitivity of each network (log-volume of an
over-approximation of its outputs for inputs in an l-inf ball of radius eps), from the
:mod:`robustness` package, computed in batches of minima and stored in the database.

A score is stored as plain data (:class:`landscape.database.ScoreKind`): quantity
'sensitivity', eps in the data's input units (standardised features, or [0, 1] pixels where the
ball is also clipped to [0, 1]), method, output space, data split, aggregation 'mean_log' (the
mean over data points of the per-point log-volume, nats) and point count. Scoring again computes
only what is missing: minima added since, scores not yet asked for, and scores made stale by a
minimum refined in place. Robustness is minus the score.
"""
from __future__ import annotations

import numbers
import os
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

import robustness

from .data import eps_unit
from .database import COMPLETED, FAILED, INTERRUPTED, Database, ScoreKind

METHODS = ("ibp", "crown", "ibp+crown")
SPACES = ("logits", "logit_diff", "softmax")
SPLITS = ("train", "test")


@dataclass
class ScoreResult:
    """What a call of :func:`score` did: the split and number of points used, and per score label
    how many minima were computed now (0 where all were current already)."""

    split: str
    n_points: int
    computed: dict[str, int]


def score(db: str | os.PathLike | Database, eps: float | Sequence[float], method: str = "ibp",
          space: str = "logits", split: str | None = None, batch: int = 128, progress: bool = True,
          data_path: str | None = None, command: str = "") -> ScoreResult:
    """Score every minimum of ``db`` (a path, or a :class:`Database` opened with mode 'a') for each
    ``eps`` (one number or several). ``split`` None uses the test split where the problem has
    one and the training split otherwise. ``data_path`` points to moved data (its content hash is
    checked). Warns where eps carries no information (0, or a ball wider than the data)."""
    eps = _check(eps, method, space, split)
    if isinstance(db, Database):
        if not db.writable:
            raise ValueError(f"{db.path} is open read-only: open it with Database(path, mode='a') to score it")
        return _score(db, eps, method, space, split, batch, progress, command)
    with Database(db, mode="a", data_path=data_path) as d:
        return _score(d, eps, method, space, split, batch, progress, command)


def _check(eps, method: str, space: str, split: str | None) -> list[float]:
    """The eps as distinct floats in the order given; ValueError for anything not allowed."""
    for name, value, allowed in (("method", method, METHODS), ("space", space, SPACES)):
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}: choose one of {', '.join(allowed)}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    eps = list(np.atleast_1d(np.asarray(eps, dtype=object)))
    if not eps or any(isinstance(e, bool) or not isinstance(e, numbers.Real)
                      or not (e >= 0 and np.isfinite(e)) for e in eps):
        raise ValueError(f"eps must be one or more finite numbers >= 0, got {eps}")
    return list(dict.fromkeys(float(e) for e in eps))


def _score(db: Database, eps: list[float], method: str, space: str, split: str | None, batch: int,
           progress: bool, command: str) -> ScoreResult:
    if not len(db):
        raise ValueError(f"{db.path} holds no minima yet: run landscape sample first")
    problem = db.problem
    ds = problem.dataset()
    split = split or ("test" if len(ds.y_test) else "train")
    X, y = (ds.X_train, ds.y_train) if split == "train" else (ds.X_test, ds.y_test)
    if len(y) == 0:
        raise ValueError(f"the problem has no {split} data (test fraction {problem.data.test_fraction}); "
                         "use --split train")
    domain = (0.0, 1.0) if ds.scaling == "unit" else None
    _warn_uninformative(eps, X, domain)
    kinds = [ScoreKind("sensitivity", e, eps_unit(ds.scaling), method, space, split, "mean_log", len(y))
             for e in eps]
    todo = _stale_or_missing(db, kinds)
    result = ScoreResult(split, len(y), {k.label(): len(t) for k, t in zip(kinds, todo)})
    if not any(len(t) for t in todo):
        return result  # nothing to write: the file is left as it is
    parameters = dict(eps=eps, method=method, space=space, split=split, n_points=len(y))
    rid = db.start_run(command, 0, parameters, {}, kind="score", counters=("computed",), swmr=False)
    status, computed = FAILED, 0
    try:
        x = torch.from_numpy(X).reshape(len(X), *problem.model.input_shape)
        for kind, ids in zip(kinds, todo):
            computed += _score_kind(db, rid, kind, ids, x, torch.from_numpy(y), domain, batch, progress)
        status = COMPLETED
    except KeyboardInterrupt:
        status = INTERRUPTED
        raise
    finally:
        db.save_run_state(rid, {"computed": computed}, {})
        db.end_run(rid, status)
    return result


def _stale_or_missing(db: Database, kinds: list[ScoreKind]) -> list[np.ndarray]:
    """Per kind, the ids of the minima without a current value (never computed, or computed
    from coordinates since refined)."""
    current = db.minima(coords=False).version
    known = {k.key(): i for i, k in enumerate(db.score_kinds())}
    out = []
    for kind in kinds:
        versions = db.score_values(known[kind.key()])[1] if kind.key() in known else np.full(len(current), -1)
        out.append(np.flatnonzero(versions != current))
    return out


def _score_kind(db: Database, rid: int, kind: ScoreKind, ids: np.ndarray, x: torch.Tensor, labels: torch.Tensor,
                domain: tuple[float, float] | None, batch: int, progress: bool) -> int:
    """Compute and store score ``kind`` of the minima ``ids``, ``batch`` networks at a time."""
    from tqdm.auto import tqdm

    model = db.problem.model
    bad = 0
    for a in tqdm(range(0, len(ids), batch), disable=not progress, desc=kind.label(), unit="batch"):
        rows = ids[a:a + batch]
        with torch.no_grad():
            s = robustness.log_volume(model.to_network(db.coords(rows)), x, kind.eps, method=kind.method,
                                      space=kind.space, labels=labels, domain=domain, split=kind.split)
        values = s.mean.numpy()
        bad += int((~np.isfinite(values)).sum())
        db.write_scores(kind, rows, values, rid)
    if bad:
        warnings.warn(f"{kind.label()}: {bad} of {len(ids)} values are not finite (the bounds overflowed at eps "
                      f"{kind.eps:g}); use a smaller eps", RuntimeWarning, stacklevel=3)
    return len(ids)


def _warn_uninformative(eps: list[float], X: np.ndarray, domain: tuple[float, float] | None) -> None:
    """Warn about an eps whose scores carry no information about the data: 0 (every box is a
    point, so every network scores the floor) or a ball wider than the whole data set."""
    extent = (domain[1] - domain[0]) if domain is not None else float(np.ptp(X, axis=0).max()) if len(X) else 0.0
    for e in eps:
        if e == 0:
            warnings.warn("eps 0: every input box is a point, so every network scores the same floor; use eps > 0",
                          RuntimeWarning, stacklevel=3)
        elif extent and e > extent:
            warnings.warn(f"eps {e:g} exceeds the extent of the data ({extent:g} input units): the ball is wider "
                          "than the data set, so the score no longer describes the data", RuntimeWarning,
                          stacklevel=3)
