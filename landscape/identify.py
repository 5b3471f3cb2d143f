"""When are two minima the same? Energies within a tolerance AND parameters equal up to the
network's symmetries (permutations of the hidden units of a layer; for tanh also the sign flip
of a unit's incoming and outgoing weights), both tolerances derived from the convergence state.

Tolerances. Near a minimum with lowest Hessian eigenvalue lam_min, a point with gradient
norm |g| lies at most dx = |g| / lam_min from the exact minimum and at most
dE = |g|^2 / (2 lam_min) above it (quadratic model). Hence two points a, b of one minimum satisfy
    |E_a - E_b| <= e_tol = SAFETY * (|g_a|^2 + |g_b|^2) / (2 lam) + 1e-12 * max(1, |E|)
    ||x_a - align(x_b)|| <= d_tol = SAFETY * (|g_a| + |g_b|) / lam + 1e-8 * sqrt(P)
with lam the smallest curvature known for either (stored minima carry their lowest
eigenvalue; ``fallback_curvature`` otherwise), SAFETY = 10 for the quadratic model, and floors
for float64 rounding. The L-BFGS inverse Hessian is no substitute: it misses the softest
modes (measured on Iris: it put copies 30x closer than they were). So tolerances follow the
convergence tolerance (|g| = sqrt(P) * RMS gradient) and the curvature: a quench at RMS 1e-6
on Iris (lam_min ~ 1.4e-4) is placed within ~0.05, one refined to 1e-10 within ~5e-6. A pair
that fails these but lies within AMBIGUITY = 10 times both is *ambiguous*: the caller refines
to a tighter gradient and asks again. Anything further apart is a different minimum.

Newton consistency. On soft landscapes the bounds above are loose (digits 64-32-10: lam_min
~ 2.5e-6, so a quench at RMS 1e-6 is placed only within ~200, and such quenches really do end
0.3-2.5 away from their minimum). So "same" also requires that the point be where the quadratic
model of the stored minimum q puts it: with delta the aligned displacement, H delta (a forward
difference of gradients from the point: one gradient evaluation per candidate, all in one
batched call) must equal g - g_q within NEWTON_KAPPA = 0.1 of |g - g_q| when q's gradient is
known (the cubic term is small), or g within NEWTON_KAPPA |g| + (1 + NEWTON_KAPPA) |g_q| when
it is not. With g_q known the trapezoid rule, exact for quadratics, checks the energies first
for free: |E - E_q - (g + g_q).delta / 2| is within a cubic term that the Newton test bounds.
Measured: Iris quench endpoints of one minimum pass with residuals of 0.3-2.5% of |g|; digits
endpoints fail (residuals 1-140x |g|) and are refined before they are compared again; on digits
the trapezoid check settles ~86% of the candidates without an evaluation.

Candidates. Stored minima are sorted by energy, and a lookup considers only those inside its
energy window. A window of at most ALIGN_DIRECTLY = 4 has every candidate aligned at once (Iris
quenches: 1.4 candidates on average, which the bounds below would not exclude; matching took
166 -> 116 us). Where the window holds many (digits at RMS 1e-6: e_tol spans every minimum),
cheap lower bounds on the aligned distance come first, over all candidates at once (the
assignment bound of the first layer, in float32 with its rounding taken off, keeps ~7%), and a
walker's bounds are reused from its previous query by the triangle inequality. Wide unit rows
(m > 2 PROJECTION_DIM) are first bounded in a PROJECTION_DIM-dimensional projection: an
orthonormal projection shortens every difference, so the assignment bound of the projected rows
is a lower bound too, at a fraction of the cost; only candidates it cannot exclude get the
full bound (digits, rows of 75: the 24 leading principal directions of the first stored minima's
unit rows exclude 91% of the candidates, the full bound 95%). Verdicts do not depend on it.

Alignment. ``align(ref, x)`` maps ``x`` by symmetries onto the image closest to ``ref``: layer
by layer, an assignment problem (Hungarian method, :func:`scipy.optimize.linear_sum_assignment`)
matches the units of ``x`` to those of ``ref`` on their incoming weights and bias (already
aligned by the previous layer), plus their outgoing weights when the next layer is the output;
for odd activations each pair takes the better sign. Sorting units would break on near-ties.

Minima on kinks. With an IBP sensitivity term E = F(w, |w|) has kinks at zero weight-matrix
entries (``Energy.kinks``, :mod:`landscape.loss`) and its minima sit on some of them. A point x
with zero kink coordinates Z (exactly 0) and the rest F is a **minimum** when
  (1) the RMS pseudo-gradient (:func:`landscape.minimize.pseudo_gradient`) is within the
      quench's tolerance: on F it is the gradient, and on Z it is 0 exactly when the subgradient
      condition |g_i| <= s_i holds (g_i the smooth part of dE/dw_i, s_i = dE/d|w_i|), so this is
      the first-order condition;
  (2) the Hessian of E restricted to the face {w_Z = 0} (the rows and columns of F; E is smooth
      there) has no eigenvalue below -eig_tol (:mod:`landscape.hessian`'s rule).
Off the face the first-order term sum_Z (g_i v_i + s_i |v_i|) >= sum_Z (s_i - |g_i|) |v_i| rises
linearly wherever the margin s_i - |g_i| > 0, so (1) with positive margins and (2) make x a strict
local minimum. :func:`minimum_check` is the sampler's test (2) (its eigenvalues are the ones
stored, and their lowest is the curvature the tolerances above use); :func:`minimum_conditions`
recomputes (1), the margins and (2) for a stored point. Quench endpoints of one minimum share its
zero set, so their displacement lies in the face and the tolerances and the Newton test (run on
pseudo-gradients, ``Energy.energy_pseudo_gradient``) apply unchanged. A smooth E has Z empty.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from . import hessian, kernel
from .minimize import EnergyGradient
from .models import UnitGroup

SAFETY = 10.0
AMBIGUITY = 10.0
ENERGY_FLOOR = 1e-12
DISTANCE_FLOOR = 1e-8


Moves = tuple[np.ndarray, np.ndarray]
"""A symmetry operation as a signed gather (index, sign), each (P,) or (n, P): the image of a
vector v (coordinates, or a gradient, which moves alike) is ``v[index] * sign``."""


def _identity(n: int, P: int) -> Moves:
    return np.tile(np.arange(P), (n, 1)), np.ones((n, P))


def _relabel(moves: Moves, group: UnitGroup, perm: np.ndarray, signs: np.ndarray) -> None:
    """Compose, in place, each row of ``moves`` (n, P) with a relabelling of ``group``: unit j of
    the image becomes unit ``perm[i, j]`` of the previous image times ``signs[i, j]`` (both (n, H))."""
    index, sign = moves
    n, P = index.shape
    block = np.concatenate([group.incoming, group.outgoing], axis=1)  # (H, a + b): a unit's entries
    base = P * np.arange(n)[:, None, None]
    flat_index, flat_sign = index.reshape(-1), sign.reshape(-1)  # views: rows * P + column
    dst, src = (base + block).ravel(), (base + block[perm]).ravel()  # (n, H, a + b) positions, flattened
    flat_index[dst] = flat_index.take(src)
    flat_sign[dst] = flat_sign.take(src) * np.repeat(signs, block.shape[1], axis=1).ravel()


def apply(v: np.ndarray, moves: Moves) -> np.ndarray:
    """The image of ``v`` (P,) under ``moves``: (P,) for one operation, (n, P) for n."""
    index, sign = moves
    return v[index] * sign


def random_image(x: np.ndarray, groups: list[UnitGroup], rng: np.random.Generator) -> np.ndarray:
    """A random symmetry image of ``x`` (P,): same energy, different parameters."""
    moves = _identity(1, x.size)
    for g in groups:
        H = len(g.incoming)
        signs = rng.choice([-1.0, 1.0], H) if g.odd else np.ones(H)
        _relabel(moves, g, rng.permutation(H)[None], signs[None])
    return apply(x, moves)[0]


def _group_cost(ref: np.ndarray, x: np.ndarray, odd: bool) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances between the unit rows of ``ref`` (..., H, m) and ``x`` (..., H, m), under
    the better sign of each pair when ``odd``: (cost (..., H, H), dot products (..., H, H); a
    negative one means -x is the closer)."""
    dot = ref @ np.swapaxes(x, -1, -2)
    base = (ref * ref).sum(-1)[..., :, None] + (x * x).sum(-1)[..., None, :]
    return np.maximum(base - 2.0 * (np.abs(dot) if odd else dot), 0.0), dot


