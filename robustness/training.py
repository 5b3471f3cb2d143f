"""Training objectives, a seeded mini-batch training loop and a held-out evaluation (torch only).

Every objective is a callable with one signature::

    objective(module, x, y, step) -> scalar Tensor

``module``: a ``torch.nn.Sequential`` that :func:`robustness.from_sequential` converts (Linear,
Conv2d, AvgPool2d, Flatten and activation layers); ``x``: a batch (B, *input_shape), float32;
``y``: labels (B,), int64; ``step``: a :class:`Step` with the current radius ``eps`` (input units;
the training radius times the schedule's ramp), the ramp itself (0 during warm-up, rising linearly
to 1), the input ``domain`` and a random generator. Objectives by name (:data:`OBJECTIVES`):

* 'plain': mean cross-entropy.
* 'l2': cross-entropy + ``lam`` * sum of squared parameters (biases included, as the landscape's L2).
* 'sensitivity': the paper's loss (arXiv 1810.11726): cross-entropy + ``lam`` ||w||^2 + ramp *
  ``lambda_s`` * the mean IBP log-volume (nats) of the output box in ``space`` at the current eps
  (for the logits by :func:`interval_bounds` on the module's own layers, otherwise by
  :func:`robustness.log_volume`). A sum of log-widths can fall by collapsing one output's width
  while others grow: :func:`output_log_widths` gives them one by one. The log-volume has no lower
  bound (a constant output has width 0), so too large a lambda_s collapses the outputs.
* 'input_gradient': cross-entropy + ``lambda_g`` * mean over points of ||grad_x CE||^2 (double
  backpropagation; Ross & Doshi-Velez 2018).
* 'jacobian': cross-entropy + ``lambda_j`` / 2 * mean over points of the squared Frobenius norm
  of the logits' input Jacobian, from ``projections`` random output directions (Hoffman et al. 2019).
* 'pgd': cross-entropy at the PGD adversary of radius eps (:func:`robustness.pgd`; Madry et al. 2018).
* 'trades': cross-entropy + ``beta`` * KL(p(x) || p(x')), x' maximising that KL by PGD within the
  ball (Zhang et al. 2019).
* 'ibp': kappa * CE(logits) + (1 - kappa) * CE(worst-case logits), the worst case from interval
  bounds of y_j - y_true (Gowal et al. 2018); kappa falls from 1 to ``kappa`` with the ramp.
* 'crown_ibp': as 'ibp' with the worst case from beta * CROWN + (1 - beta) * IBP bounds, beta
  falling from 1 to ``beta`` with the ramp (Zhang et al. 2020). The CROWN part is
  :func:`robustness.crown` (CROWN bounds for every layer, tighter than CROWN-IBP's interval
  intermediates and dearer: memory grows with points x neurons x inputs, fine for MLPs and small
  CNNs); it is computed only while beta > 0.

:func:`train` runs Adam or SGD on mini-batches in float32 on ``device`` ('cpu' or 'cuda', one
code path), every random draw from its seed. :func:`evaluate` scores a network on held-out data:
clean accuracy; IBP and CROWN log-volumes and per-output IBP log-widths; FGSM, PGD (restarts) and
verified (CROWN) accuracy at each eps; DeepFool's rho_adv.
"""
from __future__ import annotations

import math
import numbers
import time
from copy import deepcopy
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, ClassVar, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._inputs import Domain
from .attacks import fgsm, pgd
from .bounds import crown, ibp, output_bounds
from .metrics import clean_accuracy, rho_adv, robust_accuracy, verified_accuracy
from .network import Network, forward, from_sequential
from .sensitivity import SPACES, box_log_volume, log_volume

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class Step:
    """What one training step passes to the objective: ``eps`` the current radius (input units),
    ``ramp`` in [0, 1] (0 during warm-up), the input ``domain`` (None: unbounded) and the
    ``generator`` of the step's random draws (on the training device)."""

    eps: float
    ramp: float = 1.0
    domain: Domain = None
    generator: torch.Generator | None = None


