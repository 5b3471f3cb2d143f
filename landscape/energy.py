"""The loss of a network as a potential energy over its weights, batched over walkers.

E(w) is the sum of the loss terms (:mod:`landscape.loss`); by default
E(w) = mean over the N training samples of the softmax cross-entropy of the logits
       + lam * ||w||^2 over all parameters (biases included),
the convention of the GMIN/OPTIM MLP potential. Arrays in and out are NumPy float64:
``w`` of shape (K, P) (or (P,), treated as K = 1), energies (K,), gradients (K, P).

lam must be > 0: adding one vector to every class's output weights (and one number to every
output bias) leaves the cross-entropy unchanged, so with lam = 0 no minimum is isolated.

Kinks. With an IBP sensitivity term E(w) = F(w, |w|) has a kink at each zero weight-matrix entry
(:mod:`landscape.loss`; ``Energy.kinks`` is their (P,) mask, None for a smooth E). There the
gradient is the one-sided pair g_i +- s_i: :meth:`Energy.energy_gradient` returns g_i (torch's
convention sign(0) = 0), :meth:`Energy.energy_gradient_kinks` returns s too, and
:meth:`Energy.energy_pseudo_gradient` the pseudo-gradient (:func:`landscape.minimize.pseudo_gradient`),
the gradient wherever E is differentiable and 0 at a zero coordinate where |g_i| <= s_i.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch

from . import kernel
from . import loss as loss_mod
from . import minimize
from .models import MLP, Model

BACKENDS = ("auto", "autograd", "kernel")


class Energy:
    """E, its gradient, Hessian-vector products and Hessian for one model and data set.

    ``backend``: 'kernel' (compiled fused MLP kernel, :mod:`landscape.kernel`), 'autograd'
    (torch autograd on the batched forward pass; any model), or 'auto' (the kernel for an MLP
    where it builds, else autograd). ``threads`` is the kernel's thread count (default 1).
    ``nfev`` counts single-network energy+gradient evaluations (a call on K walkers adds K).

    ``loss``: the terms (:mod:`landscape.loss`); a number lam is shorthand for
    ``(CrossEntropy(), L2(lam))``, and so is the keyword ``lam=`` (default: lam 1e-4). The kernel
    evaluates exactly cross-entropy + L2; a loss with a sensitivity term uses autograd.
    ``domain`` (lower, upper): the input domain a sensitivity ball is clipped to, e.g. (0, 1) for
    pixels (default None: not clipped).

    ``kinks``: the (P,) bool mask of coordinates where E has a kink at zero (None: E is smooth;
    see the module docstring).
    """

    def __init__(self, model: Model, X: np.ndarray, y: np.ndarray,
                 loss: float | Sequence[loss_mod.Term] | None = None, backend: str = "auto", threads: int = 1,
                 domain: loss_mod.Domain = None, *, lam: float | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown energy backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        terms = _terms(loss, lam)
        X = np.ascontiguousarray(X, dtype=np.float64)
        y = np.asarray(y)
        if X.ndim != 2 or X.shape[1] != model.n_inputs:
            raise ValueError(f"X must have shape (N, {model.n_inputs}) for this model, got {X.shape}")
        if y.shape != (X.shape[0],):
            raise ValueError(f"y must have shape ({X.shape[0]},) to match X, got {y.shape}")
        if not np.all(np.isfinite(X)):
            raise ValueError("X contains NaN or infinite values")
        if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= model.n_classes):
            raise ValueError(f"y must hold integer class indices in [0, {model.n_classes}); got {y.dtype} "
                             f"in [{y.min()}, {y.max()}]")
        self.model, self.loss, self.n_params = model, terms, model.n_params
        self.lam = loss_mod.lam_of(terms)
        self.X, self.y = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
        self._data = loss_mod.LossData(model, self.X, self.y, domain)
        self.nfev = 0
        self._kernel = None
        plain = loss_mod.is_plain(terms)
        if backend != "autograd" and plain and isinstance(model, MLP) and kernel.available():
            self._kernel = kernel.MLPKernel(model.widths, model.activation, model.bias, X, y, self.lam,
                                            threads=threads, sharpness=model.sharpness)
        elif backend == "kernel":
            reason = ("it evaluates cross-entropy + L2 only: use backend 'autograd' for this loss" if not plain
                      else "the kernel covers MLPs only" if not isinstance(model, MLP) else kernel.unavailable_reason())
            raise ValueError(f"energy backend 'kernel' is not available: {reason}")
        self.backend = "kernel" if self._kernel is not None else "autograd"
        self.kinks = None if self._kernel is not None else loss_mod.kink_mask(terms, model)

    def _batch(self, w: np.ndarray) -> np.ndarray:
        w = np.asarray(w, dtype=np.float64)
        if w.ndim == 1:
            w = w[None]
        if w.ndim != 2 or w.shape[1] != self.n_params:
            raise ValueError(f"w must have shape (K, {self.n_params}) or ({self.n_params},), got {w.shape}")
        return np.ascontiguousarray(w)

    def energy_t(self, w: torch.Tensor) -> torch.Tensor:
        """Differentiable energies (K,) of a torch batch ``w`` (K, P)."""
        return loss_mod.evaluate(self.loss, w, self._data)

    def __call__(self, w: np.ndarray) -> np.ndarray:
        """Energies (K,)."""
        return self.energy_gradient(w)[0]

    def energy_gradient(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Energies (K,) and gradients (K, P) of ``w`` (K, P)."""
        w = self._batch(w)
        self.nfev += w.shape[0]
        if self._kernel is not None:
            return self._kernel.energy_gradient(w)
        if not len(w):  # no networks: nothing to bound, and a CNN's batched forward pass needs one
            return np.zeros(0), np.zeros_like(w)
        wt = torch.from_numpy(w).clone().requires_grad_(True)
        E = self.energy_t(wt)
        (G,) = torch.autograd.grad(E.sum(), wt)
        return E.detach().numpy(), G.numpy()

    @property
    def quench_fun(self):
        """What :class:`landscape.minimize.LBFGS` takes with ``kinks=self.kinks``:
        :meth:`energy_gradient` for a smooth E, :meth:`energy_gradient_kinks` otherwise."""
        return self.energy_gradient if self.kinks is None else self.energy_gradient_kinks

    def energy_gradient_kinks(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Energies (K,), gradients G (K, P) and kink coefficients S (K, P) of ``w`` (K, P), from one
        backward pass with |w| a separate argument a of the sensitivity terms: G = dF/dw + sign(w) dF/da
        (the gradient; at a zero coordinate, sign(0) = 0, its smooth part) and S = dF/da on the
        ``kinks`` coordinates (0 elsewhere), so the one-sided derivatives at w_i = 0 are G_i +- S_i.
        A smooth E gives S = 0."""
        if self.kinks is None:
            E, G = self.energy_gradient(w)
            return E, G, np.zeros_like(G)
        w = self._batch(w)
        self.nfev += w.shape[0]
        if not len(w):
            return np.zeros(0), np.zeros_like(w), np.zeros_like(w)
        wt = torch.from_numpy(w).clone().requires_grad_(True)
        at = torch.from_numpy(np.abs(w)).requires_grad_(True)
        E = loss_mod.evaluate(self.loss, wt, self._data, abs_w=at)
        Gw, Ga = torch.autograd.grad(E.sum(), (wt, at))
        S = np.where(self.kinks, Ga.numpy(), 0.0)
        return E.detach().numpy(), Gw.numpy() + np.sign(w) * S, S

    def energy_pseudo_gradient(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Energies (K,) and pseudo-gradients (K, P) of ``w`` (K, P): the gradient where E is
        differentiable, and at a zero kink coordinate the one-sided derivative that descends, or 0
        where neither does (:func:`landscape.minimize.pseudo_gradient`). The gradient for a smooth E."""
        if self.kinks is None:
            return self.energy_gradient(w)
        w = self._batch(w)
        E, G, S = self.energy_gradient_kinks(w)
        return E, minimize.pseudo_gradient(w, G, S, self.kinks)

    def hvp(self, w: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Hessian-vector products (K, P): H(w_k) v_k for ``w`` and ``v`` of shape (K, P).

        Autograd backend: exact (double backward). Kernel backend: central difference of two
        gradients, [g(w + h v) - g(w - h v)] / 2h with h = 1e-4 / |v| (one batched call; error
        ~1e-8 relative from the third derivative, ~1e-12 from rounding)."""
        w, v = self._batch(w), self._batch(v)
        if v.shape != w.shape:
            raise ValueError(f"v must have the shape of w {w.shape}, got {v.shape}")
        if self._kernel is not None:
            h = 1e-4 / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-300)
            _, G = self.energy_gradient(np.concatenate([w + h * v, w - h * v]))
            K = len(w)
            return (G[:K] - G[K:]) / (2 * h)
        if not len(w):
            return np.zeros_like(w)
        wt = torch.from_numpy(w).clone().requires_grad_(True)
        (G,) = torch.autograd.grad(self.energy_t(wt).sum(), wt, create_graph=True)
        (Hv,) = torch.autograd.grad((G * torch.from_numpy(v)).sum(), wt)
        return Hv.numpy()

    def hessian(self, w: np.ndarray, chunk: int = 256) -> np.ndarray:
        """The full symmetric Hessian (P, P) at one point ``w`` (P,); ``chunk`` columns at a time."""
        w = self._batch(w)
        if w.shape[0] != 1:
            raise ValueError("hessian takes a single point w of shape (P,)")
        P = self.n_params
        H = np.empty((P, P))
        eye = np.eye(P)
        for a in range(0, P, chunk):
            b = min(P, a + chunk)
            H[a:b] = self.hvp(np.repeat(w, b - a, axis=0), eye[a:b])
        return 0.5 * (H + H.T)


def _terms(loss: float | Sequence[loss_mod.Term] | None, lam: float | None) -> tuple[loss_mod.Term, ...]:
    """The checked terms of ``loss``, or of ``lam`` (a number: lam of the default loss)."""
    given = [v for v in (loss, lam) if v is not None]
    if len(given) > 1:
        raise ValueError("give the loss or lam, not both (a number loss is lam)")
    loss = given[0] if given else 1e-4
    return loss_mod.default_loss(loss) if isinstance(loss, numbers.Real) else loss_mod.check(loss)
