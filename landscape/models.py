"""Network specs evaluated functionally on flat float64 parameter vectors, batched over walkers.

A spec is plain data (:class:`MLP`, :class:`CNN`); its parameters live in one flat vector
``w`` of length ``n_params`` whose layout is given by :meth:`blocks` (name, shape, offset):

- MLP, layer by layer: ``W{l}`` as an (in, out) row-major block, then ``b{l}`` (out,) when
  biases are on. For Iris 4-5-3 this is [W0 (4x5), b0 (5), W1 (5x3), b1 (3)], 43 parameters,
  the layout of the GMIN/OPTIM and pele MLP potentials.
- CNN, per convolution: ``conv{l}.weight`` (Cout, Cin, k, k), ``conv{l}.bias`` (Cout,); then the
  dense output layer ``W`` (in, n_classes), ``b`` (n_classes,) as in the MLP.

``forward(w, X)`` takes ``w`` of shape (K, P) and ``X`` of shape (N, D) and returns logits
(K, N, C) in one tensor call. ``to_module`` / ``from_module`` convert to and from an ordinary
``torch.nn.Sequential`` with identical outputs.
"""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import asdict, dataclass
from typing import Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import robustness

ACTIVATIONS = {"tanh": robustness.Tanh, "sigmoid": robustness.Sigmoid, "relu": robustness.ReLU,
               "softplus": robustness.Softplus}
"""Hidden-layer activations by name, as robustness layers (whose ``fn`` computes them)."""
MODULES = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU, "softplus": nn.Softplus}
DEFAULT_SHARPNESS = 10.0
"""beta of softplus, log(1 + exp(beta x)) / beta, when none is given (ReLU is the limit beta -> inf)."""


@dataclass(frozen=True)
class Block:
    """One named parameter block of the flat vector: ``w[offset:offset+size].reshape(shape)``."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def indices(self) -> np.ndarray:
        """Flat indices of the block's entries, shaped like the block."""
        return np.arange(self.offset, self.offset + self.size).reshape(self.shape)

    def view(self, w: torch.Tensor) -> torch.Tensor:
        """The block of a batch ``w`` (K, P) as (K, *shape)."""
        return w[:, self.offset:self.offset + self.size].reshape(w.shape[0], *self.shape)


@dataclass(frozen=True)
class UnitGroup:
    """The hidden units of one layer, as flat-parameter indices: relabelling the units (the same
    permutation of the rows of ``incoming`` (H, a) and ``outgoing`` (H, b)) leaves E unchanged;
    when ``odd`` (tanh), so does negating one unit's incoming and outgoing entries together."""

    incoming: np.ndarray
    outgoing: np.ndarray
    odd: bool


def _integers(name: str, values) -> tuple[int, ...]:
    """``values`` as a tuple of ints; ValueError for anything not a whole number (2.5 is not 2)."""
    whole = [isinstance(v, numbers.Integral) and not isinstance(v, bool)
             or isinstance(v, numbers.Real) and not isinstance(v, bool) and float(v).is_integer() for v in values]
    if not all(whole):
        raise ValueError(f"{name} must be whole numbers, got {tuple(values)}")
    return tuple(int(v) for v in values)


