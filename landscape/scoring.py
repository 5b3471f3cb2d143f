"""Per-minimum quantities of the stored minima (robustness, fit, flatness), computed in batches of
minima and stored in the database as score kinds (:class:`landscape.database.ScoreKind`).

What each of :func:`score`'s ``quantities`` stores (the kind's quantity, and the fields it sets):

* 'sensitivity', per eps: quantity 'sensitivity', the log-volume (nats) of an over-approximation of
  the outputs for inputs in the l-inf ball of radius eps (:func:`robustness.log_volume`; method,
  output space), aggregated over the points of the split as 'mean_log' (the mean of the per-point
  log-volumes) and/or 'log_mean' (the log of the mean per-point volume, by logsumexp: it weighs the
  most sensitive points, so the two can rank minima differently). Robustness is minus it.
* 'accuracy': quantity 'accuracy', the fraction of points classified correctly, on every split
  that has points.
* 'loss': quantity 'loss', the mean cross-entropy (nats; no L2 term), on every split with points.
* 'pgd', per eps: quantity 'pgd_accuracy', the fraction of points classified correctly both at the
  point and at its PGD adversary (:func:`robustness.robust_accuracy`; options: steps, restarts):
  an upper estimate of the accuracy under every attack of size eps.
* 'verified', per eps: quantity 'verified_accuracy', the fraction of points whose class the bounds
  of the method prove over the whole ball (:func:`robustness.verified_accuracy`): a lower bound of
  that accuracy.
* 'flatness': quantity 'log_det_hessian', the sum of the logs of the Hessian eigenvalues of E
  above the cutoff, and 'zero_modes', how many are at or below it (:mod:`landscape.flatness`;
  method 'eigvalsh', the full spectrum, or 'slq', an estimate; options: cutoff, and for SLQ probes
  and steps). SLQ also stores their standard errors as quantities 'log_det_hessian_stderr' and
  'zero_modes_stderr', every other field the same: join on them.

eps is in the data's input units (standardised features, or [0, 1] pixels, where the ball is also
clipped to [0, 1], for the attack as for the bounds); the eps quantities use one split (``split``),
and each kind records its split and point count. Scoring again computes only what is missing:
minima added since, kinds not yet asked for, and values made stale by a minimum refined in place.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from dataclasses import asdict, dataclass
from functools import partial
from typing import Callable, Sequence

import numpy as np
import torch

import robustness

from . import flatness as flatness_mod
from .data import eps_unit
from .database import COMPLETED, FAILED, INT64_END, INTERRUPTED, Database, ScoreKind
from .energy import Energy
from .flatness import Flatness
from .loss import CrossEntropy, LossData
from .models import Model
from .problem import Problem

METHODS = robustness.bounds.METHODS  # ibp, crown, ibp+crown, alpha-crown
SPACES = ("logits", "logit_diff", "softmax")
SPLITS = ("train", "test")
QUANTITIES = ("sensitivity", "accuracy", "loss", "pgd", "verified", "flatness")
EPS_QUANTITIES = ("sensitivity", "pgd", "verified")
AGGREGATIONS = ("mean_log", "log_mean")


class ScoringWarning(UserWarning):
    """A score computed as asked that carries little or no information (the CLI prints it as one line)."""


@dataclass
class ScoreResult:
    """What a call of :func:`score` did: the split and number of points of the eps quantities, and
    per score label how many minima were computed now (0 where all were current already)."""

    split: str
    n_points: int
    computed: dict[str, int]


@dataclass(frozen=True)
class PGD:
    """The attack of 'pgd': ``restarts`` uniform random starts in the ball, each followed by ``steps``
    signed-gradient steps of 2.5 eps / steps (:func:`robustness.pgd`); the starts are drawn from
    ``seed``, one generator per batch of minima."""

    steps: int = 40
    restarts: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("steps", 1), ("restarts", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value < INT64_END:
                raise ValueError(f"pgd {name} must be an integer in [{low}, 2**63), got {value!r}")

    def options(self) -> dict:
        """What defines the value, for the kind's options (the seed only draws the starts)."""
        return {"restarts": self.restarts, "steps": self.steps}