def _assignment_bound(rows: np.ndarray, rows_sq: np.ndarray, ids: np.ndarray, x: np.ndarray, odd: bool,
                      compiled: bool | None = None, threads: int = 1) -> np.ndarray:
    """Lower bounds (n,) on the optimal assignment cost between the unit rows of each stored set
    ``rows[ids]`` (rows (N, H, m) float32, squared norms ``rows_sq`` (N, H)) and ``x`` (H, m): the
    larger of the sums of row and of column minima of the cost matrices, computed in float32
    (3x faster) less a bound on float32 rounding, 2 (m + 4) eps32 (sum |a_i|^2 + sum |b_j|^2 +
    H max |.|^2), which holds for any order of summation. Compiled (:mod:`landscape.kernel`,
    no copy of the rows, on up to ``threads`` threads) unless ``compiled`` is False or the
    kernel is unavailable."""
    N, H, m = rows.shape
    x_sq = (x * x).sum(-1)
    ref_sq = rows_sq[ids]
    if compiled is not False and H <= kernel.ASSIGNMENT_MAX_H and kernel.available():
        lb = kernel.assignment_bound(rows, rows_sq, ids, np.ascontiguousarray(x, np.float32), x_sq, odd, threads)
    else:
        cost = (rows[ids].reshape(-1, m) @ x.astype(np.float32).T).reshape(len(ids), H, len(x))  # then in place:
        if odd:
            np.abs(cost, out=cost)
        cost *= -2.0
        cost += ref_sq.astype(np.float32)[:, :, None]
        cost += x_sq.astype(np.float32)
        rows_min, cols_min = _min_last(cost), _min_last(cost.swapaxes(1, 2))
        lb = np.maximum(rows_min.sum(1, dtype=np.float64), cols_min.sum(1, dtype=np.float64))
    scale = ref_sq.sum(1) + x_sq.sum() + H * np.maximum(ref_sq.max(1), x_sq.max())
    margin = 2 * (m + 4) * np.finfo(np.float32).eps * scale
    return np.maximum(lb - margin, 0.0)


