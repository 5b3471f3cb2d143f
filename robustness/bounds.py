"""Boxes containing every output of a network for inputs in an l-inf ball.

The input set is the ball ||x' - x||_inf <= eps, intersected with ``domain`` (a pair
(lower, upper), e.g. (0, 1) for pixels) when given. All functions take a batched
:class:`~robustness.network.Network` (K parameter sets) and inputs x of shape
(N, *input_shape) or (K, N, *input_shape), and return (lower, upper), each of shape
(K, N, out), or (K, N, m) for a specification ``C`` of shape (K or 1, N or 1, m, out),
whose rows c give bounds of c . y (e.g. logit differences, see
:func:`logit_differences`). Computations use the network's dtype (float64 unless
the caller built a float32 network) and are differentiable w.r.t. the weights.
The bounds are sound in exact arithmetic; rounding is not directed, so an output
may exceed them by rounding errors of its own size (observed: ~1e-15 relative in
float64, ~1e-6 in float32, where a box is nearly exact).

* :func:`ibp`: interval bound propagation in centre/radius form.
* :func:`crown`: backward linear relaxation (CROWN); bounds of every intermediate
  pre-activation come from CROWN as well, intersected with interval bounds.
* :func:`output_bounds`: either of them by name, or their intersection ('ibp+crown').
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import relaxations
from ._inputs import Domain, as_batch, as_spec, check_choice, check_nonnegative, input_box
from .network import ACTIVATIONS, Linear, Network, ReLU, Sigmoid, Softplus, Tanh

METHODS = ("ibp", "crown", "ibp+crown")
CHUNK_BYTES = 16 << 20
"""Points are bounded in chunks of about this many bytes of the largest tensor per chunk: K x
points x (widest layer) x (widest layer or the specification's rows) float64 for CROWN, without
the first factor of width for IBP (:func:`points_per_chunk`; :func:`~robustness.log_volume`
chunks alike). Bounds do not depend on it: each point's are computed alone. In one piece the
tensors exceed glibc's mmap threshold (at most 32 MiB), each is served with fresh pages, and
their faults cost more than the arithmetic. Measured, one thread, log-volumes of 80 random
digits-sized 64-32(tanh)-10 networks on 1,257 points (benchmarks/bounds.py): ibp+crown 2.6 ->
1.1 s, CROWN of softmax bounds 45.5 -> 7.3 s; ``landscape score`` of 79 stored digits minima on
1,437 points: 5.1 -> 1.8 s and 69 -> 10.4 s."""
_RELAX = {ReLU: relaxations.relu, Tanh: relaxations.tanh, Sigmoid: relaxations.sigmoid}


def _relaxation(layer, l: Tensor, u: Tensor) -> relaxations.Relaxation:
    """Linear bounds of the activation ``layer`` on [l, u]."""
    if isinstance(layer, Softplus):
        return relaxations.softplus(l, u, layer.beta)
    return _RELAX[type(layer)](l, u)


def _centre_radius(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    centre = torch.lerp(lo, hi, 0.5)
    return centre, hi - centre


def _setup(net: Network, x: Tensor, eps: float, C: Tensor | None,
           domain: Domain) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validated centre and radius of the input box, and the specification.

    Without a domain the radius is one vector (1, 1, *input_shape) shared by all points,
    which keeps the interval radii of the layers up to the first activation shared too.
    """
    x = as_batch(x, net.input_shape, net.k, net.dtype)
    if C is not None:
        C = as_spec(C, net.k, x.shape[1], net.n_outputs, net.dtype)
    if domain is None:
        return x, x.new_full((1, 1, *net.input_shape), check_nonnegative(eps)), C
    return *_centre_radius(*input_box(x, eps, domain)), C


def _matvec(a: Tensor, v: Tensor) -> Tensor:
    """Rows a (K or 1, N or 1, m, *shape) times vectors v (K or 1, N or 1, *shape): (K', N', m)."""
    a = a.flatten(3)
    v = v.flatten(2)
    if a.shape[1] == 1:  # rows shared by all points: one matrix product per parameter set
        return torch.matmul(v, a[:, 0].transpose(1, 2))
    return torch.einsum("knmi,kni->knm", a, v)


def _interval_step(layer, c: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """Centre and radius of a box containing ``layer`` applied to the box (c, r)."""
    if isinstance(layer, ACTIVATIONS):  # monotone
        return _centre_radius(layer.fn(c - r), layer.fn(c + r))
    return layer.affine(c), layer.apply(r, absolute=True)


def _interval_tail(net: Network, c: Tensor, r: Tensor, C: Tensor | None) -> tuple[Tensor, Tensor]:
    """Interval bounds of the output (or of C . output) from the box (c, r) entering the last layer.

    With C and a final Linear layer, C is merged into its weights first (tighter, and
    invariant to adding one vector to every output row when C's rows sum to zero).
    """
    layer = net.layers[-1]
    if C is not None and isinstance(layer, Linear):
        a, bias = layer.transpose(C, net.shapes[-2]), layer.bias_dot(C)
    else:
        c, r = _interval_step(layer, c, r)
        if C is None:
            return c - r, c + r
        a, bias = C, 0.0
    mu, rad = _matvec(a, c) + bias, _matvec(a.abs(), r)
    return mu - rad, mu + rad


def _ibp(net: Network, c: Tensor, r: Tensor, C: Tensor | None) -> tuple[Tensor, Tensor]:
    for layer in net.layers[:-1]:
        c, r = _interval_step(layer, c, r)
    return _interval_tail(net, c, r, C)


def ibp(net: Network, x: Tensor, eps: float, C: Tensor | None = None,
        domain: Domain = None) -> tuple[Tensor, Tensor]:
    """Interval bound propagation: (lower, upper), each (K, N, out), or (K, N, m) with C."""
    return output_bounds(net, x, eps, "ibp", C, domain)


def _relax_back(a: Tensor, relax: relaxations.Relaxation, upper: bool) -> tuple[Tensor, Tensor]:
    """Rows a (K', N', m, *shape) through an activation: new rows and the constant term (K, N, m).

    For an upper bound, positive coefficients take the upper line and negative ones
    the lower line (and the other way round for a lower bound).
    """
    if upper:
        s_pos, b_pos, s_neg, b_neg = relax.upper_slope, relax.upper_intercept, relax.lower_slope, relax.lower_intercept
    else:
        s_pos, b_pos, s_neg, b_neg = relax.lower_slope, relax.lower_intercept, relax.upper_slope, relax.upper_intercept
    shape = a.shape
    a = a.flatten(3)
    s_neg, ds = s_neg.flatten(2), (s_pos - s_neg).flatten(2)
    a_pos = a.clamp(min=0)
    new = (a * s_neg.unsqueeze(2)).addcmul_(a_pos, ds.unsqueeze(2))
    const = _matvec(a, b_neg) + _matvec(a_pos, b_pos - b_neg)
    return new.view(*new.shape[:3], *shape[3:]), const


def _backward(net: Network, stop: int, relax: dict, c0: Tensor, r0: Tensor, C: Tensor | None,
              upper: bool) -> Tensor:
    """CROWN upper (or lower) bound of C . (output of layers[:stop]), C = identity if None: (K, N, m)."""
    shape = net.shapes[stop]
    if C is None:
        n = torch.Size(shape).numel()
        C = torch.eye(n, dtype=c0.dtype, device=c0.device).view(1, 1, n, *shape)
    a, const = C, 0.0
    for i in reversed(range(stop)):
        if i in relax:
            a, term = _relax_back(a, relax[i], upper)
        else:
            layer = net.layers[i]
            a, term = layer.transpose(a, net.shapes[i]), layer.bias_dot(a)
        const = const + term
    radius = _matvec(a.abs(), r0)
    return _matvec(a, c0) + const + (radius if upper else -radius)


def _crown(net: Network, c0: Tensor, r0: Tensor, C: Tensor | None):
    """((lower, upper) by CROWN, (lower, upper) by intervals through CROWN's tightened intermediates)."""
    relax = {}
    c, r = c0, r0
    last = len(net.layers) - 1
    for i, layer in enumerate(net.layers):
        if isinstance(layer, ACTIVATIONS):
            lo = _backward(net, i, relax, c0, r0, None, upper=False)
            lo = torch.maximum(lo.view(lo.shape[0], *c.shape[1:]), c - r)
            hi = _backward(net, i, relax, c0, r0, None, upper=True)
            hi = torch.minimum(hi.view(hi.shape[0], *c.shape[1:]), c + r)
            relax[i] = _relaxation(layer, lo, hi)
            c, r = _centre_radius(lo, hi)
        if i < last:
            c, r = _interval_step(layer, c, r)
    stop = len(net.layers)
    lo, hi = _backward(net, stop, relax, c0, r0, C, upper=False), _backward(net, stop, relax, c0, r0, C, upper=True)
    return (lo, hi), _interval_tail(net, c, r, C)


def crown(net: Network, x: Tensor, eps: float, C: Tensor | None = None,
          domain: Domain = None) -> tuple[Tensor, Tensor]:
    """CROWN bounds: (lower, upper), each (K, N, out), or (K, N, m) with C.

    Relaxations: see :mod:`robustness.relaxations`. Intermediate pre-activation
    bounds are CROWN bounds intersected with interval bounds. Memory grows as
    N x (neurons of the layer) x (input size) for every layer before an activation,
    which suits MLPs and small convolutional networks (use :func:`ibp` beyond).
    """
    return output_bounds(net, x, eps, "crown", C, domain)


def output_bounds(net: Network, x: Tensor, eps: float, method: str = "ibp+crown", C: Tensor | None = None,
                  domain: Domain = None) -> tuple[Tensor, Tensor]:
    """Bounds by ``method``: 'ibp', 'crown', or 'ibp+crown' (CROWN's box intersected
    with the interval box propagated from CROWN's intermediate bounds, which lies
    inside the plain IBP box)."""
    check_choice("method", method, METHODS)
    c0, r0, C = _setup(net, x, eps, C, domain)
    n, step = c0.shape[1], points_per_chunk(net, method, net.n_outputs if C is None else C.shape[-2])
    if step >= n:
        return _bounds(net, method, c0, r0, C)

    def points(t: Tensor | None, a: int) -> Tensor | None:  # a chunk of what is not shared by all points
        return t if t is None or t.shape[1] == 1 else t[:, a:a + step]

    parts = [_bounds(net, method, points(c0, a), points(r0, a), points(C, a)) for a in range(0, n, step)]
    return torch.cat([lo for lo, _ in parts], 1), torch.cat([hi for _, hi in parts], 1)


def points_per_chunk(net: Network, method: str, rows: int) -> int:
    """How many points to bound at once (see CHUNK_BYTES) for ``rows`` output rows."""
    widest = max(torch.Size(shape).numel() for shape in net.shapes)
    per_point = 8 * net.k * max(widest, rows) * (1 if method == "ibp" else widest)
    return max(1, CHUNK_BYTES // per_point)


def _bounds(net: Network, method: str, c0: Tensor, r0: Tensor, C: Tensor | None) -> tuple[Tensor, Tensor]:
    if method == "ibp":
        return _ibp(net, c0, r0, C)
    (lo, hi), (ilo, ihi) = _crown(net, c0, r0, C)
    if method == "crown":
        return lo, hi
    return torch.maximum(lo, ilo), torch.minimum(hi, ihi)


def logit_differences(ref: Tensor, n_out: int) -> Tensor:
    """Specification of y_j - y_ref for every j != ref.

    ``ref``: integer classes of shape (N,) or (K, N). Returns C of shape
    (1 or K, N, n_out - 1, n_out), rows ordered by j.
    """
    ref = torch.as_tensor(ref)
    if ref.dim() == 1:
        ref = ref.unsqueeze(0)
    eye = torch.eye(n_out, dtype=torch.float64, device=ref.device)
    rows = eye - eye[ref].unsqueeze(-2)  # (K', N, n_out, n_out): row j = e_j - e_ref
    keep = ~torch.nn.functional.one_hot(ref, n_out).bool()
    return rows[keep].view(*ref.shape, n_out - 1, n_out)
