"""Disconnectivity graphs (Becker & Karplus 1997): an energy landscape drawn as a tree.

At each of a series of energy levels L_0 < L_1 < ... < L_{K-1} the minima lying strictly below the
level fall into superbasins: the sets of minima that transition states strictly below the level join
(the connected components of the graph whose nodes are those minima and whose edges those saddles).
Each basin at level k holds basins of level k-1, and each minimum hangs from the basin of the first
level above its energy. Drawn, every minimum is a leaf at its energy and every basin a node at its
level; minima that no chain of saddles below the top level joins to each other are separate trees.

Plain data in (networkx style): ``E_min (N,)`` energies of the minima, ``pairs (M, 2)`` the indices
into ``E_min`` of the two minima each transition state joins, ``E_ts (M,)`` the saddles' energies,
all in nats. A saddle joins its minima from its own energy or its higher minimum's, whichever is
higher (rounding can put a saddle level with a minimum). Minimum ids in the results are indices into
``E_min``. Only :func:`draw` uses matplotlib (no global backend: a ``Figure`` on its own Agg canvas),
and it writes nothing but the figure it is asked for.
"""
from __future__ import annotations

import os
from collections import deque
from typing import TYPE_CHECKING, Callable, Hashable, Iterator, Sequence

import networkx as nx
import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure

FORMATS = ("png", "svg", "pdf")
PNG_DPI = 150
NAN_GREY = "0.6"
ORDERS = ("size", "energy")


def basins(E_min: ArrayLike, pairs: ArrayLike, E_ts: ArrayLike, energy: float) -> list[set[int]]:
    """The superbasins at ``energy`` (nats): sets of the minima strictly below it that saddles strictly
    below it join, ordered by their lowest minimum's energy (the global minimum's first)."""
    e, p, t = _check(E_min, pairs, E_ts)
    if not np.isfinite(energy):
        raise ValueError(f"energy must be finite, got {energy!r}")
    everything = np.ones(len(e), bool)
    groups = next(_superbasins(e, everything, *_saddles(e, p, t, everything), [float(energy)]))
    return [set(members) for _, members in groups]


def tree(E_min: ArrayLike, pairs: ArrayLike, E_ts: ArrayLike, levels: int | ArrayLike = 20,
         ceiling: float | None = None, trim_above: float | None = None) -> nx.DiGraph:
    """The disconnectivity tree as a ``networkx.DiGraph``, edges from each basin to what it holds.

    Nodes: each minimum ``i`` (int) and each basin ``(k, i)``, at level k with lowest minimum i.
    Attributes of every node: ``kind`` ('minimum' or 'basin'), ``level`` (k; None for a minimum),
    ``energy`` (the level's, or the minimum's; nats), ``minima`` (frozenset of ids), ``size`` (how many)
    and ``lowest`` (id of its lowest minimum). Graph attributes: ``levels`` (K,), ``roots`` (the basins
    of the top level, one per separate tree, lowest first) and ``global_minimum`` (id).

    ``levels``: a count K >= 2, spaced evenly above the lowest minimum up to ``ceiling`` (default: one
    spacing above the highest saddle or minimum), or K >= 2 increasing energies (then no ``ceiling``).
    Minima above ``trim_above`` are left out with their saddles, and so are minima at or above the
    top level (they belong to no basin).
    """
    e, p, t = _check(E_min, pairs, E_ts)
    kept = _kept(e, trim_above)
    sp, se = _saddles(e, p, t, kept)
    lv = _levels(e[kept], se, levels, ceiling)
    kept &= e < lv[-1]
    if not kept.any():
        raise ValueError(f"no minimum lies below the top level {lv[-1]:g}")
    ids = np.flatnonzero(kept).tolist()
    g = nx.DiGraph(levels=lv)
    for i in ids:
        g.add_node(i, kind="minimum", level=None, energy=float(e[i]), minima=frozenset({i}), size=1, lowest=i)
    holder: dict[int, Hashable] = {i: i for i in ids}
    for k, groups in enumerate(_superbasins(e, kept, sp, se, lv)):
        tops = [_add_basin(g, k, float(lv[k]), members, lowest, holder) for lowest, members in groups]
    g.graph["roots"] = tops
    g.graph["global_minimum"] = g.nodes[tops[0]]["lowest"]
    return g


