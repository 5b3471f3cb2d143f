"""Is a converged point a minimum? The lowest eigenvalues of the Hessian of E decide.

A point with RMS gradient below tolerance is a minimum only if no Hessian eigenvalue is below
``-eig_tol``; an index-1 saddle has exactly one. L-BFGS can stop on a saddle when it stays in a
symmetric subspace (duplicated or dead hidden units), so the sampler checks every new point.
``eig_tol`` = 1e-6 * max(1, |largest eigenvalue|) with the full Hessian (float64 eigensolver
accuracy is ~1e-15 of the largest eigenvalue; converged points sit within ~|g| of a stationary
point), 1e-6 with Lanczos, which does not compute the largest one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse.linalg import LinearOperator, eigsh

from .energy import Energy

MODES = ("full", "lanczos")
N_LOWEST = 3


@dataclass(frozen=True)
class HessianCheck:
    """``eigenvalues``: the lowest ones, ascending; ``vector``: the unit eigenvector of the lowest;
    ``saddle``: whether the lowest is below ``-eig_tol``; ``index``: how many are."""

    eigenvalues: np.ndarray
    vector: np.ndarray
    eig_tol: float

    @property
    def index(self) -> int:
        return int((self.eigenvalues < -self.eig_tol).sum())

    @property
    def saddle(self) -> bool:
        return self.index > 0


def check(energy: Energy, x: np.ndarray, mode: str = "full") -> HessianCheck:
    """The lowest Hessian eigenpairs at ``x`` (P,): the full Hessian ('full'; P up to ~1000) or
    Lanczos on Hessian-vector products ('lanczos', scipy's ARPACK, Ritz values to relative
    tolerance 1e-2 with 32 Lanczos vectors: on digits 64-32-10 that is 616 products instead of
    2,147 at 1e-8, and the eigenvalues agree to 3e-4 relative - ample for the sign test and for
    identification's curvature, which carries a safety factor of 10)."""
    if mode not in MODES:
        raise ValueError(f"unknown Hessian mode {mode!r}: choose one of {', '.join(MODES)}")
    P = energy.n_params
    if mode == "full":
        lam, vec = np.linalg.eigh(energy.hessian(x))
        return HessianCheck(lam[:N_LOWEST], vec[:, 0], 1e-6 * max(1.0, abs(lam[-1])))
    op = LinearOperator((P, P), matvec=lambda v: energy.hvp(x, v.ravel())[0], dtype=np.float64)
    # a generic (seeded) start vector: a symmetric one, e.g. all ones, keeps the Krylov space inside
    # the symmetric subspace and misses exactly the saddles that symmetric units produce
    v0 = np.random.default_rng(0).normal(size=P)
    lam, vec = eigsh(op, k=min(N_LOWEST, P - 1), which="SA", tol=1e-2, ncv=min(32, P), v0=v0)
    order = np.argsort(lam)
    return HessianCheck(lam[order], vec[:, order[0]], 1e-6)
