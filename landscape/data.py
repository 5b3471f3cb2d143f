"""Datasets by name, their scaling and a seeded train/test split.

A dataset is described by a :class:`DataSpec` (plain data, stored in the database) and
materialised by :func:`load`. Sources:

- ``iris``, ``digits``: bundled with scikit-learn (no download).
- ``csv``: a user's CSV file with a header row; ``label_column`` names the class column,
  every other column is a numeric feature.
- ``npz``: a NumPy ``.npz`` file holding ``X`` (N, ...) and ``y`` (N,).
- ``mnist``: MNIST-format IDX files (``*-images-idx3-ubyte`` and ``*-labels-idx1-ubyte``,
  optionally gzipped) in the directory ``path``, whose ``train-`` pair is used; or ``path`` is
  an .npz file holding ``x_train`` (N, H, W) in 0..255 and ``y_train`` (N,), as Keras's
  ``mnist.npz`` does (Fashion-MNIST's too).

Scaling (``scaling='auto'``): images (digits, MNIST) are mapped to [0, 1] (digits / 16,
MNIST / 255) and not standardised, so that an input perturbation eps means what it means in
the robustness literature; tabular data are standardised with training-set mean and standard
deviation (a constant column is only centred). ``'standardize'``, ``'unit'`` and ``'none'``
force a choice. Labels are remapped to 0..C-1 in sorted order.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import numbers
import os
import zipfile
from dataclasses import asdict, dataclass, field

import numpy as np

SOURCES = ("iris", "digits", "csv", "npz", "mnist")
BUILT_IN = ("iris", "digits")  # bundled with scikit-learn: no path
SCALINGS = ("auto", "standardize", "unit", "none")


@dataclass(frozen=True)
class DataSpec:
    """What data to use and how to prepare it. Defaults: 20% test split, split seed 0.

    ``test_fraction`` may be 0 (all data are training data). ``limit`` keeps the first
    ``limit`` samples of the source (before splitting), e.g. for a quick MNIST run.
    """

    name: str = "iris"
    path: str | None = None
    label_column: str | None = None
    scaling: str = "auto"
    test_fraction: float = 0.2
    split_seed: int = 0
    limit: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.path, os.PathLike):
            object.__setattr__(self, "path", os.fspath(self.path))
        for key in ("path", "label_column"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                raise ValueError(f"{key} must be text, got {getattr(self, key)!r}")
        if isinstance(self.test_fraction, bool) or not isinstance(self.test_fraction, numbers.Real):
            raise ValueError(f"test_fraction must be a number, got {self.test_fraction!r}")
        object.__setattr__(self, "test_fraction", float(self.test_fraction))  # plain numbers: the spec is JSON
        for key in ("split_seed", "limit"):
            v = getattr(self, key)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                    raise ValueError(f"{key} must be a whole number, got {v!r}")
                object.__setattr__(self, key, int(v))
        if self.split_seed is None or not 0 <= self.split_seed < 2 ** 32:
            raise ValueError(f"split_seed must be in [0, 2**32), got {self.split_seed}")
        if self.name not in SOURCES:
            raise ValueError(f"unknown dataset {self.name!r}: choose one of {', '.join(SOURCES)}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"unknown scaling {self.scaling!r}: choose one of {', '.join(SCALINGS)}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.name in ("csv", "npz", "mnist") and not self.path:
            raise ValueError(f"dataset {self.name!r} needs a path (--data-path)")
        if self.name in BUILT_IN and self.path is not None:
            raise ValueError(f"{self.name} ships with scikit-learn; drop --data-path or give --data csv|npz|mnist")
        if self.name == "csv" and not self.label_column:
            raise ValueError("a csv dataset needs label_column: the name of the column holding the class")
        if self.name != "csv" and self.label_column is not None:
            raise ValueError(f"label_column names the class column of a csv file; {self.name} data has none: drop "
                             "--label-column (label_column)")
        if self.limit is not None and self.limit < 2:
            raise ValueError(f"limit must be at least 2 samples, got {self.limit}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Dataset:
    """Prepared data. ``X_*`` are float64 of shape (N, D) (images flattened row-major from
    ``image_shape`` = (C, H, W)); ``y_*`` are int64 class indices of shape (N,).

    ``shift`` and ``scale`` (D,) are the preprocessing: model input = (raw - shift) / scale.
    ``sha256`` hashes the raw arrays used (before scaling and splitting). ``classes`` are the
    source's labels of classes 0..C-1 (as text); ``train_index`` and ``test_index`` the rows of
    the source (after ``limit``) in each split, ascending.
    """

    spec: DataSpec
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    image_shape: tuple[int, int, int] | None
    shift: np.ndarray
    scale: np.ndarray
    sha256: str
    scaling: str = field(default="none")
    classes: tuple[str, ...] = ()
    train_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    test_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def n_features(self) -> int:
        return self.X_train.shape[1]

    def describe(self) -> dict:
        """Plain-data record of what was used (for the database)."""
        return {
            "spec": self.spec.to_dict(),
            "scaling": self.scaling,
            "sha256": self.sha256,
            "n_train": int(len(self.y_train)),
            "n_test": int(len(self.y_test)),
            "n_features": int(self.n_features),
            "n_classes": int(self.n_classes),
            "image_shape": list(self.image_shape) if self.image_shape else None,
            "classes": list(self.classes),
        }


def load(spec: DataSpec | str = "iris", **kwargs) -> Dataset:
    """Load, scale and split a dataset: ``load('iris')`` or ``load(DataSpec(...))``."""
    if isinstance(spec, str):
        spec = DataSpec(name=spec, **kwargs)
    X, y, image_shape, pixel_max = _read(spec)
    if spec.limit is not None:
        X, y = X[: spec.limit], y[: spec.limit]
    _check(X, y, spec)
    sha = _content_hash(X, y)
    classes, y = np.unique(y, return_inverse=True)
    y = y.astype(np.int64)
    X = X.reshape(len(X), -1).astype(np.float64)
    idx_train, idx_test = _split(y, spec.test_fraction, spec.split_seed)
    scaling = spec.scaling
    if scaling == "auto":
        scaling = "unit" if image_shape is not None else "standardize"
    if scaling == "standardize":
        shift = X[idx_train].mean(0)
        scale = X[idx_train].std(0)
        scale[scale == 0] = 1.0
    elif scaling == "unit":
        if pixel_max is None:
            raise ValueError(f"scaling 'unit' needs image data; {spec.name!r} is tabular: use 'standardize' or 'none'")
        shift, scale = np.zeros(X.shape[1]), np.full(X.shape[1], float(pixel_max))
    else:
        shift, scale = np.zeros(X.shape[1]), np.ones(X.shape[1])
    Xs = (X - shift) / scale
    return Dataset(spec, np.ascontiguousarray(Xs[idx_train]), y[idx_train], np.ascontiguousarray(Xs[idx_test]),
                   y[idx_test], len(classes), image_shape, shift, scale, sha, scaling,
                   tuple(str(c) for c in classes), idx_train.astype(np.int64), idx_test.astype(np.int64))


def source_for_path(path: str | os.PathLike) -> str:
    """The source a data path holds, told from its name: a directory, an IDX file (a name with
    ``idx`` or ending in ``.gz``) or an ``.npz`` holding ``x_train`` and ``y_train`` (Keras's
    mnist.npz) -> 'mnist'; ``.csv`` -> 'csv'; another ``.npz`` -> 'npz'. ValueError otherwise."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"data path must be text, got {path!r}")
    path = os.path.expanduser(os.fspath(path))
    name = os.path.basename(os.path.normpath(path)).lower()
    if os.path.isdir(path):
        return "mnist"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".npz"):
        return "mnist" if {"x_train", "y_train"} <= _npz_names(path) else "npz"
    if _is_idx_name(name):
        return "mnist"
    raise ValueError(f"cannot tell the format of data path {path!r} from its name: give --data csv|npz|mnist")


