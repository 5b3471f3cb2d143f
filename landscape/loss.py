"""The loss as data: a tuple of terms whose sum is the energy E(w) (nats).

Terms (each a frozen dataclass with ``to_dict``; :func:`from_dicts` reads them back):

- :class:`CrossEntropy`: mean softmax cross-entropy over the training points.
- :class:`L2`: ``lam * sum(w**2)`` over all parameters (biases included); every loss has one,
  with lam > 0, so that minima are isolated.
- :class:`Sensitivity`: ``weight`` times the mean over the training points of the log-volume of
  the IBP (or CROWN) box of the outputs for inputs in the l-inf ball of radius ``eps``
  (:func:`robustness.log_volume`; the ball clipped to the input domain, [0, 1] for images).

A problem stores its loss in the database as a JSON list, e.g.::

    [{"term": "cross_entropy"}, {"term": "l2", "lam": 1e-4},
     {"term": "sensitivity", "weight": 0.1, "eps": 0.05, "method": "ibp", "space": "logits"}]

Kinks of the IBP term. IBP propagates a box in centre/radius form, the radius through each
affine layer as r' = |W| r: the term depends on every weight-matrix entry (Linear and Conv2d
weights, not biases) through |w_i| too, so E(w) = F(w, |w|) with F smooth (tanh, sigmoid,
softplus: their interval ends move smoothly) and E has a kink at w_i = 0 for each such entry
(:func:`kink_mask`). Minima of E sit *on* such kinks, as under an l1 penalty (measured on Iris
4-5(tanh)-3, weight 0.01, eps 0.05: 2-3 weights at exactly 0 at most minima). Locally
E = F(w, |w|) is smooth within an orthant, and at w_i = 0 its one-sided derivatives are
g_i +- s_i, with g_i = dF/dw_i the smooth part and s_i = dF/d|w_i| the coefficient of |w_i|.
:class:`Sensitivity` evaluates with |w| as a separate argument, so one backward pass gives both
(:meth:`landscape.energy.Energy.energy_gradient_kinks`); :mod:`landscape.minimize` converges on
the pseudo-gradient they define and :mod:`landscape.identify` checks minima on the same
definition. The 'logit_diff' and 'softmax' spaces merge the output layer into differences of
its rows, whose kinks lie on w_ci = w_c'i (not coordinate planes): the hidden layers' kinks are
handled as above, and a quench that ends on one of those planes does not converge and is not
stored. CROWN's relaxations switch lines and read tangent points from a table (kinks and jumps
everywhere), and ReLU networks have kinks wherever an interval end crosses 0: neither can be
sampled (:func:`sampling_refusal`).

The floor. :func:`robustness.log_volume` floors each box width at 1e-12 (times max(1, |ends|)).
The log-volume rewards saturated hidden units without bound (a saturated tanh passes an interval
of width ~exp(-2|pre-activation|)), so where ``weight`` is large against the L2 ``lam`` the
minima drive some output widths of some training points onto that floor, and E has kinks on the
hypersurfaces width = floor, which no quench follows. Measured on Iris 4-5(tanh)-3 at eps 0.05
(12 quenches each): every quench converged at weight/lam = 1 (lam 1e-2, 3e-3, 1e-3) and none
ended off the floor at weight/lam >= 10 (lam 1e-3 with weight 0.01 and 0.1; lam 1e-4 with 0.01).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from typing import ClassVar, Union

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

import robustness
from robustness.sensitivity import SPACES

from .models import Model

SENSITIVITY_METHODS = ("ibp", "crown")
Domain = Union[tuple[float, float], None]


@dataclass(frozen=True)
class LossData:
    """What the terms are evaluated on: ``model``, inputs ``X`` (N, D) float64, labels ``y`` (N,)
    int64, and the input ``domain`` (lower, upper) that clips a sensitivity ball (None: not clipped)."""

    model: Model
    X: Tensor
    y: Tensor
    domain: Domain = None


def _number(owner: str, name: str, value, positive: bool) -> float:
    """``value`` as a float; finite and > 0 (``positive``) or >= 0, else a one-line ValueError."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if not ok or not (value > 0 if positive else value >= 0):
        raise ValueError(f"{owner} {name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


class _Term:
    """What every term shares: a name in the stored list, and its fields as plain data."""

    name: ClassVar[str]

    def to_dict(self) -> dict:
        return {"term": self.name, **asdict(self)}

    def value(self, w: Tensor, data: LossData) -> Tensor:
        """The term's values (K,) for parameters ``w`` (K, P), differentiable in ``w``."""
        raise NotImplementedError


@dataclass(frozen=True)
class CrossEntropy(_Term):
    """Mean softmax cross-entropy of the logits over the points (nats)."""

    name: ClassVar[str] = "cross_entropy"

    def value(self, w: Tensor, data: LossData) -> Tensor:
        logits = data.model.forward(w, data.X)
        K, N, C = logits.shape
        ce = F.cross_entropy(logits.reshape(K * N, C), data.y.repeat(K), reduction="none")
        return ce.reshape(K, N).mean(1)


@dataclass(frozen=True)
class L2(_Term):
    """``lam * sum(w**2)`` over all parameters; lam finite and > 0."""

    lam: float
    name: ClassVar[str] = "l2"

    def __post_init__(self) -> None:
        lam = self.lam
        if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not (math.isfinite(lam) and lam > 0):
            raise ValueError(f"lam must be a finite number > 0 (got {lam!r}): with lam = 0 adding one vector to "
                             "every class's output weights leaves the loss unchanged, so no minimum is isolated")
        object.__setattr__(self, "lam", float(lam))

    def value(self, w: Tensor, data: LossData) -> Tensor:
        return self.lam * (w * w).sum(1)


@dataclass(frozen=True)
class Sensitivity(_Term):
    """``weight`` x mean over the points of the log-volume (nats) of the ``method`` box ('ibp' or
    'crown') of the outputs in ``space`` (see :mod:`robustness.sensitivity`) for inputs in the l-inf
    ball of radius ``eps`` (input units). 'logit_diff' takes each point's true class as reference.

    With 'ibp' over 'logits' the term is as smooth as the activation (tanh, sigmoid, softplus)
    except for kinks at zero weight-matrix entries (|W| in the radius path; module docstring).
    'crown' gives a tighter box, but its relaxations switch lines as pre-activation bounds move
    and read tangent points from a table, so the term has kinks and small jumps in w: its minima
    cannot be sampled (:func:`sampling_refusal`).
    """

    weight: float
    eps: float
    method: str = "ibp"
    space: str = "logits"
    name: ClassVar[str] = "sensitivity"

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", _number("sensitivity", "weight", self.weight, positive=False))
        object.__setattr__(self, "eps", _number("sensitivity", "eps", self.eps, positive=True))
        for key, allowed in (("method", SENSITIVITY_METHODS), ("space", SPACES)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"unknown sensitivity {key} {getattr(self, key)!r}: "
                                 f"choose one of {', '.join(allowed)}")

    def value(self, w: Tensor, data: LossData, abs_w: Tensor | None = None) -> Tensor:
        """The term's values (K,); ``abs_w`` (K, P), when given, stands for |w| wherever IBP
        propagates a radius through |W| (so its gradient is dE/d|w|, see the module docstring)."""
        x = data.X.reshape(len(data.X), *data.model.input_shape)
        net = data.model.to_network(w)
        if abs_w is not None:
            net = _with_absolute_weights(net, data.model.to_network(abs_w))
        s = robustness.log_volume(net, x, self.eps, method=self.method, space=self.space,
                                  labels=data.y, domain=data.domain)
        return self.weight * s.mean


@dataclass(frozen=True, eq=False)
class _KinkLinear(robustness.Linear):
    """A Linear layer whose |W| (the radius path of IBP) is the tensor ``abs_weight``."""

    abs_weight: Tensor | None = None

    def apply(self, x: Tensor, absolute: bool = False) -> Tensor:
        return torch.matmul(x, (self.abs_weight if absolute else self.weight).transpose(1, 2))


@dataclass(frozen=True, eq=False)
class _KinkConv2d(robustness.Conv2d):
    """A Conv2d layer whose |W| (the radius path of IBP) is the tensor ``abs_weight``."""

    abs_weight: Tensor | None = None

    def apply(self, x: Tensor, absolute: bool = False) -> Tensor:
        return self._conv(x, self.abs_weight if absolute else self.weight, None)


def _with_absolute_weights(net: robustness.Network, absolute: robustness.Network) -> robustness.Network:
    """``net`` with each Linear and Conv2d layer taking its |W| from the same layer of ``absolute``."""
    layers = []
    for layer, a in zip(net.layers, absolute.layers):
        if isinstance(layer, robustness.Linear):
            layer = _KinkLinear(layer.weight, layer.bias, abs_weight=a.weight)
        elif isinstance(layer, robustness.Conv2d):
            layer = _KinkConv2d(layer.weight, layer.bias, layer.stride, layer.padding, abs_weight=a.weight)
        layers.append(layer)
    return robustness.Network(tuple(layers), net.input_shape)


Term = Union[CrossEntropy, L2, Sensitivity]
TERMS: dict[str, type] = {t.name: t for t in (CrossEntropy, L2, Sensitivity)}


def default_loss(lam: float = 1e-4) -> tuple[Term, ...]:
    """The plain loss: (CrossEntropy(), L2(lam))."""
    return (CrossEntropy(), L2(lam))


def check(terms: Sequence[Term]) -> tuple[Term, ...]:
    """``terms`` as a tuple, if they make a loss: terms of this module, cross-entropy and L2 at most
    once each, and an L2 term (lam > 0)."""
    if isinstance(terms, (str, bytes)) or not isinstance(terms, Sequence):
        raise ValueError(f"a loss is a list of terms (e.g. landscape.loss.default_loss(1e-4)), got {terms!r}")
    terms = tuple(terms)
    for t in terms:
        if not isinstance(t, tuple(TERMS.values())):
            raise ValueError(f"unknown loss term {t!r}: use {', '.join(c.__name__ for c in TERMS.values())}")
    for kind in (CrossEntropy, L2):
        if sum(isinstance(t, kind) for t in terms) > 1:
            raise ValueError(f"the loss has more than one {kind.name} term; give it once")
    if not any(isinstance(t, L2) for t in terms):
        raise ValueError("the loss needs an l2 term with lam > 0: without it adding one vector to every class's "
                         "output weights leaves the loss unchanged, so no minimum is isolated")
    return terms


def lam_of(terms: Sequence[Term]) -> float:
    """The lam of the L2 term of a checked loss."""
    return next(t.lam for t in terms if isinstance(t, L2))


def is_plain(terms: Sequence[Term]) -> bool:
    """Whether the loss is exactly cross-entropy + L2 (what the compiled kernel evaluates)."""
    return sorted(t.name for t in terms) == sorted(t.name for t in default_loss())


def evaluate(terms: Sequence[Term], w: Tensor, data: LossData, abs_w: Tensor | None = None) -> Tensor:
    """Energies (K,) of parameters ``w`` (K, P): the sum of the terms, differentiable in ``w``;
    ``abs_w`` (K, P), when given, stands for |w| in the IBP radius path of sensitivity terms."""
    return sum(t.value(w, data, abs_w) if isinstance(t, Sensitivity) and abs_w is not None else t.value(w, data)
               for t in terms)


def kink_mask(terms: Sequence[Term], model: Model) -> np.ndarray | None:
    """(P,) bool: the coordinates at whose zero E has a kink |w_i|: the entries of the Linear and
    Conv2d weights through which IBP propagates radii (over 'logit_diff' and 'softmax' the output
    layer is merged into differences of its rows first, so its own entries are smooth there);
    None when the loss has no sensitivity term. See the module docstring."""
    terms = [t for t in terms if isinstance(t, Sensitivity) and t.weight > 0]
    if not terms:
        return None
    probe = torch.zeros(1, model.n_params, dtype=torch.float64, requires_grad=True)
    net = model.to_network(probe)
    layers = list(net.layers)
    if all(t.space != "logits" for t in terms) and isinstance(layers[-1], robustness.Linear):
        layers = layers[:-1]
    weights = [layer.weight for layer in layers if isinstance(layer, (robustness.Linear, robustness.Conv2d))]
    (g,) = torch.autograd.grad(sum(W.sum() for W in weights), probe)
    return (g[0] != 0).numpy()


def sampling_refusal(terms: Sequence[Term], activation: str) -> str | None:
    """Why the minima of this loss cannot be sampled (a line), or None: a sensitivity term by CROWN,
    or any sensitivity term of a ReLU network, has kinks off the coordinate planes everywhere (see
    the module docstring), where neither the quench nor the minimum check can converge."""
    for t in terms:
        if not isinstance(t, Sensitivity) or t.weight == 0:
            continue
        if t.method != "ibp":
            return (f"sampling a loss with a {t.method} sensitivity term is refused: CROWN's relaxations switch "
                    "lines as pre-activation bounds move and read tangent points from a table, so E has kinks and "
                    "jumps everywhere and quenches cannot converge; use --sensitivity-method ibp")
        if activation == "relu":
            return ("sampling a loss with a sensitivity term on a ReLU network is refused: IBP's interval ends "
                    "crossing zero add kinks off the coordinate planes; use --activation softplus")
    return None


def describe(terms: Sequence[Term]) -> str:
    """The loss in one line, e.g.
    ``cross_entropy + l2(lam=0.0001) + sensitivity(weight=0.1, eps=0.05, method=ibp, space=logits)``."""
    def one(t: Term) -> str:
        options = ", ".join(f"{k}={v}" for k, v in asdict(t).items())
        return f"{t.name}({options})" if options else t.name
    return " + ".join(one(t) for t in terms)


def to_dicts(terms: Sequence[Term]) -> list[dict]:
    """The loss as plain data (the stored JSON list)."""
    return [t.to_dict() for t in terms]


def from_dicts(items: list[dict]) -> tuple[Term, ...]:
    """Terms from :func:`to_dicts` output, checked (see :func:`check`)."""
    if not isinstance(items, list):
        raise ValueError(f"a loss is a list of terms like {{\"term\": \"l2\", \"lam\": 1e-4}}, got {items!r}")
    return check([from_dict(item) for item in items])


def from_dict(item: dict) -> Term:
    """One term from its ``to_dict`` output, e.g. ``{"term": "l2", "lam": 1e-4}``."""
    if not isinstance(item, dict) or item.get("term") not in TERMS:
        got = item.get("term") if isinstance(item, dict) else item
        raise ValueError(f"unknown loss term {got!r}: choose one of {', '.join(TERMS)}")
    cls = TERMS[item["term"]]
    options = {k: v for k, v in item.items() if k != "term"}
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"loss term {cls.name!r} has unknown key(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(names) or 'none'}")
    missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in options]
    if missing:
        raise ValueError(f"loss term {cls.name!r} needs {', '.join(missing)}, got {item!r}")
    return cls(**options)
