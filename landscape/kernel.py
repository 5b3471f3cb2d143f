"""Compiled energy + gradient of batched MLP losses (float64), from ``_mlp_kernel.c``; the same
library holds the L-BFGS two-loop recursion (:func:`lbfgs_direction`, :func:`lbfgs_push`) that
:mod:`landscape.minimize` uses for any energy, and the assignment bound (:func:`assignment_bound`)
with which :mod:`landscape.identify` prunes candidates.

E(w) = mean over the N samples of the softmax cross-entropy of the logits against the labels
y, plus ``lam * ||w||^2`` (all parameters, biases included), and its gradient, for K parameter
vectors at once. One network's parameters are one flat vector, layer by layer: W_l as an
(in, out) row-major block, then b_l (out) if biases are on (the GMIN/pele layout).

The C source is compiled on first use with the system C compiler (``$CC``, else ``gcc``,
else ``cc``) and the shared library is cached in ``$XDG_CACHE_HOME/landscape`` (default
``~/.cache/landscape``), keyed by a hash of the source, the flags, the compiler's version and
the CPU; it is written to a temporary file and renamed into place, so concurrent processes
never load a half-written library. ``LANDSCAPE_KERNEL=off`` disables the kernel;
``LANDSCAPE_KERNEL_CACHE`` overrides the cache directory.

Flags (:data:`CFLAGS`): ``-O3 -march=native`` (AVX-512/AVX2 + FMA where the CPU has them;
``LANDSCAPE_KERNEL_MARCH`` overrides ``native``, e.g. ``x86-64-v3`` for a cache shared by
different machines; a compiler that rejects ``-march`` gets a build without it), and
``-funroll-loops`` (+7-10% measured). The kernel is written with explicit vectors, so it
needs no auto-vectoriser and no ``-ffast-math``: reassociation would make the sums depend on
the compiler's choices and break NaN/inf semantics, and our own vector exp/tanh are faster
than libmvec's end to end (and do not depend on the glibc version). ``-ffp-contract=fast``
(a*b+c as one FMA: faster and at least as accurate, decided at compile time, so still
deterministic), ``-fno-math-errno`` (the few libm log calls need not set errno), ``-pthread``
(the walker thread pool).

Typical use::

    k = MLPKernel([4, 5, 3], "tanh", True, X, y, lam=1e-4)
    E, G = k.energy_gradient(w)          # w: (K, P) float64, C-contiguous

Torch tensors (CPU, float64, contiguous) are accepted wherever arrays are, without copies.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["ACTIVATIONS", "CFLAGS", "MLPKernel", "available", "unavailable_reason", "library_path", "lbfgs_direction",
           "lbfgs_push", "assignment_bound", "LBFGS_MAX_PAIRS", "ASSIGNMENT_MAX_H"]

ACTIVATIONS = ("tanh", "sigmoid", "relu", "softplus")
_MARCH = os.environ.get("LANDSCAPE_KERNEL_MARCH", "native")
CFLAGS = ("-O3", f"-march={_MARCH}", "-funroll-loops", "-ffp-contract=fast", "-fno-math-errno",
          "-std=gnu11", "-fPIC", "-shared", "-pthread")
_ABI = 8
_SRC = Path(__file__).with_name("_mlp_kernel.c")

_lock = threading.Lock()
_state: dict[str, Any] = {"lib": None, "reason": None, "path": None, "tried": False}


# --------------------------------------------------------------------------- build and load

def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "gcc", "cc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_id() -> str:
    ident = [platform.machine(), platform.system()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            seen = set()
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "cpu family", "model") and key not in seen:
                    seen.add(key)
                    ident.append(line.strip())
                if len(seen) == 4:
                    break
    except OSError:
        ident.append(platform.processor())
    return "\n".join(ident)


def _cache_dir() -> Path:
    env = os.environ.get("LANDSCAPE_KERNEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "landscape"


def _build(cc: str, out_dir: Path, key: str) -> Path:
    """Compile into out_dir atomically; return the library path. Raises RuntimeError."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"_mlp_kernel-{key}.so"
    if final.exists():
        return final
    fd, tmp = tempfile.mkstemp(prefix=".tmp-mlp_kernel-", suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        errors = []
        for flags in (CFLAGS, tuple(f for f in CFLAGS if not f.startswith("-march="))):
            cmd = [cc, *flags, str(_SRC), "-o", tmp, "-lm"]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if res.returncode == 0:
                break
            msg = (res.stderr or res.stdout).strip().splitlines()
            errors.append(f"{' '.join(cmd)}: {' | '.join(msg[-3:])}")
        else:
            raise RuntimeError("compiler failed: " + " ;; ".join(errors))
        os.chmod(tmp, 0o755)
        os.replace(tmp, final)  # atomic: others see no file or the whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return final


def _load() -> ctypes.CDLL | None:
    with _lock:
        if _state["tried"]:
            return _state["lib"]
        _state["tried"] = True
        try:
            if os.environ.get("LANDSCAPE_KERNEL", "").lower() in ("0", "off", "no", "false"):
                raise RuntimeError("disabled by LANDSCAPE_KERNEL=off")
            cc = _compiler()
            if cc is None:
                raise RuntimeError("no C compiler found ($CC, gcc, cc)")
            ver = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60)
            if ver.returncode != 0:
                raise RuntimeError(f"{cc} --version failed")
            h = hashlib.sha256()
            for part in (_SRC.read_bytes(), " ".join(CFLAGS).encode(), ver.stdout.encode(),
                         _cpu_id().encode(), str(_ABI).encode()):
                h.update(part)
                h.update(b"\0")
            key = h.hexdigest()[:20]
            try:
                path = _build(cc, _cache_dir(), key)
            except OSError:  # cache not writable: a private temporary directory
                path = _build(cc, Path(tempfile.mkdtemp(prefix="landscape-kernel-")), key)
            lib = ctypes.CDLL(str(path))
            if lib.mlpk_abi() != _ABI:
                raise RuntimeError(f"stale library {path}: ABI {lib.mlpk_abi()} != {_ABI}")
            vp, i, L, d = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_double
            lib.mlpk_create.argtypes = [i, vp, i, d, i, L, vp, vp, d, i]
            lib.mlpk_create.restype = vp
            lib.mlpk_destroy.argtypes = [vp]
            lib.mlpk_destroy.restype = None
            lib.mlpk_nparams.argtypes = [vp]
            lib.mlpk_nparams.restype = L
            lib.mlpk_chunk.argtypes = [vp]
            lib.mlpk_chunk.restype = i
            lib.mlpk_last_threads.argtypes = [vp]
            lib.mlpk_last_threads.restype = i
            lib.mlpk_eval.argtypes = [vp, L, vp, vp, vp, i]
            lib.mlpk_eval.restype = i
            lib.lbfgs_direction.argtypes = [L, L, i, vp, L, vp, vp, vp, vp, vp, vp, vp, vp, vp, i]
            lib.lbfgs_direction.restype = None
            lib.lbfgs_push.argtypes = [L, L, L, L, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, i]
            lib.lbfgs_push.restype = None
            lib.assignment_bound.argtypes = [L, L, L, vp, vp, vp, vp, vp, i, vp, i]
            lib.assignment_bound.restype = None
            _state["lib"], _state["path"] = lib, path
        except Exception as exc:  # noqa: BLE001 - available() must never raise
            _state["reason"] = f"{type(exc).__name__}: {exc}"
        return _state["lib"]


