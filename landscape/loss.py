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
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from typing import ClassVar, Union

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

    With 'ibp' the term is as smooth as the activation (tanh, sigmoid: smooth). 'crown' gives a
    tighter box, but its relaxations switch lines as pre-activation bounds move and read tangent
    points from a table, so the term has kinks and small jumps in w: minima do not converge tightly.
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

    def value(self, w: Tensor, data: LossData) -> Tensor:
        x = data.X.reshape(len(data.X), *data.model.input_shape)
        s = robustness.log_volume(data.model.to_network(w), x, self.eps, method=self.method, space=self.space,
                                  labels=data.y, domain=data.domain)
        return self.weight * s.mean


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


def evaluate(terms: Sequence[Term], w: Tensor, data: LossData) -> Tensor:
    """Energies (K,) of parameters ``w`` (K, P): the sum of the terms, differentiable in ``w``."""
    return sum(t.value(w, data) for t in terms)


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