@dataclass(frozen=True)
class _Request:
    """The checked arguments of :func:`score`."""

    eps: tuple[float, ...]
    quantities: tuple[str, ...]
    method: str
    space: str
    split: str | None
    aggregation: tuple[str, ...]
    verify_method: str
    pgd: PGD
    flatness: Flatness
    batch: int


@dataclass(frozen=True)
class _Points:
    """One split's data: ``X`` (N, D) as the model's forward takes it, ``x`` (N, *input_shape) as
    robustness takes it, labels ``y`` (N,), the input ``domain`` and eps's ``unit``."""

    split: str
    X: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    domain: tuple[float, float] | None
    unit: str


@dataclass(frozen=True)
class _Job:
    """Score kinds computed together: ``compute(ids, coords)`` gives the values (B, len(kinds)) of
    the B minima ``ids`` at ``coords`` (B, P), ``batch`` minima at a time."""

    kinds: tuple[ScoreKind, ...]
    compute: Callable[[np.ndarray, np.ndarray], np.ndarray]
    batch: int


def score(db: str | os.PathLike | Database, eps: float | Sequence[float] = (), method: str = "ibp",
          space: str = "logits", split: str | None = None, batch: int = 128, progress: bool = True,
          data_path: str | None = None, command: str = "", *, quantities: str | Sequence[str] = ("sensitivity",),
          aggregation: str | Sequence[str] = ("mean_log",), verify_method: str = "ibp+crown", pgd: PGD = PGD(),
          flatness: Flatness = Flatness(), force: bool = False) -> ScoreResult:
    """Compute ``quantities`` (of :data:`QUANTITIES`; module docstring) for every minimum of ``db`` (a
    path, or a :class:`Database` opened with mode 'a') where they are missing or stale.

    ``eps`` (one number or several; needed by sensitivity, pgd and verified): l-inf radii in input
    units. ``method`` and ``space``: the sensitivity's bounds and output space; ``aggregation``: its
    aggregations over the points (:data:`AGGREGATIONS`, from one bound computation);
    ``verify_method``: the bounds of 'verified'; ``pgd``, ``flatness``: those quantities' settings.
    ``split`` None uses the test split where the problem has one and the training split otherwise.
    ``batch``: networks per batch. ``data_path`` points to moved data (its content hash is checked).
    Warns where eps carries no information (0, or a ball wider than the data). ``force`` takes the
    file over from a writer on another host within its lease (:class:`Database`). Out of space, the
    run ends as failed with what it wrote kept (DiskFullError)."""
    request = _request(eps, quantities, method, space, split, aggregation, verify_method, pgd, flatness, batch)
    if isinstance(db, Database):
        if not db.writable:
            raise ValueError(f"{db.path} is open read-only: open it with Database(path, mode='a') to score it")
        return _score(db, request, progress, command)
    with Database(db, mode="a", data_path=data_path, force=force) as d:
        return _score(d, request, progress, command)


def _request(eps: float | Sequence[float], quantities: str | Sequence[str], method: str, space: str,
             split: str | None, aggregation: str | Sequence[str], verify_method: str, pgd: PGD, flatness: Flatness,
             batch: int) -> _Request:
    """The arguments of :func:`score`, checked; ValueError for anything not allowed."""
    quantities = _choices("quantity", quantities, QUANTITIES)
    aggregation = _choices("aggregation", aggregation, AGGREGATIONS)
    for name, value, allowed in (("method", method, METHODS), ("space", space, SPACES),
                                 ("verify_method", verify_method, METHODS)):
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}: choose one of {', '.join(allowed)}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    if not isinstance(pgd, PGD) or not isinstance(flatness, Flatness):
        raise ValueError("pgd must be a landscape.scoring.PGD and flatness a landscape.flatness.Flatness")
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    eps = _eps(eps, needed=[q for q in quantities if q in EPS_QUANTITIES])
    return _Request(eps, quantities, method, space, split, aggregation, verify_method, pgd, flatness, int(batch))


