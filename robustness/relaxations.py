"""Sound linear bounds of activations over a pre-activation interval [l, u].

Each function returns a :class:`Relaxation` of tensors shaped like ``l``: lines
with ``lower_slope * x + lower_intercept <= f(x) <= upper_slope * x + upper_intercept``
for every x in [l, u] (exact arithmetic; rounding adds a few ulps).

ReLU: identity or zero when stable; for l < 0 < u the chord above and the line of
slope 1 (if u >= -l) or 0 below (the adaptive CROWN choice).

tanh (convex on (-inf, 0], concave on [0, inf)); upper line:
  * u <= 0: the chord;  l >= 0: the tangent at the midpoint (least area);
  * l < 0 < u: the chord if it lies above tanh, which holds iff u <= d*(l), where
    d*(l) > 0 is the point whose tangent passes through (l, tanh(l)); otherwise the
    tangent at d = min(max(d*, (l+u)/2), u). Any tangent at d in [d*, u] is sound: it
    is above tanh on [0, u] by concavity and, meeting or passing above (l, tanh(l))
    and (0, 0), above the convex part on [l, 0]; the midpoint clamp minimises area.
    d*(l) is read from a table on a 1e-3 grid over l in [-20, 0], at the grid point
    at or below l (d* decreases in l, so this over-estimates d*, which stays sound);
    the table holds the upper end of a bisection bracket, rounded up to the dtype.
    For l < -20, d = u.
The lower line follows from the odd symmetry, lower(l, u) = -upper(-u, -l), and
sigmoid from sigmoid(x) = (1 + tanh(x / 2)) / 2.

softplus (convex): below, the tangent at the midpoint (the tangent of least area); above, the
chord (the tangent at l when l = u). Tangent intercepts are computed without cancellation and
chords from halved values, so nothing overflows for any finite l, u.

Optimisable relaxations (alpha-CROWN): every function also takes parameters ``t`` in [0, 1]
(a tensor broadcastable against l, with a leading axis of :data:`PARAMETERS` entries) that
choose one sound line among a family, and ``*_parameters(l, u)`` gives the ``t`` of the
default lines above:

* ReLU (1 parameter): the lower slope t where l < 0 < u (any slope in [0, 1] is sound);
* tanh, sigmoid (2): t[0] places the tangent point of the upper line where it is a tangent
  (l >= 0: d in [l, u]; l < 0 < u, chord unusable: d in [min(d*(l), u), u]), t[1] that of
  the lower line (mirrored); chords stay;
* softplus (1): the tangent point l + t (u - l) of the lower line; the chord stays.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor

from .network import softplus as softplus_fn

_GRID_MIN = -20.0
_GRID_STEP = 1e-3
_GRID_SIZE = 20001  # grid points l_i = _GRID_MIN + i * _GRID_STEP, i < _GRID_SIZE, up to 0


class Relaxation(NamedTuple):
    """Lines bounding f on [l, u]: lower_slope x + lower_intercept <= f(x) <= upper_slope x + upper_intercept."""

    lower_slope: Tensor
    lower_intercept: Tensor
    upper_slope: Tensor
    upper_intercept: Tensor


def _dtanh_of(t: Tensor) -> Tensor:
    """tanh'(x) from t = tanh(x)."""
    return (1 - t) * (1 + t)


@functools.cache
def _tangent_table(dtype: torch.dtype, device: torch.device) -> Tensor:
    """d*(l_i) on the grid, rounded up: the tangent of tanh at d* passes through (l_i, tanh(l_i))."""
    l = _GRID_MIN + _GRID_STEP * torch.arange(_GRID_SIZE, dtype=torch.float64)
    lo, hi = torch.zeros_like(l), -l  # h(0) <= 0 <= h(-l)
    tl = torch.tanh(l)
    for _ in range(60):
        d = (lo + hi) / 2
        td = torch.tanh(d)
        above = td + _dtanh_of(td) * (l - d) >= tl  # tangent at d passes above (l, tanh l)
        hi, lo = torch.where(above, d, hi), torch.where(above, lo, d)
    table = hi.to(dtype)
    table = torch.where(table.double() < hi, torch.nextafter(table, torch.tensor(float("inf"), dtype=dtype)), table)
    return table.to(device)


def _tangent_point(l: Tensor) -> Tensor:
    """An upper estimate of d*(l) for l < 0 (+inf below the table, meaning: use d = u)."""
    table = _tangent_table(l.dtype, l.device)
    index = torch.floor((l - _GRID_MIN) / _GRID_STEP).clamp(-1, _GRID_SIZE - 1).long()
    return torch.where(index >= 0, table[index.clamp(min=0)], torch.inf)


