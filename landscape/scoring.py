"""Robustness scores of stored minima: the sensitivity of each network (log-volume of an
over-approximation of its outputs for inputs in an l-inf ball of radius eps), from the
:mod:`robustness` package, computed in batches of minima and stored in the database.

A score is named ``sensitivity_<space>_<method>_eps<eps>_<split>`` and records eps (input
units: standardised features, or [0, 1] pixels where the ball is also clipped to [0, 1]),
method, output space, data split and number of points. Scoring again computes only what is
missing (minima added since, or scores not yet asked for). Robustness is minus the score.
Sets the process's allocator to keep freed memory (:mod:`landscape.allocator`).
"""
from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np
import torch

import robustness

from . import allocator
from .database import Database

METHODS = ("ibp", "crown", "ibp+crown")
SPACES = ("logits", "logit_diff", "softmax")
SPLITS = ("train", "test")


def score_name(eps: float, method: str, space: str, split: str) -> str:
    """The /scores dataset name of a score, e.g. ``sensitivity_logits_ibp_eps0.1_test``. eps is
    written in 6 significant digits, or exactly where those do not give it back (so two eps
    never share a name)."""
    e = f"{eps:g}"
    if float(e) != eps:
        e = repr(float(eps))
    return f"sensitivity_{space}_{method}_eps{e}_{split}"


def score(path: str, eps: float | Sequence[float], method: str = "ibp", space: str = "logits",
          split: str = "test", batch: int = 128, progress: bool = True) -> dict[str, int]:
    """Score every minimum of the database at ``path`` for each ``eps`` (one number or several);
    returns, per score name, how many minima were computed now (0 when all were there already)."""
    for name, value, allowed in (("method", method, METHODS), ("space", space, SPACES), ("split", split, SPLITS)):
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}: choose one of {', '.join(allowed)}")
    eps = list(np.atleast_1d(np.asarray(eps, dtype=object)))
    if not eps or any(isinstance(e, bool) or not isinstance(e, numbers.Real)
                      or not (e >= 0 and np.isfinite(e)) for e in eps):
        raise ValueError(f"eps must be one or more finite numbers >= 0, got {eps}")
    eps = list(dict.fromkeys(float(e) for e in eps))  # each once, in the order given
    from tqdm.auto import tqdm

    allocator.keep_freed_memory()  # the bounds' chunks then reuse the process's pages (robustness.bounds)

    done: dict[str, int] = {}
    with Database(path, mode="a") as db:
        problem = db.problem
        if not len(db):
            raise ValueError(f"{path} holds no minima yet: run landscape sample first")
        ds = problem.dataset()
        X, y = (ds.X_train, ds.y_train) if split == "train" else (ds.X_test, ds.y_test)
        if len(y) == 0:
            raise ValueError(f"the problem has no {split} data (test fraction {problem.data.test_fraction}); "
                             "use --split train")
        model = problem.model
        x = torch.from_numpy(X).reshape(len(X), *model.input_shape)
        labels = torch.from_numpy(y)
        domain = (0.0, 1.0) if ds.scaling == "unit" else None
        existing = db.scores()
        for e in eps:
            name = score_name(e, method, space, split)
            have = existing.get(name, (np.full(len(db), np.nan), {}))[0]
            todo = np.flatnonzero(np.isnan(have))
            attrs = dict(eps=float(e), method=method, space=space, split=split, n_points=len(y),
                         domain="none" if domain is None else f"[{domain[0]}, {domain[1]}]",
                         reference="true label (logit_diff)" if space == "logit_diff" else "",
                         units="nats", description="mean over data points of sum_j log(u_j - l_j), the log-volume of "
                         "an over-approximation of the outputs for inputs in the l-inf ball of radius eps; "
                         "robustness = -value")
            for a in tqdm(range(0, len(todo), batch), disable=not progress, desc=name, unit="batch"):
                ids = todo[a:a + batch]
                with torch.no_grad():
                    s = robustness.log_volume(model.to_network(db.coords(ids)), x, e, method=method, space=space,
                                              labels=labels, domain=domain, split=split)
                db.write_score(name, ids, s.mean.numpy(), attrs)
            done[name] = len(todo)
    return done
