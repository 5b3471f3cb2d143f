"""The problem spec: dataset + model + loss, as plain data, and the one place that builds E(w).

The CLI, the Python API and every later command rebuild exactly the same energy from a
:class:`Problem` (stored in the database as JSON), so nothing is passed twice or can disagree.
"""
from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field, replace

from . import data as data_mod
from . import loss as loss_mod
from . import models
from .energy import Energy

ARCHITECTURES = ("mlp", "cnn")


@dataclass(frozen=True)
class Problem:
    """Loss landscape of ``model`` on ``data``: E(w) = the sum of the ``loss`` terms
    (:mod:`landscape.loss`; default mean cross-entropy + 1e-4 ||w||^2).

    ``data_sha256`` is the content hash of the data the problem was made with; rebuilding
    from a different file fails. Energies are float64.
    """

    data: data_mod.DataSpec
    model: models.Model
    loss: tuple[loss_mod.Term, ...] = loss_mod.default_loss(1e-4)
    data_sha256: str | None = None
    dtype: str = field(default="float64")

    def __post_init__(self) -> None:
        object.__setattr__(self, "loss", loss_mod.check(self.loss))

    @property
    def lam(self) -> float:
        """The L2 coefficient (every loss has an L2 term)."""
        return loss_mod.lam_of(self.loss)

    @classmethod
    def create(cls, data: str | data_mod.DataSpec = "iris", hidden: tuple[int, ...] = (5,), activation: str = "tanh",
               bias: bool = True, arch: str = "mlp", channels: tuple[int, ...] = (8,), lam: float = 1e-4,
               sensitivity: dict | None = None, sharpness: float | None = None, **data_options) -> "Problem":
        """A problem whose model fits the data: an MLP (inputs, *hidden, classes) or a CNN with
        ``channels`` for image data, ``sharpness`` the beta of softplus (default 10). The loss is
        cross-entropy + ``lam`` ||w||^2, plus a :class:`landscape.loss.Sensitivity` term of
        ``sensitivity`` (keys weight, eps, and optionally method, space) when given.
        ``data_options`` go to :class:`landscape.data.DataSpec`."""
        if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
            raise ValueError(f"lam must be a number, got {lam!r}")
        if sensitivity is not None and not isinstance(sensitivity, dict):
            raise ValueError(f"sensitivity must be a dict like {{'weight': 0.1, 'eps': 0.05}}, got {sensitivity!r}")
        extra = () if sensitivity is None else (loss_mod.from_dict({**sensitivity, "term": "sensitivity"}),)
        for key, widths in (("hidden", hidden), ("channels", channels)):
            if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
                raise ValueError(f"{key} must be a list of widths, e.g. [{widths}], got {widths!r}")
        spec = data if isinstance(data, data_mod.DataSpec) else data_mod.DataSpec(name=data, **data_options)
        ds = data_mod.load(spec)
        if arch == "mlp":
            model: models.Model = models.MLP((ds.n_features, *hidden, ds.n_classes), activation, bias, sharpness)
        elif arch == "cnn":
            if ds.image_shape is None:
                raise ValueError(f"a CNN needs image data; {spec.name!r} is tabular: use --arch mlp")
            model = models.CNN(ds.image_shape, ds.n_classes, tuple(channels), activation=activation, bias=bias,
                               sharpness=sharpness)
        else:
            raise ValueError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
        model.check_fits(len(ds.y_train))  # before anything of that size is allocated
        return cls(spec, model, (*loss_mod.default_loss(lam), *extra), ds.sha256)

    def dataset(self) -> data_mod.Dataset:
        """Load the data, checking it is the data the problem was made with."""
        ds = data_mod.load(self.data)
        if self.data_sha256 is not None and ds.sha256 != self.data_sha256:
            raise ValueError(f"dataset {self.data.name!r} has content hash {ds.sha256[:12]}..., but this problem was "
                             f"made with {self.data_sha256[:12]}...: point to the original data")
        return ds

    def energy(self, backend: str = "auto", threads: int = 1, split: str = "train") -> Energy:
        """The energy on the training split (``split='test'`` for the test loss)."""
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}: choose 'train' or 'test'")
        ds = self.dataset()
        X, y = (ds.X_train, ds.y_train) if split == "train" else (ds.X_test, ds.y_test)
        self.model.check_fits(len(y))
        domain = (0.0, 1.0) if ds.scaling == "unit" else None  # pixels: a sensitivity ball stays in [0, 1]
        return Energy(self.model, X, y, self.loss, backend=backend, threads=threads, domain=domain)

    def with_lam(self, lam: float) -> "Problem":
        """The same problem with the L2 term's lam replaced."""
        return replace(self, loss=tuple(loss_mod.L2(lam) if isinstance(t, loss_mod.L2) else t for t in self.loss))

    def to_dict(self) -> dict:
        return {"data": self.data.to_dict(), "model": self.model.to_dict(), "loss": loss_mod.to_dicts(self.loss),
                "data_sha256": self.data_sha256, "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict) -> "Problem":
        """Rebuild from :meth:`to_dict` output, or from the older form with ``"lam"`` in place of
        ``"loss"`` (databases of schema 1), which means cross-entropy + L2(lam)."""
        try:
            loss = loss_mod.from_dicts(d["loss"]) if "loss" in d else loss_mod.default_loss(d["lam"])
            return cls(data_mod.DataSpec(**d["data"]), models.from_dict(d["model"]), loss,
                       d.get("data_sha256"), d.get("dtype", "float64"))
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed problem description ({type(e).__name__}: {e})") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Problem":
        return cls.from_dict(json.loads(text))
