"""``landscape analyze``: the study of a database written to a folder.

    minima.csv            Database.table(): one row per minimum, every stored quantity a column
    summary.json          counts, lowest minima, connectivity, every correlation with its interval,
                          and what was missing
    disconnectivity.png   the disconnectivity graph, leaves coloured by a sensitivity where scored
    energy_vs_sensitivity.png  each sensitivity against the energy, with Spearman's rho
    energy_vs_scores.png  each score against the energy
    scores_vs_sensitivity.png  accuracy, loss and flatness scores against the first sensitivity
    report.html           all of it in one self-contained page (figures inline; opens offline)

What is missing (no scores, no transition states, no test split) is named in the report, in
``summary.json`` and returned, never raised.

``landscape analyze A.h5 --compare B.h5 ... --out DIR`` (:func:`compare`) writes instead the
landscapes side by side (:func:`landscape.analysis.compare`: minima, energy spread, zero weights,
sensitivity, accuracy, flatness):

    comparison.csv, comparison.json   one row per file
    comparison.md                     the same as a Markdown table, with each file's loss
"""
from __future__ import annotations

import base64
import dataclasses
import html
import json
import os
from dataclasses import dataclass, field

import numpy as np

from . import analysis, disconnectivity, plots
from .database import Database


@dataclass
class Report:
    """What :func:`analyze` wrote: the folder, the files by name, and what was missing."""

    out: str
    files: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def analyze(db: str | os.PathLike | Database, out: str | os.PathLike, levels: int = 20, resamples: int = 2000,
            seed: int = 0) -> Report:
    """Write the study of ``db`` (a path or an open Database) to the folder ``out`` (created if
    missing): see the module docstring. ``levels``: energy levels of the disconnectivity graph;
    ``resamples``, ``seed``: of the bootstrap intervals."""
    if not isinstance(db, Database):
        with Database(db) as d:
            return analyze(d, out, levels, resamples, seed)
    out = os.fspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{out} is a file; --out takes a folder")
    if not len(db):
        raise ValueError(f"{db.path} holds no minima yet: run landscape sample first")
    os.makedirs(out, exist_ok=True)
    table, ts = db.table(), db.transition_states(coords=False)
    report = Report(out, missing=_missing(db, table, ts))
    cors, skipped = _correlations(table, _study_columns(db), resamples, seed)
    _write_figures(report, table, ts, cors, levels)
    table.to_csv(_file(report, "minima.csv"))
    summary = {**analysis.summary(db, lowest=10), "correlations": [dataclasses.asdict(c) for c in cors],
               "correlations_skipped": skipped, "missing": report.missing}
    with open(_file(report, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2, default=_plain)
    with open(_file(report, "report.html"), "w") as fh:
        fh.write(_html(db.path, summary, report))
    return report


def _file(report: Report, name: str) -> str:
    report.files[name] = os.path.join(report.out, name)
    return report.files[name]


def _missing(db: Database, table, ts) -> list[str]:
    """One sentence per missing input, saying what it costs and how to get it."""
    missing = []
    if not any(not analysis.own_column(c) for c in table.columns):
        missing.append(f"no scores: no correlation can be computed; run landscape score {db.path} --eps 0.01 0.05 0.1")
    if not len(ts):
        missing.append(f"no transition states: the disconnectivity graph shows each minimum as its own tree; "
                       f"run landscape connect {db.path}")
    if not len(db.problem.dataset().y_test):
        missing.append("no test split (the problem's test fraction is 0): scores are on the training data")
    return missing


def _study_columns(db: Database) -> list[str]:
    """The table columns of the study's quantities: every score kind but error bars and counts of
    zero modes (selected by the kind, not by parsing labels)."""
    return [label for label, (_, kind) in db.scores().items()
            if not kind.quantity.endswith("_stderr") and not kind.quantity.startswith("zero_modes")]


def _correlations(table, columns: list[str], resamples: int, seed: int
                  ) -> tuple[list[analysis.Correlation], dict[str, str]]:
    """Every study quantity against the energy, and every other one against the reference sensitivity."""
    options = dict(resamples=resamples, seed=seed)
    cors, skipped = analysis.correlations(table, ("energy",), columns, **options)
    sens = _reference_sensitivity(columns)
    if sens:
        others = [c for c in columns if not c.startswith("sensitivity")]
        more, skipped2 = analysis.correlations(table, (sens,), others, **options)
        cors, skipped = cors + more, {**skipped, **skipped2}
    return cors, skipped


def _reference_sensitivity(columns: list[str]) -> str | None:
    """The sensitivity that colours the graph and that other scores are set against: IBP before
    CROWN, the mean of logs before the log of the mean, the largest eps (labels sort by eps)."""
    sens = [c for c in columns if c.startswith("sensitivity")]
    return min(sens, key=lambda c: ("_ibp_" not in c, c.endswith("_log_mean"), -sens.index(c)), default=None)


def _write_figures(report: Report, table, ts, cors: list[analysis.Correlation], levels: int) -> None:
    sens = _reference_sensitivity(list(table.columns))
    values = table[sens].to_numpy() if sens else None
    fig = disconnectivity.draw(table["energy"].to_numpy(), ts.minima, ts.energy, values=values,
                               value_label=sens or "", levels=levels,
                               title="disconnectivity graph")
    plots.save(fig, _file(report, "disconnectivity.png"))
    for name, pairs in (("energy_vs_sensitivity.png", [c for c in cors if c.x == "energy"
                                                        and c.y.startswith("sensitivity")]),
                        ("energy_vs_scores.png", [c for c in cors if c.x == "energy"]),
                        ("scores_vs_sensitivity.png", [c for c in cors if c.x != "energy"])):
        if pairs:
            plots.save(plots.scatter(table, pairs), _file(report, name))


def _plain(v):
    """JSON for NumPy numbers and tuples."""
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def _html(path: str, s: dict, report: Report) -> str:
    """The self-contained report page."""
    e = html.escape
    figures = "".join(f'<figure><img alt="{e(name)}" src="data:image/png;base64,{_b64(p)}"><figcaption>{e(name)}'
                      "</figcaption></figure>" for name, p in report.files.items() if p.endswith(".png"))
    missing = "".join(f"<li>{e(m)}</li>" for m in report.missing) or "<li>nothing</li>"
    cors = "".join(f"<tr><td>{e(c['y'])}</td><td>{e(c['x'])}</td><td>{c['n']}</td><td>{c['rho']:+.3f}</td>"
                   f"<td>[{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]</td><td>{c['p_value']:.2e}</td></tr>"
                   for c in s["correlations"])
    lowest = "".join(f"<tr><td>{r['id']}</td><td>{r['energy']:.10f}</td><td>{r['hits']}</td></tr>" for r in s["lowest"])
    conn = s["connectivity"] or {}
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>landscape analysis of {e(os.path.basename(path))}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}
img{{max-width:100%}}figure{{margin:1em 0}}</style></head><body>
<h1>Landscape analysis: {e(path)}</h1>
<p>{s['n_minima']} minima of {s['n_params']} parameters; {s['n_transition_states']} transition states;
{conn.get('connected_to_global_minimum', 0)} minima connected to the global minimum
({conn.get('components', 0)} separate trees).</p>
<h2>Missing inputs</h2><ul>{missing}</ul>
<h2>Correlations (Spearman, bootstrap 95% interval)</h2>
<table><tr><th>quantity</th><th>against</th><th>n</th><th>ρ</th><th>interval</th><th>p</th></tr>{cors}</table>
<h2>Figures</h2>{figures}
<h2>Lowest minima</h2><table><tr><th>id</th><th>energy (nats)</th><th>hits</th></tr>{lowest}</table>
<p>The per-minimum table is <code>minima.csv</code>; everything above as data is <code>summary.json</code>.</p>
</body></html>
"""


def _b64(path: str) -> str:
    with open(path, "rb") as fh:
        return base64.b64encode(fh.read()).decode()


def compare(dbs, out: str | os.PathLike, eps: float | None = None) -> tuple[Report, str]:
    """Write the comparison of the databases ``dbs`` (paths) to the folder ``out`` (see the
    module docstring); returns the report and the Markdown table."""
    import contextlib

    import pandas as pd

    out = os.fspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{out} is a file; --out takes a folder")
    with contextlib.ExitStack() as stack:
        opened = [stack.enter_context(Database(p)) for p in dbs]
        rows = analysis.compare(opened, eps)
    os.makedirs(out, exist_ok=True)
    report = Report(out)
    pd.DataFrame(rows).to_csv(_file(report, "comparison.csv"), index=False)
    with open(_file(report, "comparison.json"), "w") as fh:
        json.dump(rows, fh, indent=2, default=_plain)
    table = analysis.comparison_markdown(rows)
    with open(_file(report, "comparison.md"), "w") as fh:
        fh.write(table)
    return report, table