def _min_last(a: np.ndarray) -> np.ndarray:
    """``a.min(-1)`` by halving (elementwise minima of the two halves, then of theirs ...): for
    short last axes several times faster than NumPy's reduction."""
    while a.shape[-1] > 1:
        h = a.shape[-1] // 2
        m = np.minimum(a[..., :h], a[..., h:2 * h])
        if a.shape[-1] % 2:
            m[..., 0] = np.minimum(m[..., 0], a[..., -1])
        a = m
    return a[..., 0]


def _unit_rows(x: np.ndarray, g: UnitGroup, last: bool) -> np.ndarray:
    """The rows matched for group ``g`` of ``x`` (..., P): incoming weights and bias, plus the
    outgoing weights when the next layer is the output (fixed there, so comparable directly)."""
    return np.concatenate([x[..., g.incoming], x[..., g.outgoing]], axis=-1) if last else x[..., g.incoming]


def alignments(refs: np.ndarray, x: np.ndarray, groups: list[UnitGroup]) -> Moves:
    """For each row of ``refs`` (n, P), the symmetry operation (n, P) mapping ``x`` (P,) onto its
    image closest to that row, layer by layer (cost matrices for all rows at once, one
    assignment problem per row and layer)."""
    n = len(refs)
    moves = _identity(n, x.size)
    for k, g in enumerate(groups):
        last = k == len(groups) - 1
        current = x if k == 0 else apply(x, moves)  # the first group sees x itself, for every row
        cost, dot = _group_cost(_unit_rows(refs, g, last), _unit_rows(current, g, last), g.odd)
        H = cost.shape[-1]
        perm = np.array([linear_sum_assignment(c)[1] for c in cost], int).reshape(n, H)  # rows: 0..H-1
        signs = np.ones((n, H))
        if g.odd:
            signs[dot.reshape(n * H, H)[np.arange(n * H), perm.ravel()].reshape(n, H) < 0] = -1.0
        _relabel(moves, g, perm, signs)
    return moves


