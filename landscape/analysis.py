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
    counts current values, 'stale' values of coordinates since refined), trained networks with
    their scores, transition states and runs."""
    if not (isinstance(lowest, int) and lowest >= 0):
        raise ValueError(f"lowest must be an integer >= 0, got {lowest!r}")
    m = db.minima(coords=False)
    ts = db.transition_states(coords=False)
    order = np.argsort(m.energy, kind="stable")[:max(lowest, 1)]
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
                   for i in order[:lowest]],
        "scores": _scores(db, m.version, order[:lowest]),
        "networks": _networks(db),
        "n_transition_states": len(ts),
        "connectivity": connectivity(len(m), ts.minima, int(order[0])) if len(m) else None,
        "runs": db.runs(),
    }


def _scores(db: Database, current: np.ndarray, order: np.ndarray) -> dict:
    kinds = db.score_kinds()
    out = {}
    networks = _network_kinds(db)
    for i in sorted(range(len(kinds)), key=lambda i: kinds[i].sort_key()):
        values, versions = db.score_values(i)
        if i in networks and not (versions >= 0).any():  # a trained network's score, none of a minimum's
            continue
        fresh = versions == current
        k = dataclasses.asdict(kinds[i])
        k["eps"] = _nan_none(k["eps"])
        out[kinds[i].label()] = {**k, "scored": int(fresh.sum()), "stale": int(((versions >= 0) & ~fresh).sum()),
                                 "lowest_minima": [_nan_none(values[j]) if fresh[j] else None for j in order]}
    return out


def _network_kinds(db: Database) -> set[int]:
    """The score kinds that some trained network has."""
    kinds = set()
    for i in range(len(db.score_kinds())):
        if (db.score_values(i, table="networks")[1] >= 0).any():
            kinds.add(i)
    return kinds


def _networks(db: Database) -> list[dict]:
    """The trained networks (``landscape train``): id, objective and its parameters, seed, run and
    every score (label: value; null where not computed)."""
    nets = db.networks(coords=False)
    scores = db.network_scores()
    return [{"id": i, "objective": nets.objective[i].get("objective"), "params": nets.objective[i].get("params", {}),
             "seed": int(nets.seed[i]), "run": int(nets.run[i]),
             "scores": {label: _nan_none(values[i]) for label, (values, _) in scores.items()}}
            for i in range(len(nets))]


def _nan_none(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


@dataclasses.dataclass(frozen=True)
class Correlation:
    """Spearman's rank correlation of ``y`` with ``x`` over ``n`` minima: ``rho``, its two-sided
    ``p_value`` (scipy.stats.spearmanr), and a percentile bootstrap ``ci`` (low, high) at
    ``level`` from ``resamples`` resamples of the minima."""

    x: str
    y: str
    n: int
    rho: float
    ci: tuple[float, float]
    p_value: float
    level: float
    resamples: int


def spearman(x: np.ndarray, y: np.ndarray, names: tuple[str, str] = ("x", "y"), resamples: int = 2000,
             level: float = 0.95, seed: int = 0) -> Correlation:
    """Spearman's rho of ``y`` (n,) with ``x`` (n,) over the pairs where both are finite, with a
    seeded percentile bootstrap confidence interval. Needs at least 3 such pairs."""
    from scipy import stats

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D arrays of one length, got {x.shape} and {y.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, n = x[ok], y[ok], int(ok.sum())
    if n < 3:
        raise ValueError(f"{names[1]} against {names[0]}: {n} minima with both values; a correlation needs 3")
    r = stats.spearmanr(x, y)
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    boot = np.array([_pearson(stats.rankdata(rx[i]), stats.rankdata(ry[i])) for i in idx])
    boot = boot[np.isfinite(boot)]
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]) if boot.size else (math.nan, math.nan)
    return Correlation(names[0], names[1], n, float(r.statistic), (float(lo), float(hi)), float(r.pvalue), level,
                       resamples)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    d = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / d if d > 0 else math.nan


def correlations(table, against: tuple[str, ...] = ("energy",), columns: list[str] | None = None,
                 **options) -> tuple[list[Correlation], dict[str, str]]:
    """Spearman correlations of each of ``columns`` (default: every column of ``table`` after the
    stored minimum's own ones, i.e. the scores) with each column of ``against``, from a
    :meth:`Database.table` DataFrame. Returns the correlations and, per pair left out, why (too
    few minima with both values). ``options`` go to :func:`spearman`."""
    columns = [c for c in table.columns if not own_column(c) and c not in against] if columns is None else columns
    out, skipped = [], {}
    for x in against:
        for y in columns:
            if x == y:
                continue
            try:
                out.append(spearman(table[x].to_numpy(), table[y].to_numpy(), (x, y), **options))
            except ValueError as e:
                skipped[f"{y} vs {x}"] = str(e)
    return out, skipped


def own_column(name: str) -> bool:
    """Whether a :meth:`Database.table` column is a stored minimum's own (not a score)."""
    return name in ("energy", "grad_rms", "hits", "first_run", "first_walker", "first_step", "version") \
        or name.startswith("eigenvalue_")


def connectivity(n_minima: int, pairs: np.ndarray, root: int) -> dict:
    """How the transition states ``pairs`` (M, 2) join ``n_minima`` minima: the number of
    connected components (a minimum joined to nothing is one) and of minima connected to
    ``root`` (itself included)."""
    import networkx as nx

    pairs = np.asarray(pairs).reshape(-1, 2)
    if not len(pairs):  # every minimum is its own tree
        return {"components": n_minima, "connected_to_global_minimum": min(n_minima, 1)}
    g = nx.Graph()
    g.add_nodes_from(range(n_minima))
    g.add_edges_from((int(a), int(b)) for a, b in pairs)
    return {"components": nx.number_connected_components(g),
            "connected_to_global_minimum": len(nx.node_connected_component(g, root)) if n_minima else 0}


COMPARISON_EPS = 0.05  # eps of the sensitivity column when no file's loss has a sensitivity term


def compare(dbs, eps: float | None = None) -> list[dict]:
    """Landscapes side by side (e.g. the same problem sampled with and without the sensitivity
    term): one row of plain data per open :class:`Database` in ``dbs``, over all its minima:

    - ``n_minima``; ``energy_min``/``_median``/``_max`` (each file's own E);
    - ``zeros_median``: weight-matrix entries exactly 0 (minima on the kinks of the IBP term);
    - ``sensitivity_median``/``_global_min``: IBP mean log-volume of the logits (nats) over the
      ``split`` points at ``eps`` (default: the eps of the first sensitivity term among the files,
      else 0.05), the stored score where current, computed otherwise (``sensitivity_source``);
    - ``accuracy_median``/``_global_min`` on ``split`` (the test split where the problem has one);
    - ``log_det_median``/``_global_min``: flatness, the log-determinant of the Hessian of the
      file's E over its non-zero modes (:mod:`landscape.flatness`), restricted to the face of each
      minimum (its non-zero coordinates, :mod:`landscape.identify`); NaN above 1000 parameters.
    """
    import robustness
    import torch

    from . import loss as loss_mod
    from .flatness import Flatness, spectrum_log_det
    from .identify import face

    dbs = list(dbs)
    if eps is None:
        eps = next((t.eps for db in dbs for t in db.problem.loss if isinstance(t, loss_mod.Sensitivity)),
                   COMPARISON_EPS)
    rows = []
    for db in dbs:
        problem = db.problem
        m = db.minima()
        if not len(m):
            raise ValueError(f"{db.path} holds no minima yet: run landscape sample first")
        ds = problem.dataset()
        split = "test" if len(ds.y_test) else "train"
        X, y = (ds.X_test, ds.y_test) if split == "test" else (ds.X_train, ds.y_train)
        x = torch.from_numpy(X).reshape(len(X), *problem.model.input_shape)
        domain = (0.0, 1.0) if ds.scaling == "unit" else None
        W = m.coords
        order = np.argsort(m.energy, kind="stable")
        g = int(order[0])
        sens, source = _stored_sensitivity(db, eps, split), "stored"
        missing = np.isnan(sens)
        if missing.any():
            with torch.no_grad():
                s = robustness.log_volume(problem.model.to_network(torch.from_numpy(W[missing])), x, eps,
                                          method="ibp", space="logits", domain=domain)
            sens[missing] = s.mean.numpy()
            source = "computed" if missing.all() else "stored and computed"
        with torch.no_grad():
            acc = robustness.clean_accuracy(problem.model.to_network(torch.from_numpy(W)), x,
                                            torch.from_numpy(y)).numpy()
        energy = problem.energy()
        kinks = energy.kinks if energy.kinks is not None else loss_mod.kink_mask(
            (*problem.loss, loss_mod.Sensitivity(1.0, 1.0)), problem.model)
        zeros = ((W == 0) & kinks).sum(1)
        log_det = np.full(len(W), np.nan)
        if problem.model.n_params <= 1000:
            for i, w in enumerate(W):
                free = face(energy, w)
                eig = np.linalg.eigvalsh(energy.hessian(w)[np.ix_(free, free)])
                log_det[i] = spectrum_log_det(eig, Flatness.cutoff)[0]
        rows.append({
            "file": db.path, "loss": loss_mod.describe(problem.loss), "n_minima": len(W),
            "energy_min": float(m.energy[g]), "energy_median": float(np.median(m.energy)),
            "energy_max": float(m.energy.max()), "zeros_median": float(np.median(zeros)),
            "split": split, "eps": float(eps),
            "sensitivity_median": float(np.median(sens)), "sensitivity_global_min": float(sens[g]),
            "sensitivity_source": source,
            "accuracy_median": float(np.median(acc)), "accuracy_global_min": float(acc[g]),
            "log_det_median": float(np.nanmedian(log_det)) if np.isfinite(log_det).any() else math.nan,
            "log_det_global_min": float(log_det[g]),
        })
    return rows


def _stored_sensitivity(db: Database, eps: float, split: str) -> np.ndarray:
    """The current stored IBP mean log-volume of the logits at ``eps`` on ``split`` per minimum
    (NaN where none)."""
    for values, kind in db.scores().values():
        if (kind.quantity, kind.method, kind.space, kind.split, kind.aggregation) == \
                ("sensitivity", "ibp", "logits", split, "mean_log") and math.isclose(kind.eps, eps, rel_tol=1e-12):
            return values.astype(float).copy()
    return np.full(len(db), np.nan)


COMPARISON_COLUMNS = (("file", "file"), ("n_minima", "minima"), ("energy_min", "E min"),
                      ("energy_median", "E median"), ("energy_max", "E max"), ("zeros_median", "zero weights"),
                      ("sensitivity_median", "sensitivity median"), ("sensitivity_global_min", "sensitivity at global min"),
                      ("accuracy_median", "accuracy median"), ("accuracy_global_min", "accuracy at global min"),
                      ("log_det_median", "log det median"), ("log_det_global_min", "log det at global min"))


def comparison_markdown(rows: list[dict]) -> str:
    """The rows of :func:`compare` as a Markdown table (the loss of each file listed below it)."""
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(t for _, t in COMPARISON_COLUMNS) + " |"
    lines = [head, "|" + "---|" * len(COMPARISON_COLUMNS)]
    lines += ["| " + " | ".join(cell(r[k]) for k, _ in COMPARISON_COLUMNS) + " |" for r in rows]
    lines.append("")
    lines += [f"- {r['file']}: E = {r['loss']}" for r in rows]
    if rows:
        r = rows[0]
        lines.append(f"- sensitivity: IBP mean log-volume of the logits (nats) at eps {r['eps']:g} on the "
                     f"{r['split']} split; accuracy on the same points; log det: flatness over the non-zero modes "
                     "of the Hessian of each file's E on the face of the minimum")
    return "\n".join(lines) + "\n"
