"""Batched feed-forward networks: K parameter sets of one architecture.

A :class:`Network` is a tuple of layers and the shape of one input. Each
parametrised layer holds K parameter sets stacked on a leading axis, so one call
evaluates K networks at once (for example K minima of a loss landscape). Build one
from explicit tensors::

    net = Network((Linear(W1, b1), Tanh(), Linear(W2, b2)), input_shape=(4,))

with ``W1`` of shape (K, 5, 4), ``b1`` (K, 5), ``W2`` (K, 3, 5), ``b2`` (K, 3);
from a ``torch.nn.Sequential`` with :func:`from_sequential` (K = 1); or stack
networks of one architecture with :func:`stack`. Weights are used as given (no
copy), so gradients flow back to them. All weights share one dtype, the dtype of
every computation on the network.

Tensors flowing through a network have shape (K or 1, N, *feature_shape): the
leading axis indexes parameter sets (1 means shared by all K), the second one data
points. Affine layers offer the operations the bound propagation needs:
``affine`` (the layer itself), ``apply`` (its linear part, optionally with absolute
weights), ``transpose`` (the adjoint of the linear part, on coefficient rows) and
``bias_dot``.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._inputs import as_batch


def _pair(name: str, value: int | Sequence[int]) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair


def _check_tensor(name: str, t: Tensor, dim: int) -> None:
    if not isinstance(t, Tensor) or t.dim() != dim:
        got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a tensor with {dim} dimensions, got {got}")
    if t.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name} must be float32 or float64, got {t.dtype}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def _check_bias(bias: Tensor | None, k: int, n: int) -> None:
    if bias is not None:
        _check_tensor("bias", bias, 2)
        if tuple(bias.shape) != (k, n):
            raise ValueError(f"bias has shape {tuple(bias.shape)}; expected ({k}, {n})")


def _output_padding(size: tuple[int, ...], out: tuple[int, ...], kernel, stride, padding) -> tuple[int, int]:
    """Extra rows/columns a transposed convolution needs to restore ``size``."""
    return tuple(size[i] - ((out[i] - 1) * stride[i] - 2 * padding[i] + kernel[i]) for i in range(2))


def _rows_dot(a: Tensor, b: Tensor) -> Tensor:
    """Rows a (K or 1, N', m, n) dotted with vectors b (K, n): (K, N', m)."""
    return torch.matmul(a.flatten(1, 2), b.unsqueeze(-1)).view(b.shape[0], *a.shape[1:3])


@dataclass(frozen=True, eq=False)
class Linear:
    """Fully connected layer y = W x + b; weight (K, out, in), bias (K, out) or None."""

    weight: Tensor
    bias: Tensor | None = None

    def __post_init__(self) -> None:
        _check_tensor("Linear weight", self.weight, 3)
        _check_bias(self.bias, self.weight.shape[0], self.weight.shape[1])

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if shape != (self.weight.shape[2],):
            raise ValueError(f"Linear layer expects inputs of shape ({self.weight.shape[2]},), gets {shape}")
        return (self.weight.shape[1],)

    def apply(self, x: Tensor, absolute: bool = False) -> Tensor:
        """W x (or |W| x) for x of shape (K or 1, N, in); returns (K, N, out)."""
        w = self.weight.abs() if absolute else self.weight
        return torch.matmul(x, w.transpose(1, 2))

    def affine(self, x: Tensor) -> Tensor:
        """W x + b for x of shape (K or 1, N, in); returns (K, N, out)."""
        if self.bias is None:
            return self.apply(x)
        if x.shape[0] == self.weight.shape[0]:
            return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))
        return self.apply(x) + self.bias.unsqueeze(1)

    def transpose(self, a: Tensor, in_shape: tuple[int, ...]) -> Tensor:
        """Rows a (K or 1, N', m, out) times W: returns (K, N', m, in)."""
        return torch.matmul(a.flatten(1, 2), self.weight).unflatten(1, a.shape[1:3])

    def bias_dot(self, a: Tensor) -> Tensor | float:
        """Rows a (K or 1, N', m, out) dotted with b: (K, N', m), or 0.0 without bias."""
        if self.bias is None:
            return 0.0
        return _rows_dot(a, self.bias)


@dataclass(frozen=True, eq=False)
class Conv2d:
    """2-d convolution; weight (K, C_out, C_in, kh, kw), bias (K, C_out) or None."""

    weight: Tensor
    bias: Tensor | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        _check_tensor("Conv2d weight", self.weight, 5)
        _check_bias(self.bias, self.weight.shape[0], self.weight.shape[1])
        object.__setattr__(self, "stride", _pair("stride", self.stride))
        object.__setattr__(self, "padding", _pair("padding", self.padding))
        if min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"Conv2d needs stride >= 1 and padding >= 0, got {self.stride}, {self.padding}")

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        c_out, c_in, kh, kw = self.weight.shape[1:]
        if len(shape) != 3 or shape[0] != c_in:
            raise ValueError(f"Conv2d layer expects inputs of shape ({c_in}, H, W), gets {shape}")
        size = [(shape[i + 1] + 2 * self.padding[i] - (kh, kw)[i]) // self.stride[i] + 1 for i in range(2)]
        if min(size) < 1:
            raise ValueError(f"Conv2d kernel {(kh, kw)} does not fit inputs of shape {shape}")
        return (c_out, *size)

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        k, c_out, c_in = weight.shape[:3]
        weight = weight.reshape(k * c_out, c_in, *weight.shape[3:])
        bias = None if bias is None else bias.reshape(k * c_out)
        n = x.shape[1]
        if x.shape[0] == 1:
            y = F.conv2d(x[0], weight, bias, stride=self.stride, padding=self.padding)
        else:
            x = x.transpose(0, 1).reshape(n, k * c_in, *x.shape[3:])
            y = F.conv2d(x, weight, bias, stride=self.stride, padding=self.padding, groups=k)
        return y.view(n, k, c_out, *y.shape[2:]).transpose(0, 1)

    def apply(self, x: Tensor, absolute: bool = False) -> Tensor:
        """Convolution without bias of x (K or 1, N, C_in, H, W); returns (K, N, C_out, H', W')."""
        return self._conv(x, self.weight.abs() if absolute else self.weight, None)

    def affine(self, x: Tensor) -> Tensor:
        """Convolution with bias of x (K or 1, N, C_in, H, W); returns (K, N, C_out, H', W')."""
        return self._conv(x, self.weight, self.bias)

    def transpose(self, a: Tensor, in_shape: tuple[int, ...]) -> Tensor:
        """Rows a (K or 1, N', m, C_out, H', W') times the convolution: (K, N', m, C_in, H, W)."""
        k, c_out, c_in = self.weight.shape[:3]
        kernel = self.weight.shape[3:]
        a = a.expand(k, *a.shape[1:])
        n, m, out = a.shape[1], a.shape[2], a.shape[4:]
        rows = a.reshape(k, n * m, c_out, *out).transpose(0, 1).reshape(n * m, k * c_out, *out)
        y = F.conv_transpose2d(
            rows,
            self.weight.reshape(k * c_out, c_in, *kernel),
            stride=self.stride,
            padding=self.padding,
            output_padding=_output_padding(in_shape[1:], out, kernel, self.stride, self.padding),
            groups=k,
        )
        return y.view(n, m, k, c_in, *in_shape[1:]).permute(2, 0, 1, 3, 4, 5)

    def bias_dot(self, a: Tensor) -> Tensor | float:
        if self.bias is None:
            return 0.0
        return _rows_dot(a.sum((-2, -1)), self.bias)


@dataclass(frozen=True)
class AvgPool2d:
    """Average pooling without padding; stride defaults to the kernel size."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel_size", _pair("kernel_size", self.kernel_size))
        stride = self.kernel_size if self.stride is None else _pair("stride", self.stride)
        object.__setattr__(self, "stride", stride)
        if min(self.kernel_size) < 1 or min(self.stride) < 1:
            raise ValueError(f"AvgPool2d needs kernel_size and stride >= 1, got {self.kernel_size}, {self.stride}")

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) != 3:
            raise ValueError(f"AvgPool2d expects inputs of shape (C, H, W), gets {shape}")
        size = [(shape[i + 1] - self.kernel_size[i]) // self.stride[i] + 1 for i in range(2)]
        if min(size) < 1:
            raise ValueError(f"AvgPool2d kernel {self.kernel_size} does not fit inputs of shape {shape}")
        return (shape[0], *size)

    def apply(self, x: Tensor, absolute: bool = False) -> Tensor:
        y = F.avg_pool2d(x.flatten(0, 1), self.kernel_size, self.stride)
        return y.view(*x.shape[:2], *y.shape[1:])

    affine = apply

    def transpose(self, a: Tensor, in_shape: tuple[int, ...]) -> Tensor:
        c, out = in_shape[0], a.shape[-2:]
        kernel = torch.full((c, 1, *self.kernel_size), 1 / math.prod(self.kernel_size), dtype=a.dtype,
                            device=a.device)
        pad = _output_padding(in_shape[1:], out, self.kernel_size, self.stride, (0, 0))
        y = F.conv_transpose2d(a.reshape(-1, c, *out), kernel, stride=self.stride, output_padding=pad, groups=c)
        return y.view(*a.shape[:3], *in_shape)

    def bias_dot(self, a: Tensor) -> float:
        return 0.0


@dataclass(frozen=True)
class Flatten:
    """Flattens every feature axis into one (like torch.nn.Flatten())."""

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (math.prod(shape),)

    def apply(self, x: Tensor, absolute: bool = False) -> Tensor:
        return x.flatten(2)

    affine = apply

    def transpose(self, a: Tensor, in_shape: tuple[int, ...]) -> Tensor:
        return a.reshape(*a.shape[:3], *in_shape)

    def bias_dot(self, a: Tensor) -> float:
        return 0.0


@dataclass(frozen=True)
class ReLU:
    """max(x, 0), elementwise."""

    fn = staticmethod(torch.relu)


@dataclass(frozen=True)
class Tanh:
    """tanh(x), elementwise."""

    fn = staticmethod(torch.tanh)


@dataclass(frozen=True)
class Sigmoid:
    """1 / (1 + exp(-x)), elementwise."""

    fn = staticmethod(torch.sigmoid)


SOFTPLUS_THRESHOLD = 40.0
"""Above beta x > 40, softplus(x) = x in float64 and float32 (log1p(exp(-40)) / beta is below half an
ulp of x); below it, exp(beta x) cannot overflow either dtype."""


def softplus(x: Tensor, beta: float = 1.0) -> Tensor:
    """log(1 + exp(beta x)) / beta, elementwise, without overflow; convex and increasing, ReLU as beta -> inf."""
    return F.softplus(x, beta=beta, threshold=SOFTPLUS_THRESHOLD)


@dataclass(frozen=True)
class Softplus:
    """log(1 + exp(beta x)) / beta, elementwise; ``beta`` > 0 (default 1, as torch.nn.Softplus)."""

    beta: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.beta, bool) or not isinstance(self.beta, numbers.Real) or not 0 < self.beta < math.inf:
            raise ValueError(f"Softplus beta must be a finite number > 0, got {self.beta!r}")
        object.__setattr__(self, "beta", float(self.beta))

    def fn(self, x: Tensor) -> Tensor:
        return softplus(x, self.beta)