def _check_options(activation: str, bias: bool, sharpness: float | None) -> float | None:
    """Checks the activation options; returns the sharpness (DEFAULT_SHARPNESS for softplus if None)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: choose one of {', '.join(ACTIVATIONS)}")
    if not isinstance(bias, bool):
        raise ValueError(f"bias must be true or false, got {bias!r}")
    if activation != "softplus":
        if sharpness is not None:
            raise ValueError(f"sharpness is the beta of softplus; {activation} has none: drop it or use softplus")
        return None
    if sharpness is None:
        return DEFAULT_SHARPNESS
    if isinstance(sharpness, bool) or not isinstance(sharpness, numbers.Real) or not 0 < sharpness < math.inf:
        raise ValueError(f"sharpness must be a finite number > 0, got {sharpness!r}")
    return float(sharpness)


class _FlatParameters:
    """What every spec shares: a flat vector laid out as ``blocks()``, hidden units ``activation``
    (with ``sharpness`` for softplus)."""

    activation: str
    sharpness: float | None

    def activation_layer(self) -> robustness.network.Layer:
        """The hidden activation as a robustness layer; its ``fn`` computes it."""
        layer = ACTIVATIONS[self.activation]
        return layer() if self.sharpness is None else layer(self.sharpness)

    def _activation_module(self) -> nn.Module:
        module = MODULES[self.activation]
        return module() if self.sharpness is None else module(self.sharpness, robustness.network.SOFTPLUS_THRESHOLD)

    def _spec_dict(self, **lists) -> dict:
        """kind, fields and ``lists`` (tuples as lists); sharpness only where it applies, so that the
        specs of other activations read as they did before softplus."""
        d = {"kind": self.kind, **asdict(self), **lists}
        if d["sharpness"] is None:
            del d["sharpness"]
        return d

    def blocks(self) -> list[Block]:
        raise NotImplementedError

    @property
    def n_params(self) -> int:
        last = self.blocks()[-1]
        return last.offset + last.size

    def _block_indices(self) -> dict[str, np.ndarray]:
        return {blk.name: blk.indices() for blk in self.blocks()}

    def _activations(self) -> int:
        """Hidden values one sample produces in a forward pass."""
        raise NotImplementedError

    def memory_bytes(self, n_samples: int) -> int:
        """A lower estimate of the memory that evaluating the energy and its gradient on
        ``n_samples`` samples takes: a few copies of the parameters (the vector, its gradient, the
        optimiser's) and the activations of the forward and backward passes, float64."""
        return 8 * (4 * self.n_params + 2 * n_samples * self._activations())

    def check_fits(self, n_samples: int) -> None:
        """Refuse, before anything is allocated, a model too large to evaluate on ``n_samples``
        samples in this machine's memory (ValueError naming the sizes)."""
        free = available_memory()
        need = self.memory_bytes(n_samples)
        if free is not None and need > free:
            raise ValueError(f"this {self.kind.upper()} has {self.n_params:,} parameters and needs about "
                             f"{need / 2**30:,.1f} GiB to evaluate on {n_samples} samples, and {free / 2**30:.1f} GiB "
                             "is available: use fewer or narrower layers (--hidden, --channels) or fewer samples "
                             "(--limit)")


def available_memory() -> int | None:
    """Bytes of memory the OS can give (landscape.allocator.available_bytes), else this machine's
    memory; None where the system says neither."""
    from .allocator import available_bytes

    free = available_bytes()
    if free is not None:
        return free
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


@dataclass(frozen=True)
class MLP(_FlatParameters):
    """Multi-layer perceptron: ``widths`` = (inputs, hidden..., classes); ``activation`` on hidden
    layers (default tanh, as in the GMIN/OPTIM MLP potential; softplus takes ``sharpness``, beta,
    default 10); the output layer is linear (logits)."""

    widths: tuple[int, ...]
    activation: str = "tanh"
    bias: bool = True
    sharpness: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", _integers("MLP widths", self.widths))
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError(f"MLP widths must be at least (inputs, classes), all positive; got {self.widths}")
        object.__setattr__(self, "sharpness", _check_options(self.activation, self.bias, self.sharpness))

    kind = "mlp"

    @property
    def n_inputs(self) -> int:
        return self.widths[0]

    @property
    def n_classes(self) -> int:
        return self.widths[-1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.widths[0],)

    def blocks(self) -> list[Block]:
        out, off = [], 0
        for l, (a, b) in enumerate(zip(self.widths[:-1], self.widths[1:])):
            out.append(Block(f"W{l}", (a, b), off))
            off += a * b
            if self.bias:
                out.append(Block(f"b{l}", (b,), off))
                off += b
        return out

    def _activations(self) -> int:
        return sum(self.widths[1:])

    def unit_groups(self) -> list[UnitGroup]:
        """The symmetries of E: hidden units of each hidden layer (see :class:`UnitGroup`)."""
        b = self._block_indices()
        groups = []
        for l in range(1, len(self.widths) - 1):
            inc = b[f"W{l - 1}"].T
            if self.bias:
                inc = np.concatenate([inc, b[f"b{l - 1}"][:, None]], 1)
            groups.append(UnitGroup(inc, b[f"W{l}"], self.activation == "tanh"))
        return groups

    def layers(self, w: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per dense layer (W (K, in, out), b (K, out) or None) as views of ``w`` (K, P)."""
        views = {b.name: b.view(w) for b in self.blocks()}
        return [(views[f"W{l}"], views.get(f"b{l}")) for l in range(len(self.widths) - 1)]

    def forward(self, w: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """Logits (K, N, C) for parameters ``w`` (K, P) and inputs ``X`` (N, D)."""
        act = self.activation_layer().fn
        h = X
        layers = self.layers(w)
        for l, (W, b) in enumerate(layers):
            h = torch.matmul(h, W)
            if b is not None:
                h = h + b[:, None, :]
            if l < len(layers) - 1:
                h = act(h)
        return h

    def to_network(self, w: np.ndarray | torch.Tensor) -> robustness.Network:
        """The K networks of ``w`` (K, P) as one batched :class:`robustness.Network` (for bounds)."""
        w = _as_batch(w, self.n_params)
        layers: list = []
        for l, (W, b) in enumerate(self.layers(w)):
            layers.append(robustness.Linear(W.transpose(1, 2), b))
            if l < len(self.widths) - 2:
                layers.append(self.activation_layer())
        return robustness.Network(tuple(layers), (self.n_inputs,))

    def to_module(self, w: np.ndarray | torch.Tensor) -> nn.Sequential:
        """An ordinary ``nn.Sequential`` (float64) computing the same logits as ``w`` (P,)."""
        w = _as_row(w, self.n_params)
        mods: list[nn.Module] = []
        layers = self.layers(w)
        for l, (W, b) in enumerate(layers):
            lin = nn.Linear(W.shape[1], W.shape[2], bias=self.bias, dtype=torch.float64)
            with torch.no_grad():
                lin.weight.copy_(W[0].T)
                if b is not None:
                    lin.bias.copy_(b[0])
            mods.append(lin)
            if l < len(layers) - 1:
                mods.append(self._activation_module())
        return nn.Sequential(*mods)

    def from_module(self, module: nn.Module) -> np.ndarray:
        """The flat vector (P,) of an ``nn.Sequential`` made by :meth:`to_module`."""
        lins = [m for m in module.modules() if isinstance(m, nn.Linear)]
        if len(lins) != len(self.widths) - 1:
            raise ValueError(f"module has {len(lins)} Linear layers, the spec needs {len(self.widths) - 1}")
        parts = []
        for l, lin in enumerate(lins):
            want = (self.widths[l + 1], self.widths[l])
            if tuple(lin.weight.shape) != want or (lin.bias is not None) != self.bias:
                raise ValueError(f"Linear layer {l} has weight {tuple(lin.weight.shape)} (bias "
                                 f"{lin.bias is not None}); the spec needs {want} (bias {self.bias})")
            parts.append(lin.weight.detach().T.reshape(-1))
            if self.bias:
                parts.append(lin.bias.detach().reshape(-1))
        return torch.cat(parts).to(torch.float64).numpy().copy()

    def to_dict(self) -> dict:
        return self._spec_dict(widths=list(self.widths))


@dataclass(frozen=True)
class CNN(_FlatParameters):
    """Small CNN for images ``input_shape`` = (C, H, W): per entry of ``channels`` a k x k
    convolution (stride 1, 'same' padding) + activation + ``pool`` x ``pool`` average pooling,
    then a dense layer to ``n_classes`` logits. Default: one layer of 8 channels, k=3, pool 2;
    ``activation`` and ``sharpness`` as in :class:`MLP`."""

    input_shape: tuple[int, int, int]
    n_classes: int
    channels: tuple[int, ...] = (8,)
    kernel_size: int = 3
    pool: int = 2
    activation: str = "tanh"
    bias: bool = True
    sharpness: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", _integers("CNN input_shape", self.input_shape))
        object.__setattr__(self, "channels", _integers("CNN channels", self.channels))
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ValueError(f"CNN input_shape must be (C, H, W), got {self.input_shape}")
        if self.channels and min(self.channels) < 1:
            raise ValueError(f"CNN channels must be positive counts (e.g. --channels 8), got "
                             f"{self.channels}")
        (n_classes, kernel_size, pool) = _integers("CNN n_classes, kernel_size and pool",
                                                   (self.n_classes, self.kernel_size, self.pool))
        object.__setattr__(self, "n_classes", n_classes)
        object.__setattr__(self, "kernel_size", kernel_size)
        object.__setattr__(self, "pool", pool)
        if n_classes < 1 or pool < 1:
            raise ValueError(f"CNN n_classes and pool must be positive, got {n_classes} and {pool}")
        if kernel_size < 1 or kernel_size % 2 != 1:
            raise ValueError(f"CNN kernel_size must be odd and positive ('same' padding), got {kernel_size}")
        object.__setattr__(self, "sharpness", _check_options(self.activation, self.bias, self.sharpness))
        h, wd = self.input_shape[1:]
        for _ in self.channels:
            h, wd = h // self.pool, wd // self.pool
        if h < 1 or wd < 1:
            raise ValueError(f"{len(self.channels)} pooling layers of {self.pool} shrink {self.input_shape} to nothing")

    kind = "cnn"

    @property
    def n_inputs(self) -> int:
        return int(np.prod(self.input_shape))

    def _flat_features(self) -> int:
        h, wd = self.input_shape[1:]
        for _ in self.channels:
            h, wd = h // self.pool, wd // self.pool
        return self.channels[-1] * h * wd if self.channels else self.n_inputs

    def _activations(self) -> int:
        n, (h, wd) = self.n_classes, self.input_shape[1:]
        for c in self.channels:
            n += c * h * wd
            h, wd = h // self.pool, wd // self.pool
        return n

    def blocks(self) -> list[Block]:
        out, off, cin, k = [], 0, self.input_shape[0], self.kernel_size
        for l, c in enumerate(self.channels):
            out.append(Block(f"conv{l}.weight", (c, cin, k, k), off))
            off += c * cin * k * k
            if self.bias:
                out.append(Block(f"conv{l}.bias", (c,), off))
                off += c
            cin = c
        out.append(Block("W", (self._flat_features(), self.n_classes), off))
        off += self._flat_features() * self.n_classes
        if self.bias:
            out.append(Block("b", (self.n_classes,), off))
        return out

    def unit_groups(self) -> list[UnitGroup]:
        """The symmetries of E: channels of each convolution (see :class:`UnitGroup`); average
        pooling is linear, so for tanh a channel's sign flip is a symmetry too."""
        b = self._block_indices()
        groups = []
        for l, c in enumerate(self.channels):
            inc = b[f"conv{l}.weight"].reshape(c, -1)
            if self.bias:
                inc = np.concatenate([inc, b[f"conv{l}.bias"][:, None]], 1)
            if l + 1 < len(self.channels):
                out = b[f"conv{l + 1}.weight"].transpose(1, 0, 2, 3).reshape(c, -1)
            else:
                out = b["W"].reshape(c, -1)  # rows of W are the flattened (C, h, w) features
            groups.append(UnitGroup(inc, out, self.activation == "tanh"))
        return groups

    def _single(self, w: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        views = {b.name: w[b.offset:b.offset + b.size].reshape(b.shape) for b in self.blocks()}
        act = self.activation_layer().fn
        h = X.reshape(X.shape[0], *self.input_shape)
        for l in range(len(self.channels)):
            h = F.conv2d(h, views[f"conv{l}.weight"], views.get(f"conv{l}.bias"), padding=self.kernel_size // 2)
            h = F.avg_pool2d(act(h), self.pool)
        h = h.reshape(h.shape[0], -1) @ views["W"]
        return h + views["b"] if self.bias else h

    def forward(self, w: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """Logits (K, N, C) for parameters ``w`` (K, P) and inputs ``X`` (N, D)."""
        return torch.func.vmap(self._single, in_dims=(0, None))(w, X)

    def to_network(self, w: np.ndarray | torch.Tensor) -> robustness.Network:
        """The K networks of ``w`` (K, P) as one batched :class:`robustness.Network` (for bounds),
        taking images of shape ``input_shape``."""
        w = _as_batch(w, self.n_params)
        views = {b.name: b.view(w) for b in self.blocks()}
        pad = (self.kernel_size // 2,) * 2
        layers: list = []
        for l in range(len(self.channels)):
            layers += [robustness.Conv2d(views[f"conv{l}.weight"], views.get(f"conv{l}.bias"), padding=pad),
                       self.activation_layer(),
                       robustness.AvgPool2d((self.pool, self.pool))]
        layers += [robustness.Flatten(), robustness.Linear(views["W"].transpose(1, 2), views.get("b"))]
        return robustness.Network(tuple(layers), self.input_shape)

    def to_module(self, w: np.ndarray | torch.Tensor) -> nn.Sequential:
        """An ordinary ``nn.Sequential`` (float64) computing the same logits as ``w`` (P,)."""
        w = _as_row(w, self.n_params)[0]
        views = {b.name: w[b.offset:b.offset + b.size].reshape(b.shape) for b in self.blocks()}
        mods: list[nn.Module] = [nn.Unflatten(1, self.input_shape)]
        cin = self.input_shape[0]
        for l, c in enumerate(self.channels):
            conv = nn.Conv2d(cin, c, self.kernel_size, padding=self.kernel_size // 2, bias=self.bias,
                             dtype=torch.float64)
            with torch.no_grad():
                conv.weight.copy_(views[f"conv{l}.weight"])
                if self.bias:
                    conv.bias.copy_(views[f"conv{l}.bias"])
            mods += [conv, self._activation_module(), nn.AvgPool2d(self.pool)]
            cin = c
        lin = nn.Linear(self._flat_features(), self.n_classes, bias=self.bias, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(views["W"].T)
            if self.bias:
                lin.bias.copy_(views["b"])
        return nn.Sequential(*mods, nn.Flatten(), lin)

    def from_module(self, module: nn.Module) -> np.ndarray:
        """The flat vector (P,) of an ``nn.Sequential`` made by :meth:`to_module`."""
        params = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        parts = []
        for m in params:
            wt = m.weight.detach()
            parts.append((wt.T if isinstance(m, nn.Linear) else wt).reshape(-1))
            if m.bias is not None:
                parts.append(m.bias.detach().reshape(-1))
        w = torch.cat(parts).to(torch.float64).numpy().copy()
        if w.size != self.n_params:
            raise ValueError(f"module holds {w.size} parameters, the spec needs {self.n_params}")
        return w

    def to_dict(self) -> dict:
        return self._spec_dict(input_shape=list(self.input_shape), channels=list(self.channels))


Model = Union[MLP, CNN]


def from_dict(d: dict) -> Model:
    """Rebuild a spec from :meth:`to_dict` output."""
    d = dict(d)
    kind = d.pop("kind", None)
    if kind == "mlp":
        return MLP(**d)
    if kind == "cnn":
        return CNN(**d)
    raise ValueError(f"unknown model kind {kind!r}: expected 'mlp' or 'cnn'")


def _as_batch(w: np.ndarray | torch.Tensor, n_params: int) -> torch.Tensor:
    t = torch.as_tensor(w, dtype=torch.float64)
    t = t[None] if t.ndim == 1 else t
    if t.ndim != 2 or t.shape[1] != n_params:
        raise ValueError(f"parameters must have shape (K, {n_params}), got {tuple(t.shape)}")
    return t


def _as_row(w: np.ndarray | torch.Tensor, n_params: int) -> torch.Tensor:
    t = torch.as_tensor(w, dtype=torch.float64).reshape(1, -1)
    if t.shape[1] != n_params:
        raise ValueError(f"parameter vector has {t.shape[1]} entries, the model needs {n_params}")
    return t


class Preprocess(nn.Module):
    """Raw inputs (N, ...) to network inputs (N, D): trailing dimensions flattened, then
    (x - shift) / scale with ``shift`` and ``scale`` (D,) of the dataset (float64)."""

    def __init__(self, shift: np.ndarray, scale: np.ndarray):
        super().__init__()
        self.register_buffer("shift", torch.as_tensor(np.asarray(shift, dtype=np.float64)))
        self.register_buffer("scale", torch.as_tensor(np.asarray(scale, dtype=np.float64)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float64)
        return (x.reshape(x.shape[0], -1) - self.shift) / self.scale


def with_preprocessing(module: nn.Module, shift: np.ndarray, scale: np.ndarray) -> nn.Sequential:
    """``module`` (on network inputs) preceded by :class:`Preprocess`: a network on raw inputs."""
    return nn.Sequential(Preprocess(shift, scale), module)
