"""Validation and normalisation of the arguments the public functions take.

Every check raises ``ValueError`` with a one-line message naming the argument.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

Domain = tuple[float | Tensor, float | Tensor] | None
"""Input domain (lower, upper): numbers or tensors broadcastable to one input; None = unbounded."""


def check_nonnegative(value: float, name: str = "eps") -> float:
    """Return ``value`` as a float; it must be finite and >= 0."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a single number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return number


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}")
    return value


def check_positive_int(name: str, value: int) -> int:
    """Return ``value`` if it is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def as_batch(x: Tensor, input_shape: tuple[int, ...], k: int, dtype: torch.dtype) -> Tensor:
    """Inputs ``x`` of shape (N, *input_shape) or (K, N, *input_shape) as (1 or K, N, *input_shape)."""
    x = torch.as_tensor(x)
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"x must hold real numbers, got dtype {x.dtype}")
    d = len(input_shape)
    if x.dim() == d + 1 and tuple(x.shape[1:]) == input_shape:
        x = x.unsqueeze(0)
    elif not (x.dim() == d + 2 and tuple(x.shape[2:]) == input_shape and x.shape[0] in (1, k)):
        raise ValueError(
            f"x has shape {tuple(x.shape)}; expected (N, {', '.join(map(str, input_shape))}) "
            f"or ({k}, N, {', '.join(map(str, input_shape))})"
        )
    if x.shape[1] == 0:
        raise ValueError("x holds no data points (N = 0)")
    x = x.to(dtype)
    if not torch.isfinite(x.sum()) and not torch.isfinite(x).all():  # the sum is the cheap test
        raise ValueError("x contains NaN or infinite values")
    return x


def as_labels(y: Tensor, n: int, n_classes: int) -> Tensor:
    """Integer class labels of shape (N,) with values in [0, n_classes)."""
    y = torch.as_tensor(y)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if tuple(y.shape) != (n,):
        raise ValueError(f"labels have shape {tuple(y.shape)}; expected ({n},)")
    if ((y < 0) | (y >= n_classes)).any():
        raise ValueError(f"labels must lie in [0, {n_classes}), got values {int(y.min())}..{int(y.max())}")
    return y.long()


def as_spec(C: Tensor, k: int, n: int, n_out: int, dtype: torch.dtype) -> Tensor:
    """Specification matrix ``C`` of shape (1 or K, 1 or N, m, n_out)."""
    C = torch.as_tensor(C)
    if C.dim() != 4 or C.shape[0] not in (1, k) or C.shape[1] not in (1, n) or C.shape[3] != n_out:
        raise ValueError(f"C has shape {tuple(C.shape)}; expected (1 or {k}, 1 or {n}, m, {n_out})")
    C = C.to(dtype)
    if not torch.isfinite(C).all():
        raise ValueError("C contains NaN or infinite values")
    return C


def input_box(x: Tensor, eps: float, domain: Domain) -> tuple[Tensor, Tensor]:
    """The l-inf ball of radius ``eps`` around ``x``, intersected with ``domain``.

    ``domain`` is None or a pair (lower, upper) of numbers or tensors broadcastable
    to one input; ``x`` must lie inside it. Returns (lower, upper) shaped like ``x``.
    """
    eps = check_nonnegative(eps)
    lo, hi = x - eps, x + eps
    if domain is None:
        return lo, hi
    try:
        dlo, dhi = domain
    except (TypeError, ValueError):
        raise ValueError(f"domain must be None or a pair (lower, upper), got {domain!r}") from None
    dlo = torch.as_tensor(dlo, dtype=x.dtype, device=x.device)
    dhi = torch.as_tensor(dhi, dtype=x.dtype, device=x.device)
    for bound in (dlo, dhi):
        try:
            ok = torch.broadcast_shapes(bound.shape, x.shape[2:]) == x.shape[2:]
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"domain bound of shape {tuple(bound.shape)} does not broadcast to inputs "
                             f"of shape {tuple(x.shape[2:])}")
    if torch.isnan(dlo).any() or torch.isnan(dhi).any() or (dlo > dhi).any():
        raise ValueError("domain must satisfy lower <= upper and hold no NaN")
    if ((x < dlo) | (x > dhi)).any():
        raise ValueError("x lies outside the domain")
    return torch.maximum(lo, dlo), torch.minimum(hi, dhi)
