"""L-BFGS over K independent problems at once, each with its own memory and step control.

Convergence is on the RMS gradient, ||g|| / sqrt(P) <= ``tol`` (default 1e-6; use 1e-10 for
tight refinement), in float64. Each iteration of each problem takes the L-BFGS direction (the
two-loop recursion over its last ``memory`` steps, initial inverse Hessian s.y / y.y), caps the
step at ``maxstep`` (Euclidean norm over all P coordinates) and halves it until the energy does
not rise by more than ``rise_tol * max(1, |E|)`` (at most ``max_halvings`` times; then the memory
is reset and the problem restarts from steepest descent). Problems that converge, exhaust
``maxiter`` or hit a non-finite energy leave the batch at once; :class:`LBFGS` takes new work
into free slots, so one slow problem never holds K-1 idle.

The (s, y) pairs are stored as 8-bit integers, each pair row v as round(127 v / max|v|) with its
scale max|v| / 127 in float64: the two-loop recursion reads them all twice per iteration and
waits on memory (the pairs of K = 32 digits problems do not stay in cache between energy
calls), so fewer bytes make it faster and buy a longer memory. Rounding changes only the
preconditioner: s.y and y.y are taken from the stored pairs, so the recursion is exact BFGS on
them and its inverse Hessian stays positive definite; points, gradients, energies and the
convergence test stay float64. Measured on digits from the same 64 starts, evaluations per
quench at memory 20 / 40 / 60: float32 pairs 76.3 / 69.3 / 64.8, 8-bit 76.1 / 68.2 / 65.1; the
compiled recursion at K = 32, memory 40, between energy calls: 1.35 ms (float32 pairs at
memory 20 took 1.36).

``fun(x)`` must map a batch ``x`` (k, P) to energies (k,) and gradients (k, P); an
:class:`landscape.energy.Energy` does.

Kinks (OWL-QN). An energy with an IBP sensitivity term is E = F(w, |w|) on the coordinates of a
``kinks`` mask (:mod:`landscape.loss`): smooth within each orthant, with a kink at each zero, and
its minima sit on kinks (some weights exactly 0), where the gradient never becomes small. Given
``kinks``, ``fun`` returns (E, G, S) (:meth:`landscape.energy.Energy.energy_gradient_kinks`): at a
zero kink coordinate the one-sided derivatives are d+ = G_i + S_i (towards w_i > 0) and
d- = G_i - S_i, and the *pseudo-gradient* (:func:`pseudo_gradient`) is d+ where d+ < 0, d- where
d- > 0 (the larger in size if both: S_i < 0, a concave kink), else 0; elsewhere it is the gradient.
Its norm is the distance from 0 to the Clarke subdifferential ([d-, d+] at each zero), so it is 0
exactly at the stationary points of E. The quench is OWL-QN (orthant-wise limited-memory
quasi-Newton; Andrew & Gao, ICML 2007) on it: the two-loop direction of the pseudo-gradient,
kink components that do not descend along it set to 0; the orthant of each step is sign(w_i),
or sign(-pg_i) at a zero; every trial point is projected onto it (a kink coordinate that
would cross zero is set to exactly 0); pairs are differences of pseudo-gradients (0 on a
coordinate held at zero, which leaves it out of the curvature). **Convergence is on the RMS
pseudo-gradient** <= ``tol``, and ``MinimizeResult.grad`` holds it. Without ``kinks`` none of
this runs: the plain path is the L-BFGS above, unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import kernel

EnergyGradient = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

CONVERGED, MAXITER, NONFINITE, STUCK = "converged", "maxiter", "non-finite energy", "line search failed"


@dataclass
class MinimizeResult:
    """Per-problem outcome of a batch minimisation (arrays of length K unless stated).

    ``x`` (K, P) final points; ``grad`` (K, P) gradients there; ``energy``; ``grad_rms`` (RMS
    gradient at ``x``); ``converged`` (bool: grad_rms <= tol; anything else is *not* a minimum);
    ``status`` (one of 'converged', 'maxiter', 'non-finite energy', 'line search failed'); ``nit``
    iterations; ``nfev`` energy+gradient evaluations; ``tag`` the caller's label of each problem.
    """

    x: np.ndarray
    grad: np.ndarray
    energy: np.ndarray
    grad_rms: np.ndarray
    converged: np.ndarray
    status: np.ndarray
    nit: np.ndarray
    nfev: np.ndarray
    tag: np.ndarray

    def __len__(self) -> int:
        return len(self.energy)


def pseudo_gradient(x: np.ndarray, G: np.ndarray, S: np.ndarray, kinks: np.ndarray) -> np.ndarray:
    """The pseudo-gradient (k, P) at ``x`` (k, P) from gradients ``G`` (sign(0) = 0 at a kink, i.e.
    the smooth part there) and kink coefficients ``S`` (dE/d|w_i|) on the ``kinks`` (P,) coordinates
    (see the module docstring): G, except at zero kink coordinates: G + S where it is < 0, G - S
    where it is > 0 (the larger in size where both), else 0."""
    pg = G.copy()
    zero = (x == 0) & kinks
    if zero.any():
        right, left = G[zero] + S[zero], G[zero] - S[zero]
        use_right = (right < 0) & ~((left > 0) & (left > -right))
        pg[zero] = np.where(use_right, right, np.where(left > 0, left, 0.0))
    return pg


class LBFGS:
    """A batch of L-BFGS minimisations advanced together; see the module docstring.

    ``add(x, tags)`` starts problems; ``step()`` advances every running problem by one
    iteration and returns those that finished (a :class:`MinimizeResult`, possibly empty).
    Defaults: tol 1e-6, maxiter 10000, memory 10, maxstep 1.0, rise_tol 1e-10, max_halvings 10,
    first step ``h0`` = 0.1 times the gradient; ``threads`` for the compiled two-loop recursion.
    ``kinks`` (P,) bool: run OWL-QN on the pseudo-gradient, ``fun`` returning (E, G, S) (module
    docstring); None (default): plain L-BFGS.
    """

    def __init__(self, fun: EnergyGradient, n_params: int, tol: float = 1e-6, maxiter: int = 10000,
                 memory: int = 10, maxstep: float = 1.0, rise_tol: float = 1e-10, max_halvings: int = 10,
                 h0: float = 0.1, threads: int = 1, kinks: np.ndarray | None = None):
        if kinks is not None:
            kinks = np.asarray(kinks, dtype=bool)
            if kinks.shape != (int(n_params),):
                raise ValueError(f"kinks must be a ({n_params},) mask, got shape {kinks.shape}")
        self.kinks = kinks
        # what the iterations evaluate: (E, gradient), or (E, pseudo-gradient) with kinks
        self._fun = fun if kinks is None else self._pseudo
        if not tol > 0:
            raise ValueError(f"tol must be > 0, got {tol}")
        if memory < 1 or maxiter < 1 or not maxstep > 0:
            raise ValueError("memory and maxiter must be >= 1 and maxstep > 0")
        self.fun, self.P, self.tol, self.maxiter = fun, int(n_params), float(tol), int(maxiter)
        self.M, self.maxstep, self.rise_tol, self.max_halvings, self.h0 = memory, maxstep, rise_tol, max_halvings, h0
        self._alloc(0)
        self.compiled = kernel.available() and memory <= kernel.LBFGS_MAX_PAIRS
        self.threads = threads
        self.head = 0  # ring position of the newest (s, y) pair, shared by all slots
        self.pushes = 0  # pairs pushed so far (ring entries beyond it are empty)

    def _alloc(self, cap: int) -> None:
        P, M = self.P, self.M
        self.x, self.g, self.E = np.zeros((cap, P)), np.zeros((cap, P)), np.zeros(cap)
        self.S, self.Y = np.zeros((M, cap, P), np.int8), np.zeros((M, cap, P), np.int8)
        self.s_scale, self.y_scale = np.ones((M, cap)), np.ones((M, cap))
        self.rho = np.zeros((M, cap))
        self.gamma = np.zeros(cap)
        self.nit, self.nfev = np.zeros(cap, np.int64), np.zeros(cap, np.int64)
        self.fails, self.tag = np.zeros(cap, np.int64), np.zeros(cap, np.int64)
        self.active = np.zeros(cap, bool)
        self.pending = np.zeros(cap, bool)  # added, not evaluated yet
        self.tolv = np.zeros(cap)

    def __len__(self) -> int:
        return int(self.active.sum())

    def _pseudo(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        E, G, S = self.fun(x)
        return E, pseudo_gradient(x, G, S, self.kinks)

    def _project(self, xn: np.ndarray, orthant: np.ndarray) -> None:
        """Set, in place, the kink coordinates of ``xn`` outside ``orthant`` (signs; 0 keeps a zero) to 0."""
        xn[(np.sign(xn) != orthant) & self.kinks] = 0.0

    def _grow(self, need: int) -> None:
        """Make room for ``need`` more problems, compacting running ones to the front."""
        keep = np.flatnonzero(self.active)
        n = len(keep)
        names = ("x", "g", "E", "gamma", "nit", "nfev", "fails", "tag", "tolv", "pending")
        old = {name: getattr(self, name)[keep] for name in names}
        rings = ("S", "Y", "s_scale", "y_scale", "rho")
        old_rings = {name: getattr(self, name)[:, keep] for name in rings}
        self._alloc(max(n + need, 2 * n))
        for name in names:
            getattr(self, name)[:n] = old[name]
        for name in rings:
            getattr(self, name)[:, :n] = old_rings[name]
        self.active[:n] = True

    def add(self, x: np.ndarray, tags: np.ndarray | None = None, tol: float | None = None) -> None:
        """Start minimisations from the rows of ``x`` (k, P); ``tags`` (k,) label them (default 0..k-1);
        ``tol`` overrides the batch's RMS-gradient tolerance for these problems. Starting points
        are evaluated together at the next :meth:`step`. (Starting with the memory of a walker's
        previous quench was measured and is worse: 216 against 144 evaluations per Iris quench.)"""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if x.shape[1] != self.P:
            raise ValueError(f"starting points must have shape (k, {self.P}), got {x.shape}")
        k = len(x)
        tags = np.arange(k) if tags is None else np.asarray(tags)
        free = np.flatnonzero(~self.active)
        if len(free) < k:
            self._grow(k - len(free))
            free = np.flatnonzero(~self.active)
        slot = free[:k]
        self.x[slot] = x
        self.rho[:, slot] = 0.0
        self.gamma[slot] = self.h0
        self.nit[slot], self.nfev[slot], self.fails[slot], self.tag[slot] = 0, 0, 0, tags
        self.tolv[slot] = self.tol if tol is None else tol
        self.active[slot] = True
        self.pending[slot] = True

    def _evaluate_pending(self) -> None:
        p = np.flatnonzero(self.pending)
        if len(p):
            self.E[p], self.g[p] = self._fun(self.x[p])
            self.nfev[p] += 1
            self.pending[p] = False

    def _direction(self, sel: slice | np.ndarray) -> np.ndarray:
        """-H g for the slots ``sel`` by the two-loop recursion, newest pair first (compiled
        where :mod:`landscape.kernel` is available, NumPy otherwise)."""
        order = [(self.head - i) % self.M for i in range(min(self.M, self.pushes))]
        if self.compiled:
            rows = np.arange(len(self.active)) if isinstance(sel, slice) else sel
            return kernel.lbfgs_direction(self.S, self.Y, self.s_scale, self.y_scale, self.rho, self.gamma,
                                          self.g, order, rows, self.threads)
        q = self.g[sel].copy()
        rho = self.rho[:, sel]
        alpha = np.zeros((self.M, len(q)))
        for i, j in enumerate(order):
            use = rho[j] != 0  # an unusable pair is skipped (its arrays may hold anything)
            s, y = self._pair(j, sel)
            alpha[i] = np.where(use, np.einsum("ap,ap->a", s, q) * rho[j], 0.0)
            q -= np.where(use[:, None], y * alpha[i][:, None], 0.0)
        q *= self.gamma[sel][:, None]
        for i, j in reversed(list(enumerate(order))):
            use = rho[j] != 0
            s, y = self._pair(j, sel)
            beta = np.where(use, alpha[i] - np.einsum("ap,ap->a", y, q) * rho[j], 0.0)
            q += np.where(use[:, None], s * beta[:, None], 0.0)
        return np.negative(q, out=q)

    def _pair(self, j: int, sel: slice | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ring pair ``j`` of the slots ``sel`` as float64 (s, y), scales applied."""
        return (self.S[j, sel].astype(np.float64) * self.s_scale[j, sel][:, None],
                self.Y[j, sel].astype(np.float64) * self.y_scale[j, sel][:, None])

    def _push(self, h: int, idx: np.ndarray, x: np.ndarray, xn: np.ndarray, g: np.ndarray,
              gn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store the pairs (xn - x, gn - g) of slots ``idx`` at ring position ``h`` (see the module
        docstring); returns s.y and y.y of the stored pairs (NaN, and zeros stored, where not finite)."""
        if self.compiled:
            c = np.ascontiguousarray
            return kernel.lbfgs_push(self.S, self.Y, self.s_scale, self.y_scale, h, idx, c(x), c(xn), c(g), c(gn),
                                     self.threads)
        with np.errstate(invalid="ignore"):  # inf - inf
            s, y = xn - x, gn - g
        finite = np.isfinite(s).all(1) & np.isfinite(y).all(1)
        for ring, scale, v in ((self.S, self.s_scale, s), (self.Y, self.y_scale, y)):
            v = np.where(finite[:, None], v, 0.0)
            top = np.abs(v).max(1)
            top = np.where(top > 1e-300, top, 1.0)
            ring[h, idx] = np.rint(v * (127.0 / top)[:, None])
            scale[h, idx] = np.where(finite, top / 127.0, 1.0)
        s, y = self._pair(h, idx)
        return (np.where(finite, np.einsum("ap,ap->a", s, y), np.nan),
                np.where(finite, np.einsum("ap,ap->a", y, y), np.nan))

    def step(self) -> MinimizeResult:
        """One iteration of every running problem; returns the problems that finished."""
        self._evaluate_pending()
        idx = np.flatnonzero(self.active)
        if len(idx) == 0:
            return self._result(idx)
        sel = slice(None) if len(idx) == len(self.active) else idx  # views when every slot runs
        x, g, E = self.x[sel], self.g[sel], self.E[sel]
        d = self._direction(sel)
        if self.kinks is not None:  # OWL-QN: kink components must descend along the pseudo-gradient
            d[(d * g >= 0) & self.kinks] = 0.0
        uphill = np.einsum("ap,ap->a", d, g) >= 0
        if uphill.any():  # stale curvature: restart from steepest descent
            d[uphill] = -self.h0 * g[uphill]
            self.rho[:, idx[uphill]] = 0.0
            self.gamma[idx[uphill]] = self.h0
        norm = np.sqrt(np.einsum("ap,ap->a", d, d))
        d *= np.minimum(1.0, self.maxstep / np.maximum(norm, 1e-300))[:, None]
        xn = x + d
        if self.kinks is not None:  # each step stays in the orthant of x (of -pg at its zeros)
            orthant = np.where(x != 0, np.sign(x), -np.sign(g))
            self._project(xn, orthant)
        En, Gn = self._fun(xn)
        self.nfev[idx] += 1
        allowed = E + self.rise_tol * np.maximum(1.0, np.abs(E))
        bad = ~(En <= allowed)
        for _ in range(self.max_halvings):
            if not bad.any():
                break
            b = np.flatnonzero(bad)
            d[b] *= 0.5
            xn[b] = x[b] + d[b]
            if self.kinks is not None:
                xb = xn[b]
                self._project(xb, orthant[b])
                xn[b] = xb
            En[b], Gn[b] = self._fun(xn[b])
            self.nfev[idx[b]] += 1
            bad[b] = ~(En[b] <= allowed[b])
        ok = ~bad
        # the (s, y) pair enters every slot's ring (written in place when every slot runs); rho = 0
        # where it is unusable, which skips it
        self.head = (self.head + 1) % self.M
        self.pushes += 1
        h = self.head
        if isinstance(sel, np.ndarray):
            self.rho[h] = 0.0
        sy, yy = self._push(h, idx, x, xn, g, Gn)
        good = ok & (sy > 1e-300) & (yy > 0) & np.isfinite(yy)  # an overflowed y is unusable
        self.rho[h, sel] = np.where(good, 1.0 / np.where(good, sy, 1.0), 0.0)
        self.gamma[idx] = np.where(good, sy / np.where(good, yy, 1.0), self.gamma[idx])
        if ok.all():
            self.x[sel], self.g[sel], self.E[sel] = xn, Gn, En
        else:
            self.x[idx[ok]], self.g[idx[ok]], self.E[idx[ok]] = xn[ok], Gn[ok], En[ok]
        self.nit[idx] += 1
        # a walker whose halvings all failed restarts from steepest descent; twice in a row ends it
        self.fails[idx] = np.where(ok, 0, self.fails[idx] + 1)
        if bad.any():
            self.rho[:, idx[bad]] = 0.0
            self.gamma[idx[bad]] = self.h0
        rms = self._grad_rms(sel)
        done = (rms <= self.tolv[idx]) | (self.nit[idx] >= self.maxiter) | (self.fails[idx] >= 2) \
            | ~np.isfinite(self.E[idx])
        return self._result(idx[done], rms[done])

    def _grad_rms(self, slots: slice | np.ndarray) -> np.ndarray:
        g = self.g[slots]
        return np.sqrt(np.einsum("ap,ap->a", g, g) / self.P)

    def _result(self, slots: np.ndarray, rms: np.ndarray | None = None) -> MinimizeResult:
        """The problems in ``slots`` as a result (``rms``: their RMS gradients, when known), removed."""
        rms = self._grad_rms(slots) if rms is None else rms
        E = self.E[slots]
        conv = (rms <= self.tolv[slots]) & np.isfinite(E)
        status = np.where(conv, CONVERGED, np.where(~np.isfinite(E), NONFINITE,
                                                    np.where(self.fails[slots] >= 2, STUCK, MAXITER)))
        res = MinimizeResult(self.x[slots].copy(), self.g[slots].copy(), E.copy(), rms, conv, status,
                             self.nit[slots].copy(), self.nfev[slots].copy(), self.tag[slots].copy())
        self.active[slots] = False
        return res

    def drop(self, tags: np.ndarray) -> None:
        """Abandon the running problems labelled ``tags`` (no result is returned for them)."""
        slots = np.flatnonzero(self.active & np.isin(self.tag, tags))
        self.active[slots] = False
        self.pending[slots] = False

    def finished_initially(self) -> MinimizeResult:
        """Problems that were already converged (or non-finite) when added, removed from the batch."""
        self._evaluate_pending()
        idx = np.flatnonzero(self.active & (self.nit == 0))
        stop = (self._grad_rms(idx) <= self.tolv[idx]) | ~np.isfinite(self.E[idx])
        return self._result(idx[stop])


def concat(results: list[MinimizeResult]) -> MinimizeResult:
    """Join results, rows in the order given."""
    return MinimizeResult(*(np.concatenate([getattr(r, f) for r in results])
                            for f in MinimizeResult.__dataclass_fields__))


def minimize(fun: EnergyGradient, x0: np.ndarray, tol: float = 1e-6, maxiter: int = 10000, **options) -> MinimizeResult:
    """Minimise K independent problems from the rows of ``x0`` (K, P); results in row order.

    ``options`` go to :class:`LBFGS` (memory, maxstep, rise_tol, max_halvings, h0, threads, kinks).
    """
    x0 = np.atleast_2d(np.asarray(x0, dtype=np.float64))
    opt = LBFGS(fun, x0.shape[1], tol=tol, maxiter=maxiter, **options)
    opt.add(x0)
    parts = [opt.finished_initially()]
    while len(opt):
        parts.append(opt.step())
    res = concat(parts)
    order = np.argsort(res.tag, kind="stable")
    return MinimizeResult(*(getattr(res, f)[order] for f in MinimizeResult.__dataclass_fields__))
