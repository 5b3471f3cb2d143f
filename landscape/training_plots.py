"""Figures of a training comparison (``landscape train --compare``), from the rows of results.csv.

* robust_accuracy.png: PGD (solid) and verified (dashed) accuracy against eps, mean ± std over
  seeds, one colour per method;
* accuracy_vs_sensitivity.png: clean accuracy against the mean IBP log-volume at the largest eps,
  one point per network;
* training_time.png: training time per method (mean ± std over seeds).

Drawn with ``matplotlib.figure.Figure`` on the Agg canvas: no process-wide backend is set.
"""
from __future__ import annotations

import os

import numpy as np


def write(out: str, rows: list[dict]) -> list[str]:
    """The three figures in ``out``; returns their file names."""
    names = []
    for name, draw in (("robust_accuracy.png", robust_accuracy), ("accuracy_vs_sensitivity.png", accuracy_sensitivity),
                       ("training_time.png", training_time)):
        fig = draw(rows)
        fig.savefig(os.path.join(out, name), dpi=120)
        names.append(name)
    return names


def _methods(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in rows))


def _eps(rows: list[dict], prefix: str) -> list[str]:
    return sorted({k.split("@")[1] for r in rows for k in r if k.startswith(prefix + "@")}, key=float)


def _column(rows: list[dict], method: str, key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in rows if r["method"] == method and r.get(key) not in (None, "")])


def _figure(width: float = 6.4, height: float = 4.2):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def robust_accuracy(rows: list[dict]):
    fig = _figure()
    ax = fig.subplots()
    eps = _eps(rows, "pgd_accuracy")
    x = [0.0, *map(float, eps)]
    for i, m in enumerate(_methods(rows)):
        colour = f"C{i % 10}"
        for prefix, style in (("pgd_accuracy", "-"), ("verified_accuracy", "--")):
            stats = [_column(rows, m, "clean_accuracy")] + [_column(rows, m, f"{prefix}@{e}") for e in eps]
            if any(len(s) == 0 for s in stats):
                continue
            ax.errorbar(x, [s.mean() for s in stats], [s.std() for s in stats], ls=style, color=colour, marker="o",
                        ms=3, capsize=2, label=m if prefix == "pgd_accuracy" else None)
    ax.set(xlabel="eps (l-inf, input units)", ylabel="accuracy", ylim=(0, 1),
           title="PGD (solid) and verified (dashed) accuracy")
    ax.legend(fontsize=7)
    return fig


def accuracy_sensitivity(rows: list[dict]):
    fig = _figure()
    ax = fig.subplots()
    eps = _eps(rows, "sensitivity_ibp")[-1]
    for i, m in enumerate(_methods(rows)):
        ax.scatter(_column(rows, m, f"sensitivity_ibp@{eps}"), _column(rows, m, "clean_accuracy"), color=f"C{i % 10}",
                   label=m, s=18)
    ax.set(xlabel=f"mean IBP log-volume of the logits at eps {eps} (nats)", ylabel="clean accuracy",
           title="clean accuracy against sensitivity")
    ax.legend(fontsize=7)
    return fig


def training_time(rows: list[dict]):
    fig = _figure()
    ax = fig.subplots()
    methods = _methods(rows)
    t = [_column(rows, m, "train_seconds") for m in methods]
    ax.bar(range(len(methods)), [v.mean() for v in t], yerr=[v.std() for v in t], capsize=3,
           color=[f"C{i % 10}" for i in range(len(methods))])
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    ax.set(ylabel="training time (s, wall)", title="training time per method")
    return fig