def layout(tree: nx.DiGraph, order: str = "size", centre_global: bool = True) -> dict[Hashable, float]:
    """x position of every node of ``tree`` (from :func:`tree`). Each minimum has a slot of width 1
    (the slots cover [0, N)); each basin stands over the middle of its minima's slots, which are
    contiguous. Siblings are ranked by ``order``: 'size' (most minima first, ties by energy) or
    'energy' (lowest minimum first); with ``centre_global`` the one holding the global minimum comes
    first. The first goes in the middle, the next alternately left and right of it. Separate trees
    are placed the same way."""
    rank = _ranking(tree, order)
    centre = tree.graph["global_minimum"] if centre_global else None
    x: dict[Hashable, float] = {}
    stack = _slots(tree, _arrange(tree, tree.graph["roots"], rank, centre), 0.0)
    while stack:
        node, left = stack.pop()
        x[node] = left + tree.nodes[node]["size"] / 2
        stack += _slots(tree, _arrange(tree, list(tree.successors(node)), rank, centre), left)
    return x


def draw(E_min: ArrayLike, pairs: ArrayLike, E_ts: ArrayLike, path: str | os.PathLike | None = None,
         ax: Axes | None = None, values: ArrayLike | None = None, value_label: str = "",
         cmap: str | Colormap = "viridis", levels: int | ArrayLike = 20, ceiling: float | None = None,
         trim_above: float | None = None, order: str = "size", label_lowest: int = 5,
         title: str = "") -> Figure:
    """Draw the disconnectivity graph and return its matplotlib ``Figure``.

    ``levels``, ``ceiling``, ``trim_above``: as for :func:`tree`; ``order``: as for :func:`layout`.
    ``path``: a file ending in .png (150 dpi), .svg or .pdf to write, or None. ``ax``: Axes to draw
    into (default: a new 8x6-inch figure). ``values (N,)``: a quantity per minimum to colour the
    minima by (NaN: none, drawn grey), shown on a colour bar labelled ``value_label`` with the
    colormap ``cmap`` (a name or a Colormap); without it minima are black. The ``label_lowest``
    lowest minima are labelled with their ids. Energies are in nats; text is plain (no LaTeX).
    """
    fmt = _format(path)
    g = tree(E_min, pairs, E_ts, levels, ceiling, trim_above)
    v = _values(values, np.shape(E_min)[0])
    if not (isinstance(label_lowest, (int, np.integer)) and label_lowest >= 0):
        raise ValueError(f"label_lowest must be an integer >= 0, got {label_lowest!r}")
    colormap = _colormap(cmap)
    pts = _points(g, layout(g, order))
    import matplotlib
    with matplotlib.rc_context({"text.usetex": False}):
        fig, ax = _axes(ax)
        _draw_lines(ax, g, pts)
        nan_handles = _draw_minima(ax, g, pts, v, value_label, colormap)
        _label_lowest(ax, g, pts, label_lowest)
        _legend(ax, nan_handles, len(g.graph["roots"]))
        _style(ax, g, pts, title)
        if path is not None:
            fig.savefig(path, format=fmt, dpi=PNG_DPI)
    return fig


# ---------------------------------------------------------------------------------------- checks