class Objective(Protocol):
    """A training loss: ``objective(module, x, y, step)`` -> scalar Tensor, differentiable in the
    module's parameters; ``name`` its key in :data:`OBJECTIVES`; ``params()`` its settings."""

    name: ClassVar[str]

    def __call__(self, module: nn.Module, x: Tensor, y: Tensor, step: Step) -> Tensor: ...

    def params(self) -> dict: ...


def network(module: nn.Module, x: Tensor) -> Network:
    """``module`` as a K = 1 :class:`~robustness.network.Network` on inputs shaped like ``x``
    (B, *input_shape), in x's dtype (weights shared: gradients flow to the module)."""
    return from_sequential(module, tuple(x.shape[1:]), dtype=x.dtype)


def l2_penalty(module: nn.Module) -> Tensor:
    """Sum of squared parameters of ``module`` (biases included)."""
    return sum((p * p).sum() for p in module.parameters())


def _number(owner: str, name: str, value: object, low: float = 0.0, high: float = math.inf) -> float:
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if not ok or not low <= value <= high:
        raise ValueError(f"{owner} {name} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _count(owner: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner} {name} must be an integer >= 1, got {value!r}")
    return int(value)


_MONOTONE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Softplus)


def interval_bounds(module: nn.Sequential, x: Tensor, eps: float, domain: Domain = None,
                    labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Interval bounds (lower, upper), each (B, out), of ``module``'s outputs over the l-inf ball of
    radius ``eps`` around x (B, *input_shape), clipped to ``domain``; with ``labels`` (B,), bounds of
    y_j - y_label instead (0 at the label; a final Linear layer is merged with the differences).

    The same boxes as :func:`robustness.ibp` (equal up to rounding), computed on the module's own
    layers (nn.Linear, nn.Conv2d, nn.AvgPool2d, nn.Flatten, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Softplus)
    without building a Network or checking arguments: on the small batches of training those
    cost as much as the arithmetic."""
    layers = list(module)
    merge = labels is not None and isinstance(layers[-1], nn.Linear)
    c, r = centre_radius(layers[:-1] if merge else layers, x, eps, domain)
    if merge:
        last = layers[-1]
        w = last.weight.unsqueeze(0) - last.weight[labels].unsqueeze(1)  # (B, out, in): rows w_j - w_label
        mu = torch.einsum("boi,bi->bo", w, c)
        if last.bias is not None:
            mu = mu + (last.bias.unsqueeze(0) - last.bias[labels].unsqueeze(1))
        rad = torch.einsum("boi,bi->bo", w.abs(), r)
        return mu - rad, mu + rad
    if labels is not None:  # differences of the output box
        lo_y, hi_y = (c - r).gather(1, labels[:, None]), (c + r).gather(1, labels[:, None])
        lo, hi = c - r - hi_y, c + r - lo_y
        zero = F.one_hot(labels, c.shape[1]).bool()
        return lo.masked_fill(zero, 0.0), hi.masked_fill(zero, 0.0)
    return c - r, c + r


def centre_radius(layers: Sequence[nn.Module], x: Tensor, eps: float, domain: Domain = None
                  ) -> tuple[Tensor, Tensor]:
    """Centre and radius (B, out) of the interval box of ``layers`` (applied in order; as
    :func:`interval_bounds`) over the ball of radius ``eps`` around x, clipped to ``domain``."""
    lo, hi = _ball(x, eps, domain)
    c, r = (hi + lo) / 2, (hi - lo) / 2
    for layer in layers:
        c, r = _interval_layer(layer, c, r)
    return c, r


def _interval_layer(layer: nn.Module, c: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """Centre and radius of a box holding ``layer`` of the box (c, r)."""
    if isinstance(layer, nn.Linear):
        return F.linear(c, layer.weight, layer.bias), F.linear(r, layer.weight.abs())
    if isinstance(layer, nn.Conv2d):
        conv = dict(stride=layer.stride, padding=layer.padding)
        return F.conv2d(c, layer.weight, layer.bias, **conv), F.conv2d(r, layer.weight.abs(), **conv)
    if isinstance(layer, (nn.AvgPool2d, nn.Flatten)):
        return layer(c), layer(r)
    if isinstance(layer, _MONOTONE):
        lo, hi = layer(c - r), layer(c + r)
        return (hi + lo) / 2, (hi - lo) / 2
    raise ValueError(f"interval bounds do not support {type(layer).__name__}")


class _Base:
    """``params()``: the fields as plain data."""

    name: ClassVar[str]

    def params(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Plain(_Base):
    """Mean cross-entropy of the logits (nats)."""

    name: ClassVar[str] = "plain"

    def __call__(self, module: nn.Module, x: Tensor, y: Tensor, step: Step) -> Tensor:
        return F.cross_entropy(module(x), y)


@dataclass(frozen=True)
class L2(_Base):
    """Cross-entropy + ``lam`` (default 1e-4) x sum of squared parameters."""

    lam: float = 1e-4
    name: ClassVar[str] = "l2"

    def __post_init__(self) -> None:
        object.__setattr__(self, "lam", _number(self.name, "lam", self.lam))

    def __call__(self, module: nn.Module, x: Tensor, y: Tensor, step: Step) -> Tensor:
        return F.cross_entropy(module(x), y) + self.lam * l2_penalty(module)


@dataclass(frozen=True)
class SensitivityLoss(_Base):
    """The paper's loss: CE + ``lam`` ||w||^2 + ramp x ``lambda_s`` x mean log-volume (nats) of the
    ``method`` ('ibp', default) box of the outputs in ``space`` (default 'logits'; 'logit_diff' takes
    the true class as reference) over the ball of the current eps. Defaults: lambda_s 0.1, lam 1e-4."""

    lambda_s: float = 0.1
    lam: float = 1e-4
    space: str = "logits"
    method: str = "ibp"
    name: ClassVar[str] = "sensitivity"

    def __post_init__(self) -> None:
        object.__setattr__(self, "lambda_s", _number(self.name, "lambda_s", self.lambda_s))
        object.__setattr__(self, "lam", _number(self.name, "lam", self.lam))
        if self.space not in SPACES:
            raise ValueError(f"unknown sensitivity space {self.space!r}; choose one of {', '.join(SPACES)}")
        if self.method not in ("ibp", "crown"):
            raise ValueError(f"unknown sensitivity method {self.method!r}; choose ibp or crown")

    def __call__(self, module: nn.Module, x: Tensor, y: Tensor, step: Step) -> Tensor:
        loss = F.cross_entropy(module(x), y) + self.lam * l2_penalty(module)
        weight = self.lambda_s * step.ramp
        if weight > 0 and step.eps > 0:
            loss = loss + weight * self.log_volume(module, x, y, step.eps, step.domain)
        return loss

    def log_volume(self, module: nn.Module, x: Tensor, y: Tensor, eps: float, domain: Domain) -> Tensor:
        """Mean log-volume (nats, scalar) of the batch's boxes: IBP on the module's layers
        (:func:`interval_bounds`) for the logits, :func:`robustness.log_volume` otherwise."""
        if self.method == "ibp" and self.space == "logits":  # widths 2 r, floored at 1e-12 (nearly as box_log_volume)
            _, r = centre_radius(list(module), x, eps, domain)
            return (2 * r).clamp(min=1e-12).log().sum(-1).mean()
        return log_volume(network(module, x), x, eps, method=self.method, space=self.space, labels=y,
                          domain=domain).mean[0]


@dataclass(frozen=True)
class InputGradient(_Base):
    """Cross-entropy + ``lambda_g`` (default 1.0) x mean over the points of ||grad_x CE_i||^2
    (squared l2 norm of the input gradient of each point's loss; Ross & Doshi-Velez 2018)."""

    lambda_g: float = 1.0
    name: ClassVar[str] = "input_gradient"

    def __post_init__(self) -> None:
        object.__setattr__(self, "lambda_g", _number(self.name, "lambda_g", self.lambda_g))

    def __call__(self, module: nn.Module, x: Tensor, y: Tensor, step: Step) -> Tensor:
        x = x.detach().requires_grad_(True)
        ce = F.cross_entropy(module(x), y, reduction="none")
        grad, = torch.autograd.grad(ce.sum(), x, create_graph=True)
        return ce.mean() + self.lambda_g * grad.flatten(1).pow(2).sum(1).mean()


@dataclass(frozen=True)
class Jacobian(_Base):
    """Cross-entropy + ``lambda_j`` / 2 (default 0.01) x mean over the points of ||J||_F^2, the
    squared Frobenius norm of the logits' input Jacobian, estimated from ``projections`` (default 1)
    random unit directions v of the output space as C E ||v^T J||^2 (Hoffman et al. 2019); the
    directions come from the training step's generator."""

    lambda_j: float = 0.01
    projections: int = 1
    name: ClassVar[str] = "jacobian"

    def __post_init__(self) -> None:
        object.__setattr__(self, "lambda_j", _number(self.name, "lambda_j", self.lambda_j))
        object.__setattr__(self, "projections", _count(self.name, "projections", self.projections))

    def __call__(self, module: nn.Module, x: Tensor, y: Tensor, step: Step) -> Tensor:
        x = x.detach().requires_grad_(True)
        logits = module(x)
        n, C = logits.shape
        frobenius = logits.new_zeros(n)
        for _ in range(self.projections):
            v = torch.randn(n, C, dtype=logits.dtype, device=logits.device, generator=step.generator)
            v = v / v.norm(dim=1, keepdim=True)
            grad, = torch.autograd.grad((logits * v).sum(), x, create_graph=True)
            frobenius = frobenius + C * grad.flatten(1).pow(2).sum(1) / self.projections
        return F.cross_entropy(logits, y) + self.lambda_j / 2 * frobenius.mean()


@dataclass(frozen=True)
class PGDTraining(_Base):
    """Cross-entropy at the PGD adversary (random start, ``steps`` signed steps of ``step_size`` x
    eps, defaults 10 and 0.25) of the current eps (Madry et al. 2018)."""

    steps: int = 10
    step_size: float = 0.25
    name: ClassVar[str] = "pgd"

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", _count(self.name, "steps", self.steps))
        object.__setattr__(self, "step_size", _number(self.name, "step_size", self.step_size))

    def __call__(self, module: nn.Module, x: Tensor, y: Tensor, step: Step) -> Tensor:
        if step.eps > 0:
            x = pgd(network(module, x), x, step.eps, labels=y, steps=self.steps, step_size=self.step_size * step.eps,
                    domain=step.domain, generator=step.generator)[0].detach()
        return F.cross_entropy(module(x), y)


@dataclass(frozen=True)
class TRADES(_Base):
    """CE(f(x), y) + ``beta`` (default 6) x KL(p(x) || p(x')), x' from ``steps`` (default 10) signed
    steps of ``step_size`` x eps (default 0.25) maximising the KL from x + 0.001 eps N(0, 1)
    (Zhang et al. 2019)."""

    beta: float = 6.0
    steps: int = 10
    step_size: float = 0.25
    name: ClassVar[str] = "trades"

    def __post_init__(self) -> None:
        object.__setattr__(self, "beta", _number(self.name, "beta", self.beta))
        object.__setattr__(self, "steps", _count(self.name, "steps", self.steps))
        object.__setattr__(self, "step_size", _number(self.name, "step_size", self.step_size))

    def _adversary(self, module: nn.Module, x: Tensor, p_clean: Tensor, step: Step) -> Tensor:
        lo, hi = _ball(x, step.eps, step.domain)
        noise = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=step.generator)
        xa = torch.minimum(torch.maximum(x + 0.001 * step.eps * noise, lo), hi)
        for _ in range(self.steps):
            xa = xa.detach().requires_grad_(True)
            kl = F.kl_div(F.log_softmax(module(xa), -1), p_clean, reduction="sum")
            grad, = torch.autograd.grad(kl, xa)
            xa = torch.minimum(torch.maximum(xa.detach() + self.step_size * step.eps * grad.sign(), lo), hi)
        return xa.detach()

    def __call__(self, module: nn.Module, x: Tensor, y: Tensor, step: Step) -> Tensor:
        logits = module(x)
        loss = F.cross_entropy(logits, y)
        if step.eps > 0 and self.beta > 0:
            p_clean = F.softmax(logits, -1)
            xa = self._adversary(module, x, p_clean.detach(), step)
            kl = F.kl_div(F.log_softmax(module(xa), -1), p_clean, reduction="batchmean")
            loss = loss + self.beta * kl
        return loss


def _ball(x: Tensor, eps: float, domain: Domain) -> tuple[Tensor, Tensor]:
    """The l-inf ball of radius eps around x (B, ...), clipped to ``domain``: (lower, upper)."""
    lo, hi = x - eps, x + eps
    if domain is not None:
        lo, hi = lo.clamp(min=float(domain[0])), hi.clamp(max=float(domain[1]))
    return lo, hi


def worst_case_logits(net: Network, x: Tensor, y: Tensor, eps: float, method: str = "ibp",
                      domain: Domain = None) -> Tensor:
    """Upper bounds (B, C) of y_j - y_true over the ball, by ``method`` ('ibp', 'crown',
    'ibp+crown'): 0 at the true class. Cross-entropy of them bounds the loss of every input in the
    ball (Gowal et al. 2018)."""
    n = net.n_outputs
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    C = (eye.unsqueeze(0) - F.one_hot(y, n).to(x.dtype).unsqueeze(1)).unsqueeze(0)  # (1, B, n, n): e_j - e_y
    bound = ibp if method == "ibp" else crown if method == "crown" else None
    if bound is None:
        return output_bounds(net, x, eps, method, C=C, domain=domain)[1][0]
    return bound(net, x, eps, C=C, domain=domain)[1][0]


@dataclass(frozen=True)
class IBPTraining(_Base):
    """kappa CE(logits) + (1 - kappa) CE(worst-case IBP logits), kappa = 1 - ramp (1 - ``kappa``),
    default kappa 0.5 (Gowal et al. 2018)."""

    kappa: float = 0.5
    name: ClassVar[str] = "ibp"

    def __post_init__(self) -> None:
        object.__setattr__(self, "kappa", _number(self.name, "kappa", self.kappa, 0.0, 1.0))

    def _worst(self, module: nn.Module, x: Tensor, y: Tensor, step: Step) -> Tensor:
        return interval_bounds(module, x, step.eps, step.domain, labels=y)[1]

    def __call__(self, module: nn.Module, x: Tensor, y: Tensor, step: Step) -> Tensor:
        kappa = 1.0 - step.ramp * (1.0 - self.kappa)
        loss = F.cross_entropy(module(x), y)
        if kappa < 1.0:
            loss = kappa * loss + (1.0 - kappa) * F.cross_entropy(self._worst(module, x, y, step), y)
        return loss


@dataclass(frozen=True)
class CROWNIBPTraining(IBPTraining):
    """As :class:`IBPTraining` (default kappa 0) with the worst case beta CROWN + (1 - beta) IBP,
    beta = 1 - ramp (1 - ``beta``), default beta 0 (Zhang et al. 2020)."""

    kappa: float = 0.0
    beta: float = 0.0
    name: ClassVar[str] = "crown_ibp"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "beta", _number(self.name, "beta", self.beta, 0.0, 1.0))

    def _worst(self, module: nn.Module, x: Tensor, y: Tensor, step: Step) -> Tensor:
        beta = 1.0 - step.ramp * (1.0 - self.beta)
        worst = 0.0
        if beta < 1.0:
            worst = (1.0 - beta) * interval_bounds(module, x, step.eps, step.domain, labels=y)[1]
        if beta > 0.0:
            worst = worst + beta * worst_case_logits(network(module, x), x, y, step.eps, "crown", step.domain)
        return worst


