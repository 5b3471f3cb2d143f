"""Accuracy-type scores of K networks on a data set, each of shape (K,).

Inputs x: (N, *input_shape) or (K, N, *input_shape); labels y: (N,) integers.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._inputs import Domain, as_batch, as_labels
from .attacks import deepfool, fgsm, pgd
from .bounds import logit_differences, output_bounds
from .network import Network, forward


def _labels(net: Network, x: Tensor, y: Tensor) -> Tensor:
    return as_labels(y, as_batch(x, net.input_shape, net.k, net.dtype).shape[1], net.n_outputs)


def clean_accuracy(net: Network, x: Tensor, y: Tensor) -> Tensor:
    """Fraction of points whose predicted class is y."""
    y = _labels(net, x, y)
    with torch.no_grad():
        return (forward(net, x).argmax(-1) == y).double().mean(-1)


def robust_accuracy(net: Network, x: Tensor, y: Tensor, eps: float, *, steps: int = 40,
                    step_size: float | None = None, restarts: int = 1, domain: Domain = None,
                    generator: torch.Generator | None = None) -> Tensor:
    """Fraction of points classified correctly at x, at the PGD adversary (cross-entropy, see
    :func:`~robustness.attacks.pgd`) and at the FGSM point (so the estimate is never above FGSM's,
    PGD's one-step special case): an upper estimate of the accuracy under every attack of size eps."""
    y = _labels(net, x, y)
    adv = pgd(net, x, eps, labels=y, steps=steps, step_size=step_size, restarts=restarts, domain=domain,
              generator=generator)
    one_step = fgsm(net, x, y, eps, domain)
    with torch.no_grad():
        correct = forward(net, x).argmax(-1) == y
        for z in (adv, one_step):
            correct &= forward(net, z).argmax(-1) == y
    return correct.double().mean(-1)


def verified_accuracy(net: Network, x: Tensor, y: Tensor, eps: float, *, method: str = "ibp+crown",
                      domain: Domain = None) -> Tensor:
    """Fraction of points with y_true - y_j > 0 proven for all j != true over the
    whole ball: a lower bound of the accuracy under every attack of size eps."""
    y = _labels(net, x, y)
    with torch.no_grad():
        _, upper = output_bounds(net, x, eps, method, C=logit_differences(y, net.n_outputs), domain=domain)
    return (upper < 0).all(-1).double().mean(-1)


def rho_adv(net: Network, x: Tensor, *, overshoot: float = 0.02, max_iter: int = 50) -> Tensor:
    """DeepFool robustness (K,): mean over points of ||r||_2 / ||x||_2, r from
    :func:`~robustness.attacks.deepfool` (points it did not flip within ``max_iter`` included;
    points where the outputs' differences have zero gradient, with no boundary to step to, left
    out: NaN when that is every point, e.g. a network whose outputs do not depend on its input)."""
    xb = as_batch(x, net.input_shape, net.k, net.dtype)
    r, _ = deepfool(net, xb, overshoot=overshoot, max_iter=max_iter)
    size = r.flatten(2).norm(dim=-1)  # 0 only where DeepFool had no boundary to step to
    return torch.nanmean(torch.where(size > 0, size / xb.flatten(2).norm(dim=-1), torch.nan), -1)