AFFINE = (Linear, Conv2d, AvgPool2d, Flatten)
ACTIVATIONS = (ReLU, Tanh, Sigmoid, Softplus)
Layer = Linear | Conv2d | AvgPool2d | Flatten | ReLU | Tanh | Sigmoid | Softplus


@dataclass(frozen=True, eq=False)
class Network:
    """K feed-forward networks of one architecture.

    ``layers``: Linear, Conv2d, AvgPool2d, Flatten, ReLU, Tanh, Sigmoid, Softplus (at least one
    Linear or Conv2d, all with the same K, dtype and device); ``input_shape``: the
    shape of one input, e.g. (64,) or (1, 8, 8). The output of one input must be a
    vector. ``shapes[i]`` is the shape entering ``layers[i]``; ``shapes[-1]`` the
    output shape.
    """

    layers: tuple[Layer, ...]
    input_shape: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...] = field(init=False)

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        for layer in layers:
            if not isinstance(layer, AFFINE + ACTIVATIONS):
                raise ValueError(f"unsupported layer {layer!r}")
        weights = [layer.weight for layer in layers if isinstance(layer, (Linear, Conv2d))]
        if not weights:
            raise ValueError("a network needs at least one Linear or Conv2d layer")
        for w in weights:
            if (w.shape[0], w.dtype, w.device) != (weights[0].shape[0], weights[0].dtype, weights[0].device):
                raise ValueError("all layers need the same number K of parameter sets, dtype and device")
        shapes = [self.input_shape]
        for layer in layers:
            shapes.append(shapes[-1] if isinstance(layer, ACTIVATIONS) else layer.out_shape(shapes[-1]))
        if len(shapes[-1]) != 1:
            raise ValueError(f"the output of one input must be a vector, got shape {shapes[-1]}")
        object.__setattr__(self, "shapes", tuple(shapes))

    @property
    def _weight(self) -> Tensor:
        return next(layer.weight for layer in self.layers if isinstance(layer, (Linear, Conv2d)))

    @property
    def k(self) -> int:
        """Number of parameter sets."""
        return self._weight.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self._weight.dtype

    @property
    def n_outputs(self) -> int:
        return self.shapes[-1][0]