def _npz_names(path: str) -> set[str]:
    """Names of the arrays in an .npz file; empty when it is missing or not an .npz file."""
    if not zipfile.is_zipfile(path):
        return set()
    try:
        with np.load(path, allow_pickle=False) as f:
            return set(f.files)
    except (OSError, ValueError):
        return set()


def _is_idx_name(name: str) -> bool:
    return name.endswith(".gz") or "idx" in name


def _read(spec: DataSpec) -> tuple[np.ndarray, np.ndarray, tuple | None, float | None]:
    """Raw (X, y, image_shape, pixel_max) of a source."""
    if spec.name in ("iris", "digits"):
        from sklearn import datasets

        if spec.name == "iris":
            d = datasets.load_iris()
            return d.data, d.target, None, None
        d = datasets.load_digits()
        return d.data, d.target, (1, 8, 8), 16.0
    path = os.path.expanduser(spec.path or "")
    if not os.path.exists(path):
        raise FileNotFoundError(f"data path {path!r} does not exist")
    if spec.name == "npz":
        return (*_read_npz(path), None, None)
    if spec.name == "csv":
        return (*_read_csv(path, spec.label_column), None, None)
    X, y = _read_mnist(path)
    return X, y, (1, X.shape[1], X.shape[2]), 255.0


