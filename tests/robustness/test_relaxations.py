"""The activation relaxations bound the function on the whole interval.

Checked on 2,001 evenly spaced points of every interval, for intervals of all sign
patterns, widths from 0 to 2,000 and beyond the tangent-point table (l < -20).
Tolerance: tol * (1 + max(|l|, |u|)) with tol = 1e-12 in float64, 1e-6 in float32.
"""
import functools

import pytest
import torch

from robustness import relaxations
from robustness.network import softplus

FUNCTIONS = {"relu": (relaxations.relu, torch.relu), "tanh": (relaxations.tanh, torch.tanh),
             "sigmoid": (relaxations.sigmoid, torch.sigmoid),
             **{f"softplus{b}": (functools.partial(relaxations.softplus, beta=b), functools.partial(softplus, beta=b))
                for b in (0.5, 10.0)}}


def intervals(dtype):
    gen = torch.Generator().manual_seed(0)
    centre = torch.randn(4000, generator=gen, dtype=torch.float64) * 4
    width = torch.rand(4000, generator=gen, dtype=torch.float64) * torch.logspace(-12, 2, 4000, dtype=torch.float64)
    special = torch.tensor([[-1e3, 1e3], [-25.0, 0.5], [-25.0, 30.0], [-0.5, 25.0], [-40.0, -30.0], [0.0, 0.0],
                            [-1e-3, 1e-3], [-3.0, 0.0], [0.0, 3.0], [-2.0, 2.0], [1.0, 1.0], [-19.9995, 0.1]],
                           dtype=torch.float64)
    l = torch.cat([centre - width, special[:, 0]])
    u = torch.cat([centre + width, special[:, 1]])
    return l.to(dtype), u.to(dtype)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_lines_bound_function_on_interval(name, dtype, tol):
    relax, f = FUNCTIONS[name]
    l, u = intervals(dtype)
    r = relax(l, u)
    t = torch.linspace(0, 1, 2001, dtype=torch.float64).unsqueeze(1)
    x = l.double() + (u.double() - l.double()) * t  # (2001, intervals)
    y = f(x)
    lower = r.lower_slope.double() * x + r.lower_intercept.double()
    upper = r.upper_slope.double() * x + r.upper_intercept.double()
    assert all(v.dtype == dtype for v in r)
    tol = tol * (1 + torch.maximum(l.abs(), u.abs()).double())
    assert (lower <= y + tol).all(), (lower - y - tol).max()
    assert (upper >= y - tol).all(), (y - upper - tol).max()


def test_tanh_crossing_upper_line_nearly_touches_lower_end():
    # for l < 0 < u = -l (midpoint 0, u beyond the tangent point d*(l) < |l|), the upper
    # line is the tangent through (l, tanh(l)), up to the 1e-3 grid of the tangent-point table
    l = -torch.linspace(0.05, 19.9, 500, dtype=torch.float64)
    u = -l
    r = relaxations.tanh(l, u)
    gap = r.upper_slope * l + r.upper_intercept - torch.tanh(l)
    assert (gap >= 0).all() and (gap < 1e-3).all()
