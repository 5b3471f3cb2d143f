"""Disconnectivity graphs: the basins of a hand-made landscape at every level, worked out by hand;
layouts that centre the global minimum and keep every basin's minima side by side; figures that are
valid PNG, SVG and PDF files; one-line errors for bad input."""
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from landscape import disconnectivity as dc

# Seven minima, six saddles. Minima 0 and 2 are joined by two saddles (1.2 and 2.2); saddle 4-2 at 2.9
# joins two minima already in one basin; minimum 5 is joined to nothing; 3-6 is a tree of its own.
# Minimum 1, minimum 5 and saddle 1-4 lie exactly at a level: not below it.
E_MIN = [0.0, 1.0, 0.5, 2.0, 1.5, 3.0, 2.5]
PAIRS = [(0, 2), (2, 0), (1, 4), (0, 1), (4, 2), (3, 6)]
E_TS = [1.2, 2.2, 2.0, 2.6, 2.9, 3.4]
LEVELS = [1.0, 2.0, 3.0, 4.0]
# By hand, level by level.
BASINS = [
    [{0}, {2}],                   # below 1.0: minima 0, 2; no saddle
    [{0, 2}, {1}, {4}],           # below 2.0: saddle 0-2 (1.2); 1-4 (2.0) is not below
    [{0, 1, 2, 4}, {3}, {6}],     # below 3.0: 1-4, 0-1 (2.6) join them; 2-0 (2.2) and 4-2 (2.9) add nothing
    [{0, 1, 2, 4}, {3, 6}, {5}],  # below 4.0: 3-6 (3.4); 5 stays alone
]


def _level(g, k):
    return [set(d["minima"]) for n, d in g.nodes(data=True) if d["level"] == k]


def _children(g, node):
    return {(c if g.nodes[c]["kind"] == "minimum" else frozenset(g.nodes[c]["minima"])) for c in g.successors(node)}


def test_basins_at_each_level_are_the_ones_worked_out_by_hand():
    g = dc.tree(E_MIN, PAIRS, E_TS, levels=LEVELS)
    for k, expected in enumerate(BASINS):
        assert dc.basins(E_MIN, PAIRS, E_TS, LEVELS[k]) == expected
        assert sorted(_level(g, k), key=min) == sorted(expected, key=min)
        for members in expected:
            node = (k, min(members, key=lambda i: E_MIN[i]))
            assert g.nodes[node]["energy"] == LEVELS[k] and g.nodes[node]["size"] == len(members)
    assert dc.basins(E_MIN, PAIRS, E_TS, 2.5) == [{0, 2}, {1, 4}, {3}]
    assert [set(g.nodes[r]["minima"]) for r in g.graph["roots"]] == BASINS[-1]
    assert g.graph["global_minimum"] == 0


def test_tree_edges_join_each_basin_to_what_it_holds_one_level_down():
    g = dc.tree(E_MIN, PAIRS, E_TS, levels=LEVELS)
    f = frozenset
    assert _children(g, (0, 0)) == {0} and _children(g, (0, 2)) == {2}
    assert _children(g, (1, 0)) == {f({0}), f({2})}
    assert _children(g, (1, 1)) == {1} and _children(g, (1, 4)) == {4}  # both first lie below 2.0
    assert _children(g, (2, 0)) == {f({0, 2}), f({1}), f({4})}
    assert _children(g, (2, 3)) == {3} and _children(g, (2, 6)) == {6}
    assert _children(g, (3, 0)) == {f({0, 1, 2, 4})}
    assert _children(g, (3, 3)) == {f({3}), f({6})}
    assert _children(g, (3, 5)) == {5}
    leaves = [n for n, d in g.nodes(data=True) if d["kind"] == "minimum"]
    assert sorted(leaves) == list(range(7)) and all(g.in_degree(i) == 1 for i in leaves)
    assert all(g.nodes[i]["energy"] == E_MIN[i] for i in leaves)


def test_a_saddle_below_its_higher_minimum_joins_from_that_minimum():
    # rounding can put a saddle below a minimum it joins: it joins nothing until that minimum is below
    assert dc.basins([0.0, 1.0], [(0, 1)], [0.9999], 1.0) == [{0}]
    assert dc.basins([0.0, 1.0], [(0, 1)], [0.9999], 1.0001) == [{0, 1}]