def from_sequential(module: nn.Sequential, input_shape: Sequence[int] | None = None,
                    dtype: torch.dtype = torch.float64) -> Network:
    """A K = 1 :class:`Network` from a ``torch.nn.Sequential``.

    Supports nn.Linear, nn.Conv2d (zero padding, no dilation or groups), nn.AvgPool2d
    (no padding), nn.Flatten (all but the batch axis), nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Softplus (as
    the exact softplus of its beta: torch's module is linear where beta x > threshold, which moves
    its output by at most log1p(exp(-threshold)) / beta).
    ``input_shape`` is inferred when the first layer is nn.Linear. Parameters are
    converted to ``dtype`` (default float64); gradients still flow to the module.
    """
    layers: list[Layer] = []
    for m in module:
        bias = None if getattr(m, "bias", None) is None else m.bias.to(dtype).unsqueeze(0)
        if isinstance(m, nn.Linear):
            layers.append(Linear(m.weight.to(dtype).unsqueeze(0), bias))
        elif isinstance(m, nn.Conv2d):
            if m.groups != 1 or m.dilation != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise ValueError(f"unsupported Conv2d options in {m}")
            layers.append(Conv2d(m.weight.to(dtype).unsqueeze(0), bias, m.stride, m.padding))
        elif isinstance(m, nn.AvgPool2d):
            if m.padding not in (0, (0, 0)) or m.ceil_mode:
                raise ValueError(f"unsupported AvgPool2d options in {m}")
            layers.append(AvgPool2d(m.kernel_size, m.stride))
        elif isinstance(m, nn.Flatten):
            if (m.start_dim, m.end_dim) != (1, -1):
                raise ValueError(f"unsupported Flatten options in {m}")
            layers.append(Flatten())
        elif isinstance(m, (nn.ReLU, nn.Tanh, nn.Sigmoid)):
            layers.append({nn.ReLU: ReLU, nn.Tanh: Tanh, nn.Sigmoid: Sigmoid}[type(m)]())
        elif isinstance(m, nn.Softplus):
            layers.append(Softplus(m.beta))
        else:
            raise ValueError(f"unsupported module {type(m).__name__}")
    if input_shape is None:
        if not layers or not isinstance(layers[0], Linear):
            raise ValueError("input_shape is required unless the first layer is nn.Linear")
        input_shape = (layers[0].weight.shape[2],)
    return Network(tuple(layers), tuple(input_shape))


