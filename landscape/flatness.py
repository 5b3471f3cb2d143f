"""Flatness of a minimum: the log-determinant of the Hessian of E over its non-zero modes.

``log_det`` = the sum of log(lambda) over the Hessian eigenvalues lambda > ``cutoff`` * lambda_max
(lambda in nats per squared parameter unit). In the harmonic approximation a basin's volume is
proportional to exp(-log_det / 2) (the vibrational partition function of the energy-landscape
literature, up to constants), so a larger log_det is a sharper, smaller basin. Eigenvalues at or
below the cutoff (default 1e-6 of the largest, the relative tolerance of the saddle check in
:mod:`landscape.hessian`, below which it cannot tell them from zero) are *zero modes*: left out of
the sum, and counted.

Two ways to compute it:

* the full spectrum (:func:`log_det_full`): ``numpy.linalg.eigvalsh`` of ``Energy.hessian``, for
  P up to ``full_max`` (default 3000: a 72 MB Hessian);
* above it, stochastic Lanczos quadrature (:func:`log_det_slq`; Ubaru, Chen & Saad, SIAM J. Matrix
  Anal. Appl. 38 (2017) 1075): for each probe v, v^T f(H) v ~ |v|^2 sum_k tau_k^2 f(theta_k) from m
  steps of Lanczos on Hessian-vector products (theta_k: Ritz values, tau_k: first components of the
  eigenvectors of the tridiagonal matrix); the trace is the mean over Rademacher probes and its
  standard error their standard deviation / sqrt(probes). That error bar covers the probes'
  randomness, not the quadrature error of m steps (none for m >= P; compare with 2m to check).
  The cutoff is relative to the largest Ritz value of the minimum's probes.

For a loss with kinks (the sensitivity term: minima on faces where weights are exactly 0, see
:mod:`landscape.identify`), the Hessian is that of E restricted to the minimum's face
(:func:`landscape.identify.face`), as in the minimum check: its zero kink coordinates are
neither modes nor zero modes.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .energy import Energy
from .identify import face

METHODS = ("eigvalsh", "slq")
MEMORY = 1 << 28
"""Bytes of Lanczos vectors held at once (SLQ), or of the Hessians of one batch, computed one at a time
(full spectrum): sets the minima per batch."""


@dataclass(frozen=True)
class Flatness:
    """How ``log_det`` is computed: the full spectrum for P <= ``full_max``, else SLQ with ``probes``
    Rademacher probes (drawn from ``seed`` and the minimum's id, so a minimum's estimate does not
    depend on the others) of ``steps`` Lanczos steps each; ``cutoff`` relative to the largest
    eigenvalue (module docstring)."""

    full_max: int = 3000
    cutoff: float = 1e-6
    probes: int = 30
    steps: int = 80
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("full_max", 0), ("probes", 2), ("steps", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"flatness {name} must be an integer >= {low}, got {value!r}")
        c = self.cutoff
        if isinstance(c, bool) or not isinstance(c, numbers.Real) or not 0 < c < 1:
            raise ValueError(f"flatness cutoff must be a number in (0, 1), got {c!r}")

    def method(self, n_params: int) -> str:
        """'eigvalsh' (full spectrum) for ``n_params`` <= full_max, else 'slq'."""
        return "eigvalsh" if n_params <= self.full_max else "slq"

    def options(self, n_params: int) -> dict:
        """What defines the value for ``n_params`` parameters (the seed only draws the probes)."""
        if self.method(n_params) == "eigvalsh":
            return {"cutoff": self.cutoff}
        return {"cutoff": self.cutoff, "probes": self.probes, "steps": min(self.steps, n_params)}

    def minima_per_batch(self, n_params: int) -> int:
        """Minima computed at once within :data:`MEMORY`."""
        per_minimum = n_params if self.method(n_params) == "eigvalsh" else self.probes * min(self.steps, n_params)
        return max(1, MEMORY // (8 * n_params * per_minimum))


@dataclass(frozen=True)
class LogDet:
    """Per minimum, each (K,): ``value`` (the sum of log eigenvalues above the cutoff), ``zero_modes``
    (how many are at or below it), and their standard errors (0 from the full spectrum)."""

    value: np.ndarray
    stderr: np.ndarray
    zero_modes: np.ndarray
    zero_modes_stderr: np.ndarray


def log_det(energy: Energy, W: np.ndarray, ids: np.ndarray, settings: Flatness = Flatness()) -> LogDet:
    """``log_det`` of the Hessian of ``energy`` at the minima ``W`` (K, P) with ids ``ids`` (K,),
    by the method ``settings`` chooses for P."""
    W = np.atleast_2d(W)
    if settings.method(W.shape[1]) == "eigvalsh":
        return log_det_full(energy, W, settings.cutoff)
    probes = np.stack([rademacher(settings.seed, int(i), settings.probes, W.shape[1]) for i in ids])
    return log_det_slq(energy, W, probes, settings.steps, settings.cutoff)


def rademacher(seed: int, key: int, probes: int, n: int) -> np.ndarray:
    """(probes, n) random signs +-1 drawn from the stream of (``seed``, ``key``)."""
    return 2.0 * np.random.default_rng([seed, key]).integers(0, 2, (probes, n)) - 1.0


def log_det_full(energy: Energy, W: np.ndarray, cutoff: float = Flatness.cutoff) -> LogDet:
    """``log_det`` and zero modes of each row of ``W`` (K, P) from the full spectrum of ``energy.hessian``
    (on the row's face)."""
    def spectrum(w: np.ndarray) -> np.ndarray:
        free = face(energy, w)
        return np.linalg.eigvalsh(energy.hessian(w)[np.ix_(free, free)])

    out = np.array([spectrum_log_det(spectrum(w), cutoff) for w in W]).reshape(-1, 2)
    zero = np.zeros(len(out))
    return LogDet(out[:, 0], zero, out[:, 1], zero.copy())


def spectrum_log_det(eigenvalues: np.ndarray, cutoff: float = Flatness.cutoff) -> tuple[float, int]:
    """(sum of log lambda over lambda > cutoff * max(lambda, 0), how many others) of a spectrum (P,)."""
    keep = eigenvalues > cutoff * max(eigenvalues.max(), 0.0)
    return float(np.log(eigenvalues[keep]).sum()), int((~keep).sum())


def log_det_slq(energy: Energy, W: np.ndarray, probes: np.ndarray, steps: int = Flatness.steps,
                cutoff: float = Flatness.cutoff) -> LogDet:
    """SLQ estimates of ``log_det`` and zero modes at each row of ``W`` (K, P) from its ``probes``
    (K, R, P), R >= 2, with min(steps, P) Lanczos steps per probe (all K * R run as one batch)."""
    K, R, P = probes.shape
    if R < 2 or W.shape != (K, P):
        raise ValueError(f"probes must have shape (K, R >= 2, P) for W of shape (K, P); got {probes.shape}, {W.shape}")
    w = np.repeat(W, R, axis=0)
    free = np.stack([face(energy, x) for x in w]).astype(float)  # probes and products on each face
    theta, tau2 = lanczos_quadrature(lambda v: energy.hvp(w, v) * free, probes.reshape(K * R, P) * free, steps)
    theta, tau2 = theta.reshape(K, R, -1), tau2.reshape(K, R, -1) * free.reshape(K, R, P).sum(-1, keepdims=True)
    keep = theta > cutoff * np.maximum(theta.max(axis=(1, 2)), 0.0)[:, None, None]
    logs = (tau2 * np.log(np.where(keep, theta, 1.0))).sum(-1)  # (K, R): v^T f(H) v per probe
    zeros = (tau2 * ~keep).sum(-1)
    return LogDet(logs.mean(1), _stderr(logs), zeros.mean(1), _stderr(zeros))


def _stderr(samples: np.ndarray) -> np.ndarray:
    """Standard error of the mean over the last axis (R >= 2 samples)."""
    return samples.std(-1, ddof=1) / np.sqrt(samples.shape[-1])


def lanczos_quadrature(matvec: Callable[[np.ndarray], np.ndarray], V: np.ndarray,
                       steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes theta and weights tau^2, each (B, m) with m = min(steps, P), of the Gauss quadrature of
    the spectral measure of each start vector V[b] (B, P) of the symmetric operator ``matvec``
    ((B, P) -> (B, P), row b by row b): v^T f(H) v / |v|^2 ~ sum_k tau_k^2 f(theta_k), exact for m = P."""
    alpha, beta = _lanczos(matvec, V, min(steps, V.shape[1]))
    T = np.zeros((*alpha.shape, alpha.shape[1]))
    i = np.arange(alpha.shape[1])
    T[:, i, i] = alpha
    T[:, i[1:], i[:-1]] = T[:, i[:-1], i[1:]] = beta[:, :-1]
    theta, S = np.linalg.eigh(T)
    return theta, S[:, 0, :] ** 2


def _lanczos(matvec: Callable[[np.ndarray], np.ndarray], V: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Diagonal alpha and off-diagonal beta (beta[:, j] couples steps j and j + 1), each (B, m), of
    m Lanczos steps from each row of V, with full reorthogonalisation (classical Gram-Schmidt twice).
    A start vector whose Krylov space is exhausted early continues with zeros, which T decouples."""
    B, P = V.shape
    Q = np.zeros((m, B, P))
    alpha, beta = np.zeros((B, m)), np.zeros((B, m))
    q = V / np.linalg.norm(V, axis=1, keepdims=True)
    for j in range(m):
        Q[j] = q
        r = matvec(q)
        alpha[:, j] = np.einsum("bp,bp->b", q, r)
        size = np.linalg.norm(r, axis=1)
        for _ in range(2):
            r -= np.einsum("jb,jbp->bp", np.einsum("jbp,bp->jb", Q[:j + 1], r), Q[:j + 1])
        b = np.linalg.norm(r, axis=1)
        going = b > 1e-10 * size
        beta[:, j] = np.where(going, b, 0.0)
        q = np.where(going[:, None], r / np.where(going, b, 1.0)[:, None], 0.0)
    return alpha, beta
