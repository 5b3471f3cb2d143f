"""``landscape train``: networks of a problem's architecture trained with an objective of
:mod:`robustness.training`, evaluated on the held-out split and stored in the database; and the
comparison of every objective over several seeds (tables and figures).

A trained network is a row of the database's /networks table (flat parameters in the problem's
layout, the objective and training settings as JSON, the seed, the run) and its evaluation is a
set of scores of table 'networks' (:class:`landscape.database.ScoreKind`: quantity 'accuracy',
'rho_adv', 'train_seconds', and per eps 'sensitivity' (IBP and CROWN, logits, mean_log),
'log_width_<j>' (IBP), 'fgsm_accuracy', 'pgd_accuracy' (options: steps, restarts) and
'verified_accuracy' (ibp+crown and ibp)). :func:`evaluate_stored` recomputes the evaluation of a
stored network from its stored parameters.

Training runs in float32 from the seed (parameter initialisation, shuffling, attack starts); the
evaluation runs in float64 on the stored parameters. eps is in the data's input units ([0, 1]
pixels for images, where every ball is clipped to [0, 1]; standardised features otherwise).
"""
from __future__ import annotations

import csv
import json
import math
import os
import statistics
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from robustness import training as rt

from .data import eps_unit
from .database import COMPLETED, FAILED, INTERRUPTED, Database, ScoreKind
from .problem import Problem

OBJECTIVE_BYTES = 1024  # the /networks/objective column holds this many bytes of JSON


@dataclass(frozen=True)
class Job:
    """One network to train: ``objective`` (a name of :data:`robustness.training.OBJECTIVES`) with
    ``params``, ``train`` settings (their seed seeds everything) and what to ``evaluate``."""

    objective: str = "plain"
    params: dict = field(default_factory=dict)
    train: rt.TrainConfig = rt.TrainConfig()
    evaluate: rt.EvalConfig = rt.EvalConfig()

    def __post_init__(self) -> None:
        rt.make_objective(self.objective, **self.params)  # refuses unknown names and parameters

    def describe(self) -> dict:
        """The JSON stored with the network: objective, its parameters (defaults filled in) and the
        training settings."""
        obj = rt.make_objective(self.objective, **self.params)
        return {"objective": self.objective, "params": obj.params(), "train": self.train.to_dict()}


@dataclass
class Trained:
    """A trained network: ``coords`` (P,) float64 in the problem's layout, its ``evaluation``,
    training ``history`` (per epoch) and ``seconds`` (wall time of the training), the network id
    in the database (None until stored)."""

    job: Job
    coords: np.ndarray
    evaluation: rt.Evaluation
    history: list[dict]
    seconds: float
    id: int | None = None


def module_of(problem: Problem, coords: np.ndarray | None = None) -> nn.Sequential:
    """The problem's network as an ``nn.Sequential`` on inputs (N, *input_shape) (float64), with
    ``coords`` (P,) or zeros."""
    model = problem.model
    w = np.zeros(model.n_params) if coords is None else coords
    module = model.to_module(w)
    return module[1:] if isinstance(module[0], nn.Unflatten) else module


@dataclass(frozen=True)
class Points:
    """A problem's data as training and evaluation take it: inputs (N, *input_shape) and labels
    (N,) of the training and held-out splits (``test_split``: 'test', or 'train' where the problem
    holds none out), the input ``domain`` ((0, 1) for pixels, else None) and eps's ``unit``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    test_split: str
    domain: tuple[float, float] | None
    unit: str

    @classmethod
    def of(cls, problem: Problem) -> "Points":
        ds = problem.dataset()
        shape = problem.model.input_shape

        def inputs(X: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(X).reshape(len(X), *shape)

        test = len(ds.y_test) > 0
        X_test, y_test = (ds.X_test, ds.y_test) if test else (ds.X_train, ds.y_train)
        return cls(inputs(ds.X_train), torch.as_tensor(ds.y_train), inputs(X_test), torch.as_tensor(y_test),
                   "test" if test else "train", (0.0, 1.0) if ds.scaling == "unit" else None, eps_unit(ds.scaling))


def train_network(problem: Problem, job: Job, points: Points | None = None, progress=None) -> Trained:
    """Train one network of ``problem``'s model on its training split and evaluate it on its test
    split (the training split where there is none); ``points``: the problem's data, if loaded
    already. ``progress(epoch, epochs, loss)`` after every epoch."""
    points = Points.of(problem) if points is None else points
    job = replace(job, train=replace(job.train, domain=points.domain))
    module = rt.reset_parameters(module_of(problem), job.train.seed).float()
    result = rt.train(module, points.x_train, points.y_train, rt.make_objective(job.objective, **job.params),
                      job.train, progress)
    coords = problem.model.from_module(module.cpu())
    ev = evaluate_coords(problem, coords, job.evaluate, points, job.train.device)
    return Trained(job, coords, ev, result.history, result.seconds)


def evaluate_coords(problem: Problem, coords: np.ndarray, config: rt.EvalConfig, points: Points | None = None,
                    device: str = "cpu") -> rt.Evaluation:
    """The evaluation of the network ``coords`` (P,) on the problem's held-out split."""
    p = Points.of(problem) if points is None else points
    return rt.evaluate(module_of(problem, coords), p.x_test, p.y_test, config, domain=p.domain, device=device)