OBJECTIVES: dict[str, type] = {c.name: c for c in (Plain, L2, SensitivityLoss, InputGradient, Jacobian, PGDTraining, TRADES,
                                                   IBPTraining, CROWNIBPTraining)}
"""Objective classes by name."""


def make_objective(name: str, **params) -> Objective:
    """The objective ``name`` (a key of :data:`OBJECTIVES`) with ``params`` (its fields); ValueError
    for an unknown name or parameter."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    cls = OBJECTIVES[name]
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"objective {name!r} has no parameter {', '.join(unknown)}; "
                         f"it takes {', '.join(allowed) or 'none'}")
    return cls(**params)


# -- training ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``epochs`` (default 20) passes over the data in mini-batches of ``batch_size``
    (default 64), shuffled from ``seed``; ``optimizer`` 'adam' (default) or 'sgd' (with
    ``momentum``, default 0.9) at learning rate ``lr`` (default 1e-3). ``eps``: the training radius
    (input units, default 0.1), reached by the schedule: ramp 0 for the first ``warmup`` fraction of
    the steps (default 0.1), then rising linearly to 1 over the next ``ramp`` fraction (default
    0.4); the current radius is eps x ramp. ``domain``: the input domain (e.g. (0, 1) for pixels).
    ``device``: 'cpu' or 'cuda' (or 'cuda:N')."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    eps: float = 0.1
    warmup: float = 0.1
    ramp: float = 0.4
    seed: int = 0
    domain: tuple[float, float] | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            object.__setattr__(self, name, _count("training", name, getattr(self, name)))
        object.__setattr__(self, "lr", _number("training", "lr", self.lr))
        object.__setattr__(self, "momentum", _number("training", "momentum", self.momentum, 0.0, 1.0))
        object.__setattr__(self, "eps", _number("training", "eps", self.eps))
        object.__setattr__(self, "warmup", _number("training", "warmup", self.warmup, 0.0, 1.0))
        object.__setattr__(self, "ramp", _number("training", "ramp", self.ramp, 0.0, 1.0))
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if self.domain is not None:
            object.__setattr__(self, "domain", tuple(float(v) for v in self.domain))
        check_device(self.device)

    def schedule(self, t: float) -> float:
        """The ramp at training progress ``t`` in [0, 1] (fraction of the steps done)."""
        if t < self.warmup:
            return 0.0
        return 1.0 if self.ramp == 0 else min(1.0, (t - self.warmup) / self.ramp)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["domain"] = None if self.domain is None else list(self.domain)
        return d


def check_device(device: str) -> torch.device:
    """``device`` as a torch.device; ValueError if it is not 'cpu' or a CUDA device torch sees."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use cpu or cuda") from None
    if d.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; use cpu or cuda")
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: torch sees no CUDA GPU here; use --device cpu")
    return d