def _check(E_min: ArrayLike, pairs: ArrayLike, E_ts: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The inputs as float64 ``(N,)``, intp ``(M, 2)`` and float64 ``(M,)``, or a one-line ValueError."""
    e = np.asarray(E_min, dtype=float)
    if e.ndim != 1 or e.size == 0:
        raise ValueError(f"E_min must be a non-empty 1-D array, got shape {e.shape}")
    if not np.isfinite(e).all():
        raise ValueError("E_min holds NaN or infinite energies")
    p = np.asarray(pairs)
    p = np.zeros((0, 2), np.intp) if p.size == 0 else p
    if p.ndim != 2 or p.shape[1] != 2 or not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"pairs must be integer indices of shape (M, 2), got {p.dtype} of shape {p.shape}")
    t = np.asarray(E_ts, dtype=float)
    if t.shape != (len(p),):
        raise ValueError(f"E_ts must have shape ({len(p)},) to match pairs, got {t.shape}")
    if not np.isfinite(t).all():
        raise ValueError("E_ts holds NaN or infinite energies")
    if p.size and (p.min() < 0 or p.max() >= len(e)):
        raise ValueError(f"pairs must index minima 0..{len(e) - 1}, got indices {p.min()}..{p.max()}")
    return e, p.astype(np.intp), t


def _kept(e: np.ndarray, trim_above: float | None) -> np.ndarray:
    """Mask (N,) of the minima at or below ``trim_above`` (all of them for None)."""
    if trim_above is None:
        return np.ones(len(e), bool)
    if not np.isfinite(trim_above):
        raise ValueError(f"trim_above must be finite, got {trim_above!r}")
    kept = e <= trim_above
    if not kept.any():
        raise ValueError(f"no minimum lies at or below trim_above={trim_above:g} (lowest {e.min():g})")
    return kept


def _levels(e: np.ndarray, saddle_energies: np.ndarray, levels: int | ArrayLike, ceiling: float | None) -> np.ndarray:
    """The levels (K,) for the kept minima's energies ``e`` and their saddles' (joining) energies."""
    if isinstance(levels, (int, np.integer)) and not isinstance(levels, bool):
        top = max(e.max(), saddle_energies.max(initial=-np.inf))
        return _level_count(e.min(), top, int(levels), ceiling)
    if ceiling is not None:
        raise ValueError("ceiling goes with a count of levels, not with explicit level energies")
    lv = np.asarray(levels, dtype=float)
    if lv.ndim != 1 or lv.size < 2 or not np.isfinite(lv).all() or (np.diff(lv) <= 0).any():
        raise ValueError("levels must be an integer >= 2 or at least 2 finite, strictly increasing energies")
    return lv


def _level_count(lowest: float, top: float, n: int, ceiling: float | None) -> np.ndarray:
    """``n`` levels spaced evenly above ``lowest`` up to ``ceiling``, by default one spacing above
    ``top`` (1 nat above it when ``top`` is ``lowest``)."""
    if n < 2:
        raise ValueError(f"levels must be >= 2, got {n}")
    if ceiling is None:
        ceiling = top + ((top - lowest) / (n - 1) if top > lowest else 1.0)
    if not (np.isfinite(ceiling) and ceiling > lowest):
        raise ValueError(f"ceiling must be finite and above the lowest minimum {lowest:g}, got {ceiling!r}")
    return np.linspace(lowest, ceiling, n + 1)[1:]


def _values(values: ArrayLike | None, n: int) -> np.ndarray | None:
    """``values`` as float64 (n,), NaN allowed, or None."""
    if values is None:
        return None
    v = np.asarray(values, dtype=float)
    if v.shape != (n,):
        raise ValueError(f"values must have shape ({n},), one per minimum, got {v.shape}")
    if np.isinf(v).any():
        raise ValueError("values must be finite or NaN (NaN: no value)")
    return v


def _format(path: str | os.PathLike | None) -> str | None:
    """The file format named by ``path``'s suffix: 'png', 'svg' or 'pdf' (None for no path)."""
    if path is None:
        return None
    fmt = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"path must end in .png, .svg or .pdf, got {os.fspath(path)!r}")
    return fmt


def _colormap(cmap: str | Colormap) -> Colormap:
    """The matplotlib Colormap named ``cmap`` (or ``cmap`` itself when it is one)."""
    import matplotlib
    if isinstance(cmap, matplotlib.colors.Colormap):
        return cmap
    if cmap not in matplotlib.colormaps:
        raise ValueError(f"cmap must be a matplotlib colormap or its name, got {cmap!r}")
    return matplotlib.colormaps[cmap]


# ----------------------------------------------------------------------------------------- trees