def _choices(name: str, values: str | Sequence[str], allowed: tuple[str, ...]) -> tuple[str, ...]:
    """``values`` (one name or several) as distinct names of ``allowed``, in the order given."""
    values = (values,) if isinstance(values, str) else tuple(values)
    for v in values:
        if v not in allowed:
            raise ValueError(f"unknown {name} {v!r}: choose one or more of {', '.join(allowed)}")
    if not values:
        raise ValueError(f"give at least one {name} of {', '.join(allowed)}")
    return tuple(dict.fromkeys(values))


def _eps(eps: float | Sequence[float], needed: list[str]) -> tuple[float, ...]:
    """The eps as distinct floats in the order given; at least one where a quantity of ``needed`` uses it."""
    eps = list(np.atleast_1d(np.asarray(eps, dtype=object)))
    if (needed and not eps) or any(isinstance(e, bool) or not isinstance(e, numbers.Real)
                                   or not (e >= 0 and np.isfinite(e)) for e in eps):
        uses = f" (for {', '.join(needed)})" if needed else ""
        raise ValueError(f"eps must be one or more finite numbers >= 0{uses}, got {eps}")
    return tuple(dict.fromkeys(float(e) for e in eps))


def _score(db: Database, r: _Request, progress: bool, command: str) -> ScoreResult:
    if not len(db):
        raise ValueError(f"{db.path} holds no minima yet: run landscape sample first")
    problem = db.problem
    points = _splits(problem)
    split = r.split or ("test" if "test" in points else "train")
    if any(q in EPS_QUANTITIES for q in r.quantities):
        if split not in points:
            raise ValueError(f"the problem has no {split} data (test fraction {problem.data.test_fraction}); "
                             "use --split train")
        _warn_uninformative(r.eps, points[split])
    jobs = [job for q in r.quantities for job in _JOBS[q](problem, r, points, split)]
    kinds = [k for job in jobs for k in job.kinds]
    todo = _stale_or_missing(db, kinds)
    result = ScoreResult(split, len(points[split].y) if split in points else 0,
                         {k.label(): len(t) for k, t in zip(kinds, todo)})
    if not any(len(t) for t in todo):
        return result  # nothing to write: the file is left as it is
    parameters = dict(eps=r.eps, quantities=r.quantities, method=r.method, space=r.space, split=split,
                      n_points=result.n_points, aggregation=r.aggregation, verify_method=r.verify_method,
                      pgd=asdict(r.pgd), flatness=asdict(r.flatness))
    _check_coords(db, np.unique(np.concatenate(todo)))
    rid = db.start_run(command, 0, parameters, {}, kind="score", counters=("computed",))
    status, computed = FAILED, 0
    try:
        ends = np.cumsum([len(job.kinds) for job in jobs])
        for job, end in zip(jobs, ends):
            computed += _run(db, rid, job, todo[end - len(job.kinds):end], progress)
        status = COMPLETED
    except KeyboardInterrupt:
        status = INTERRUPTED
        raise
    finally:
        db.save_run_state(rid, {"computed": computed}, {})
        db.end_run(rid, status)
    return result


def _check_coords(db: Database, ids: np.ndarray, batch: int = 4096) -> None:
    """Read the coordinates of ``ids`` (each chunk's checksum checked) before anything is written,
    so that a damaged file is refused as it is."""
    for a in range(0, len(ids), batch):
        db.coords(ids[a:a + batch])