def test_level_count_spaces_levels_up_to_one_spacing_above_the_highest_saddle():
    g = dc.tree(E_MIN, PAIRS, E_TS, levels=4)
    np.testing.assert_allclose(g.graph["levels"], [3.4 / 3, 2 * 3.4 / 3, 3.4, 4 * 3.4 / 3])
    assert [set(g.nodes[r]["minima"]) for r in g.graph["roots"]] == BASINS[-1]
    g = dc.tree(E_MIN, PAIRS, E_TS, levels=2, ceiling=2.0)  # levels 1.0 and 2.0: minima at 2.0 and above go
    np.testing.assert_allclose(g.graph["levels"], [1.0, 2.0])
    assert {n for n, d in g.nodes(data=True) if d["kind"] == "minimum"} == {0, 1, 2, 4}
    assert sorted(_level(g, 1), key=min) == [{0, 2}, {1}, {4}]


def test_no_transition_states_gives_one_tree_per_minimum():
    g = dc.tree(E_MIN, np.zeros((0, 2), int), [], levels=5)
    assert sorted(map(set, (g.nodes[r]["minima"] for r in g.graph["roots"])), key=min) == [{i} for i in range(7)]
    assert dc.basins(E_MIN, [], [], 10.0) == [{0}, {2}, {1}, {4}, {3}, {6}, {5}]
    x = dc.layout(g)
    assert sorted(x[i] for i in range(7)) == [i + 0.5 for i in range(7)]
    assert dc.tree([1.0], [], [], levels=3).graph["roots"] == [(2, 0)]  # one minimum: levels up to 1 nat above


def test_trimming_drops_the_minima_above_the_level_and_their_saddles():
    g = dc.tree(E_MIN, PAIRS, E_TS, levels=6, trim_above=2.2)
    assert {n for n, d in g.nodes(data=True) if d["kind"] == "minimum"} == {0, 1, 2, 3, 4}
    assert [set(g.nodes[r]["minima"]) for r in g.graph["roots"]] == [{0, 1, 2, 4}, {3}]
    assert g.graph["levels"][-2] == pytest.approx(2.9)  # the highest saddle left: 4-2; 3-6 went with 6


def test_layout_centres_the_global_minimum_and_keeps_basins_contiguous():
    g = dc.tree(E_MIN, PAIRS, E_TS, levels=LEVELS)
    x = dc.layout(g)
    assert sorted(g.graph["roots"], key=x.get) == [(3, 3), (3, 0), (3, 5)]  # biggest in the middle, then left
    for node, d in g.nodes(data=True):
        slots = sorted(x[i] for i in d["minima"])
        assert slots[-1] - slots[0] == d["size"] - 1  # side by side
        assert x[node] == pytest.approx((slots[0] + slots[-1]) / 2)


@pytest.mark.parametrize("order, centre_global, middle", [("size", True, {0}), ("size", False, {1, 2, 3}),
                                                          ("energy", False, {0})])
def test_layout_orders_siblings_by_size_or_energy(order, centre_global, middle):
    # three trees: the global minimum alone, minimum 4 alone, and a bigger basin {1, 2, 3}
    g = dc.tree([0.0, 1.0, 1.1, 1.2, 0.5], [(1, 2), (2, 3)], [1.5, 1.6], levels=[2.0, 3.0])
    x = dc.layout(g, order=order, centre_global=centre_global)
    assert set(g.nodes[sorted(g.graph["roots"], key=x.get)[1]]["minima"]) == middle


VALUES = [0.1, np.nan, 0.3, 0.5, 0.2, np.nan, 0.9]


def _legend_texts(fig):
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_draw_writes_png_svg_and_pdf(tmp_path):
    for suffix, check in [(".png", lambda b: b[:8] == b"\x89PNG\r\n\x1a\n"),
                          (".svg", lambda b: ET.fromstring(b).tag.endswith("svg")),
                          (".pdf", lambda b: b.startswith(b"%PDF"))]:
        path = tmp_path / f"dg{suffix}"
        fig = dc.draw(E_MIN, PAIRS, E_TS, path, values=VALUES, value_label="sensitivity", levels=LEVELS)
        assert check(path.read_bytes()), suffix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dg.pdf", "dg.png", "dg.svg"]
    assert fig.axes[1].get_ylabel() == "sensitivity"  # the colour bar


def test_draw_says_what_is_grey_and_how_many_trees_and_labels_the_lowest():
    fig = dc.draw(E_MIN, PAIRS, E_TS, values=VALUES, levels=LEVELS, label_lowest=3, title="t")
    ax = fig.axes[0]
    assert _legend_texts(fig) == ["value NaN (2 minima)",
                                  "minima not connected to the global minimum: drawn as 3 separate trees"]
    assert sorted(t.get_text() for t in ax.texts) == ["0", "1", "2"]
    assert "nats" in ax.get_ylabel() and not ax.xaxis.get_visible() and ax.get_title() == "t"
    fig = dc.draw(E_MIN[:3], [(0, 1), (1, 2)], [1.5, 1.7])  # one tree, no values: no legend, no colour bar
    assert fig.axes[0].get_legend() is None and len(fig.axes) == 1