def _saddles(e: np.ndarray, pairs: np.ndarray, E_ts: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The saddles between kept minima, ``(pairs (M', 2), joining energies (M',))`` in ascending order
    of the energy from which each joins its minima: its own or its higher minimum's."""
    inside = kept[pairs].all(axis=1)
    joins = np.maximum(E_ts, e[pairs].max(axis=1, initial=-np.inf))[inside]
    order = np.argsort(joins, kind="stable")
    return pairs[inside][order], joins[order]


def _superbasins(e: np.ndarray, kept: np.ndarray, pairs: np.ndarray, joins: np.ndarray,
                 energies: Sequence[float]) -> Iterator[list[tuple[int, frozenset[int]]]]:
    """For each of ``energies`` (ascending), the superbasins of the kept minima below it joined by the
    saddles ``pairs`` (sorted by ``joins``) below it, as ``(lowest minimum, members)`` in ascending
    order of the lowest minimum's energy (ties: smaller id first). One graph grows level by level."""
    ids = np.flatnonzero(kept)
    ids = ids[np.argsort(e[ids], kind="stable")]
    rank = np.empty(len(e), np.intp)
    rank[ids] = np.arange(len(ids))
    rank_of = rank.tolist().__getitem__
    graph = nx.Graph()
    n = m = 0
    for energy in energies:
        n_new, m_new = np.searchsorted(e[ids], energy), np.searchsorted(joins, energy)
        graph.add_nodes_from(ids[n:n_new].tolist())
        graph.add_edges_from(pairs[m:m_new].tolist())
        n, m = max(n, n_new), max(m, m_new)
        groups = [(min(c, key=rank_of), frozenset(c)) for c in nx.connected_components(graph)]
        yield sorted(groups, key=lambda group: rank_of(group[0]))


def _add_basin(g: nx.DiGraph, k: int, energy: float, members: frozenset[int], lowest: int,
               holder: dict[int, Hashable]) -> tuple[int, int]:
    """Add basin ``(k, lowest)`` at ``energy`` with edges to the nodes that held its ``members`` at the
    level below (``holder``, updated to the new basin); return it."""
    node = (k, lowest)
    g.add_node(node, kind="basin", level=k, energy=energy, minima=members, size=len(members), lowest=lowest)
    g.add_edges_from((node, child) for child in dict.fromkeys(holder[i] for i in members))
    holder.update(dict.fromkeys(members, node))
    return node


# ---------------------------------------------------------------------------------------- layout

def _ranking(tree: nx.DiGraph, order: str) -> Callable[[Hashable], tuple]:
    """Sort key of a node for ``order`` ('size' or 'energy')."""
    def energy(n: Hashable) -> tuple[float, int]:
        low = tree.nodes[n]["lowest"]
        return tree.nodes[low]["energy"], low

    if order == "size":
        return lambda n: (-tree.nodes[n]["size"], *energy(n))
    if order == "energy":
        return energy
    raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")


def _arrange(tree: nx.DiGraph, nodes: list, rank: Callable[[Hashable], tuple], centre: int | None) -> list:
    """``nodes`` left to right: ranked (the one holding minimum ``centre`` first), the first in the
    middle, the rest alternately left and right of it."""
    ranked = sorted(nodes, key=lambda n: (centre not in tree.nodes[n]["minima"], rank(n)))
    row: deque = deque()
    for i, node in enumerate(ranked):
        row.appendleft(node) if i % 2 else row.append(node)
    return list(row)


def _slots(tree: nx.DiGraph, nodes: list, left: float) -> list[tuple[Hashable, float]]:
    """``(node, left edge)`` for ``nodes`` placed side by side from ``left``, each as wide as its size."""
    placed = []
    for node in nodes:
        placed.append((node, left))
        left += tree.nodes[node]["size"]
    return placed


# --------------------------------------------------------------------------------------- drawing

def _drop(levels: np.ndarray, k: int) -> float:
    """Height (nats) over which lines slant into a basin of level k: the spacing below the level."""
    return float(levels[k] - levels[k - 1] if k > 0 else levels[1] - levels[0])


def _points(g: nx.DiGraph, x: dict[Hashable, float]) -> dict[Hashable, tuple[float, float]]:
    """Where each node is drawn, ``(x, energy)``: basins over their slots at their level; a minimum
    on the slanted line from its slot up to its basin, so that the line keeps its slope."""
    pts = {n: (x[n], d["energy"]) for n, d in g.nodes(data=True)}
    for n, d in g.nodes(data=True):
        if d["kind"] == "minimum":
            parent = next(iter(g.predecessors(n)))
            xp, yp = pts[parent]
            drop = _drop(g.graph["levels"], g.nodes[parent]["level"])
            pts[n] = (xp + (x[n] - xp) * min(yp - d["energy"], drop) / drop, d["energy"])
    return pts


def _segments(g: nx.DiGraph, pts: dict[Hashable, tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """The lines as polylines: from each node up (vertically) to one spacing below its basin's level,
    then slanted to the basin; and a short stub above each tree's top."""
    lv = g.graph["levels"]
    lines = []
    for parent, child in g.edges:
        (xc, yc), (xp, yp) = pts[child], pts[parent]
        bend = max(yc, yp - _drop(lv, g.nodes[parent]["level"]))
        lines.append([(xc, yc), (xc, bend), (xp, yp)])
    for root in g.graph["roots"]:
        xr, yr = pts[root]
        lines.append([(xr, yr), (xr, yr + _drop(lv, len(lv) - 1))])
    return lines


def _axes(ax: Axes | None) -> tuple[Figure, Axes]:
    """``(figure, axes)``: those of ``ax``, or a new figure on its own Agg canvas."""
    if ax is not None:
        return ax.figure, ax
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 6), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _marker_size(n: int) -> float:
    """Scatter marker area (points^2) for ``n`` minima: smaller as they crowd."""
    return float(np.clip(2400 / n, 3, 36))


def _draw_lines(ax: Axes, g: nx.DiGraph, pts: dict) -> None:
    """Draw the tree's lines, thinner as minima crowd."""
    from matplotlib.collections import LineCollection
    n_minima = sum(g.nodes[root]["size"] for root in g.graph["roots"])
    width = float(np.clip(300 / n_minima, 0.2, 1.0))
    ax.add_collection(LineCollection(_segments(g, pts), colors="black", linewidths=width, zorder=1))


def _draw_minima(ax: Axes, g: nx.DiGraph, pts: dict, values: np.ndarray | None, value_label: str,
                 cmap: Colormap) -> list:
    """Scatter the minima, coloured by ``values`` with a colour bar (NaN grey); return legend handles
    for the grey ones (none when all have values)."""
    from matplotlib.colors import Normalize
    ids = [n for n, d in g.nodes(data=True) if d["kind"] == "minimum"]
    xy = np.array([pts[i] for i in ids])
    size = _marker_size(len(ids))
    if values is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=size, c="black", zorder=3, linewidths=0)
        return []
    v = values[ids]
    missing = np.isnan(v)
    if not missing.all():
        lo, hi = v[~missing].min(), v[~missing].max()
        norm = Normalize(lo - 0.5, hi + 0.5) if lo == hi else Normalize(lo, hi)
        sc = ax.scatter(xy[~missing, 0], xy[~missing, 1], s=size, c=v[~missing], cmap=cmap, norm=norm,
                        zorder=3, edgecolors="black", linewidths=0.3 if len(ids) < 400 else 0)
        ax.figure.colorbar(sc, ax=ax, label=value_label, shrink=0.8)
    if not missing.any():
        return []
    k = int(missing.sum())
    grey = ax.scatter(xy[missing, 0], xy[missing, 1], s=size, c=NAN_GREY, zorder=2, linewidths=0,
                      label=f"value NaN ({k} minim{'um' if k == 1 else 'a'})")
    return [grey]


def _label_lowest(ax: Axes, g: nx.DiGraph, pts: dict, count: int) -> None:
    """Write the ids of the ``count`` lowest minima beside them."""
    ids = sorted((n for n, d in g.nodes(data=True) if d["kind"] == "minimum"),
                 key=lambda i: (g.nodes[i]["energy"], i))
    for i in ids[:count]:
        ax.annotate(str(i), pts[i], xytext=(4, -2), textcoords="offset points", fontsize=8, va="top")


def _legend(ax: Axes, handles: list, n_trees: int) -> None:
    """Legend of the grey (NaN) minima and, when minima are not joined to the global minimum's tree,
    of how many trees there are."""
    from matplotlib.lines import Line2D
    if n_trees > 1:
        text = f"minima not connected to the global minimum: drawn as {n_trees} separate trees"
        handles = handles + [Line2D([], [], linestyle="none", label=text)]
    if handles:
        ax.legend(handles=handles, loc="upper left", fontsize="small", handlelength=1, frameon=False)


def _style(ax: Axes, g: nx.DiGraph, pts: dict, title: str) -> None:
    """Energy axis in nats, no x axis, limits that hold every line and label."""
    lv = g.graph["levels"]
    xs = np.array([p[0] for p in pts.values()])
    bottom = min(p[1] for p in pts.values())
    top = lv[-1] + _drop(lv, len(lv) - 1)
    ax.set_xlim(xs.min() - 1, xs.max() + 1)
    ax.set_ylim(bottom - 0.04 * (top - bottom), top + 0.12 * (top - bottom))
    ax.set_ylabel("energy (nats)")
    ax.xaxis.set_visible(False)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title)
