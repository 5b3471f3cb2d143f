"""Transition states between minima: the numerical core of ``landscape connect``.

A transition state is an index-1 saddle of E(w): gradient zero, exactly one negative Hessian
eigenvalue. Found as GMIN/OPTIM/PATHSAMPLE and pele find them, in four steps:

1. :func:`band`: a doubly-nudged elastic band (Trygubenko & Wales 2004) between two minima, the
   second aligned onto the first under the network's symmetries (:func:`align_pair`), so that the
   band does not run through a symmetric copy. Interior images feel the gradient perpendicular
   to the band (Henkelman-Jonsson tangent), the spring force along it and the part of the
   perpendicular spring force orthogonal to the gradient; after ``band_maxiter`` iterations the
   highest local maxima become climbing images (the gradient's component along the band
   reversed). A band torn open (one segment much longer than the straight band's: images slid
   into side valleys, or a climbing image ran uphill) gets stiffer springs and its climbing
   images stop climbing. The images of all bands are one batch for the energy. Band forces are not the
   gradient of a scalar, so they are minimised by L-BFGS without an energy line search, each
   image's step capped by a trust radius that an overshooting step halves.
2. :func:`refine`: min-mode following from each climbing image (a dimer method whose curvature
   comes from exact Hessian-vector products): the lowest eigenvector v by Rayleigh-quotient
   minimisation (LOBPCG with one vector, warm-started), then an L-BFGS step on the gradient with
   its component along v reversed, g - 2 (g.v) v, which goes uphill along v and downhill in the
   orthogonal complement. Its fixed points are exactly the stationary points (I - 2 v v^T is
   invertible), however accurate v is, so the gradient converges to ``tol`` (RMS 1e-10) unless
   rounding stops it first: then the best point is kept and its achieved RMS gradient reported
   (:attr:`TransitionState.converged` False; it still counts up to ``accept_tol``). Where the
   lowest curvature is positive the step goes uphill along v only. Each result is verified
   independently: exactly one Hessian eigenvalue below ``-eig_tol``
   (:func:`landscape.hessian.check`: the full Hessian up to ``FULL_HESSIAN_MAX_P`` parameters,
   Lanczos above). A point of index 2 or more is rejected, not refined further.
3. :func:`descend`: step ``pushoff`` (Euclidean, parameter units) off the saddle along +v and -v
   and minimise both with the sampler's L-BFGS to ``descent_tol`` (RMS 1e-10), as minima are
   refined before they are stored.
4. :func:`connect`: pele's DoubleEndedConnect strategy. Over the known minima, a graph whose
   edges are transition states; a distance graph with weight 0 between minima already joined,
   no edge for pairs already tried, the squared aligned distance otherwise; the shortest path
   between the two targets names the pairs to try next (its unjoined edges, longest first). The
   chosen pairs of all targets are tried together, their bands in one batch, until every target
   is joined or the budget (attempts, seconds) is spent. A transition state joins two minima
   only if both descents end at minima (a descent inside a symmetric subspace can end at a
   saddle) and they differ; new minima are Hessian-checked and returned for the caller to store.

Every function takes an ``energy`` with ``energy_gradient(w (K, P)) -> (E (K,), G (K, P))``,
``hvp(w (K, P), v (K, P)) -> (K, P)``, ``hessian(w (P,)) -> (P, P)`` and ``n_params`` (an
:class:`landscape.energy.Energy`, or any object alike). Arrays are float64. Randomness (a small
generic component of the start vectors of the eigenvector search, so that a symmetric start does
not confine it to a symmetric subspace) comes from ``seed``: the same seed, inputs and budget of
attempts give the same result.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol, Sequence

import networkx as nx
import numpy as np

from . import hessian, identify
from .identify import MinimaIndex, Point
from .minimize import minimize
from .models import UnitGroup

FULL_HESSIAN_MAX_P = 1000
DESCENT_HALVINGS = 40
SPRING_SCALE = 4.0
SPRING_CHECK = 10
SPRING_MAX_FACTOR = 64.0


class EnergyLike(Protocol):
    """What the functions here need of an energy (see the module docstring)."""

    n_params: int

    def energy_gradient(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def hvp(self, w: np.ndarray, v: np.ndarray) -> np.ndarray: ...

    def hessian(self, w: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Settings:
    """Settings of the band, the refinement, the descent and the connect driver (lengths in
    parameter units, i.e. Euclidean norms over the P weights; gradients as RMS over P).

    Band: ``images`` interior images, linearly interpolated; ``spring`` constant k (energy per
    length squared), or None for SPRING_SCALE times the height of the initial band over its lower
    end divided by its squared length (softer springs let images bunch up and a climbing image
    run away, stiffer ones hold the band straight across the valley it should bend into);
    ``spacing_limit``: every SPRING_CHECK iterations, a band whose longest segment is more than
    spacing_limit times the segments of the straight band between its ends has its springs
    doubled, up to
    SPRING_MAX_FACTOR times their initial value (on a soft landscape springs set by the barrier
    let images slide into valleys far off the line and tear the band open, leaving its climbing
    image on a ridge between distant images);
    ``band_maxiter`` iterations of the plain band, then ``climb_maxiter`` with the
    ``max_climbing`` highest local maxima climbing (each phase ends early for a band whose force
    RMS falls to ``band_rtol`` times its value at the phase's start); ``band_maxstep``, the
    largest move of one image per iteration; ``band_memory``, L-BFGS pairs.

    Refinement: ``tol``, RMS gradient at which a saddle is converged; ``maxiter`` iterations at
    most; ``stall`` iterations without a new lowest RMS gradient end it early (the landscape's
    rounding floor, or a search that has lost its way), and so do ``max_uphill`` iterations in a
    row without negative curvature; ``maxstep``, the largest step; ``memory``, L-BFGS pairs;
    ``rotation_tol``: the eigenvector search stops when |H v - lambda v| <= rotation_tol |lambda|,
    or after ``max_rotations`` Hessian-vector products per iteration; ``accept_tol``, the largest
    RMS gradient a saddle may keep (where rounding stops the refinement above ``tol``) and still
    count as a transition state; ``hessian``, the verification: 'full', 'lanczos' or 'auto' (full
    up to FULL_HESSIAN_MAX_P parameters).

    Descent: ``pushoff``, the displacement off the saddle along its eigenvector; ``descent_tol``,
    ``descent_maxstep``, ``descent_memory``, ``descent_maxiter``: of the L-BFGS minimisation
    (a small maxstep keeps it near the steepest-descent path, in the basin it started in).

    Connect: a pair whose band joined no new pair of minima is tried again ``retries`` times,
    each time with ``retry_factor`` times the images.
    """

    images: int = 16
    spring: float | None = None
    spacing_limit: float = 3.0
    band_maxiter: int = 200
    climb_maxiter: int = 200
    band_rtol: float = 1e-2
    band_maxstep: float = 0.1
    band_memory: int = 10
    max_climbing: int = 3
    tol: float = 1e-10
    maxiter: int = 2000
    stall: int = 200
    max_uphill: int = 20
    maxstep: float = 0.1
    memory: int = 60
    rotation_tol: float = 1e-2
    max_rotations: int = 8
    accept_tol: float = 1e-6
    hessian: str = "auto"
    pushoff: float = 1e-2
    descent_tol: float = 1e-10
    descent_maxstep: float = 0.1
    descent_memory: int = 60
    descent_maxiter: int = 10000
    retries: int = 1
    retry_factor: int = 2

    def __post_init__(self) -> None:
        rules = ((lambda v: v >= 1, ">= 1", ("images", "band_memory", "max_climbing", "maxiter", "stall",
                                             "max_uphill", "memory", "max_rotations", "descent_memory",
                                             "descent_maxiter", "retry_factor")),
                 (lambda v: v >= 0, ">= 0", ("band_maxiter", "climb_maxiter", "retries")),
                 (lambda v: v > 1, "> 1", ("spacing_limit",)),
                 (lambda v: v > 0, "> 0", ("band_rtol", "band_maxstep", "tol", "maxstep", "rotation_tol",
                                           "accept_tol", "pushoff", "descent_tol", "descent_maxstep")))
        for ok, rule, names in rules:
            for name in names:
                if not ok(getattr(self, name)):
                    raise ValueError(f"{name} must be {rule}, got {getattr(self, name)}")
        if self.spring is not None and not self.spring > 0:
            raise ValueError(f"spring must be > 0 or None, got {self.spring}")
        if self.hessian not in ("auto", *hessian.MODES):
            raise ValueError(f"unknown Hessian mode {self.hessian!r}: choose 'auto', 'full' or 'lanczos'")


@dataclass(frozen=True)
class BandResult:
    """Relaxed bands (B of them, n interior images each).

    ``x`` (B, n + 2, P) images, endpoints included; ``energy`` (B, n + 2); ``tangent`` (B, n, P)
    unit tangents of the interior images; ``climbing`` (B, n) which interior images climbed;
    ``force_rms`` (B,) RMS band force over the interior images at the end; ``spring`` (B,) the
    spring constants used; ``nit`` iterations."""

    x: np.ndarray
    energy: np.ndarray
    tangent: np.ndarray
    climbing: np.ndarray
    force_rms: np.ndarray
    spring: np.ndarray
    nit: int


@dataclass(frozen=True)
class TransitionState:
    """A refined stationary point and its verification.

    ``energy``; ``x`` (P,); ``grad_rms`` RMS gradient at x; ``eigenvalues`` the lowest Hessian
    eigenvalues, ascending (up to 3; from the full Hessian or Lanczos, independent of the
    refinement); ``eigenvector`` (P,) unit eigenvector of the lowest (the descent's '+' side is
    x + pushoff * eigenvector); ``eig_tol`` below -eig_tol an eigenvalue counts as negative;
    ``converged`` grad_rms <= the refinement's tol; ``verified`` exactly one negative eigenvalue and
    grad_rms <= accept_tol: a transition state; ``nit`` refinement iterations."""

    energy: float
    x: np.ndarray
    grad_rms: float
    eigenvalues: np.ndarray
    eigenvector: np.ndarray
    eig_tol: float
    converged: bool
    verified: bool
    nit: int = 0

    @classmethod
    def stored(cls, energy: float, x: np.ndarray, grad_rms: float, eigenvalues: np.ndarray,
               eigenvector: np.ndarray | None = None) -> "TransitionState":
        """A transition state read back from storage, where it was stored verified: ``eigenvalues``
        the lowest stored (at least the negative one); ``eigenvector`` NaN where not stored."""
        x = np.asarray(x, np.float64)
        vector = np.full(len(x), np.nan) if eigenvector is None else np.asarray(eigenvector, np.float64)
        return cls(float(energy), x, float(grad_rms), np.atleast_1d(np.asarray(eigenvalues, np.float64)), vector,
                   0.0, float(grad_rms) <= Settings.tol, True)

    @property
    def eigenvalue(self) -> float:
        """The lowest Hessian eigenvalue (negative at a transition state)."""
        return float(self.eigenvalues[0])

    @property
    def index(self) -> int:
        """How many Hessian eigenvalues are below -eig_tol (of those computed)."""
        return int((self.eigenvalues < -self.eig_tol).sum())


@dataclass(frozen=True)
class Minimum:
    """The end of a descent: ``energy``, ``x`` (P,), ``grad`` (P,), ``grad_rms``, ``converged``
    (grad_rms <= the descent's tolerance)."""

    energy: float
    x: np.ndarray
    grad: np.ndarray
    grad_rms: float
    converged: bool


@dataclass(frozen=True)
class Descent:
    """The minima reached from a transition state: ``plus`` from x + pushoff * eigenvector,
    ``minus`` from x - pushoff * eigenvector."""

    plus: Minimum
    minus: Minimum


@dataclass(frozen=True)
class Connection:
    """A transition state and the two minima it joins, by id: what the database stores per
    transition state (``ts.energy``, ``ts.x``, ``ts.grad_rms``, ``ts.eigenvalues``,
    ``ts.eigenvector``, ``minimum_plus``, ``minimum_minus``) and ``pair``, the pair of minima whose
    search found it ((-1, -1) where not known). Of a stored one, :func:`connect` reads
    ``energy``, ``x``, ``grad_rms`` and ``eigenvalues`` only."""

    ts: TransitionState
    minimum_plus: int
    minimum_minus: int
    pair: tuple[int, int] = (-1, -1)


@dataclass(frozen=True)
class NewMinimum:
    """A minimum that a descent found and the index did not know, numbered ``id``: ``energy``,
    ``x`` (P,), ``grad`` (P,), ``grad_rms``, ``eigenvalues`` (the lowest, ascending, all above
    -eig_tol) - what the sampler stores per minimum."""

    id: int
    energy: float
    x: np.ndarray
    grad: np.ndarray
    grad_rms: float
    eigenvalues: np.ndarray


@dataclass(frozen=True)
class Round:
    """What one round of :func:`connect` found: ``minima`` new minima and ``connections`` new
    transition states (store the minima first: connections refer to them), ``tried`` each pair
    tried and how many new connections its searches gave, ``joined`` how many targets are joined."""

    minima: list[NewMinimum]
    connections: list[Connection]
    tried: dict[tuple[int, int], int]
    joined: int


@dataclass(frozen=True)
class ConnectResult:
    """Outcome of :func:`connect`.

    ``pairs`` the targets; ``connected`` (bool per target); ``paths`` per target the minima ids
    from one end to the other along transition states (None where not joined); ``connections``
    the transition states found (new ones, in order found); ``minima`` the new minima found (ids
    from ``next_id`` up, in order: store them in that order); ``tried`` the pairs of minima whose
    bands were run, in order (a retry with more images is not listed again); ``rejected`` counts
    of climbing images that gave no connection, by reason: 'not converged' (the refinement ended
    above accept_tol), 'not a transition state' (a stationary point of another index), 'found
    before', 'descent did not converge', 'descent ended at a saddle', 'joins a minimum to
    itself' (both descents reach one minimum, maybe in two symmetric images); ``nfev``
    energy-gradient evaluations (where the energy counts them, as an Energy does); ``seconds``
    wall time; ``status`` why it stopped."""

    pairs: list[tuple[int, int]]
    connected: np.ndarray
    paths: list[list[int] | None]
    connections: list[Connection]
    minima: list[NewMinimum]
    tried: list[tuple[int, int]]
    rejected: dict[str, int] = field(default_factory=dict)
    nfev: int = 0
    seconds: float = 0.0
    status: str = ""


# -- geometry --------------------------------------------------------------------------------------

def align_pair(a: np.ndarray, b: np.ndarray, groups: list[UnitGroup]) -> np.ndarray:
    """The symmetry image of ``b`` (P,) closest to ``a`` (P,): where a band from a should end."""
    return identify.align(a, b, groups)


def _rms(g: np.ndarray) -> np.ndarray:
    """RMS over the last axis."""
    return np.sqrt(np.einsum("...p,...p->...", g, g) / g.shape[-1])


def _unit(v: np.ndarray) -> np.ndarray:
    """Rows of ``v`` scaled to unit norm (zero rows stay zero)."""
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n > 0, n, 1.0)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products over the last axis."""
    return np.einsum("...p,...p->...", a, b)


# -- force-driven L-BFGS ---------------------------------------------------------------------------

class _ForceLBFGS:
    """L-BFGS over B problems of D coordinates driven by a force field that need not be a gradient:
    no energy line search; each step is capped so that no block of ``block`` coordinates (an
    image) moves further than a trust radius (at most ``maxstep``). A pair with s.y <= 0 is not
    stored, and a direction that does not descend along -g restarts that problem from a
    steepest-descent step of a tenth of the trust radius. With ``guard``, a step that overshot (the
    force along it reversed and grew: g_new.s > |g_old.s|, more than twice past the minimum along
    s for a quadratic) also restarts it, and halves its trust radius; each other step lets the
    radius grow by a tenth, back up to maxstep. (The band needs the guard: its forces change
    with its tangents, and without it a band on the Mueller-Brown surface was measured to
    diverge. Near a saddle it stalls the min-mode iteration, whose field is smooth.)"""

    def __init__(self, B: int, D: int, memory: int, maxstep: float, block: int, guard: bool):
        self.M, self.maxstep, self.block, self.guard = memory, maxstep, block, guard
        self.trust = np.full(B, float(maxstep))
        self.S, self.Y = np.zeros((memory, B, D)), np.zeros((memory, B, D))
        self.rho = np.zeros((memory, B))
        self.gamma = np.zeros(B)  # 0: no curvature known yet
        self.head, self.pushes = 0, 0
        self.x_prev: np.ndarray | None = None
        self.g_prev = np.zeros((B, D))
        self.has_prev = np.zeros(B, bool)

    def reset(self, rows: np.ndarray) -> None:
        """Forget the memory of problems ``rows`` (after the force field changed under them)."""
        self.rho[:, rows] = 0.0
        self.gamma[rows] = 0.0
        self.has_prev[rows] = False

    def step(self, rows: np.ndarray, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        """The step (len(rows), D) of problems ``rows`` at points ``x`` with forces -``g``."""
        if self.x_prev is None:
            self.x_prev = np.zeros((len(self.gamma), x.shape[1]))
        s = x - self.x_prev[rows]
        over = self.guard & self.has_prev[rows] & (_dot(s, g) > np.abs(_dot(s, self.g_prev[rows])))
        self.trust[rows] = np.where(over, 0.5 * self.trust[rows], np.minimum(self.maxstep, 1.1 * self.trust[rows]))
        self.reset(rows[over])
        self._push(rows, x, g)
        d = self._direction(rows, g)
        bad = ~(_dot(d, g) < 0)
        if bad.any():
            self.reset(rows[bad])
            d[bad] = -g[bad]
        first = self.gamma[rows] == 0
        blocks = np.linalg.norm(d.reshape(len(d), -1, self.block), axis=2).max(1)
        cap = np.where(first, 0.1, 1.0) * self.trust[rows]
        scale = np.where(first, cap, np.minimum(cap, blocks)) / np.maximum(blocks, 1e-300)
        d *= scale[:, None]
        self.x_prev[rows], self.g_prev[rows], self.has_prev[rows] = x, g, True
        return d

    def _push(self, rows: np.ndarray, x: np.ndarray, g: np.ndarray) -> None:
        """Store the pairs (s, y) since each problem's last step, where the curvature is positive."""
        self.head = (self.head + 1) % self.M
        self.pushes += 1
        h = self.head
        s, y = x - self.x_prev[rows], g - self.g_prev[rows]
        sy, yy = _dot(s, y), _dot(y, y)
        good = self.has_prev[rows] & (sy > 0) & np.isfinite(sy) & (yy > 0)
        self.S[h, rows], self.Y[h, rows] = s, y
        self.rho[h, rows] = 0.0
        self.rho[h, rows[good]] = 1.0 / sy[good]
        self.gamma[rows[good]] = sy[good] / yy[good]

    def _direction(self, rows: np.ndarray, g: np.ndarray) -> np.ndarray:
        """-H g by the two-loop recursion over the stored pairs, newest first."""
        order = [(self.head - i) % self.M for i in range(min(self.M, self.pushes))]
        rho = self.rho[order][:, rows]
        used = [i for i in range(len(order)) if rho[i].any()]
        S, Y, rho = self.S[[order[i] for i in used]][:, rows], self.Y[[order[i] for i in used]][:, rows], rho[used]
        q = g.copy()
        alpha = np.zeros((len(used), len(rows)))
        for i in range(len(used)):
            alpha[i] = rho[i] * _dot(S[i], q)
            q -= alpha[i][:, None] * Y[i]
        q *= np.where(self.gamma[rows] > 0, self.gamma[rows], 1.0)[:, None]
        for i in reversed(range(len(used))):
            q += (alpha[i] - rho[i] * _dot(Y[i], q))[:, None] * S[i]
        return -q


# -- the band --------------------------------------------------------------------------------------

def _tangents(x: np.ndarray, E: np.ndarray) -> np.ndarray:
    """Unit tangents (B, n, P) of the interior images of bands ``x`` (B, n + 2, P) with energies
    ``E`` (B, n + 2): toward the higher neighbour, energy-weighted at extrema (Henkelman & Jonsson
    2000)."""
    tp, tm = x[:, 2:] - x[:, 1:-1], x[:, 1:-1] - x[:, :-2]
    Ep, E0, Em = E[:, 2:], E[:, 1:-1], E[:, :-2]
    dp, dm = np.abs(Ep - E0), np.abs(Em - E0)
    big, small = np.maximum(dp, dm), np.minimum(dp, dm)
    higher_next = Ep > Em
    mixed = np.where(higher_next[..., None], tp * big[..., None] + tm * small[..., None],
                     tp * small[..., None] + tm * big[..., None])
    flat = (big == 0)[..., None]
    mixed = np.where(flat, tp + tm, mixed)
    up = ((Ep > E0) & (E0 > Em))[..., None]
    down = ((Ep < E0) & (E0 < Em))[..., None]
    return _unit(np.where(up, tp, np.where(down, tm, mixed)))


def _band_gradient(x: np.ndarray, E: np.ndarray, G: np.ndarray, k: np.ndarray,
                   climbing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The doubly-nudged band's generalised gradient (B, n, P) (minus the force on each interior
    image) and the tangents, for bands ``x`` (B, n + 2, P), energies ``E`` (B, n + 2), interior
    gradients ``G`` (B, n, P), spring constants ``k`` (B,) and ``climbing`` (B, n)."""
    tau = _tangents(x, E)
    gpar = _dot(G, tau)[..., None]
    gperp = G - gpar * tau
    tp, tm = x[:, 2:] - x[:, 1:-1], x[:, 1:-1] - x[:, :-2]
    kk = k[:, None, None]
    spring_par = kk * (np.linalg.norm(tp, axis=-1) - np.linalg.norm(tm, axis=-1))[..., None] * tau
    spring = kk * (tp - tm)
    spring_perp = spring - _dot(spring, tau)[..., None] * tau
    ghat = _unit(gperp)
    dneb = spring_perp - _dot(spring_perp, ghat)[..., None] * ghat
    out = gperp - spring_par - dneb
    return np.where(climbing[..., None], G - 2.0 * gpar * tau, out), tau


def _spring_constants(x: np.ndarray, E: np.ndarray) -> np.ndarray:
    """Per band (B,), the height of the initial band over its lower end divided by its squared
    length (bands ``x`` (B, n + 2, P), energies ``E`` (B, n + 2)): springs that, stretched over the
    whole band, store about the barrier, so that their pull across the band stays below the
    landscape's and the band can bend into the valley."""
    height = E.max(1) - np.minimum(E[:, 0], E[:, -1])
    length2 = ((x[:, -1] - x[:, 0]) ** 2).sum(1)
    k = SPRING_SCALE * height / np.maximum(length2, 1e-300)
    return np.where(k > 0, k, 1.0)


def _torn(x: np.ndarray, limit: float) -> np.ndarray:
    """(B,) whether the longest segment of each band ``x`` (B, n + 2, P) is more than ``limit``
    times the segment of the straight band between its ends."""
    seg = np.linalg.norm(np.diff(x, axis=1), axis=-1)
    straight = np.linalg.norm(x[:, -1] - x[:, 0], axis=-1) / seg.shape[1]
    return seg.max(1) > limit * straight


def _local_maxima(E: np.ndarray, count: int) -> np.ndarray:
    """(B, n) mask of the ``count`` highest interior local maxima of each band's energies ``E``
    (B, n + 2); the highest interior image where a band has none."""
    inner = E[:, 1:-1]
    peak = (inner > E[:, :-2]) & (inner >= E[:, 2:])
    score = np.where(peak, inner, -np.inf)
    out = np.zeros(inner.shape, bool)
    for b in range(len(E)):
        order = np.argsort(-score[b], kind="stable")[:count]
        chosen = order[np.isfinite(score[b, order])]
        out[b, chosen if len(chosen) else [int(np.argmax(inner[b]))]] = True
    return out


def band(energy: EnergyLike, a: np.ndarray, b: np.ndarray, settings: Settings = Settings()) -> BandResult:
    """Relax doubly-nudged elastic bands from ``a`` to ``b`` (each (P,) or (B, P); endpoints fixed,
    ``b`` already aligned onto ``a``), all bands in one batch: ``band_maxiter`` plain iterations,
    then ``climb_maxiter`` with climbing images (see :class:`Settings`)."""
    a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    B, P = a.shape
    n = settings.images
    t = np.linspace(0.0, 1.0, n + 2)[None, :, None]
    x = (1.0 - t) * a[:, None] + t * b[:, None]
    Eall, Gall = energy.energy_gradient(x.reshape(-1, P))
    E, G = Eall.reshape(B, n + 2), Gall.reshape(B, n + 2, P)
    k = np.full(B, settings.spring) if settings.spring is not None else _spring_constants(x, E)
    k0 = k.copy()
    G = G[:, 1:-1].copy()
    climbing = np.zeros((B, n), bool)
    opt = _ForceLBFGS(B, n * P, settings.band_memory, settings.band_maxstep, P, guard=True)
    nit = 0
    for phase, iterations in (("plain", settings.band_maxiter), ("climb", settings.climb_maxiter)):
        if phase == "climb":
            climbing = _local_maxima(E, settings.max_climbing)
            opt.reset(np.arange(B))
        force, tau = _band_gradient(x, E, G, k, climbing)
        first = _rms(force.reshape(B, -1))
        active = np.ones(B, bool)
        for it in range(iterations):
            rms = _rms(force.reshape(B, -1))
            active &= rms > settings.band_rtol * first
            rows = np.flatnonzero(active)
            if len(rows) == 0:
                break
            if it and it % SPRING_CHECK == 0:
                torn = rows[_torn(x[rows], settings.spacing_limit)
                            & ((k[rows] < k0[rows] * SPRING_MAX_FACTOR) | climbing[rows].any(1))]
                k[torn] = np.minimum(k[torn], k0[torn] * SPRING_MAX_FACTOR / 2.0)
                if len(torn):
                    k[torn] *= 2.0
                    climbing[torn] = False  # a climbing image that tore its band ran away uphill
                    opt.reset(torn)
                    force[torn], tau[torn] = _band_gradient(x[torn], E[torn], G[torn], k[torn], climbing[torn])
            d = opt.step(rows, x[rows, 1:-1].reshape(len(rows), -1), force[rows].reshape(len(rows), -1))
            x[rows, 1:-1] += d.reshape(len(rows), n, P)
            e, g = energy.energy_gradient(x[rows, 1:-1].reshape(-1, P))
            E[rows, 1:-1], G[rows] = e.reshape(len(rows), n), g.reshape(len(rows), n, P)
            force[rows], tau[rows] = _band_gradient(x[rows], E[rows], G[rows], k[rows], climbing[rows])
            nit += 1
    none = ~climbing.any(1)
    climbing[none] = _local_maxima(E[none], settings.max_climbing)
    return BandResult(x, E, tau, climbing, _rms(force.reshape(B, -1)), k, nit)


# -- refinement to a saddle ------------------------------------------------------------------------

def _lowest_mode(energy: EnergyLike, x: np.ndarray, v: np.ndarray, rtol: float,
                 max_products: int) -> tuple[np.ndarray, np.ndarray]:
    """The lowest Hessian eigenpair at each row of ``x`` (K, P), from start vectors ``v`` (K, P):
    LOBPCG with one vector (Rayleigh-Ritz over [v, residual, previous direction]), one batched
    Hessian-vector product per iteration, until |H v - lambda v| <= rtol |lambda| or
    ``max_products`` products. Returns (lambda (K,), unit v (K, P))."""
    K, P = x.shape
    v = _unit(v)
    Hv = energy.hvp(x, v)
    lam = _dot(v, Hv)
    p, Hp = np.zeros_like(v), np.zeros_like(v)
    rows = np.arange(K)
    for _ in range(max_products - 1):
        r = Hv[rows] - lam[rows, None] * v[rows]
        todo = np.linalg.norm(r, axis=1) > rtol * np.abs(lam[rows])
        rows, r = rows[todo], r[todo]
        if len(rows) == 0:
            break
        Hr = energy.hvp(x[rows], r)
        lam[rows], v[rows], Hv[rows], p[rows], Hp[rows] = _rayleigh_ritz(v[rows], Hv[rows], r, Hr, p[rows], Hp[rows])
    return lam, v


def _rayleigh_ritz(v: np.ndarray, Hv: np.ndarray, r: np.ndarray, Hr: np.ndarray, p: np.ndarray,
                   Hp: np.ndarray) -> tuple[np.ndarray, ...]:
    """One LOBPCG step per row: the lowest Ritz pair of H over span(v, r, p), each (k, P), given
    their products by H (a direction that adds nothing to the span is left out). Returns
    (lambda (k,), v, Hv, p, Hp) of the new iterate."""
    basis, images = [v], [Hv]
    for w, Hw in ((r, Hr), (p, Hp)):
        norm0 = np.linalg.norm(w, axis=1)
        for q, Hq in zip(basis, images):
            c = _dot(q, w)[:, None]
            w, Hw = w - c * q, Hw - c * Hq
        norm = np.linalg.norm(w, axis=1)
        keep = norm > 1e-8 * np.maximum(norm0, 1e-300)
        s = np.where(keep, 1.0 / np.where(keep, norm, 1.0), 0.0)[:, None]
        basis.append(w * s)
        images.append(Hw * s)
    Q, HQ = np.stack(basis, 1), np.stack(images, 1)  # (k, 3, P)
    A = np.einsum("kip,kjp->kij", Q, HQ)
    A = 0.5 * (A + A.transpose(0, 2, 1))
    empty = np.einsum("kip,kip->ki", Q, Q) == 0
    A[empty[:, :, None] & np.eye(3, dtype=bool)] = np.abs(A).max() * 10.0 + 1.0  # never the lowest
    w, c = np.linalg.eigh(A)
    c0 = c[:, :, 0]
    v_new, Hv_new = np.einsum("ki,kip->kp", c0, Q), np.einsum("ki,kip->kp", c0, HQ)
    norm = np.linalg.norm(v_new, axis=1, keepdims=True)
    p_new = np.einsum("ki,kip->kp", c0[:, 1:], Q[:, 1:]) / norm
    Hp_new = np.einsum("ki,kip->kp", c0[:, 1:], HQ[:, 1:]) / norm
    return w[:, 0], v_new / norm, Hv_new / norm, p_new, Hp_new


def _hessian_mode(settings: Settings, P: int) -> str:
    """The Hessian check's mode: ``settings.hessian``, 'auto' being full up to FULL_HESSIAN_MAX_P."""
    if settings.hessian != "auto":
        return settings.hessian
    return "full" if P <= FULL_HESSIAN_MAX_P else "lanczos"


def _reflect(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rows of ``g`` (k, P) with their components along the unit rows of ``v`` reversed."""
    return g - 2.0 * _dot(g, v)[:, None] * v


def _verify(energy: EnergyLike, x: np.ndarray, E: float, g: np.ndarray, nit: int,
            settings: Settings) -> TransitionState:
    """The transition-state record of a refined point: an independent Hessian check."""
    h = hessian.check(energy, x, _hessian_mode(settings, len(x)))
    rms = float(_rms(g))
    index = int((h.eigenvalues < -h.eig_tol).sum())
    return TransitionState(float(E), x.copy(), rms, h.eigenvalues.copy(), h.vector.copy(), float(h.eig_tol),
                           rms <= settings.tol, index == 1 and rms <= settings.accept_tol, nit)


def refine(energy: EnergyLike, x0: np.ndarray, v0: np.ndarray | None = None, settings: Settings = Settings(),
           seed: int = 0) -> list[TransitionState]:
    """Refine the rows of ``x0`` (K, P) to saddles by min-mode following, all in one batch (see
    the module docstring); ``v0`` (K, P) guesses of the negative-curvature directions (a band's
    tangents; random where None). Each is verified; see :attr:`TransitionState.verified`."""
    x = np.atleast_2d(np.array(x0, np.float64))
    K, P = x.shape
    noise = _unit(np.random.default_rng(seed).normal(size=(K, P)))
    v = noise if v0 is None else _unit(np.atleast_2d(v0)) + 1e-3 * noise
    E, g = energy.energy_gradient(x)
    lam, v = _lowest_mode(energy, x, v, settings.rotation_tol, settings.max_rotations)
    best = _rms(g)
    best_x, best_E, best_g, g_prev = x.copy(), E.copy(), g.copy(), g.copy()
    since, climbs, nit = np.zeros(K, np.int64), np.zeros(K, np.int64), np.zeros(K, np.int64)
    opt = _ForceLBFGS(K, P, settings.memory, settings.maxstep, P, guard=False)
    active = best > settings.tol
    for _ in range(settings.maxiter):
        rows = np.flatnonzero(active)
        if len(rows) == 0:
            break
        opt.g_prev[rows] = _reflect(g_prev[rows], v[rows])  # the last pair's y in the present reflection
        g_prev[rows] = g[rows]
        d, uphill = _min_mode_step(opt, rows, x[rows], g[rows], v[rows], lam[rows], settings.maxstep)
        x[rows] += d
        E[rows], g[rows] = energy.energy_gradient(x[rows])
        lam[rows], v[rows] = _lowest_mode(energy, x[rows], v[rows], settings.rotation_tol, settings.max_rotations)
        nit[rows] += 1
        climbs[rows] = np.where(uphill, climbs[rows] + 1, 0)
        rms = _rms(g[rows])
        better = rms < best[rows]
        b = rows[better]
        best[b], best_x[b], best_E[b], best_g[b] = rms[better], x[b], E[b], g[b]
        since[rows] = np.where(better, 0, since[rows] + 1)
        active[rows] = (best[rows] > settings.tol) & (since[rows] < settings.stall) \
            & (climbs[rows] < settings.max_uphill)
    return [_verify(energy, best_x[i], best_E[i], best_g[i], int(nit[i]), settings) for i in range(K)]


def _min_mode_step(opt: _ForceLBFGS, rows: np.ndarray, x: np.ndarray, g: np.ndarray, v: np.ndarray,
                   lam: np.ndarray, maxstep: float) -> tuple[np.ndarray, np.ndarray]:
    """Steps (k, P) of problems ``rows`` at ``x`` with gradients ``g``, lowest eigenpairs (``lam``,
    ``v``): L-BFGS on the reflected gradient where the curvature is negative; elsewhere ``maxstep``
    uphill along v, forgetting the memory. Returns (steps, which went uphill only)."""
    d = opt.step(rows, x, _reflect(g, v))
    uphill = lam >= 0
    opt.reset(rows[uphill])
    sign = np.where(_dot(g[uphill], v[uphill]) >= 0, 1.0, -1.0)
    d[uphill] = (sign * maxstep)[:, None] * v[uphill]
    return d, uphill


# -- descent ---------------------------------------------------------------------------------------

def _minimize(energy: EnergyLike, x0: np.ndarray, curvature: float, settings: Settings) -> list[Minimum]:
    """Minimise the rows of ``x0`` (k, P) with the sampler's L-BFGS next to a saddle whose negative
    eigenvalue has magnitude ``curvature``. L-BFGS stores no pair of negative curvature, so there
    it takes steepest-descent steps of h0 times the gradient: with the sampler's h0 = 0.1 it
    crawls off a saddle (measured on Iris: 10,000 iterations not enough). Here h0 = 1 / curvature,
    the Newton step along the negative mode, halved up to DESCENT_HALVINGS times until the energy
    does not rise (the gradient's stiff components would overshoot it)."""
    r = minimize(energy.energy_gradient, x0, tol=settings.descent_tol, maxiter=settings.descent_maxiter,
                 memory=settings.descent_memory, maxstep=settings.descent_maxstep, h0=1.0 / curvature,
                 max_halvings=DESCENT_HALVINGS)
    return [Minimum(float(r.energy[j]), r.x[j], r.grad[j], float(r.grad_rms[j]), bool(r.converged[j]))
            for j in range(len(x0))]


def descend(energy: EnergyLike, ts: TransitionState, settings: Settings = Settings()) -> Descent:
    """The two minima a transition state joins: step ``pushoff`` off it along +eigenvector and
    -eigenvector and minimise each side with L-BFGS to ``descent_tol`` (both in one batch)."""
    step = settings.pushoff * ts.eigenvector
    plus, minus = _minimize(energy, np.stack([ts.x + step, ts.x - step]), abs(ts.eigenvalue), settings)
    return Descent(plus, minus)


# -- connect ---------------------------------------------------------------------------------------

class _Connect:
    """The state of one :func:`connect` run: minima and transition states known, the graph of the
    connections, pairs tried, distances computed."""

    def __init__(self, energy: EnergyLike, groups: list[UnitGroup], index: MinimaIndex, known: Sequence[Connection],
                 settings: Settings, seed: int, next_id: int | None):
        self.energy, self.groups, self.index, self.s = energy, groups, index, settings
        self.rng = np.random.default_rng(seed)
        self.next_id = next_id if next_id is not None else max(index.points, default=-1) + 1
        self.ts_index = MinimaIndex(groups, index.fallback, energy.energy_gradient)
        self.graph = nx.Graph()
        self.graph.add_nodes_from(sorted(index.points))
        self.connections: list[Connection] = []
        self.new_minima: list[NewMinimum] = []
        self.tried: set[tuple[int, int]] = set()
        self.order: list[tuple[int, int]] = []
        self.nodes: list[int] = []
        self.distances: dict[tuple[int, int], float] = {}
        self.rejected: dict[str, int] = {}
        for c in known:
            self._add_connection(c, new=False)

    # which pairs next
    def _distance(self, u: int, v: int) -> float:
        key = (min(u, v), max(u, v))
        if key not in self.distances:
            self.distances[key] = identify.distance(self.index.points[key[0]].x, self.index.points[key[1]].x,
                                                    self.groups)
        return self.distances[key]

    def _distance_graph(self) -> nx.Graph:
        """Over the minima of this run: weight 0 within a connected component, the squared aligned
        distance between untried pairs, no edge between pairs tried."""
        component = {m: i for i, c in enumerate(nx.connected_components(self.graph)) for m in c}
        d = nx.Graph()
        d.add_nodes_from(self.nodes)
        for i, u in enumerate(self.nodes):
            for v in self.nodes[i + 1:]:
                if component[u] == component[v]:
                    d.add_edge(u, v, weight=0.0)
                elif (min(u, v), max(u, v)) not in self.tried:
                    d.add_edge(u, v, weight=self._distance(u, v) ** 2)
        return d

    def add_node(self, m: int) -> None:
        """Let minimum ``m`` be a stop on the paths the distance graph proposes."""
        if m not in self.nodes:
            self.nodes.append(m)

    def next_pairs(self, targets: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The pairs to try for every target not yet joined: the unjoined edges on its shortest
        path in the distance graph, longest first (none where no path is left)."""
        dgraph = self._distance_graph()
        chosen: list[tuple[int, int]] = []
        for a, b in targets:
            try:
                path = nx.dijkstra_path(dgraph, a, b)
            except nx.NetworkXNoPath:
                continue
            edges = [(dgraph[u][v]["weight"], (min(u, v), max(u, v))) for u, v in zip(path, path[1:])]
            for w, pair in sorted(edges, key=lambda e: -e[0]):
                if w > 0 and pair not in chosen:
                    chosen.append(pair)
        return chosen

    # one round
    def attempt(self, pairs: list[tuple[int, int]]) -> dict[tuple[int, int], int]:
        """Try ``pairs``: a band for each (one batch), then, for those whose band joined no new pair
        of minima, a band of ``retry_factor`` times the images (``retries`` times at most).
        Returns how many new connections each pair's searches gave."""
        found = dict.fromkeys(pairs, 0)
        for p in pairs:
            self.tried.add(p)
            self.order.append(p)
        images = self.s.images
        for _ in range(self.s.retries + 1):
            joined = self._search(pairs, replace(self.s, images=images))
            for p, n in zip(pairs, joined):
                found[p] += int(n)
            pairs = [p for p, n in zip(pairs, joined) if n == 0]
            images *= self.s.retry_factor
            if not pairs:
                break
        return found

    def _search(self, pairs: list[tuple[int, int]], settings: Settings) -> np.ndarray:
        """Bands between ``pairs`` (one batch), refinement of their climbing images, descent from
        the new transition states, identification of the minima reached. Returns how many new
        connections each pair's band gave."""
        a = np.stack([self.index.points[u].x for u, _ in pairs])
        b = np.stack([align_pair(self.index.points[u].x, self.index.points[v].x, self.groups) for u, v in pairs])
        bands = band(self.energy, a, b, settings)
        which = np.argwhere(bands.climbing)
        x0 = bands.x[which[:, 0], which[:, 1] + 1]
        v0 = bands.tangent[which[:, 0], which[:, 1]]
        states = refine(self.energy, x0, v0, settings, seed=int(self.rng.integers(2**63)))
        joined = np.zeros(len(pairs), np.int64)
        for ts, source in zip(states, which[:, 0]):
            if self._fresh(ts):
                joined[source] += self._record(ts, descend(self.energy, ts, settings), pairs[source])
        return joined

    def _reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def _ts_point(self, ts: TransitionState) -> Point:
        """``ts`` for the index of transition states: its smallest |eigenvalue| is the curvature
        that sets the identification's tolerances, as the lowest eigenvalue does for a minimum."""
        curvature = float(np.abs(ts.eigenvalues).min()) if len(ts.eigenvalues) else math.nan
        grad = self.energy.energy_gradient(ts.x)[1][0]
        return Point(ts.energy, ts.x, ts.grad_rms * math.sqrt(len(ts.x)), curvature, grad)

    def _fresh(self, ts: TransitionState) -> bool:
        """Whether ``ts`` is a transition state not found before (the same one in another symmetry
        image included); a fresh one joins the index of transition states."""
        if not ts.verified:
            self._reject("not a transition state" if ts.grad_rms <= self.s.accept_tol else "not converged")
            return False
        point = self._ts_point(ts)
        if self.ts_index.match(point, ambiguity=False).same is not None:
            self._reject("found before")
            return False
        self.ts_index.add(len(self.ts_index), point)
        return True

    def _identify(self, end: Minimum) -> int | str:
        """The id of the minimum ``end`` is (a known one, or a new one, checked and numbered), or
        why it is none. A descent that ends at a saddle (it ran inside a symmetric subspace, where
        units stay alike) rejects the transition state: no minimum is at its end."""
        if not end.converged:
            return "descent did not converge"
        gnorm = end.grad_rms * math.sqrt(len(end.x))
        m = self.index.match(Point(end.energy, end.x, gnorm, grad=end.grad), ambiguity=False)
        if m.same is not None:
            return m.same
        h = hessian.check(self.energy, end.x, _hessian_mode(self.s, len(end.x)))
        if h.saddle:
            return "descent ended at a saddle"
        i = self.next_id
        self.next_id += 1
        self.index.add(i, Point(end.energy, end.x, gnorm, float(h.eigenvalues[0]), end.grad))
        self.graph.add_node(i)
        self.new_minima.append(NewMinimum(i, end.energy, end.x, end.grad, end.grad_rms, h.eigenvalues))
        return i

    def _record(self, ts: TransitionState, descent: Descent, pair: tuple[int, int]) -> bool:
        """Identify the ends of ``descent`` and store the connection; whether there is one."""
        ends = [self._identify(descent.plus), self._identify(descent.minus)]
        reasons = [e for e in ends if isinstance(e, str)]
        if reasons:
            self._reject(reasons[0])
            return False
        plus, minus = ends
        self.add_node(plus)
        self.add_node(minus)
        if plus == minus:
            self._reject("joins a minimum to itself")
            return False
        self._add_connection(Connection(ts, plus, minus, pair), new=True)
        return True

    def _add_connection(self, c: Connection, new: bool) -> None:
        self.graph.add_edge(c.minimum_plus, c.minimum_minus)
        if new:
            self.connections.append(c)
        else:
            self.ts_index.add(len(self.ts_index), self._ts_point(c.ts))

    def path(self, a: int, b: int) -> list[int] | None:
        """Minima from ``a`` to ``b`` along transition states (fewest steps), or None."""
        try:
            return nx.shortest_path(self.graph, a, b)
        except nx.NetworkXNoPath:
            return None


def connect(energy: EnergyLike, groups: list[UnitGroup], index: MinimaIndex, pairs: Sequence[tuple[int, int]],
            known: Sequence[Connection] = (), settings: Settings = Settings(), seed: int = 0,
            max_attempts: int = 50, max_seconds: float = math.inf, next_id: int | None = None,
            tried: Sequence[tuple[int, int]] = (), on_round: Callable[[Round], None] | None = None) -> ConnectResult:
    """Join each pair of minima in ``pairs`` (ids of ``index``) by a chain of transition states.

    ``index`` holds the known minima (ids = the caller's labels, e.g. database rows) and says
    which one a descended point is; new minima are added to it, numbered from ``next_id``
    (default: one past the largest id) in the order found. ``known`` transition states count as
    connections from the start (and are not reported again). Each round tries, for every target
    not yet joined, the unjoined pairs on its shortest path (see the module docstring); it stops
    when all are joined, no path is left to try, or ``max_attempts`` pairs have been tried or
    ``max_seconds`` (wall clock) have passed (the round in progress is finished; a time budget
    makes the result depend on the machine, an attempt budget does not). ``tried``: pairs tried
    before (by an earlier run), not tried again. ``on_round`` is called after each round with what
    it found (:class:`Round`), so that a caller can store it as it goes."""
    start = time.perf_counter()
    nfev0 = getattr(energy, "nfev", 0)
    targets = [(int(a), int(b)) for a, b in pairs]
    for a, b in targets:
        if a not in index.points or b not in index.points:
            raise ValueError(f"pair ({a}, {b}): both minima must be in the index")
        if a == b:
            raise ValueError(f"pair ({a}, {b}): a minimum is joined to itself already")
    run = _Connect(energy, groups, index, known, settings, seed, next_id)
    run.tried.update((min(a, b), max(a, b)) for a, b in tried)
    for a, b in targets:
        run.add_node(a)
        run.add_node(b)
    while True:
        todo = [t for t in targets if run.path(*t) is None]
        status = _stop(todo, len(run.order), max_attempts, time.perf_counter() - start, max_seconds)
        chosen = run.next_pairs(todo)[:max_attempts - len(run.order)] if not status else []
        if not chosen:
            status = status or "no untried pair left on any path"
            break
        n_conn, n_min = len(run.connections), len(run.new_minima)
        found = run.attempt(chosen)
        if on_round is not None:
            on_round(Round(run.new_minima[n_min:], run.connections[n_conn:], found,
                           sum(run.path(*t) is not None for t in targets)))
    paths = [run.path(a, b) for a, b in targets]
    return ConnectResult(targets, np.array([p is not None for p in paths]), paths, run.connections, run.new_minima,
                         run.order, dict(run.rejected), getattr(energy, "nfev", 0) - nfev0,
                         time.perf_counter() - start, status)


def _stop(todo: list, attempts: int, max_attempts: int, seconds: float, max_seconds: float) -> str:
    """Why :func:`connect` stops before its next round ('' where it does not)."""
    if not todo:
        return "all pairs connected"
    if attempts >= max_attempts:
        return f"attempt budget ({max_attempts}) spent"
    if seconds >= max_seconds:
        return f"time budget ({max_seconds} s) spent"
    return ""