def alignment(ref: np.ndarray, x: np.ndarray, groups: list[UnitGroup]) -> Moves:
    """The symmetry operation (P,) mapping ``x`` (P,) onto its image closest to ``ref`` (P,)."""
    index, sign = alignments(ref[None], x, groups)
    return index[0], sign[0]


def align(ref: np.ndarray, x: np.ndarray, groups: list[UnitGroup]) -> np.ndarray:
    """The symmetry image of ``x`` (P,) closest to ``ref`` (P,), layer by layer."""
    return apply(x, alignment(ref, x, groups))


def distance(ref: np.ndarray, x: np.ndarray, groups: list[UnitGroup]) -> float:
    """Euclidean distance from ``ref`` to the closest symmetry image of ``x``."""
    return float(np.linalg.norm(ref - align(ref, x, groups)))


@dataclass(frozen=True)
class Point:
    """A converged point: energy, coordinates (P,), gradient norm |g|, where known the lowest
    Hessian eigenvalue (``curvature``, NaN if not computed) and the gradient itself (P,)."""

    energy: float
    x: np.ndarray
    gnorm: float
    curvature: float = float("nan")
    grad: np.ndarray | None = None


@dataclass(frozen=True)
class Match:
    """Outcome of :meth:`MinimaIndex.match`: ``same`` is the id of the stored minimum the point is,
    or None; ``ambiguous`` lists ids too close to call at the present convergence; ``distance``
    the aligned distance to ``same`` (without one: to the nearest candidate aligned, or a lower
    bound on it); ``aligned`` the point's coordinates mapped onto the symmetry image of ``same``
    (None without one)."""

    same: int | None
    ambiguous: tuple[int, ...]
    distance: float
    aligned: np.ndarray | None = None


def stored_point(m, i: int) -> Point:
    """Row ``i`` of stored minima ``m`` (arrays energy, coords, grad_rms, eigenvalues) as a Point."""
    return Point(float(m.energy[i]), m.coords[i], float(m.grad_rms[i]) * np.sqrt(m.coords.shape[1]),
                 float(m.eigenvalues[i, 0]))


def tolerances(a: Point, b: Point, fallback_curvature: float) -> tuple[float, float]:
    """(energy tolerance, distance tolerance) for comparing ``a`` and ``b``."""
    known = [c for c in (a.curvature, b.curvature) if c > 0]
    return _tolerance_formulas(a, b.gnorm, min(known) if known else fallback_curvature)