def _tanh_upper(l: Tensor, u: Tensor, fl: Tensor, fu: Tensor, t: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Slope and intercept of a line above tanh on [l, u]; fl, fu = tanh(l), tanh(u).

    Where a tangent is used, its point is d = a + t (u - a) with a = l for l >= 0 and
    a = min(d*(l), u) otherwise; t = None takes the default d = max(a, (l + u) / 2).
    """
    width = u - l
    positive = width > 0
    chord = torch.where(positive, (fu - fl) / torch.where(positive, width, 1), _dtanh_of(fl))
    use_chord = (u <= 0) | ((l < 0) & (_dtanh_of(fu) * width >= fu - fl))
    a = _tangent_start(l, u)
    d = torch.maximum(a, (l + u) / 2) if t is None else a + t * (u - a)
    fd = torch.tanh(d)
    slope = torch.where(use_chord, chord, _dtanh_of(fd))
    intercept = torch.where(use_chord, fl - chord * l, fd - _dtanh_of(fd) * d)
    return slope, intercept


def _tangent_start(l: Tensor, u: Tensor) -> Tensor:
    """The lowest tangent point of the upper line of tanh on [l, u] that is used (see _tanh_upper)."""
    return torch.where(l >= 0, l, torch.minimum(_tangent_point(l), u))


def _tanh_upper_parameter(l: Tensor, u: Tensor) -> Tensor:
    """t of the default upper line of tanh (0 where the line does not depend on it)."""
    a = _tangent_start(l, u)
    span = u - a
    positive = span > 0
    return torch.where(positive, (torch.maximum(a, (l + u) / 2) - a) / torch.where(positive, span, 1), 0.0)


PARAMETERS = {"relu": 1, "tanh": 2, "sigmoid": 2, "softplus": 1}
"""How many parameters (the leading axis of ``t``) each optimisable relaxation takes."""


def relu(l: Tensor, u: Tensor, t: Tensor | None = None) -> Relaxation:
    """Linear bounds of max(x, 0) on [l, u]; t[0]: the lower slope where l < 0 < u."""
    active, crossing = l >= 0, (l < 0) & (u > 0)
    chord = u / torch.where(crossing, u - l, 1)
    upper_slope = torch.where(active, 1.0, torch.where(crossing, chord, 0.0)).to(l.dtype)
    lower_slope = torch.where(active | (crossing & (u >= -l)), 1.0, 0.0).to(l.dtype)
    zero = torch.zeros_like(l)
    upper_intercept = torch.where(crossing, -chord * l, zero)
    if t is not None:
        lower_slope = torch.where(crossing, t[0], lower_slope)
        zero = torch.zeros_like(lower_slope)
    return Relaxation(lower_slope, zero, upper_slope, upper_intercept)


def relu_parameters(l: Tensor, u: Tensor) -> Tensor:
    """The parameters (1, *l.shape) of the default ReLU lines."""
    return relu(l, u).lower_slope.unsqueeze(0)


def tanh(l: Tensor, u: Tensor, t: Tensor | None = None) -> Relaxation:
    """Linear bounds of tanh on [l, u]; t[0], t[1]: tangent points of the upper and lower lines."""
    fl, fu = torch.tanh(l), torch.tanh(u)
    upper_slope, upper_intercept = _tanh_upper(l, u, fl, fu, None if t is None else t[0])
    lower_slope, minus_intercept = _tanh_upper(-u, -l, -fu, -fl, None if t is None else t[1])
    return Relaxation(lower_slope, -minus_intercept, upper_slope, upper_intercept)


def tanh_parameters(l: Tensor, u: Tensor) -> Tensor:
    """The parameters (2, *l.shape) of the default tanh lines."""
    return torch.stack([_tanh_upper_parameter(l, u), _tanh_upper_parameter(-u, -l)])


def sigmoid(l: Tensor, u: Tensor, t: Tensor | None = None) -> Relaxation:
    """Linear bounds of the logistic sigmoid on [l, u]; t as for :func:`tanh`."""
    r = tanh(l / 2, u / 2, t)
    return Relaxation(r.lower_slope / 4, (1 + r.lower_intercept) / 2, r.upper_slope / 4, (1 + r.upper_intercept) / 2)


def sigmoid_parameters(l: Tensor, u: Tensor) -> Tensor:
    """The parameters (2, *l.shape) of the default sigmoid lines."""
    return tanh_parameters(l / 2, u / 2)


def _softplus_tangent(d: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """Slope and intercept of the tangent of softplus at d: sigmoid(beta d) and
    softplus(d) - d sigmoid(beta d) = (log1p(e) / beta + |d| e / (1 + e)), e = exp(-beta |d|)."""
    e = torch.exp(-beta * d.abs())
    return torch.sigmoid(beta * d), torch.log1p(e) / beta + d.abs() * (e / (1 + e))


def softplus(l: Tensor, u: Tensor, beta: float = 1.0, t: Tensor | None = None) -> Relaxation:
    """Linear bounds of log(1 + exp(beta x)) / beta on [l, u]; t[0]: tangent point l + t (u - l) below."""
    lower_slope, lower_intercept = _softplus_tangent(l / 2 + u / 2 if t is None else l + t[0] * (u - l), beta)
    half_width = u / 2 - l / 2
    positive = half_width > 0
    fl = softplus_fn(l, beta)
    chord = (softplus_fn(u, beta) / 2 - fl / 2) / torch.where(positive, half_width, 1)
    tangent_slope, tangent_intercept = _softplus_tangent(l, beta)
    upper_slope = torch.where(positive, chord, tangent_slope)
    upper_intercept = torch.where(positive, fl - chord * l, tangent_intercept)
    return Relaxation(lower_slope, lower_intercept, upper_slope, upper_intercept)


def softplus_parameters(l: Tensor, u: Tensor) -> Tensor:
    """The parameters (1, *l.shape) of the default softplus lines (the midpoint)."""
    return torch.full((1, *l.shape), 0.5, dtype=l.dtype, device=l.device)