def _splits(problem: Problem) -> dict[str, _Points]:
    """The splits of the problem's data that have points."""
    ds = problem.dataset()
    domain = (0.0, 1.0) if ds.scaling == "unit" else None
    out = {}
    for split, X, y in (("train", ds.X_train, ds.y_train), ("test", ds.X_test, ds.y_test)):
        if len(y):
            X = torch.from_numpy(X)
            out[split] = _Points(split, X, X.reshape(len(X), *problem.model.input_shape), torch.from_numpy(y),
                                 domain, eps_unit(ds.scaling))
    return out


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


def _run(db: Database, rid: int, job: _Job, todo: list[np.ndarray], progress: bool) -> int:
    """Compute ``job`` for the minima that any of its kinds lacks, and store each kind's values for
    the minima ``todo`` lacks (one array per kind); returns how many values were stored."""
    from tqdm.auto import tqdm

    ids = np.unique(np.concatenate(todo))
    bad = np.zeros(len(job.kinds), np.int64)
    for a in tqdm(range(0, len(ids), job.batch), disable=not progress or not len(ids), desc=job.kinds[0].label(),
                  unit="batch"):
        rows = ids[a:a + job.batch]
        values = job.compute(rows, db.coords(rows))
        for j, (kind, wanted) in enumerate(zip(job.kinds, todo)):
            mine = np.isin(rows, wanted)
            if mine.any():
                db.write_scores(kind, rows[mine], values[mine, j], rid)
                bad[j] += int((~np.isfinite(values[mine, j])).sum())
    for kind, n_bad, wanted in zip(job.kinds, bad, todo):
        if n_bad:
            overflow = kind.quantity == "sensitivity"
            hint = f" (the bounds overflowed at eps {kind.eps:g}); use a smaller eps" if overflow else ""
            warnings.warn(f"{kind.label()}: {n_bad} of {len(wanted)} values are not finite{hint}", ScoringWarning,
                          stacklevel=4)
    return sum(len(t) for t in todo)


def _kind(quantity: str, p: _Points, eps: float = math.nan, method: str = "", space: str = "",
          aggregation: str = "", options: str = "{}") -> ScoreKind:
    """A kind computed on the points ``p`` (eps in their unit, where one applies)."""
    return ScoreKind(quantity, eps, "" if math.isnan(eps) else p.unit, method, space, p.split, aggregation, len(p.y),
                     options)


def _sensitivity_jobs(problem: Problem, r: _Request, points: dict[str, _Points], split: str) -> list[_Job]:
    p = points[split]
    return [_Job(tuple(_kind("sensitivity", p, e, r.method, r.space, a) for a in r.aggregation),
                 partial(_sensitivity, problem.model, p, e, r.method, r.space, r.aggregation), r.batch)
            for e in r.eps]


