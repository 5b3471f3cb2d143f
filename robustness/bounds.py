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

from dataclasses import replace

import torch
from torch import Tensor

from . import relaxations
from ._inputs import Domain, as_batch, as_spec, check_choice, check_nonnegative, input_box
from .network import ACTIVATIONS, Conv2d, Linear, Network, ReLU, Sigmoid, Softplus, Tanh

METHODS = ("ibp", "crown", "ibp+crown", "alpha-crown")
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


def _relaxation(layer, l: Tensor, u: Tensor, t: Tensor | None = None) -> relaxations.Relaxation:
    """Linear bounds of the activation ``layer`` on [l, u] (lines chosen by ``t``, see relaxations)."""
    if isinstance(layer, Softplus):
        return relaxations.softplus(l, u, layer.beta, t)
    return _RELAX[type(layer)](l, u, t)


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
    the lower line (and the other way round for a lower bound). The lines are shared
    by all rows (tensors (K, N, *shape)) or given per row (K, N, m, *shape).
    """
    if upper:
        s_pos, b_pos, s_neg, b_neg = relax.upper_slope, relax.upper_intercept, relax.lower_slope, relax.lower_intercept
    else:
        s_pos, b_pos, s_neg, b_neg = relax.lower_slope, relax.lower_intercept, relax.upper_slope, relax.upper_intercept
    shape = a.shape
    a = a.flatten(3)
    a_pos = a.clamp(min=0)
    if s_neg.dim() == len(shape):  # one line per row
        s_neg, ds, b_neg, db = (t.flatten(3) for t in (s_neg, s_pos - s_neg, b_neg, b_pos - b_neg))
        new = a * s_neg + a_pos * ds
        const = (a * b_neg + a_pos * db).sum(-1)
        return new.view(*new.shape[:3], *shape[3:]), const
    s_neg, ds = s_neg.flatten(2), (s_pos - s_neg).flatten(2)
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


_S_SHAPED = (Tanh, Sigmoid)


def _crown(net: Network, c0: Tensor, r0: Tensor, C: Tensor | None, alpha: _Slopes | None = None):
    """One CROWN pass: ((lower, upper) of the output, (lower, upper) by intervals through the
    intermediate bounds, {layer index: the interval its relaxation was built on}).

    The interval of an activation's input is its CROWN interval intersected with the interval
    propagated from the layer before (itself intersected so). ReLU and softplus lines are built
    on that intersection; tanh and sigmoid lines on the CROWN interval alone, which measured
    tighter (a narrower interval can give worse default lines: the intersection left deep
    sigmoid MLPs up to 0.12 nats looser than auto_LiRPA's CROWN, which never intersects).
    With ``alpha``, lines come from its parameters, one set per pass (start layer, bound).
    """
    relax, used = {}, {}
    c, r = c0, r0
    last = len(net.layers) - 1
    for i, layer in enumerate(net.layers):
        if isinstance(layer, ACTIVATIONS):
            def lines(upper: bool, i: int = i) -> dict:
                return relax if alpha is None else alpha.lines(net, i, upper, used)
            lo = _backward(net, i, lines(False), c0, r0, None, upper=False)
            hi = _backward(net, i, lines(True), c0, r0, None, upper=True)
            lo, hi = lo.view(lo.shape[0], *c.shape[1:]), hi.view(hi.shape[0], *c.shape[1:])
            ilo, ihi = torch.maximum(lo, c - r), torch.minimum(hi, c + r)
            used[i] = (lo, hi) if isinstance(layer, _S_SHAPED) else (ilo, ihi)
            if alpha is not None:
                used[i] = alpha.reference(i, *used[i])
            else:
                relax[i] = _relaxation(layer, *used[i])
            c, r = _centre_radius(ilo, ihi)
        if i < last:
            c, r = _interval_step(layer, c, r)
    stop = len(net.layers)
    if alpha is None:
        lo_lines = hi_lines = relax
    else:
        lo_lines, hi_lines = alpha.lines(net, stop, False, used), alpha.lines(net, stop, True, used)
    lo, hi = _backward(net, stop, lo_lines, c0, r0, C, upper=False), _backward(net, stop, hi_lines, c0, r0, C, upper=True)
    return (lo, hi), _interval_tail(net, c, r, C), used


def crown(net: Network, x: Tensor, eps: float, C: Tensor | None = None,
          domain: Domain = None) -> tuple[Tensor, Tensor]:
    """CROWN bounds: (lower, upper), each (K, N, out), or (K, N, m) with C.

    Relaxations: see :mod:`robustness.relaxations`. Intermediate pre-activation
    bounds are CROWN bounds intersected with interval bounds. Memory grows as
    N x (neurons of the layer) x (input size) for every layer before an activation,
    which suits MLPs and small convolutional networks (use :func:`ibp` beyond).
    """
    return output_bounds(net, x, eps, "crown", C, domain)


ALPHA_STEPS = 20
ALPHA_LR = 0.5
ALPHA_DECAY = 0.98


def alpha_crown(net: Network, x: Tensor, eps: float, C: Tensor | None = None, domain: Domain = None, *,
                steps: int = ALPHA_STEPS, lr: float = ALPHA_LR) -> tuple[Tensor, Tensor]:
    """alpha-CROWN: CROWN with relaxation lines optimised for the bounds ((lower, upper) as :func:`crown`).

    Every backward pass (to each activation's input and to the output, lower and upper
    bound apart) gets its own lines for every row and earlier neuron: ReLU lower slopes in
    [0, 1], tangent points of tanh, sigmoid and softplus (:mod:`robustness.relaxations`).
    They start at CROWN's and take ``steps`` projected Adam steps (learning rate ``lr``,
    decayed by 0.98 a step), once on the sum of the lower bounds and once on the sum of the
    upper bounds (as auto_LiRPA); every bound keeps its best step, and the result is
    intersected with the CROWN box and the
    interval box propagated through CROWN's intermediate bounds, so it is never looser than
    either (method 'ibp+crown'). Intermediate intervals are likewise never looser than
    CROWN's. Cost: about 1 + 2 steps CROWN passes (run with autograd), and memory for the
    lines of N x (rows) x (earlier neurons) per pass. Gradients w.r.t. the weights flow
    through one more pass with each point's best lines, where it gives the best bound.
    Points are optimised independently, but Adam turns rounding-level gradients into full
    steps, so a point's bounds move slightly (measured: up to 1e-3 of a width) with the other
    points bounded in the same chunk; every result is sound.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    check_nonnegative(lr, "lr")
    return output_bounds(net, x, eps, "alpha-crown", C, domain, _alpha=(steps, float(lr)))