def evaluate_stored(db: Database, id_: int, config: rt.EvalConfig | None = None) -> rt.Evaluation:
    """Re-evaluate network ``id_`` of ``db`` from its stored parameters (``config``: as it was
    evaluated when trained, by default)."""
    nets = db.networks()
    if config is None:
        config = _eval_config(nets.objective[id_].get("evaluate", {}))
    return evaluate_coords(db.problem, nets.coords[id_], config)


def _eval_config(d: dict) -> rt.EvalConfig:
    return rt.EvalConfig(**{k: tuple(v) if k == "eps" else v for k, v in d.items()})


def store(db: Database, trained: Trained, run: int, points: Points) -> int:
    """Write a trained network and its evaluation (scores of table 'networks') to ``db`` (open for
    appending, within run ``run``); returns the network's id."""
    desc = trained.job.describe()
    ev = trained.job.evaluate
    desc["evaluate"] = {"eps": list(ev.eps), "pgd_steps": ev.pgd_steps, "pgd_restarts": ev.pgd_restarts,
                        "seed": ev.seed, "crown": ev.crown, "deepfool": ev.deepfool}
    text = json.dumps(desc, sort_keys=True)
    if len(text.encode()) > OBJECTIVE_BYTES:
        raise ValueError(f"the objective's description takes {len(text.encode())} bytes; the database holds "
                         f"{OBJECTIVE_BYTES}: use fewer eval eps or shorter parameters")
    nid = db.add_network(trained.coords, text, trained.job.train.seed, run)
    for kind, value in score_rows(trained.evaluation, trained.job.evaluate, points):
        db.write_scores(kind, np.array([nid]), np.array([value]), run, table="networks")
    db.write_scores(ScoreKind("train_seconds", split="train"), np.array([nid]), np.array([trained.seconds]), run,
                    table="networks")
    trained.id = nid
    return nid


def score_rows(ev: rt.Evaluation, config: rt.EvalConfig, points: Points) -> list[tuple[ScoreKind, float]]:
    """The evaluation as (score kind, value) pairs."""
    unit, split = points.unit, points.test_split
    pgd = json.dumps({"restarts": config.pgd_restarts, "steps": config.pgd_steps}, sort_keys=True)
    rows = []
    for quantity, eps, method, value in ev.scalars():
        if math.isnan(value) and quantity == "rho_adv":
            continue
        space = "logits" if quantity == "sensitivity" or quantity.startswith("log_width") else ""
        rows.append((ScoreKind(quantity, eps, "" if math.isnan(eps) else unit, method, space, split,
                               "mean_log" if space else "", ev.n_points,
                               pgd if quantity == "pgd_accuracy" else "{}"), float(value)))
    return rows


def run_jobs(path: str | os.PathLike, problem: Problem, jobs: list[Job], command: str = "",
             progress: bool = True) -> list[Trained]:
    """Train, evaluate and store every job in the database ``path`` (created for ``problem`` if new;
    an existing one must hold the same data and model), in one run of kind 'train'."""
    path = os.fspath(path)
    if os.path.exists(path):
        with Database(path) as db:
            _check_same(db.problem, problem, path)
        problem = None
    out: list[Trained] = []
    with Database(path, problem=problem, mode="a") as db:
        problem = db.problem
        points = Points.of(problem)
        rid = db.start_run(command, jobs[0].train.seed, {"jobs": [j.describe() for j in jobs]}, {}, kind="train",
                           counters=("networks", "train_seconds"))
        status = FAILED
        try:
            for i, job in enumerate(jobs):
                bar = _bar(f"{job.objective} seed {job.train.seed} ({i + 1}/{len(jobs)})", job.train.epochs, progress)
                try:
                    trained = train_network(problem, job, points, None if bar is None else _advance(bar))
                finally:
                    if bar is not None:
                        bar.close()
                store(db, trained, rid, points)
                out.append(trained)
                db.save_run_state(rid, {"networks": len(out), "train_seconds": sum(t.seconds for t in out)}, {})
                db.flush()
            status = COMPLETED
        except KeyboardInterrupt:
            status = INTERRUPTED
            raise
        finally:
            db.end_run(rid, status)
    return out


