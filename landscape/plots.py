"""Figures of the energy-robustness study: scatters of one per-minimum quantity against another,
each annotated with Spearman's rho, its bootstrap interval, the p-value and n.

Figures are made with ``matplotlib.figure.Figure`` and the Agg canvas directly, so drawing sets
no process-wide backend; ``save`` writes PNG, SVG or PDF by the path's extension.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .analysis import Correlation

FORMATS = ("png", "svg", "pdf")


def scatter(table, pairs: list[Correlation], title: str = "", columns: int = 3):
    """One panel per correlation in ``pairs``: its y column against its x column of ``table`` (a
    :meth:`Database.table` DataFrame), the lowest minimum marked. Returns the Figure."""
    from matplotlib.figure import Figure

    if not pairs:
        raise ValueError("nothing to plot: no correlation was computed")
    rows = math.ceil(len(pairs) / columns)
    cols = min(columns, len(pairs))
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    lowest = int(np.nanargmin(table["energy"].to_numpy()))
    for k, c in enumerate(pairs):
        ax = fig.add_subplot(rows, cols, k + 1)
        x, y = table[c.x].to_numpy(dtype=float), table[c.y].to_numpy(dtype=float)
        ax.scatter(x, y, s=12, alpha=0.7, color="tab:blue", linewidths=0)
        ax.scatter([x[lowest]], [y[lowest]], s=40, marker="*", color="tab:red", label=f"lowest minimum ({lowest})")
        ax.set_xlabel(_axis_label(c.x), fontsize=8)
        ax.set_ylabel(_axis_label(c.y), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(f"ρ = {c.rho:+.2f} [{c.ci[0]:+.2f}, {c.ci[1]:+.2f}], p = {c.p_value:.1e}, n = {c.n}", fontsize=8)
        if k == 0:
            ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _axis_label(column: str) -> str:
    """A column name, wrapped to fit under a panel, with its unit where known."""
    unit = " (nats)" if column == "energy" or column.startswith(("sensitivity", "loss")) else ""
    text = column.replace("_", " ") + unit
    return text if len(text) <= 40 else text[:40] + "\n" + text[40:]


def save(fig, path: str | os.PathLike, dpi: int = 150) -> str:
    """Write ``fig`` to ``path`` (PNG at ``dpi``, SVG or PDF, by extension); returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in FORMATS:
        raise ValueError(f"{path}: unknown figure format {ext!r}; use .png, .svg or .pdf")
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, format=ext)
    return path