class _Slopes:
    """Parameters of the lines of every (start layer, bound, activation) for alpha-CROWN."""

    def __init__(self, net: Network, C: Tensor | None, ref: dict, params: dict | None = None) -> None:
        self.net, self.spec, self.ref = net, C, ref  # ref: layer -> the interval of CROWN's pass
        self.params = {} if params is None else params  # (start, upper, layer) -> t (P, K, N, rows, *shape)

    def reference(self, i: int, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        rlo, rhi = self.ref[i]
        return torch.maximum(lo, rlo), torch.minimum(hi, rhi)

    def lines(self, net: Network, start: int, upper: bool, used: dict) -> dict:
        out = {}
        for k, (lo, hi) in used.items():
            if k >= start:
                continue
            layer = net.layers[k]
            lo, hi = lo.unsqueeze(2), hi.unsqueeze(2)
            key = (start, upper, k)
            if key not in self.params:
                rows = self.rows(start)
                t = _PARAMETERS[type(layer)](lo, hi) if not isinstance(layer, Softplus) else \
                    relaxations.softplus_parameters(lo, hi)
                self.params[key] = t.expand(*t.shape[:3], rows, *t.shape[4:]).clone().requires_grad_()
            out[k] = _relaxation(layer, lo, hi, self.params[key])
        return out

    def rows(self, start: int) -> int:
        if start == len(self.net.layers) and self.spec is not None:
            return self.spec.shape[-2]
        return torch.Size(self.net.shapes[start]).numel()


_PARAMETERS = {ReLU: relaxations.relu_parameters, Tanh: relaxations.tanh_parameters,
               Sigmoid: relaxations.sigmoid_parameters}


def _detached(net: Network) -> Network:
    layers = tuple(replace(layer, weight=layer.weight.detach(), bias=None if layer.bias is None else layer.bias.detach())
                   if isinstance(layer, (Linear, Conv2d)) else layer for layer in net.layers)
    return Network(layers, net.input_shape)


def _optimise(net: Network, c0: Tensor, r0: Tensor, C: Tensor | None, ref: dict, steps: int, lr: float,
              upper: bool) -> tuple[Tensor, dict]:
    """Lines minimising the upper (or maximising the lower) bound by projected Adam: (the best
    bound of every step (K, N, m), each point's best lines)."""
    slopes = _Slopes(net, C, ref)
    best, best_loss, moments = None, None, {}
    with torch.enable_grad():
        for step in range(steps + 1):
            slopes.params = {key: t.requires_grad_() for key, t in slopes.params.items()}
            (blo, bhi), _, _ = _crown(net, c0, r0, C, slopes)
            loss = bhi.sum(-1) if upper else -blo.sum(-1)  # (K, N): one independent problem per point
            objective = loss.sum()
            bound, loss = (bhi if upper else blo).detach(), loss.detach()
            if best is None:
                best, best_loss, lines = bound, loss, {k: t.detach() for k, t in slopes.params.items()}
            else:  # bounds: the best of every step; lines: each point's best step
                better = loss < best_loss
                best_loss = torch.where(better, loss, best_loss)
                best = torch.minimum(bound, best) if upper else torch.maximum(bound, best)
                for key, t in slopes.params.items():
                    lines[key] = torch.where(better.view(1, *better.shape, *[1] * (t.dim() - 3)), t.detach(), lines[key])
            if step == steps:
                break
            keys = list(slopes.params)
            grads = torch.autograd.grad(objective, [slopes.params[k] for k in keys], allow_unused=True)
            rate = lr * ALPHA_DECAY ** step
            new = {}
            for key, g in zip(keys, grads):
                t = slopes.params[key].detach()
                if g is None:
                    new[key] = t
                    continue
                m, v = moments.get(key, (torch.zeros_like(t), torch.zeros_like(t)))
                m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
                moments[key] = (m, v)
                update = (m / (1 - 0.9 ** (step + 1))) / ((v / (1 - 0.999 ** (step + 1))).sqrt() + 1e-8)
                new[key] = (t - rate * update).clamp_(0, 1)
            slopes.params = new
    return best, lines


def _alpha_crown(net: Network, c0: Tensor, r0: Tensor, C: Tensor | None, steps: int, lr: float):
    (lo, hi), (ilo, ihi), used = _crown(net, c0, r0, C)
    lo, hi = torch.maximum(lo, ilo), torch.minimum(hi, ihi)
    if steps == 0:
        return lo, hi
    args = (_detached(net), c0.detach(), r0.detach(), None if C is None else C.detach(),
            {i: (a.detach(), b.detach()) for i, (a, b) in used.items()}, steps, lr)
    (blo, lo_lines), (bhi, hi_lines) = _optimise(*args, upper=False), _optimise(*args, upper=True)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (c0, r0) + tuple(
            p for layer in net.layers for p in (getattr(layer, "weight", None), getattr(layer, "bias", None))
            if p is not None)):  # the best lines once more, with gradients to the weights
        (rlo, _), _, _ = _crown(net, c0, r0, C, _Slopes(net, C, used, lo_lines))
        (_, rhi), _, _ = _crown(net, c0, r0, C, _Slopes(net, C, used, hi_lines))
        blo, bhi = torch.where(rlo >= blo, rlo, blo), torch.where(rhi <= bhi, rhi, bhi)
    return torch.maximum(lo, blo), torch.minimum(hi, bhi)


