"""auto_LiRPA as a reference for the bounds (tests and benchmarks/bounds.py; never robustness itself).

auto_LiRPA 0.3, the release on PyPI, declares torch < 1.13 and numpy 1; installed with
``pip install --no-deps auto_LiRPA==0.3 appdirs pyyaml`` it runs on torch 2 and numpy 2 after
four small shims, applied by :func:`load` only where missing: ``numpy.lib.arraysetops``,
``torch.onnx.symbolic_helper._set_opset_version``, ``torch.onnx.utils._optimize_graph``
(moved to torch.onnx._internal.torchscript_exporter) and subscripting of ``torch._C.Node``.
"""
from __future__ import annotations

import sys
import warnings

import torch


def load():
    """The auto_LiRPA module, or None where it cannot be imported."""
    try:
        import numpy
        sys.modules.setdefault("numpy.lib.arraysetops", numpy)
        import torch.onnx.symbolic_helper as helper
        import torch.onnx.utils as onnx_utils
        if not hasattr(helper, "_set_opset_version") or not hasattr(onnx_utils, "_optimize_graph"):
            from torch.onnx._internal.torchscript_exporter import utils as exporter_utils
            from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

            def _set_opset_version(version: int) -> None:
                GLOBALS.export_onnx_opset_version = version
            helper._set_opset_version = _set_opset_version
            onnx_utils._optimize_graph = exporter_utils._optimize_graph
        if not hasattr(torch._C.Node, "__getitem__"):
            torch._C.Node.__getitem__ = lambda node, key: getattr(node, node.kindOf(key))(key)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import auto_LiRPA
        return auto_LiRPA
    except Exception:  # not installed, or a torch it cannot be shimmed onto
        return None


def lirpa_bounds(model: torch.nn.Module, x: torch.Tensor, eps: float, method: str = "backward",
                 steps: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """auto_LiRPA's (lower, upper) of model(x') over ||x' - x||_inf <= eps, each (N, out).

    method: 'IBP', 'backward' (CROWN) or 'alpha' (CROWN-Optimized with ``steps`` iterations,
    lower and upper bound optimised in two calls, as auto_LiRPA requires). Works in the
    model's dtype (the tanh/sigmoid tangent tables are cast to it).
    """
    lirpa = load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opts = {"optimize_bound_args": {"iteration": steps}}
        module = lirpa.BoundedModule(model, torch.zeros(1, *x.shape[1:], dtype=x.dtype), bound_opts=opts,
                                     device=x.device.type)
        for node in module.modules():
            if hasattr(node, "d_lower"):
                node.d_lower, node.d_upper = node.d_lower.to(x.dtype), node.d_upper.to(x.dtype)
        xb = lirpa.BoundedTensor(x, lirpa.PerturbationLpNorm(eps=eps))
        if method != "alpha":
            lo, hi = module.compute_bounds(x=(xb,), method=method)
            return lo.detach(), hi.detach()
        default = torch.get_default_dtype()
        torch.set_default_dtype(x.dtype)  # its optimiser keeps the best bounds in the default dtype
        try:
            lo, _ = module.compute_bounds(x=(xb,), method="CROWN-Optimized", bound_lower=True, bound_upper=False)
            _, hi = module.compute_bounds(x=(xb,), method="CROWN-Optimized", bound_lower=False, bound_upper=True)
        finally:
            torch.set_default_dtype(default)
        return lo.detach(), hi.detach()
