"""What a database holds, as plain data: the summary that ``landscape inspect`` prints and
``--json`` writes, for notebooks too."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from .database import Database
from .estimates import chao1


def summary(db: Database, lowest: int = 10) -> dict:
    """What ``db`` holds, as plain data, with the ``lowest`` minima by energy (>= 0): problem,
    counts, the Chao1 estimate of all minima, scores (sorted by kind, eps numerically; 'scored'
    counts current values, 'stale' values of coordinates since refined), transition states and
    runs."""
    if not (isinstance(lowest, int) and lowest >= 0):
        raise ValueError(f"lowest must be an integer >= 0, got {lowest!r}")
    m = db.minima(coords=False)
    order = np.argsort(m.energy, kind="stable")[:lowest]
    return {
        "path": db.path,
        "schema_version": db.schema,
        "upgrades": json.loads(db.f.attrs.get("upgrades", "[]")),
        "problem": db.problem.to_dict(),
        "n_params": db.problem.model.n_params,
        "n_minima": len(m),
        "total_hits": int(m.hits.sum()),
        "found_once": int((m.hits == 1).sum()),
        "found_twice": int((m.hits == 2).sum()),
        "chao1_minima": chao1(m.hits),
        "lowest": [{"id": int(i), "energy": float(m.energy[i]), "grad_rms": float(m.grad_rms[i]),
                    "hits": int(m.hits[i]), "lowest_eigenvalue": _nan_none(m.eigenvalues[i, 0]),
                    "version": int(m.version[i]), "first_found": [int(v) for v in m.first_found[i]]}
                   for i in order],
        "scores": _scores(db, m.version, order),
        "n_transition_states": len(db.transition_states(coords=False)),
        "runs": db.runs(),
    }


def _scores(db: Database, current: np.ndarray, order: np.ndarray) -> dict:
    kinds = db.score_kinds()
    out = {}
    for i in sorted(range(len(kinds)), key=lambda i: kinds[i].sort_key()):
        values, versions = db.score_values(i)
        fresh = versions == current
        k = dataclasses.asdict(kinds[i])
        k["eps"] = _nan_none(k["eps"])
        out[kinds[i].label()] = {**k, "scored": int(fresh.sum()), "stale": int(((versions >= 0) & ~fresh).sum()),
                                 "lowest_minima": [_nan_none(values[j]) if fresh[j] else None for j in order]}
    return out


def _nan_none(v: float) -> float | None:
    return None if math.isnan(v) else float(v)
