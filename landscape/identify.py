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
model of the stored minimum q puts it: its gradient, aligned like its coordinates, equals
H_q (x - x_q) within NEWTON_KAPPA = 0.1 of |g| (one Hessian-vector product per candidate).
Measured: Iris quench endpoints of one minimum pass with residuals of 0.3-2.5% of |g|; digits
endpoints fail (residuals 1-140x |g|) and are refined before they are compared again.

Alignment. ``align(ref, x)`` maps ``x`` by symmetries onto the image closest to ``ref``: layer
by layer, an assignment problem (Hungarian method, :func:`scipy.optimize.linear_sum_assignment`)
matches the units of ``x`` to those of ``ref`` on their incoming weights and bias (already
aligned by the previous layer), plus their outgoing weights when the next layer is the output;
for odd activations each pair takes the better sign. Sorting units would break on near-ties.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.optimize import linear_sum_assignment

from .models import UnitGroup

SAFETY = 10.0
AMBIGUITY = 10.0
ENERGY_FLOOR = 1e-12
DISTANCE_FLOOR = 1e-8


def transform(x: np.ndarray, group: UnitGroup, perm: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Relabel units of one group: unit i of the result is unit ``perm[i]`` of ``x`` times ``signs[i]``."""
    out = x.copy()
    for idx in (group.incoming, group.outgoing):
        out[idx] = x[idx[perm]] * signs[:, None]
    return out


def random_image(x: np.ndarray, groups: list[UnitGroup], rng: np.random.Generator) -> np.ndarray:
    """A random symmetry image of ``x`` (P,): same energy, different parameters."""
    for g in groups:
        H = len(g.incoming)
        signs = rng.choice([-1.0, 1.0], H) if g.odd else np.ones(H)
        x = transform(x, g, rng.permutation(H), signs)
    return x


def alignment(ref: np.ndarray, x: np.ndarray, groups: list[UnitGroup]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per group, the (permutation, signs) mapping ``x`` (P,) onto its image closest to ``ref``."""
    out = []
    for k, g in enumerate(groups):
        use_out = k == len(groups) - 1

        def sqdist(sign: float) -> np.ndarray:
            c = _pair_sqdist(ref[g.incoming], sign * x[g.incoming])
            return c + _pair_sqdist(ref[g.outgoing], sign * x[g.outgoing]) if use_out else c

        plus = sqdist(1.0)
        if g.odd:
            minus = sqdist(-1.0)
            cost, flip = np.minimum(plus, minus), minus < plus
        else:
            cost, flip = plus, np.zeros_like(plus, bool)
        rows, cols = linear_sum_assignment(cost)
        perm = np.empty(len(rows), int)
        perm[rows] = cols
        signs = np.where(flip[rows, cols], -1.0, 1.0)[np.argsort(rows)]
        x = transform(x, g, perm, signs)
        out.append((perm, signs))
    return out


def apply(v: np.ndarray, groups: list[UnitGroup], moves: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Apply an :func:`alignment` to a vector (coordinates, or a gradient, which moves alike)."""
    for g, (perm, signs) in zip(groups, moves):
        v = transform(v, g, perm, signs)
    return v


def align(ref: np.ndarray, x: np.ndarray, groups: list[UnitGroup]) -> np.ndarray:
    """The symmetry image of ``x`` (P,) closest to ``ref`` (P,), layer by layer."""
    return apply(x, groups, alignment(ref, x, groups))


def _pair_sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between rows: (H, m), (H, m) -> (H, H)."""
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


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
    or None; ``ambiguous`` lists ids too close to call at the present convergence; ``aligned``
    is the point's coordinates mapped onto the symmetry image of ``same`` (None without one)."""

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
    lam = min(known) if known else fallback_curvature
    e_tol = SAFETY * (a.gnorm ** 2 + b.gnorm ** 2) / (2 * lam) + ENERGY_FLOOR * max(1.0, abs(a.energy))
    d_tol = SAFETY * (a.gnorm + b.gnorm) / lam + DISTANCE_FLOOR * np.sqrt(a.x.size)
    return e_tol, d_tol


NEWTON_KAPPA = 0.1


class MinimaIndex:
    """Stored minima kept sorted by energy, so a lookup compares a new point only with those
    inside its energy window (binary search), never with every stored minimum."""

    def __init__(self, groups: list[UnitGroup], fallback_curvature: float,
                 hvp: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None):
        self.groups, self.fallback, self.hvp = groups, fallback_curvature, hvp
        self._energies: list[float] = []
        self._ids: list[int] = []
        self.points: dict[int, Point] = {}
        self._sigs: dict[int, list[np.ndarray]] = {}
        self._max_g, self._min_curv = 0.0, fallback_curvature

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, id_: int, p: Point) -> None:
        if id_ in self.points:
            self.remove(id_)
        k = bisect.bisect(self._energies, p.energy)
        self._energies.insert(k, p.energy)
        self._ids.insert(k, id_)
        self.points[id_] = p
        self._sigs[id_] = self._signature(p.x)
        self._max_g = max(self._max_g, p.gnorm)
        if p.curvature > 0:
            self._min_curv = min(self._min_curv, p.curvature)

    def remove(self, id_: int) -> None:
        p = self.points.pop(id_)
        del self._sigs[id_]
        k = bisect.bisect_left(self._energies, p.energy)
        while self._ids[k] != id_:
            k += 1
        del self._energies[k], self._ids[k]

    @classmethod
    def of(cls, m, groups: list[UnitGroup], fallback_curvature: float,
           hvp: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> "MinimaIndex":
        """An index of stored minima ``m`` (see :func:`stored_point`), ids = rows."""
        index = cls(groups, fallback_curvature, hvp)
        for i in range(len(m.energy)):
            index.add(i, stored_point(m, i))
        return index

    def _newton_consistent(self, p: Point, q: Point, delta: np.ndarray, moves) -> bool:
        """Is ``p`` the point the quadratic model of stored minimum ``q`` predicts: its gradient
        (aligned like its coordinates) equal to H_q (x_p - x_q) within NEWTON_KAPPA of |g_p|,
        plus |g_q| (the stored point is itself converged only to |g_q|) and a rounding floor?
        Skipped (True) without an ``hvp`` or a gradient for ``p``."""
        if self.hvp is None or p.grad is None or not delta.any():
            return True
        r = np.linalg.norm(self.hvp(q.x, delta) - apply(p.grad, self.groups, moves))
        return bool(r <= NEWTON_KAPPA * p.gnorm + (1 + NEWTON_KAPPA) * q.gnorm + 1e-12 * np.sqrt(delta.size))

    def _signature(self, x: np.ndarray) -> list[np.ndarray]:
        """Per group, the sorted norms of the units' (incoming, outgoing) vectors: invariant under
        the symmetries, and ||sig_g(a) - sig_g(b)|| <= ||a - align(a, b)|| for every group g
        (unit blocks of a group are disjoint; sorting solves the matching of norms)."""
        return [np.sort(np.sqrt((x[g.incoming] ** 2).sum(1) + (x[g.outgoing] ** 2).sum(1))) for g in self.groups]

    def match(self, p: Point, ambiguity: bool = True) -> Match:
        """Which stored minimum ``p`` is, if any (see the module docstring for the rule).
        ``ambiguity=False`` looks only for a 'same' verdict (when ``p`` cannot be refined)."""
        factor = AMBIGUITY if ambiguity else 1.0
        probe = Point(p.energy, p.x, max(p.gnorm, self._max_g))
        reach = factor * tolerances(p, probe, self._min_curv)[0]
        lo = bisect.bisect_left(self._energies, p.energy - reach)
        hi = bisect.bisect_right(self._energies, p.energy + reach)
        cand = sorted(self._ids[lo:hi], key=lambda i: abs(self.points[i].energy - p.energy))
        ambiguous, best = [], np.inf
        sig = self._signature(p.x) if cand else []
        for i in cand:
            q = self.points[i]
            e_tol, d_tol = tolerances(p, q, self.fallback)
            de = abs(p.energy - q.energy)
            if de > factor * e_tol:
                continue
            bound = max(float(np.linalg.norm(a - b)) for a, b in zip(sig, self._sigs[i])) if sig else 0.0
            if bound > factor * d_tol:  # provably too far apart: no alignment needed
                best = min(best, bound)
                continue
            moves = alignment(q.x, p.x, self.groups)
            image = apply(p.x, self.groups, moves)
            delta = image - q.x
            d = float(np.linalg.norm(delta))
            best = min(best, d)
            if de <= e_tol and d <= d_tol and self._newton_consistent(p, q, delta, moves):
                return Match(i, (), d, image)
            if d <= factor * d_tol and ambiguity:
                ambiguous.append(i)
        return Match(None, tuple(ambiguous), best)
