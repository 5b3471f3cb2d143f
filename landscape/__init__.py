"""landscape: energy landscapes of neural-network losses, and the robustness of their minima.

Data flow: data -> models -> energy -> minimize -> basinhopping -> database -> analysis.
The Python API mirrors the ``landscape`` command: ``Problem.create(...)`` describes a loss,
``sample(problem, path, Settings(...), steps=...)`` fills a database, ``Database(path)`` reads it.
"""
__version__ = "0.1.0"

from .problem import Problem  # noqa: E402
from .basinhopping import Settings, sample  # noqa: E402
from .database import Database  # noqa: E402

__all__ = ["Problem", "Settings", "sample", "Database", "__version__"]