def _read_npz(path: str, names: tuple[str, str] = ("X", "y")) -> tuple[np.ndarray, np.ndarray]:
    """The arrays ``names`` (features, labels) of an .npz file, features as float64."""
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not an .npz file (a zip of .npy arrays, as numpy.savez writes)")
    try:
        f = np.load(path, allow_pickle=False)
        files = set(f.files)
    except Exception as e:
        raise ValueError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    with f:
        missing = set(names) - files
        if missing:
            raise ValueError(f"{path}: npz file lacks array(s) {sorted(missing)}; it needs {names[0]} (N, ...) and "
                             f"{names[1]} (N,)")
        try:
            X, y = np.asarray(f[names[0]]), np.asarray(f[names[1]])
        except Exception as e:  # a damaged member (zip CRC), object arrays (pickles are not loaded), ...
            raise ValueError(f"{path}: cannot read its arrays ({type(e).__name__}: {e}); write it with "
                             "numpy.savez from plain numeric arrays") from None
    if X.dtype.kind not in "biuf":
        raise ValueError(f"{path}: {names[0]} holds {X.dtype} values; features must be real numbers (int or float)")
    return X.astype(np.float64), y


def _read_csv(path: str, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file; give a CSV file with a header row") from None
    except csv.Error as e:
        raise ValueError(f"{path}: not a readable CSV file ({e})") from None
    if not rows:
        raise ValueError(f"{path}: empty CSV file")
    header, body = rows[0], [r for r in rows[1:] if r]
    if label_column not in header:
        raise ValueError(f"{path}: no column {label_column!r}; columns are {', '.join(header)}")
    if not body:
        raise ValueError(f"{path}: a header but no data rows")
    for line, r in enumerate(rows[1:], start=2):
        if r and len(r) != len(header):
            raise ValueError(f"{path}: line {line} has {len(r)} fields, the header {len(header)}")
    j = header.index(label_column)
    y = np.array([r[j] for r in body])
    try:
        X = np.array([[float(v) for k, v in enumerate(r) if k != j] for r in body], dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{path}: non-numeric feature value ({e})") from None
    return X, y


def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    start = 4 + 4 * ndim
    if len(raw) - start != int(np.prod(dims)):
        raise ValueError(f"{path}: IDX header says {dims} but the file holds {len(raw) - start} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(dims)


def _read_mnist(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The training images (N, H, W) and labels of MNIST-format data: a directory of IDX files, or
    one .npz file with ``x_train`` and ``y_train`` (as Keras's ``mnist.npz`` holds them)."""
    if os.path.isfile(path) and _is_idx_name(os.path.basename(path).lower()):
        raise ValueError(f"{path} is one IDX file: give the directory holding the train-images and train-labels "
                         f"IDX files (--data-path {os.path.dirname(path) or '.'})")
    if os.path.isfile(path):
        X, y = _read_npz(path, ("x_train", "y_train"))
    elif os.path.isdir(path):
        def find(kind: str) -> str:
            for name in sorted(os.listdir(path)):
                if name.startswith("train") and kind in name:
                    return os.path.join(path, name)
            raise FileNotFoundError(f"{path}: no train-{kind}-idx file (expected e.g. train-{kind}-idx"
                                    f"{'3' if kind == 'images' else '1'}-ubyte[.gz])")

        X, y = _read_idx(find("images")), _read_idx(find("labels"))
    else:
        raise ValueError(f"mnist path {path!r} must be a directory holding the IDX files or an .npz file")
    if X.ndim != 3 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(f"{path}: images {X.shape} and labels {y.shape} do not match; need (N, H, W) and (N,)")
    if X.size and not (X.min() >= 0 and X.max() <= 255):
        raise ValueError(f"{path}: pixel values span [{X.min()}, {X.max()}]; MNIST-format images are 0..255")
    return X.astype(np.float64), y.astype(np.int64)


def _check(X: np.ndarray, y: np.ndarray, spec: DataSpec) -> None:
    if X.ndim < 2 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(f"dataset {spec.name!r}: X must be (N, features...) and y (N,), got {X.shape} and {y.shape}")
    if X.size == 0 and len(X):
        raise ValueError(f"dataset {spec.name!r}: no features (X is {X.shape}); give at least one feature column")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"dataset {spec.name!r}: X contains NaN or infinite values; clean the data first")
    if y.dtype.kind not in "biufUS":
        raise ValueError(f"dataset {spec.name!r}: labels y hold {y.dtype} values; give integer or text class labels")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise ValueError(f"dataset {spec.name!r}: labels y contain NaN or infinite values; every sample needs a "
                         "class label")
    if len(np.unique(y)) < 2:
        raise ValueError(f"dataset {spec.name!r}: needs at least two classes")


def _content_hash(X: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(X, dtype=np.float64), np.ascontiguousarray(np.asarray(y).astype(str))):
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(len(y))
    if test_fraction == 0:
        return idx, idx[:0]
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)
    stratify = y if counts.min() >= 2 and round(test_fraction * len(y)) >= len(counts) else None
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=stratify)
    return np.sort(tr), np.sort(te)


def eps_unit(scaling: str) -> str:
    """What an input perturbation eps is measured in for data of ``scaling`` (as loaded)."""
    return {"standardize": "standardised features", "unit": "[0, 1] pixels"}.get(scaling, "raw features")
