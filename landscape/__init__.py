"""landscape: energy landscapes of neural-network losses, and the robustness of their minima.

Data flow: data -> models -> energy -> minimize -> basinhopping -> database -> analysis.
The Python API mirrors the ``landscape`` command: ``Problem.create(...)`` describes a loss,
``sample(problem, path, Settings(...), steps=...)`` fills a database, ``Database(path)`` reads it,
``score(path, eps)`` scores its minima, ``connect(path)`` joins them by transition states and
``analyze(path, out)`` writes the study. The names below are imported when first used (PEP 562),
so ``import landscape`` and ``landscape --version`` do not import torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {"Problem": ".problem", "Settings": ".basinhopping", "sample": ".basinhopping", "Database": ".database",
           "score": ".scoring", "connect": ".connecting", "analyze": ".report"}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> object:
    """A public name (imported from its module), or a submodule (``landscape.database``)."""
    if name not in _PUBLIC:
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'landscape' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
