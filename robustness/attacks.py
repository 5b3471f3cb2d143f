"""Adversarial perturbations: FGSM, PGD (l-inf) and DeepFool (l2).

Attacks run on a batched :class:`~robustness.network.Network` at once: inputs x of
shape (N, *input_shape) or (K, N, *input_shape) give one adversarial input per
network and point, of shape (K, N, *input_shape). Gradients are taken w.r.t. the
inputs only (also inside ``torch.no_grad()``); the weights are not changed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._inputs import Domain, as_batch, as_labels, check_nonnegative, check_positive_int, input_box
from .network import Network, forward


def _objective(net: Network, x: Tensor, labels: Tensor | None, direction: Tensor | None) -> Tensor:
    """Per (network, point) value the attack maximises: (K, N)."""
    y = forward(net, x)
    if direction is not None:
        return (y * direction).sum(-1)
    k, n = y.shape[:2]
    return F.cross_entropy(y.flatten(0, 1), labels.expand(k, n).flatten(), reduction="none").view(k, n)


def pgd(net: Network, x: Tensor, eps: float, *, labels: Tensor | None = None, direction: Tensor | None = None,
        steps: int = 40, step_size: float | None = None, restarts: int = 1, random_start: bool = True,
        domain: Domain = None, generator: torch.Generator | None = None) -> Tensor:
    """Projected gradient ascent in the l-inf ball of radius eps (intersected with ``domain``).

    Maximises the cross-entropy at ``labels`` (shape (N,)), or, with ``direction``
    (broadcastable to (K, N, out)), the output combination direction . y: e.g.
    direction = e_j maximises output j, -e_j minimises it, e_t - e_y targets class t.
    Each restart starts uniformly in the box (or at x without ``random_start``) and
    takes ``steps`` signed-gradient steps of ``step_size`` (default 2.5 eps / steps);
    the iterate with the largest objective over all steps and restarts is returned
    (not only the last: a step can overshoot), shape (K, N, *input_shape).
    """
    eps = check_nonnegative(eps)
    check_positive_int("steps", steps)
    check_positive_int("restarts", restarts)
    if (labels is None) == (direction is None):
        raise ValueError("pgd needs exactly one of labels and direction")
    x = as_batch(x, net.input_shape, net.k, net.dtype)
    x = x.expand(net.k, *x.shape[1:])
    if labels is not None:
        labels = as_labels(labels, x.shape[1], net.n_outputs)
    else:
        direction = torch.as_tensor(direction, dtype=net.dtype)
        try:
            torch.broadcast_shapes(direction.shape, (net.k, x.shape[1], net.n_outputs))
        except RuntimeError:
            raise ValueError(f"direction of shape {tuple(direction.shape)} does not broadcast to "
                             f"({net.k}, {x.shape[1]}, {net.n_outputs})") from None
    step_size = 2.5 * eps / steps if step_size is None else check_nonnegative(step_size, "step_size")
    lo, hi = input_box(x, eps, domain)
    best_x, best = x, None
    with torch.enable_grad():
        for _ in range(restarts):
            if random_start:
                u = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
                xa = lo + (hi - lo) * u
            else:
                xa = x
            for _ in range(steps):
                xa = xa.detach().requires_grad_(True)
                value = _objective(net, xa, labels, direction)
                grad, = torch.autograd.grad(value.sum(), xa)
                best_x, best = _keep_best(best_x, best, xa.detach(), value.detach())
                xa = torch.minimum(torch.maximum(xa.detach() + step_size * grad.sign(), lo), hi)
            with torch.no_grad():
                best_x, best = _keep_best(best_x, best, xa, _objective(net, xa, labels, direction))
    return best_x


def _keep_best(best_x: Tensor, best: Tensor | None, xa: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
    """The points (K, N, ...) of the larger objective (K, N), point by point, of the best so far and ``xa``."""
    if best is None:
        return xa, value
    better = (value > best).view(*value.shape, *[1] * (xa.dim() - 2))
    return torch.where(better, xa, best_x), torch.maximum(value, best)


def fgsm(net: Network, x: Tensor, labels: Tensor, eps: float, domain: Domain = None) -> Tensor:
    """Fast gradient sign method: x + eps sign(grad of the cross-entropy), clipped to ``domain``.

    Returns (K, N, *input_shape).
    """
    eps = check_nonnegative(eps)
    x = as_batch(x, net.input_shape, net.k, net.dtype)
    x = x.expand(net.k, *x.shape[1:]).detach().requires_grad_(True)
    labels = as_labels(labels, x.shape[1], net.n_outputs)
    lo, hi = input_box(x.detach(), eps, domain)
    with torch.enable_grad():
        grad, = torch.autograd.grad(_objective(net, x, labels, None).sum(), x)
    return torch.minimum(torch.maximum(x.detach() + eps * grad.sign(), lo), hi)


def _logits_and_jacobian(net: Network, x: Tensor) -> tuple[Tensor, Tensor]:
    """Outputs (K, N, out) and their gradients (K, N, out, D) at x (K, N, *input_shape), D = input size."""
    k, n = x.shape[:2]
    out = net.n_outputs
    with torch.enable_grad():
        xr = x.detach().unsqueeze(2).expand(k, n, out, *x.shape[2:]).reshape(k, n * out, *x.shape[2:])
        xr.requires_grad_(True)
        y = forward(net, xr).view(k, n, out, out)  # copy c of each point differentiates output c
        grad, = torch.autograd.grad(y.diagonal(dim1=2, dim2=3).sum(), xr)
    return y[:, :, 0].detach(), grad.view(k, n, out, -1)


def deepfool(net: Network, x: Tensor, *, overshoot: float = 0.02, max_iter: int = 50) -> tuple[Tensor, Tensor]:
    """DeepFool (multi-class, l2): a small perturbation r that changes the predicted class.

    Iterates r_i = (|f_l| + 1e-4) w_l / ||w_l||^2 toward the nearest linearised
    decision boundary l, and returns r = (1 + overshoot) sum_i r_i for every network
    and point, shape (K, N, *input_shape), and whether the prediction at x + r
    differs from the one at x, (K, N) bool (False where ``max_iter`` did not suffice, and where
    the outputs' differences have zero gradient, so no boundary can be stepped to: r stays 0
    there). Not clipped to any domain.
    """
    check_nonnegative(overshoot, "overshoot")
    check_positive_int("max_iter", max_iter)
    x = as_batch(x, net.input_shape, net.k, net.dtype)
    x = x.expand(net.k, *x.shape[1:])
    total = torch.zeros(*x.shape[:2], x[0, 0].numel(), dtype=x.dtype, device=x.device)  # (K, N, D)
    with torch.no_grad():
        start = forward(net, x).argmax(-1, keepdim=True)  # (K, N, 1)
        for _ in range(max_iter):
            y, jac = _logits_and_jacobian(net, x + (1 + overshoot) * total.view(x.shape))
            active = y.argmax(-1, keepdim=True) == start
            if not active.any():
                break
            w = jac - jac.gather(2, start.unsqueeze(-1).expand(-1, -1, 1, jac.shape[-1]))  # (K, N, out, D)
            f = y - y.gather(2, start)
            norm = w.norm(dim=-1)
            distance = torch.where(norm > 0, f.abs() / norm, torch.inf).scatter(2, start, torch.inf)
            target = distance.argmin(-1, keepdim=True)  # nearest boundary
            active &= distance.gather(2, target).isfinite()  # no boundary to step to: the point stays
            w_l = w.gather(2, target.unsqueeze(-1).expand(-1, -1, 1, jac.shape[-1])).squeeze(2)
            scale = (f.gather(2, target).abs() + 1e-4) / norm.gather(2, target).clamp_min(1e-300) ** 2
            total = total + torch.where(active, scale * w_l, 0.0)
        r = (1 + overshoot) * total.view(x.shape)
        flipped = forward(net, x + r).argmax(-1) != start.squeeze(-1)
    return r, flipped
