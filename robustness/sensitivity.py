"""Sensitivity: the log-volume of the output box of an l-inf input ball.

For each data point, sensitivity = sum_j log(u_j - l_j) (nats) over the box [l, u]
that :func:`~robustness.bounds.output_bounds` gives for one of three output spaces:

* 'logits': the raw outputs y.
* 'logit_diff': y_j - y_ref for j != ref, ref the class given by ``labels`` or, by
  default, the class each network predicts at the clean point. Unchanged when one
  vector is added to every class's output weights (and one number to every bias).
* 'softmax': the softmax outputs p_j = 1 / sum_i exp(y_i - y_j), bounded soundly
  from bounds of all pairwise differences y_i - y_j (also invariant as above).

Robustness is the negative sensitivity. Widths are floored at
``floor * max(1, |l_j|, |u_j|)`` (default floor 1e-12) and capped at the largest
finite number of the dtype, so results are finite even for eps = 0 or huge eps
(below the floor, or below the dtype's resolution, the value carries no information).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._inputs import Domain, as_batch, as_labels, check_choice, check_nonnegative
from .bounds import METHODS, logit_differences, output_bounds, points_per_chunk
from .network import Network, forward

SPACES = ("logits", "logit_diff", "softmax")


@dataclass(frozen=True)
class Sensitivity:
    """Log-volumes of output boxes, with how they were computed.

    values: (K, N) per data point (nats); mean: (K,) over the points; eps: ball radius
    in input units; method: 'ibp' | 'crown' | 'ibp+crown'; space: 'logits' |
    'logit_diff' | 'softmax'; split: the caller's label of the data (e.g. 'test');
    domain: the input domain the ball was clipped to, as given (None: not clipped).
    """

    values: Tensor
    mean: Tensor
    eps: float
    method: str
    space: str
    split: str
    domain: Domain = None

    @property
    def robustness(self) -> Tensor:
        """Negative mean sensitivity, (K,)."""
        return -self.mean


def box_log_volume(lower: Tensor, upper: Tensor, floor: float = 1e-12) -> Tensor:
    """sum_j log(u_j - l_j) over the last axis, widths floored at floor * max(1, |l_j|, |u_j|)."""
    scale = torch.maximum(lower.abs(), upper.abs()).clamp(min=1)
    width = torch.maximum(upper - lower, floor * scale).clamp(max=torch.finfo(lower.dtype).max)
    return width.log().sum(-1)


def _pairwise_differences(n_out: int) -> Tensor:
    """C of shape (1, 1, n_out * n_out, n_out); row j * n_out + i is e_i - e_j."""
    eye = torch.eye(n_out, dtype=torch.float64)
    return (eye.unsqueeze(0) - eye.unsqueeze(1)).view(1, 1, n_out * n_out, n_out)


def log_volume(net: Network, x: Tensor, eps: float, *, method: str = "ibp", space: str = "logits",
               labels: Tensor | None = None, domain: Domain = None, split: str = "",
               floor: float = 1e-12) -> Sensitivity:
    """Sensitivity of K networks at the points x (N, *input_shape) for the ball of radius eps.

    ``labels`` (N,) set the reference class of 'logit_diff' (default: predicted
    class); ``domain`` (lower, upper) clips the ball (e.g. (0, 1) for pixels). The
    values are differentiable (almost everywhere) w.r.t. the weights.
    """
    eps = check_nonnegative(eps)
    if not check_nonnegative(floor, "floor") > 0:
        raise ValueError(f"floor must be > 0, got {floor!r}")
    check_choice("method", method, METHODS)
    check_choice("space", space, SPACES)
    if not isinstance(split, str):
        raise ValueError(f"split must be a string, got {split!r}")
    n_out = net.n_outputs
    x = as_batch(x, net.input_shape, net.k, net.dtype)
    ref = None
    if space == "logit_diff":
        if labels is None:
            with torch.no_grad():
                ref = forward(net, x).argmax(-1)
        else:
            ref = as_labels(labels, x.shape[1], n_out)
    # in chunks of points, so that the (K, N, rows) boxes and their temporaries stay small
    step = points_per_chunk(net, method, {"logits": n_out, "logit_diff": n_out - 1, "softmax": n_out * n_out}[space])
    values = torch.cat([_values(net, x[:, a:a + step], eps, method, space,
                                None if ref is None else ref[..., a:a + step], domain, floor)
                        for a in range(0, x.shape[1], step)], dim=1)
    return Sensitivity(values, values.mean(-1), eps, method, space, split, domain)


def _values(net: Network, x: Tensor, eps: float, method: str, space: str, ref: Tensor | None, domain: Domain,
            floor: float) -> Tensor:
    """Log-volumes (K, n) of the points x (1 or K, n, *input_shape); ``ref`` (n,) or (K, n) for 'logit_diff'."""
    n_out = net.n_outputs
    if space == "logits":
        lo, hi = output_bounds(net, x, eps, method, domain=domain)
    elif space == "logit_diff":
        lo, hi = output_bounds(net, x, eps, method, C=logit_differences(ref, n_out), domain=domain)
    else:
        lo, hi = output_bounds(net, x, eps, method, C=_pairwise_differences(n_out), domain=domain)
        lo, hi = lo.unflatten(-1, (n_out, n_out)), hi.unflatten(-1, (n_out, n_out))
        lo, hi = torch.exp(-torch.logsumexp(hi, -1)), torch.exp(-torch.logsumexp(lo, -1))
    return box_log_volume(lo, hi, floor)