def _tolerances(a: Point, gnorm: np.ndarray, curvature: np.ndarray, fallback: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`tolerances` of ``a`` against points with gradient norms ``gnorm`` (n,) and lowest
    eigenvalues ``curvature`` (n,; NaN or <= 0 where unknown)."""
    lam = np.where(curvature > 0, curvature, np.inf)
    if a.curvature > 0:
        lam = np.minimum(lam, a.curvature)
    return _tolerance_formulas(a, gnorm, np.where(np.isinf(lam), fallback, lam))


def _tolerance_formulas(a: Point, gnorm: float | np.ndarray, lam: float | np.ndarray) -> tuple:
    """(e_tol, d_tol) of the module docstring for ``a`` against gradient norms ``gnorm`` at
    curvatures ``lam`` (floats, or arrays alike)."""
    e_tol = SAFETY * (a.gnorm ** 2 + gnorm ** 2) / (2 * lam) + ENERGY_FLOOR * max(1.0, abs(a.energy))
    d_tol = SAFETY * (a.gnorm + gnorm) / lam + DISTANCE_FLOOR * math.sqrt(a.x.size)
    return e_tol, d_tol


NEWTON_KAPPA = 0.1
TRACK_MIN = 64
ALIGN_DIRECTLY = 4  # candidates up to which aligning them all costs less than bounding them first
NEWTON_STEP = 1e-7
PROJECTION_DIM = 24
PROJECTION_FROM = 64  # stored minima whose unit rows define the projection


class MinimaIndex:
    """Stored minima kept sorted by energy, so a lookup compares a new point only with those
    inside its energy window (binary search), never with every stored minimum. Inside the window
    the tests run cheapest first over all candidates at once: energies; lower bounds on the
    aligned distance (sorted unit norms, and the first layer's cost matrices, whose row and
    column minima bound the assignment from below), where more than ALIGN_DIRECTLY candidates
    remain; then an alignment for each survivor; then one batched call of ``energy_gradient``
    (X (n, P) -> energies (n,), gradients (n, P)) for the Newton test.

    Ids are the caller's labels of the minima: non-negative integers (database rows). ``threads``:
    for the compiled bounds (verdicts do not depend on it)."""

    def __init__(self, groups: list[UnitGroup], fallback_curvature: float,
                 energy_gradient: EnergyGradient | None = None, threads: int = 1):
        self.groups, self.fallback, self.energy_gradient = groups, fallback_curvature, energy_gradient
        self.threads = threads
        self._energies: list[float] = []
        self._ids: list[int] = []
        self.points: dict[int, Point] = {}
        self._max_g, self._min_curv = 0.0, fallback_curvature
        # per id (row = id): energy, |g|, lowest eigenvalue, sorted unit norms per group, and the
        # first group's unit rows (H, m) with their squared norms
        self._E, self._g, self._c = np.zeros(0), np.zeros(0), np.zeros(0)
        self._sig = np.zeros((0, sum(len(g.incoming) for g in groups)))
        self._rows: np.ndarray | None = None  # float32, for the bounds only
        self._rows_sq = np.zeros((0, len(groups[0].incoming) if groups else 0))
        self._basis: np.ndarray | None = None  # (m, PROJECTION_DIM) orthonormal columns, once fixed
        self._prows: np.ndarray | None = None  # float32, the rows projected on the basis
        self._prows_sq = np.zeros_like(self._rows_sq)
        self._bounds = np.cumsum([0] + [len(g.incoming) for g in groups])
        self._tracks: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # track -> (last query, bounds per id)

    def __len__(self) -> int:
        return len(self._ids)

    def nth(self, j: int) -> int:
        """The id of the minimum at position ``j`` in energy order (0: the lowest)."""
        return self._ids[j]

    def add(self, id_: int, p: Point) -> None:
        """Store ``p`` as minimum ``id_`` (replacing that id's point if present)."""
        if id_ in self.points:
            self.remove(id_)
        for _, known in self._tracks.values():
            if id_ < len(known):
                known[id_] = 0.0  # moved: the kept bounds no longer hold
        k = bisect.bisect(self._energies, p.energy)
        self._energies.insert(k, p.energy)
        self._ids.insert(k, id_)
        self.points[id_] = p
        rows = _unit_rows(p.x, self.groups[0], len(self.groups) == 1) if self.groups else np.zeros((0, 0))
        if self._rows is None:
            self._rows = np.zeros((0, *rows.shape), np.float32)
            self._prows = np.zeros((0, rows.shape[0], PROJECTION_DIM), np.float32)
        if id_ >= len(self._E):
            grow = max(id_ + 1, 2 * len(self._E), 16) - len(self._E)
            for name in ("_E", "_g", "_c", "_sig", "_rows", "_rows_sq", "_prows", "_prows_sq"):
                a = getattr(self, name)
                setattr(self, name, np.concatenate([a, np.zeros((grow, *a.shape[1:]), a.dtype)]))
        self._E[id_], self._g[id_], self._c[id_] = p.energy, p.gnorm, p.curvature
        self._sig[id_] = np.concatenate(self._signature(p.x)) if self.groups else []
        self._rows[id_] = rows
        self._rows_sq[id_] = (rows * rows).sum(-1)
        if self._basis is not None:
            self._project(np.array([id_]))
        elif rows.shape[-1] > 2 * PROJECTION_DIM and len(self.points) >= PROJECTION_FROM:
            self._start_projection()
        self._max_g = max(self._max_g, p.gnorm)
        if p.curvature > 0:
            self._min_curv = min(self._min_curv, p.curvature)

    def _start_projection(self) -> None:
        """Fix the projection: the leading right singular vectors of the stored unit rows."""
        ids = np.array(sorted(self.points))
        flat = self._rows[ids].reshape(-1, self._rows.shape[-1]).astype(np.float64)
        self._basis = np.linalg.svd(flat, full_matrices=False)[2][:PROJECTION_DIM].T.copy()
        self._project(ids)

    def _project(self, ids: np.ndarray) -> None:
        """Projected unit rows of the stored minima ``ids``."""
        proj = self._rows[ids].astype(np.float64) @ self._basis
        self._prows[ids] = proj
        self._prows_sq[ids] = (proj * proj).sum(-1)

    def remove(self, id_: int) -> None:
        p = self.points.pop(id_)
        k = bisect.bisect_left(self._energies, p.energy)
        while self._ids[k] != id_:
            k += 1
        del self._energies[k], self._ids[k]

    @classmethod
    def of(cls, m, groups: list[UnitGroup], fallback_curvature: float,
           energy_gradient: EnergyGradient | None = None, threads: int = 1) -> "MinimaIndex":
        """An index of stored minima ``m`` (see :func:`stored_point`), ids = rows."""
        index = cls(groups, fallback_curvature, energy_gradient, threads)
        for i in range(len(m.energy)):
            index.add(i, stored_point(m, i))
        return index

    def _signature(self, x: np.ndarray) -> list[np.ndarray]:
        """Per group, the sorted norms of the units' (incoming, outgoing) vectors: invariant under
        the symmetries, and ||sig_g(a) - sig_g(b)|| <= ||a - align(a, b)|| for every group g
        (unit blocks of a group are disjoint; sorting solves the matching of norms)."""
        return [np.sort(np.sqrt((x[g.incoming] ** 2).sum(1) + (x[g.outgoing] ** 2).sum(1))) for g in self.groups]

    def _lower_bounds(self, p: Point, ids: np.ndarray, reach: np.ndarray) -> np.ndarray:
        """Lower bounds on the aligned distance from ``p`` to each stored minimum ``ids``: sorted
        unit norms per group, and the first group's assignment bound (of the projected rows first,
        where a projection is fixed; the full rows only where that bound is within ``reach``)."""
        if not self.groups:
            return np.zeros(len(ids))
        diff = self._sig[ids] - np.concatenate(self._signature(p.x))
        per_group = np.stack([np.sqrt((diff[:, a:b] ** 2).sum(1)) for a, b in zip(self._bounds[:-1], self._bounds[1:])])
        bound = per_group.max(0)
        g0 = self.groups[0]
        rows = _unit_rows(p.x, g0, len(self.groups) == 1)
        todo = np.arange(len(ids))
        if self._basis is not None:
            projected = _assignment_bound(self._prows, self._prows_sq, ids, rows @ self._basis, g0.odd,
                                          threads=self.threads)
            bound = np.maximum(bound, np.sqrt(projected))
            todo = np.flatnonzero(bound <= reach)
        assign = _assignment_bound(self._rows, self._rows_sq, ids[todo], rows, g0.odd, threads=self.threads)
        bound[todo] = np.maximum(bound[todo], np.sqrt(assign))
        return bound

    def match(self, p: Point, ambiguity: bool = True, track: int | None = None) -> Match:
        """Which stored minimum ``p`` is, if any (see the module docstring for the rule).
        ``ambiguity=False`` looks only for a 'same' verdict (when ``p`` cannot be refined).

        ``track`` names a sequence of nearby queries (a basin-hopping walker): the lower bounds of
        its previous query x' are kept, and by the triangle inequality (symmetries are isometries)
        bound(p, q) >= bound(x', q) - ||x' - align(x', p)||, so only stored minima whose reused
        bound falls within reach are bounded afresh (Elkan's trick for k-means). The reuse costs
        one alignment of p against x', so it is used from TRACK_MIN candidates on."""
        factor = AMBIGUITY if ambiguity else 1.0
        probe = Point(p.energy, p.x, max(p.gnorm, self._max_g))
        reach = factor * tolerances(p, probe, self._min_curv)[0]
        lo = bisect.bisect_left(self._energies, p.energy - reach)
        hi = bisect.bisect_right(self._energies, p.energy + reach)
        ids = np.array(self._ids[lo:hi], dtype=np.int64)
        if len(ids) == 0:
            return Match(None, (), np.inf)
        e_tol, d_tol = _tolerances(p, self._g[ids], self._c[ids], self.fallback)
        de = np.abs(self._E[ids] - p.energy)
        keep = de <= factor * e_tol
        ids, e_tol, d_tol, de = ids[keep], e_tol[keep], d_tol[keep], de[keep]
        bound, fresh = np.zeros(len(ids)), np.ones(len(ids), bool)
        if len(ids) < TRACK_MIN:  # few candidates: fresh bounds cost less than the reuse's alignment
            self._tracks.pop(track, None)
            track = None
        if track in self._tracks:
            prev, known = self._tracks[track]
            reused = np.zeros(len(self._E))
            reused[:len(known)] = known - distance(prev, p.x, self.groups)
            bound = reused[ids]
            fresh = bound <= factor * d_tol
        bounded = len(ids) > ALIGN_DIRECTLY
        if bounded:
            bound[fresh] = self._lower_bounds(p, ids[fresh], factor * d_tol[fresh])
        if track is not None:
            if track not in self._tracks:
                reused = np.zeros(len(self._E))
            reused[ids[fresh]] = bound[fresh]
            self._tracks[track] = (p.x.copy(), reused)
        best = float(bound.min()) if bounded else np.inf
        near = np.flatnonzero(bound <= factor * d_tol)
        if len(near) == 0:
            return Match(None, (), best)
        near = near[np.argsort(bound[near], kind="stable")]
        qs = [self.points[int(i)] for i in ids[near]]
        Q = np.stack([q.x for q in qs])
        moves = alignments(Q, p.x, self.groups)
        images = apply(p.x, moves)
        deltas = images - Q
        d = np.linalg.norm(deltas, axis=1)
        best = min(best, float(d.min()))
        same = (de[near] <= e_tol[near]) & (d <= d_tol[near])
        ambiguous = ids[near][~same & (d <= factor * d_tol[near])] if ambiguity else ids[:0]
        cand = np.flatnonzero(same)
        ok = self._newton_consistent(p, [qs[j] for j in cand], images[cand], deltas[cand], d[cand],
                                     (moves[0][cand], moves[1][cand]))
        for j, good in zip(cand, ok):
            if good:
                return Match(int(ids[near[j]]), (), float(d[j]), images[j])
        return Match(None, tuple(int(i) for i in ambiguous), best)

    def _newton_consistent(self, p: Point, qs: list[Point], images: np.ndarray, deltas: np.ndarray,
                           norms: np.ndarray, moves: Moves) -> np.ndarray:
        """For each stored minimum q in ``qs``: is ``p`` where q's quadratic model puts it?

        With delta = x_p - x_q (``images`` (n, P): x_p aligned onto each q by ``moves``, which
        carry its gradient g_p alike; ``deltas`` (n, P) and their ``norms`` (n,)) and H delta a
        forward difference of gradients from p, |delta| (g_p - g(x_p - NEWTON_STEP delta / |delta|))
        / NEWTON_STEP (all candidates in one ``energy_gradient`` call; rounding ~1e-16 |delta| /
        NEWTON_STEP, third-derivative error ~NEWTON_STEP |delta|):
        - q's gradient known: |H delta - (g_p - g_q)| <= NEWTON_KAPPA |g_p - g_q| (the cubic
          term is within NEWTON_KAPPA of the quadratic one). Then, to third order, the energy
          satisfies |E_p - E_q - (g_p + g_q).delta / 2| <= NEWTON_KAPPA |delta| |g_p - g_q| / 6
          (trapezoid rule); this is checked first, with a margin of 1.5, and costs nothing
          (measured: Iris copies that pass the Newton test use under 12% of the third-order bound
          in 99 cases of 100).
        - q's gradient unknown: |H delta - g_p| <= NEWTON_KAPPA |g_p| + (1 + NEWTON_KAPPA) |g_q|.
        A rounding floor is added to each. All True without ``energy_gradient`` or a gradient for p."""
        ok = np.ones(len(qs), bool)
        if self.energy_gradient is None or p.grad is None or not qs:
            return ok
        gp = apply(p.grad, moves)
        known = np.array([q.grad is not None for q in qs])
        change = gp - np.stack([q.grad if q.grad is not None else gp[i] for i, q in enumerate(qs)])
        change_norm = np.linalg.norm(change, axis=1)
        moving = norms > 0
        if known.any():  # the trapezoid rule: (g_p + g_q).delta = (2 g_p - change).delta
            E_q = np.array([q.energy for q in qs])
            trapezoid = p.energy - E_q - 0.5 * np.einsum("ap,ap->a", 2.0 * gp - change, deltas)
            allowed = NEWTON_KAPPA * norms * change_norm / 4 + ENERGY_FLOOR * max(1.0, abs(p.energy))
            ok = ~(known & moving) | (np.abs(trapezoid) <= allowed)
        test = np.flatnonzero(ok & moving)
        if len(test) == 0:
            return ok
        back = images[test] - (NEWTON_STEP / norms[test])[:, None] * deltas[test]
        _, G = self.energy_gradient(back)
        Hd = (gp[test] - G) * (norms[test] / NEWTON_STEP)[:, None]
        floor = 1e-12 * np.sqrt(p.x.size)
        g_q = np.array([q.gnorm for q in qs])[test]
        unknown_bound = NEWTON_KAPPA * p.gnorm + (1 + NEWTON_KAPPA) * g_q + floor
        ok[test] = np.where(known[test],
                            np.linalg.norm(Hd - change[test], axis=1) <= NEWTON_KAPPA * change_norm[test] + floor,
                            np.linalg.norm(Hd - gp[test], axis=1) <= unknown_bound)
        return ok


class _Face:
    """E restricted to the face of ``x`` (P,): its ``free`` coordinates, the others held at 0
    (duck-types the :class:`landscape.energy.Energy` methods :func:`landscape.hessian.check` uses)."""

    def __init__(self, energy, x: np.ndarray, free: np.ndarray):
        self.energy, self.x, self.free = energy, np.asarray(x, dtype=np.float64), free
        self.n_params = int(free.sum())

    def hessian(self, _x: np.ndarray) -> np.ndarray:
        return self.energy.hessian(self.x)[np.ix_(self.free, self.free)]

    def hvp(self, _x: np.ndarray, v: np.ndarray) -> np.ndarray:
        v = np.atleast_2d(v)
        full = np.zeros((len(v), self.energy.n_params))
        full[:, self.free] = v
        return self.energy.hvp(np.repeat(self.x[None], len(v), 0), full)[:, self.free]


def face(energy, x: np.ndarray) -> np.ndarray:
    """(P,) bool: the coordinates of ``x`` free to move on its face (all but the zero kink
    coordinates; every one for a smooth E)."""
    x = np.asarray(x)
    return np.ones(x.shape, bool) if energy.kinks is None else ~((x == 0) & energy.kinks)


def minimum_check(energy, x: np.ndarray, mode: str = "full") -> hessian.HessianCheck:
    """Condition (2) of the module docstring: the lowest eigenpairs of the Hessian of E restricted
    to the face of ``x`` (:func:`landscape.hessian.check` on it; the eigenvector embedded in P
    coordinates, 0 on the zero kink coordinates). For a smooth E, or no zero kink coordinate, it is
    :func:`landscape.hessian.check` itself."""
    free = face(energy, x)
    if free.all():
        return hessian.check(energy, x, mode)
    h = hessian.check(_Face(energy, x, free), np.asarray(x)[free], mode)
    vector = np.zeros(len(free))
    vector[free] = h.vector
    return hessian.HessianCheck(h.eigenvalues, vector, h.eig_tol)


def minimum_conditions(energy, x: np.ndarray, mode: str = "full") -> dict:
    """The conditions of the module docstring at ``x`` (P,), recomputed: ``energy``,
    ``pseudo_grad_rms`` (1), ``zeros`` (the zero kink coordinates), ``margins`` (s_i - |g_i| on
    them), ``eigenvalues`` (lowest of the face Hessian), ``eig_tol`` and ``minimum`` (both
    conditions, (1) against ``tol``... taken by the caller: here, (2) alone and margins >= 0)."""
    x = np.asarray(x, dtype=np.float64)
    E, G, S = energy.energy_gradient_kinks(x[None])
    from .minimize import pseudo_gradient  # noqa: E402 (kept local: the module needs only EnergyGradient)

    kinks = energy.kinks if energy.kinks is not None else np.zeros(len(x), bool)
    pg = pseudo_gradient(x[None], G, S, kinks)[0]
    zeros = np.flatnonzero((x == 0) & kinks)
    h = minimum_check(energy, x, mode)
    margins = S[0, zeros] - np.abs(G[0, zeros])
    return {"energy": float(E[0]), "pseudo_grad_rms": float(np.sqrt(np.mean(pg * pg))), "zeros": zeros,
            "margins": margins, "eigenvalues": h.eigenvalues, "eig_tol": h.eig_tol,
            "minimum": bool(not h.saddle and (margins >= 0).all())}