def _signature(layer: Layer) -> object:
    """What must agree between layers that :func:`stack` merges."""
    if isinstance(layer, (Linear, Conv2d)):
        return type(layer), layer.weight.shape[1:], layer.bias is None, getattr(layer, "stride", None), \
            getattr(layer, "padding", None)
    return layer


def stack(nets: Sequence[Network]) -> Network:
    """One network holding the parameter sets of ``nets`` (same architecture) in order."""
    if not nets:
        raise ValueError("stack needs at least one network")
    first = nets[0]
    signature = [_signature(layer) for layer in first.layers]
    for net in nets[1:]:
        if net.input_shape != first.input_shape or [_signature(layer) for layer in net.layers] != signature:
            raise ValueError("stack needs networks of one architecture")
    layers = []
    for i, layer in enumerate(first.layers):
        if isinstance(layer, (Linear, Conv2d)):
            bias = None if layer.bias is None else torch.cat([n.layers[i].bias for n in nets])
            layer = replace(layer, weight=torch.cat([n.layers[i].weight for n in nets]), bias=bias)
        layers.append(layer)
    return Network(tuple(layers), first.input_shape)


def forward(net: Network, x: Tensor) -> Tensor:
    """Outputs (K, N, out) for inputs x of shape (N, *input_shape) or (K, N, *input_shape)."""
    h = as_batch(x, net.input_shape, net.k, net.dtype)
    for layer in net.layers:
        h = layer.fn(h) if isinstance(layer, ACTIVATIONS) else layer.affine(h)
    return h