def _check_same(stored: Problem, asked: Problem, path: str) -> None:
    """Refuse training networks of another model or data into a database."""
    for what, a, b in (("model", stored.model.to_dict(), asked.model.to_dict()),
                       ("data", {**stored.data.to_dict(), "path": None}, {**asked.data.to_dict(), "path": None})):
        if a != b:
            raise ValueError(f"{path} holds another {what} ({json.dumps(a)}); use a new database file")


def _bar(desc: str, total: int, show: bool):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="epoch", leave=False)


def _advance(bar):
    def progress(epoch: int, epochs: int, loss: float) -> None:
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.update(1)
    return progress


# -- comparison ------------------------------------------------------------------------------------
def compare_jobs(base: Job, objectives: list[str], seeds: list[int], params: dict[str, dict]) -> list[Job]:
    """Every objective x every seed, with ``params`` per objective name and ``base``'s settings."""
    if len(set(seeds)) < 1 or not objectives:
        raise ValueError("a comparison needs at least one objective and one seed")
    return [replace(base, objective=name, params=dict(params.get(name, {})), train=replace(base.train, seed=s))
            for name in objectives for s in seeds]


def result_row(t: Trained) -> dict:
    """One flat row of results.csv: method, seed, time, clean accuracy, and per eps each quantity."""
    ev = t.evaluation
    row = {"method": t.job.objective, "seed": t.job.train.seed, "network": t.id, "train_seconds": t.seconds,
           "epoch_seconds": statistics.fmean(h["seconds"] for h in t.history),
           "clean_accuracy": ev.clean_accuracy, "rho_adv": ev.rho_adv}
    for eps, d in ev.per_eps.items():
        for key, value in d.items():
            if key != "log_widths_ibp":
                row[f"{key}@{eps:g}"] = value
        widths = d["log_widths_ibp"]
        row[f"log_width_min@{eps:g}"], row[f"log_width_max@{eps:g}"] = min(widths), max(widths)
    return row


def write_comparison(out: str | os.PathLike, trained: list[Trained]) -> list[str]:
    """results.csv, results.json, results.md (mean ± std per method) and the figures in ``out``;
    returns the file names written."""
    os.makedirs(out, exist_ok=True)
    rows = [result_row(t) for t in trained]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(os.path.join(out, "results.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, columns)
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump([{**t.job.describe(), "network": t.id, "seconds": t.seconds, "history": t.history,
                    "evaluation": t.evaluation.to_dict()} for t in trained], fh, indent=1)
    with open(os.path.join(out, "results.md"), "w") as fh:
        fh.write(markdown_table(rows))
    from . import training_plots

    return ["results.csv", "results.json", "results.md", *training_plots.write(out, rows)]


def summarise(rows: list[dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Per method (in order of appearance) and column: (mean, std (0 for one value), count) over seeds."""
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        cols = {}
        for key in mine[0]:
            if key in ("method", "seed", "network"):
                continue
            values = [float(r[key]) for r in mine if r.get(key) is not None and not math.isnan(float(r[key]))]
            if values:
                cols[key] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0,
                             len(values))
        out[method] = cols
    return out


def markdown_table(rows: list[dict]) -> str:
    """Mean ± std over seeds per method: time, clean, PGD, verified accuracy (percent) and the mean
    IBP log-volume (nats), at every eps evaluated."""
    s = summarise(rows)
    eps = sorted({k.split("@")[1] for r in rows for k in r if k.startswith("pgd_accuracy@")}, key=float)
    cols = [("train_seconds", "train s", 1, 1), ("epoch_seconds", "s/epoch", 1, 3), ("clean_accuracy", "clean %", 100, 1)]
    cols += [(f"pgd_accuracy@{e}", f"PGD % ε={e}", 100, 1) for e in eps]
    cols += [(f"verified_accuracy@{e}", f"verified % ε={e}", 100, 1) for e in eps]
    cols += [(f"sensitivity_ibp@{e}", f"IBP log-vol ε={e}", 1, 2) for e in eps]
    cols += [("rho_adv", "ρ_adv", 1, 3)]
    seeds = {m: max(c[2] for c in v.values()) for m, v in s.items()}
    lines = ["| method (seeds) | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for method, v in s.items():
        cells = [f"{v[k][0] * f:.{d}f} ± {v[k][1] * f:.{d}f}" if k in v else "-" for k, _, f, d in cols]
        lines.append(f"| {method} ({seeds[method]}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