def output_bounds(net: Network, x: Tensor, eps: float, method: str = "ibp+crown", C: Tensor | None = None,
                  domain: Domain = None, *, _alpha: tuple[int, float] = (ALPHA_STEPS, ALPHA_LR)) -> tuple[Tensor, Tensor]:
    """Bounds by ``method``: 'ibp', 'crown', 'ibp+crown' (CROWN's box intersected
    with the interval box propagated from CROWN's intermediate bounds, which lies
    inside the plain IBP box) or 'alpha-crown' (:func:`alpha_crown` with its default
    steps, inside the 'ibp+crown' box)."""
    check_choice("method", method, METHODS)
    c0, r0, C = _setup(net, x, eps, C, domain)
    n, step = c0.shape[1], points_per_chunk(net, method, net.n_outputs if C is None else C.shape[-2])
    if step >= n:
        return _bounds(net, method, c0, r0, C, _alpha)

    def points(t: Tensor | None, a: int) -> Tensor | None:  # a chunk of what is not shared by all points
        return t if t is None or t.shape[1] == 1 else t[:, a:a + step]

    parts = [_bounds(net, method, points(c0, a), points(r0, a), points(C, a), _alpha) for a in range(0, n, step)]
    return torch.cat([lo for lo, _ in parts], 1), torch.cat([hi for _, hi in parts], 1)


def points_per_chunk(net: Network, method: str, rows: int) -> int:
    """How many points to bound at once (see CHUNK_BYTES) for ``rows`` output rows."""
    widest = max(torch.Size(shape).numel() for shape in net.shapes)
    per_point = 8 * net.k * max(widest, rows) * (1 if method == "ibp" else widest)
    if method == "alpha-crown":  # lines, their Adam moments and best values for every pass
        per_point *= 4 * sum(isinstance(layer, ACTIVATIONS) for layer in net.layers)
    return max(1, CHUNK_BYTES // per_point)


def _bounds(net: Network, method: str, c0: Tensor, r0: Tensor, C: Tensor | None,
            alpha: tuple[int, float]) -> tuple[Tensor, Tensor]:
    if method == "ibp":
        return _ibp(net, c0, r0, C)
    if method == "alpha-crown":
        return _alpha_crown(net, c0, r0, C, *alpha)
    (lo, hi), (ilo, ihi), _ = _crown(net, c0, r0, C)
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