def test_draw_puts_each_minimum_at_its_energy_on_the_slanted_line_to_its_basin():
    E, P, T, L = [0.0, 1.0, 1.2, 0.6, 0.5], [(1, 2), (2, 3)], [1.5, 1.6], [2.0, 3.0]
    fig = dc.draw(E, P, T, values=[0.0, 1.0, 2.0, 3.0, np.nan], levels=L, label_lowest=0)
    lines, coloured, grey = fig.axes[0].collections
    x = dc.layout(dc.tree(E, P, T, levels=L))
    # 1, 2, 3 hang from basin (0, 3) at 2.0; lines into it slant from one spacing (1.0) below, from 1.0:
    # 1 (at 1.0) and 3 (below 1.0, rising vertically to it) keep their slots, 2 (at 1.2) lies on the slant
    xp = x[(0, 3)]
    drawn = {1: x[1], 2: xp + (x[2] - xp) * 0.8, 3: x[3]}
    np.testing.assert_allclose(coloured.get_offsets(), np.c_[[x[0], drawn[1], drawn[2], drawn[3]], E[:4]])
    np.testing.assert_allclose(grey.get_offsets(), [[x[4], 0.5]])
    np.testing.assert_allclose(coloured.get_array(), [0.0, 1.0, 2.0, 3.0])
    assert (coloured.norm.vmin, coloured.norm.vmax) == (0.0, 3.0)
    segments = [np.round(s, 9).tolist() for s in lines.get_segments()]
    for i, bend in [(1, 1.0), (2, 1.2), (3, 1.0)]:
        assert np.round([(drawn[i], E[i]), (drawn[i], bend), (xp, 2.0)], 9).tolist() in segments


def test_draw_into_given_axes_writes_nothing(tmp_path, monkeypatch):
    from matplotlib.figure import Figure
    monkeypatch.chdir(tmp_path)
    ax = Figure().add_subplot()
    assert dc.draw(E_MIN, PAIRS, E_TS, ax=ax) is ax.figure
    assert len(ax.collections) == 2 and list(tmp_path.iterdir()) == []  # lines and minima


@pytest.mark.parametrize("kwargs, message", [
    (dict(pairs=[(0, 7)]), "pairs must index minima 0..6"),
    (dict(pairs=[(-1, 2)]), "pairs must index minima"),
    (dict(pairs=[(0, 1, 2)]), "pairs must be integer indices of shape"),
    (dict(pairs=[(0.0, 1.0)]), "pairs must be integer indices"),
    (dict(E_ts=[1.0, 2.0]), "E_ts must have shape"),
    (dict(E_min=[0.0, np.nan, 1.0, 1.0, 1.0, 1.0, 1.0]), "E_min holds NaN"),
    (dict(E_min=[]), "E_min must be a non-empty 1-D array"),
    (dict(E_ts=[np.nan]), "E_ts holds NaN"),
    (dict(levels=1), "levels must be >= 2"),
    (dict(levels=[1.0]), "levels must be an integer >= 2 or"),
    (dict(levels=[2.0, 1.0]), "strictly increasing"),
    (dict(levels=[1.0, 2.0], ceiling=3.0), "ceiling goes with a count"),
    (dict(ceiling=-1.0), "ceiling must be finite and above"),
    (dict(levels=[-2.0, -1.0]), "no minimum lies below the top level"),
    (dict(trim_above=-1.0), "no minimum lies at or below trim_above"),
    (dict(path="dg.jpg"), "path must end in .png, .svg or .pdf"),
    (dict(values=[1.0, 2.0]), r"values must have shape \(7,\)"),
    (dict(values=[np.inf] * 7), "values must be finite or NaN"),
    (dict(order="random"), "order must be one of size, energy"),
    (dict(label_lowest=-1), "label_lowest must be an integer >= 0"),
    (dict(cmap="no-such-map"), "cmap must be a matplotlib colormap"),
])
def test_bad_input_gives_one_line_value_errors(kwargs, message):
    args = dict(E_min=E_MIN, pairs=PAIRS[:1], E_ts=E_TS[:1])
    args.update(kwargs)
    with pytest.raises(ValueError, match=message) as err:
        dc.draw(args.pop("E_min"), args.pop("pairs"), args.pop("E_ts"), **args)
    assert "\n" not in str(err.value)