def _sensitivity(model: Model, p: _Points, eps: float, method: str, space: str, aggregations: tuple[str, ...],
                 ids: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Sensitivities (B, len(aggregations)) of the networks ``w`` (B, P), from one bound computation."""
    with torch.no_grad():
        v = robustness.log_volume(model.to_network(w), p.x, eps, method=method, space=space, labels=p.y,
                                  domain=p.domain, split=p.split).values
    return torch.stack([_AGGREGATE[a](v) for a in aggregations], 1).numpy()


_AGGREGATE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {  # (K, N) per-point log-volumes -> (K,)
    "mean_log": lambda v: v.mean(-1),
    "log_mean": lambda v: torch.logsumexp(v, -1) - math.log(v.shape[-1]),
}


def _every_split_jobs(quantity: str, compute: Callable[..., np.ndarray], problem: Problem, r: _Request,
                      points: dict[str, _Points], split: str) -> list[_Job]:
    """``quantity`` on every split with points, by ``compute(model, points, ids, coords)``."""
    return [_Job((_kind(quantity, p),), partial(compute, problem.model, p), r.batch) for p in points.values()]


def _accuracy(model: Model, p: _Points, ids: np.ndarray, w: np.ndarray) -> np.ndarray:
    return robustness.clean_accuracy(model.to_network(w), p.x, p.y).numpy()[:, None]


def _loss(model: Model, p: _Points, ids: np.ndarray, w: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return CrossEntropy().value(torch.from_numpy(w), LossData(model, p.X, p.y)).numpy()[:, None]


def _pgd_jobs(problem: Problem, r: _Request, points: dict[str, _Points], split: str) -> list[_Job]:
    p = points[split]
    options = json.dumps(r.pgd.options(), sort_keys=True)
    return [_Job((_kind("pgd_accuracy", p, e, options=options),), partial(_pgd, problem.model, p, e, r.pgd), r.batch)
            for e in r.eps]


def _pgd(model: Model, p: _Points, eps: float, attack: PGD, ids: np.ndarray, w: np.ndarray) -> np.ndarray:
    generator = torch.Generator().manual_seed(attack.seed)
    return robustness.robust_accuracy(model.to_network(w), p.x, p.y, eps, steps=attack.steps,
                                      restarts=attack.restarts, domain=p.domain, generator=generator).numpy()[:, None]


def _verified_jobs(problem: Problem, r: _Request, points: dict[str, _Points], split: str) -> list[_Job]:
    p = points[split]
    return [_Job((_kind("verified_accuracy", p, e, r.verify_method),),
                 partial(_verified, problem.model, p, e, r.verify_method), r.batch) for e in r.eps]


def _verified(model: Model, p: _Points, eps: float, method: str, ids: np.ndarray, w: np.ndarray) -> np.ndarray:
    return robustness.verified_accuracy(model.to_network(w), p.x, p.y, eps, method=method,
                                        domain=p.domain).numpy()[:, None]


def _flatness_jobs(problem: Problem, r: _Request, points: dict[str, _Points], split: str) -> list[_Job]:
    energy, n_params = problem.energy(), problem.model.n_params
    method, options = r.flatness.method(n_params), json.dumps(r.flatness.options(n_params), sort_keys=True)
    names = ("log_det_hessian", "zero_modes")
    if method == "slq":
        names = ("log_det_hessian", "log_det_hessian_stderr", "zero_modes", "zero_modes_stderr")
    kinds = tuple(ScoreKind(name, method=method, n_points=len(energy.y), options=options) for name in names)
    return [_Job(kinds, partial(_flatness, energy, r.flatness, names),
                 min(r.batch, r.flatness.minima_per_batch(n_params)))]


def _flatness(energy: Energy, settings: Flatness, names: tuple[str, ...], ids: np.ndarray,
              w: np.ndarray) -> np.ndarray:
    d = flatness_mod.log_det(energy, w, ids, settings)
    columns = {"log_det_hessian": d.value, "log_det_hessian_stderr": d.stderr, "zero_modes": d.zero_modes,
               "zero_modes_stderr": d.zero_modes_stderr}
    return np.stack([columns[name] for name in names], 1)


_JOBS = {"sensitivity": _sensitivity_jobs, "accuracy": partial(_every_split_jobs, "accuracy", _accuracy),
         "loss": partial(_every_split_jobs, "loss", _loss), "pgd": _pgd_jobs, "verified": _verified_jobs,
         "flatness": _flatness_jobs}


def _warn_uninformative(eps: Sequence[float], p: _Points) -> None:
    """Warn about an eps whose scores carry no information about the data: 0 (every box is a
    point, so every network scores the floor) or a ball wider than the whole data set."""
    X = p.X.numpy()
    extent = (p.domain[1] - p.domain[0]) if p.domain is not None else float(np.ptp(X, axis=0).max())
    for e in eps:
        if e == 0:
            warnings.warn("eps 0: every input box is a point, so every network scores the same floor; use eps > 0",
                          ScoringWarning, stacklevel=4)
        elif extent and e > extent:
            warnings.warn(f"eps {e:g} exceeds the extent of the data ({extent:g} input units): the ball is wider "
                          "than the data set, so the score no longer describes the data", ScoringWarning,
                          stacklevel=4)