@dataclass
class TrainResult:
    """A trained ``module`` (float32, on the training device), ``history`` (one dict per epoch:
    epoch, loss (mean over its batches), ramp at its end, seconds), ``seconds`` (wall time of the
    whole training) and ``epoch_seconds`` (per epoch)."""

    module: nn.Module
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def epoch_seconds(self) -> list[float]:
        return [h["seconds"] for h in self.history]


def reset_parameters(module: nn.Module, seed: int) -> nn.Module:
    """Re-initialise every layer of ``module`` with torch's default initialisation, drawn from
    ``seed`` (the global random state is left as it was); returns the module."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            if m is not module and hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return module


def mlp(widths: tuple[int, ...], activation: str = "relu") -> nn.Sequential:
    """An MLP (inputs, hidden..., classes) with ``activation`` ('relu', 'tanh', 'sigmoid') between
    the Linear layers; torch's default initialisation (see :func:`reset_parameters`)."""
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
    if activation not in acts:
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(acts)}")
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        mods.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            mods.append(acts[activation]())
    return nn.Sequential(*mods)


def train(module: nn.Module, x: Tensor, y: Tensor, objective: Objective, config: TrainConfig = TrainConfig(),
          progress: Callable[[int, int, float], None] | None = None) -> TrainResult:
    """Train ``module`` in place on inputs ``x`` (N, *input_shape) and labels ``y`` (N,) by
    minimising ``objective`` over mini-batches (see :class:`TrainConfig`); returns a
    :class:`TrainResult`. ``progress(epoch, epochs, loss)`` is called after every epoch. The
    module's initial parameters are the caller's (:func:`reset_parameters` seeds them)."""
    device = check_device(config.device)
    module.to(device=device, dtype=torch.float32)
    x = torch.as_tensor(x).to(device=device, dtype=torch.float32)
    y = torch.as_tensor(y).to(device=device, dtype=torch.long)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must hold the same number (>= 1) of points, got {len(x)} and {len(y)}")
    if config.optimizer == "adam":
        opt = torch.optim.Adam(module.parameters(), lr=config.lr)
    else:
        opt = torch.optim.SGD(module.parameters(), lr=config.lr, momentum=config.momentum)
    shuffle = torch.Generator().manual_seed(config.seed)
    draws = torch.Generator(device=device).manual_seed(config.seed + 1)
    n, b = len(x), config.batch_size
    per_epoch = math.ceil(n / b)
    total = config.epochs * per_epoch
    result = TrainResult(module)
    start = time.perf_counter()
    for epoch in range(config.epochs):
        t0, losses = time.perf_counter(), []
        order = torch.randperm(n, generator=shuffle).to(device)
        for i in range(per_epoch):
            ramp = config.schedule((epoch * per_epoch + i) / total)
            step = Step(config.eps * ramp, ramp, config.domain, draws)
            idx = order[i * b:(i + 1) * b]
            loss = objective(module, x[idx], y[idx], step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        mean = float(torch.stack(losses).mean())
        if not math.isfinite(mean):
            raise ValueError(f"training diverged in epoch {epoch + 1} (loss {mean}); lower the learning rate")
        result.history.append({"epoch": epoch + 1, "loss": mean, "ramp": ramp,
                               "seconds": time.perf_counter() - t0})
        if progress is not None:
            progress(epoch + 1, config.epochs, mean)
    result.seconds = time.perf_counter() - start
    return result


# -- evaluation ----------------------------------------------------------------------------------
_QUANTITY = {"sensitivity_ibp": ("sensitivity", "ibp"), "sensitivity_crown": ("sensitivity", "crown"),
             "fgsm_accuracy": ("fgsm_accuracy", "fgsm"), "pgd_accuracy": ("pgd_accuracy", "pgd"),
             "verified_accuracy": ("verified_accuracy", "ibp+crown"), "verified_ibp": ("verified_accuracy", "ibp")}
"""Keys of :attr:`Evaluation.per_eps` as (quantity, method)."""


@dataclass
class Evaluation:
    """Scores of a network on held-out points (fractions in [0, 1], log-volumes in nats).

    ``clean_accuracy``; ``rho_adv`` (DeepFool, mean ||r||_2 / ||x||_2; NaN when not computed, or
    not computable: outputs that do not depend on the input);
    ``n_points``; ``per_eps``: for each eps (input units) a dict of 'sensitivity_ibp' and
    'sensitivity_crown' (mean log-volume of the logit box), 'fgsm_accuracy', 'pgd_accuracy',
    'verified_accuracy' (ibp+crown bounds of the logit differences) and 'verified_ibp', and
    'log_widths_ibp' (the mean log-width of each output's IBP interval, a list over the outputs).
    """

    clean_accuracy: float
    rho_adv: float
    n_points: int
    per_eps: dict[float, dict] = field(default_factory=dict)

    def scalars(self) -> list[tuple[str, float, str, float]]:
        """Every number as (quantity, eps (NaN where none), method, value); per-output widths as
        quantity 'log_width_<j>'."""
        out = [("accuracy", math.nan, "", self.clean_accuracy), ("rho_adv", math.nan, "deepfool", self.rho_adv)]
        for eps, d in self.per_eps.items():
            for key, value in d.items():
                if key == "log_widths_ibp":
                    out += [(f"log_width_{j}", eps, "ibp", v) for j, v in enumerate(value)]
                else:
                    quantity, method = _QUANTITY[key]
                    out.append((quantity, eps, method, value))
        return out

    def to_dict(self) -> dict:
        return {"clean_accuracy": self.clean_accuracy, "rho_adv": self.rho_adv, "n_points": self.n_points,
                "per_eps": {str(e): d for e, d in self.per_eps.items()}}


@dataclass(frozen=True)
class EvalConfig:
    """What :func:`evaluate` computes: ``eps`` radii (default 0.01, 0.05, 0.1); PGD with ``pgd_steps``
    (default 40) and ``pgd_restarts`` (default 1) from ``seed``; CROWN bounds (``crown``) and
    DeepFool (``deepfool``) can be left out (they cost most)."""

    eps: tuple[float, ...] = (0.01, 0.05, 0.1)
    pgd_steps: int = 40
    pgd_restarts: int = 1
    seed: int = 0
    crown: bool = True
    deepfool: bool = True

    def __post_init__(self) -> None:
        eps = (self.eps,) if isinstance(self.eps, numbers.Real) else tuple(self.eps)
        object.__setattr__(self, "eps", tuple(_number("evaluation", "eps", e) for e in eps))
        object.__setattr__(self, "pgd_steps", _count("evaluation", "pgd_steps", self.pgd_steps))
        object.__setattr__(self, "pgd_restarts", _count("evaluation", "pgd_restarts", self.pgd_restarts))


def output_log_widths(net: Network, x: Tensor, eps: float, method: str = "ibp", domain: Domain = None) -> Tensor:
    """Mean over the points of log(u_j - l_j) of each output j of the ``method`` box: (K, out), nats
    (floored as :func:`~robustness.box_log_volume`). Their sum over j is the mean log-volume."""
    lo, hi = output_bounds(net, x, eps, method, domain=domain)
    return torch.stack([box_log_volume(lo[..., j:j + 1], hi[..., j:j + 1]) for j in range(lo.shape[-1])],
                       -1).mean(1)


def evaluate(module: nn.Module, x: Tensor, y: Tensor, config: EvalConfig = EvalConfig(), *,
             domain: Domain = None, device: str = "cpu") -> Evaluation:
    """Scores (:class:`Evaluation`) of ``module`` on held-out inputs ``x`` (N, *input_shape) and
    labels ``y`` (N,), computed in float64 on ``device``; the module itself is not changed."""
    dev = check_device(device)
    x = torch.as_tensor(x).to(device=dev, dtype=torch.float64)
    y = torch.as_tensor(y).to(device=dev, dtype=torch.long)
    net = _frozen_network(module, tuple(x.shape[1:]), dev)
    gen = torch.Generator(device=dev)
    per_eps = {}
    for eps in config.eps:
        with torch.no_grad():
            d = {"sensitivity_ibp": float(log_volume(net, x, eps, method="ibp", domain=domain).mean[0])}
            if config.crown:
                d["sensitivity_crown"] = float(log_volume(net, x, eps, method="crown", domain=domain).mean[0])
            d["log_widths_ibp"] = output_log_widths(net, x, eps, "ibp", domain)[0].tolist()
        adv = fgsm(net, x, y, eps, domain=domain)
        with torch.no_grad():
            ok = (forward(net, x).argmax(-1) == y) & (forward(net, adv).argmax(-1) == y)
        d["fgsm_accuracy"] = float(ok.double().mean())
        gen.manual_seed(config.seed)
        d["pgd_accuracy"] = float(robust_accuracy(net, x, y, eps, steps=config.pgd_steps,
                                                  restarts=config.pgd_restarts, domain=domain, generator=gen)[0])
        if config.crown:
            d["verified_accuracy"] = float(verified_accuracy(net, x, y, eps, method="ibp+crown", domain=domain)[0])
        d["verified_ibp"] = float(verified_accuracy(net, x, y, eps, method="ibp", domain=domain)[0])
        per_eps[eps] = d
    rho = float(rho_adv(net, x)[0]) if config.deepfool else math.nan  # NaN: outputs constant in x
    return Evaluation(float(clean_accuracy(net, x, y)[0]), rho, len(y), per_eps)




def _frozen_network(module: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> Network:
    """A float64 copy of ``module`` on ``device`` as a Network, without gradients (the module is
    not changed)."""
    copy = deepcopy(module).to(device=device, dtype=torch.float64)
    for p in copy.parameters():
        p.requires_grad_(False)
    return from_sequential(copy, input_shape, dtype=torch.float64)