def available() -> bool:
    """True when the compiled kernel can be used (compiles it on first call; never raises)."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (one line), or None when it is True."""
    _load()
    return _state["reason"]


def library_path() -> Path | None:
    """Path of the loaded shared library, or None."""
    _load()
    return _state["path"]


# --------------------------------------------------------------------------- arrays

_F64 = np.dtype(np.float64)
_F32 = np.dtype(np.float32)
_I8 = np.dtype(np.int8)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _pointer(x: Any, name: str, shape: tuple[int, ...], writeable: bool, cache: dict) -> int:
    """Address of the data of an ndarray or CPU torch tensor that is float64, of the given
    shape, C-contiguous (and writeable); ValueError otherwise. No copies."""
    if type(x) is np.ndarray or isinstance(x, np.ndarray):
        if x.dtype != _F64:
            raise ValueError(f"{name} must be float64, got {x.dtype}")
        if x.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {x.shape}")
        fl = x.flags
        if not (fl.c_contiguous and fl.aligned):
            raise ValueError(f"{name} must be C-contiguous and aligned")
        if writeable and not fl.writeable:
            raise ValueError(f"{name} must be writeable")
        hit = cache.get(id(x))
        if hit is not None and hit[0] is x:
            return hit[1]
        ptr = x.ctypes.data
        # the cache holds a reference, so the array cannot be resized (moved) meanwhile
        if len(cache) >= 8:
            cache.pop(next(iter(cache)))
        cache[id(x)] = (x, ptr)
        return ptr
    if _is_torch(x):
        import torch

        if x.dtype != torch.float64:
            raise ValueError(f"{name} must be float64, got {x.dtype}")
        if x.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU, got {x.device}")
        if tuple(x.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
        if not x.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
        if writeable and x.requires_grad:
            raise ValueError(f"{name} must not require grad")
        return x.data_ptr()
    raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


# --------------------------------------------------------------------------- L-BFGS two-loop

LBFGS_MAX_PAIRS = 64


def _check_arrays(*specs: tuple[str, np.ndarray, tuple, np.dtype]) -> None:
    """Raise ValueError unless each (name, array, shape, dtype) matches and is C-contiguous."""
    for name, a, shape, dtype in specs:
        if a.dtype != dtype or a.shape != shape or not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous {dtype} of shape {shape}")


ASSIGNMENT_MAX_H = 64  # register tiles of 4 rows x 64 columns


def lbfgs_direction(S: np.ndarray, Y: np.ndarray, s_scale: np.ndarray, y_scale: np.ndarray, rho: np.ndarray,
                    gamma: np.ndarray, g: np.ndarray, order: Sequence[int], rows: np.ndarray,
                    threads: int = 1) -> np.ndarray:
    """-H g by the L-BFGS two-loop recursion for problems ``rows`` (n,), compiled, on up to
    ``threads`` threads of the kernel's pool (at small P several problems interleaved per task;
    a problem's result depends neither on the threads nor on the other rows).

    S, Y: (M, ld, P) int8 rings of steps and gradient changes, pair row j of problem k standing
    for s_scale[j, k] S[j, k] (and y_scale, Y alike; as :func:`lbfgs_push` stores them); rho
    (M, ld): 1 / s.y, 0 for an unusable pair (skipped); gamma (ld): initial inverse-Hessian
    scale; g (ld, P); order: the ring indices to use, newest first (at most LBFGS_MAX_PAIRS). The
    rest float64; all C-contiguous. Returns d (n, P). Call only when :func:`available`."""
    M, ld, P = S.shape
    if len(order) > LBFGS_MAX_PAIRS:
        raise ValueError(f"at most {LBFGS_MAX_PAIRS} pairs, got {len(order)}")
    _check_arrays(("S", S, (M, ld, P), _I8), ("Y", Y, (M, ld, P), _I8), ("s_scale", s_scale, (M, ld), _F64),
                  ("y_scale", y_scale, (M, ld), _F64), ("rho", rho, (M, ld), _F64),
                  ("gamma", gamma, (ld,), _F64), ("g", g, (ld, P), _F64))
    rows, idx = _indices(rows, ld, "rows"), _indices(order, M, "order", np.intc)
    d = np.empty((len(rows), P))
    _load().lbfgs_direction(P, ld, len(idx), idx.ctypes.data, len(rows), rows.ctypes.data, S.ctypes.data,
                            Y.ctypes.data, s_scale.ctypes.data, y_scale.ctypes.data, rho.ctypes.data,
                            gamma.ctypes.data, g.ctypes.data, d.ctypes.data, max(1, int(threads)))
    return d


def lbfgs_push(S: np.ndarray, Y: np.ndarray, s_scale: np.ndarray, y_scale: np.ndarray, slot: int,
               rows: np.ndarray, x: np.ndarray, xn: np.ndarray, g: np.ndarray, gn: np.ndarray,
               threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Store the pairs s = xn - x, y = gn - g of problems ``rows`` (n,) at ring position ``slot``
    of S, Y (M, ld, P) int8: each row v as round(127 v / max|v|), its scale max|v| / 127 in
    s_scale, y_scale (M, ld). x, xn, g, gn: (n, P) float64, C-contiguous. Returns s.y and y.y
    (n,) of the stored pairs, as the two-loop recursion sees them (NaN, and zeros stored, where
    s or y is not finite)."""
    M, ld, P = S.shape
    n = len(rows)
    _check_arrays(("S", S, (M, ld, P), _I8), ("Y", Y, (M, ld, P), _I8), ("s_scale", s_scale, (M, ld), _F64),
                  ("y_scale", y_scale, (M, ld), _F64), ("x", x, (n, P), _F64), ("xn", xn, (n, P), _F64),
                  ("g", g, (n, P), _F64), ("gn", gn, (n, P), _F64))
    if not 0 <= slot < M:
        raise ValueError(f"slot must lie in [0, {M})")
    rows = _indices(rows, ld, "rows")
    out = np.empty((n, 2))
    _load().lbfgs_push(P, ld, int(slot), n, rows.ctypes.data, x.ctypes.data, xn.ctypes.data, g.ctypes.data,
                       gn.ctypes.data, S.ctypes.data, Y.ctypes.data, s_scale.ctypes.data, y_scale.ctypes.data,
                       out.ctypes.data, max(1, int(threads)))
    return out[:, 0], out[:, 1]


def _indices(a: Sequence[int] | np.ndarray, n: int, name: str, dtype: type = np.int64) -> np.ndarray:
    """``a`` as a C-contiguous index array of ``dtype``; ValueError unless every entry lies in [0, n)."""
    a = np.ascontiguousarray(a, dtype=dtype)
    if len(a) and (a.min() < 0 or a.max() >= n):
        raise ValueError(f"{name} must lie in [0, {n})")
    return a


def assignment_bound(rows: np.ndarray, rows_sq: np.ndarray, ids: np.ndarray, x: np.ndarray, x_sq: np.ndarray,
                     odd: bool, threads: int = 1) -> np.ndarray:
    """Per stored set ``ids`` (n,) of unit rows ``rows[ids]`` ((N, H, m) float32; squared norms
    ``rows_sq`` (N, H) float64) and the query's rows ``x`` ((H, m) float32; ``x_sq`` (H,) float64):
    the larger of the sums of row and of column minima of the cost matrix |a|^2 + |b|^2 - 2 a.b
    (|a.b| when ``odd``), computed in float32 without the rounding margin (see
    :func:`landscape.identify._assignment_bound`). Returns (n,) float64. At most
    ASSIGNMENT_MAX_H units; on up to ``threads`` threads of the kernel's pool (the result does not
    depend on it). Call only when :func:`available`."""
    N, H, m = rows.shape
    if H > ASSIGNMENT_MAX_H:
        raise ValueError(f"at most {ASSIGNMENT_MAX_H} units, got {H}")
    _check_arrays(("rows", rows, (N, H, m), _F32), ("rows_sq", rows_sq, (N, H), _F64), ("x", x, (H, m), _F32),
                  ("x_sq", x_sq, (H,), _F64))
    ids = _indices(ids, N, "ids")
    out = np.empty(len(ids))
    _load().assignment_bound(len(ids), H, m, rows.ctypes.data, rows_sq.ctypes.data, ids.ctypes.data, x.ctypes.data,
                             x_sq.ctypes.data, int(odd), out.ctypes.data, max(1, int(threads)))
    return out


# --------------------------------------------------------------------------- kernel

class MLPKernel:
    """Energy and gradient of an MLP cross-entropy loss for K parameter vectors at once.

    widths: [d0, d1, ..., dL] (d0 inputs, dL classes); activation: 'tanh', 'sigmoid', 'relu' or
    'softplus' (log(1 + exp(beta x)) / beta, beta = ``sharpness``, which softplus needs and the
    others refuse) after every layer but the last; bias: biases on or off; X: (N, d0) data;
    y: (N,) integer labels in [0, dL); lam: weight of ||w||^2; threads: threads over walkers
    (results do not depend on it); chunk: samples per cache block (0: automatic; results
    depend on it at the 1e-16 level, not on K or threads).
    """

    def __init__(self, widths: Sequence[int], activation: str, bias: bool, X: Any, y: Any,
                 lam: float, threads: int = 1, chunk: int = 0, sharpness: float | None = None) -> None:
        lib = _load()
        if lib is None:
            raise RuntimeError(f"MLP kernel unavailable: {_state['reason']}")
        widths = [int(v) for v in widths]
        if len(widths) < 2 or len(widths) > 33 or min(widths) < 1:
            raise ValueError(f"widths must be 2 to 33 positive integers, got {widths}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if (activation == "softplus") != (sharpness is not None):
            raise ValueError(f"sharpness is the beta of softplus: give it with softplus only, got {sharpness!r} "
                             f"with {activation}")
        if sharpness is not None and not 0 < float(sharpness) < np.inf:
            raise ValueError(f"sharpness must be a finite number > 0, got {sharpness}")
        X = np.ascontiguousarray(np.asarray(X, dtype=np.float64))
        y_in = np.asarray(y)
        if X.ndim != 2 or X.shape[1] != widths[0] or X.shape[0] < 1:
            raise ValueError(f"X must have shape (N, {widths[0]}) with N >= 1, got {X.shape}")
        if y_in.shape != (X.shape[0],) or not np.issubdtype(y_in.dtype, np.integer):
            raise ValueError(f"y must be integer labels of shape ({X.shape[0]},), got {y_in.dtype} {y_in.shape}")
        y_arr = np.ascontiguousarray(y_in, dtype=np.int64)
        if y_arr.min() < 0 or y_arr.max() >= widths[-1]:
            raise ValueError(f"labels must be in [0, {widths[-1]}), got [{y_arr.min()}, {y_arr.max()}]")
        if not np.isfinite(X).all():
            raise ValueError("X must be finite")
        lam = float(lam)
        if not np.isfinite(lam):
            raise ValueError(f"lam must be finite, got {lam}")
        self.widths = tuple(widths)
        self.activation = activation
        self.sharpness = None if sharpness is None else float(sharpness)
        self.bias = bool(bias)
        self.lam = lam
        self.threads = int(threads)
        self.X, self.y = X, y_arr
        self.n_samples = X.shape[0]
        wa = (ctypes.c_int * len(widths))(*widths)
        h = lib.mlpk_create(len(widths) - 1, wa, ACTIVATIONS.index(activation), self.sharpness or 1.0, int(self.bias),
                            X.shape[0], X.ctypes.data, y_arr.ctypes.data, lam, int(chunk))
        if not h:
            raise MemoryError("mlpk_create failed (out of memory)")
        self._lib, self._h = lib, h
        self.n_params = int(lib.mlpk_nparams(h))
        self.chunk = int(lib.mlpk_chunk(h))
        self._chunk_arg = int(chunk)
        self._call_lock = threading.Lock()
        self._ptrs: dict[int, tuple[Any, int]] = {}  # id -> (array, data address), last 8 arrays
        self._fin = weakref.finalize(self, lib.mlpk_destroy, h)

    def __reduce__(self):  # rebuilt (and recompiled if need be) where it is unpickled
        return (MLPKernel, (self.widths, self.activation, self.bias, self.X, self.y, self.lam,
                            self.threads, self._chunk_arg, self.sharpness))

    def __repr__(self) -> str:
        return (f"MLPKernel(widths={list(self.widths)}, activation={self.activation!r}, bias={self.bias}, "
                f"N={self.n_samples}, P={self.n_params}, lam={self.lam}, threads={self.threads})")

    def energy_gradient(self, w: Any, out_E: Any = None, out_G: Any = None,
                        threads: int | None = None) -> tuple[Any, Any]:
        """E (K,) and G (K, P) for w (K, P), float64, C-contiguous.

        A 1-D w (P,) gives (float, G (P,)) (out_E then has shape (1,)). out_E (K,) / out_G
        (K, P) receive the results when given (arrays or CPU torch tensors, returned as
        given); otherwise new arrays are returned (torch tensors when w is a torch tensor).
        threads overrides self.threads. Wrong dtype, shape, layout or overlapping buffers
        raise ValueError. The last 8 caller arrays are remembered (with their addresses).
        """
        P = self.n_params
        shape = getattr(w, "shape", None)
        if shape is None:
            raise ValueError(f"w must be a numpy array or torch tensor, got {type(w).__name__}")
        single = len(shape) == 1
        if single:
            K = 1
            if tuple(shape) != (P,):
                raise ValueError(f"w must have shape (K, {P}) or ({P},), got {tuple(shape)}")
        else:
            if len(shape) != 2 or shape[1] != P:
                raise ValueError(f"w must have shape (K, {P}) or ({P},), got {tuple(shape)}")
            K = int(shape[0])
        cache = self._ptrs
        pw = _pointer(w, "w", (P,) if single else (K, P), False, cache)
        if out_E is None or out_G is None:
            if _is_torch(w):
                import torch

                new = lambda s: torch.empty(s, dtype=torch.float64)  # noqa: E731
            else:
                new = np.empty
        if out_E is None:
            out_E = new((K,))
            pE = _pointer(out_E, "out_E", (K,), True, {})
        else:
            pE = _pointer(out_E, "out_E", (K,), True, cache)
        gshape = (P,) if single else (K, P)
        if out_G is None:
            out_G = new(gshape)
            pG = _pointer(out_G, "out_G", gshape, True, {})
        else:
            pG = _pointer(out_G, "out_G", gshape, True, cache)
        nb = 8 * K * P
        if (pw < pG + nb and pG < pw + nb) or (pE < pw + nb and pw < pE + 8 * K) or (pE < pG + nb and pG < pE + 8 * K):
            raise ValueError("w, out_E and out_G must not overlap")
        nt = self.threads if threads is None else int(threads)
        with self._call_lock:
            rc = self._lib.mlpk_eval(self._h, K, pw, pE, pG, nt if nt > 1 else 1)
        if rc != 0:
            raise MemoryError("mlpk_eval: out of memory for per-thread scratch")
        if single:
            return float(out_E[0]), out_G
        return out_E, out_G

    @property
    def threads_used(self) -> int:
        """Threads the last call ran on: at most `threads`, fewer when the batch is too small to
        pay for waking a thread (about 10-20 us of work each), 0 before the first call."""
        return int(self._lib.mlpk_last_threads(self._h))

    def energy(self, w: Any) -> Any:
        """E (K,) for w (K, P) (computes the gradient too; the kernel is fused)."""
        return self.energy_gradient(w)[0]
