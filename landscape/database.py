"""The HDF5 database of a landscape (h5py): the only module that reads or writes the file.

Layout (schema version 1; every group and dataset carries a ``description`` attribute)::

    /                      attrs: format, schema_version, created_by, created, writer (JSON: host,
                           boot id, pid and start time of the last sampling run's process)
    /problem               attrs: problem (JSON: data spec, model spec, lam, data hash), layout
                           (JSON: flat-parameter blocks), dataset (JSON: what was loaded), energy
    /minima/energy         (N,)   float64  E at the stored coordinates
    /minima/coords         (N, P) float64  flat parameter vectors (layout in /problem)
    /minima/grad_rms       (N,)   float64  ||grad E|| / sqrt(P) at coords
    /minima/eigenvalues    (N, k) float64  lowest Hessian eigenvalues, ascending
    /minima/hits           (N,)   int64    how often a quench found this minimum
    /minima/first_found    (N, 3) int64    (run, walker, step) of the first find
    /scores/<name>         (N,)   float64  one score per minimum (NaN: not computed); attrs say what
    /runs/<id>             attrs: command, seed, parameters (JSON), software (the landscape version
                           that ran it), started, ended, status
    /runs/<id>/counters    (C,)   float64  names in attr 'names'
    /runs/<id>/walkers/*   walker state that --resume continues from

Every dataset is chunked and carries a Fletcher-32 checksum per chunk (HDF5's own filter, which
any HDF5 reader applies): data damaged on disk or in a copy is refused, not read as if sound.
Metadata has HDF5's checksums.

Sampling runs write in HDF5's single-writer/multiple-reader mode (SWMR), whose ordered
writes keep the file readable at every moment, and flush after every batch of reported
minima: a killed run leaves a file holding everything it had reported. Commands that only
read open the file read-only.

One writer at a time. HDF5 locks a file while it is open for writing, but lifts the lock once
SWMR writing starts, so a second writer would find the file marked "open for writing" and
nothing else to tell a live run from a killed one. The root attribute ``writer`` names the
sampling run's process: its file is recovered for appending only when that process no longer
runs (or ran on another host or before a reboot). A file shorter than its superblock says is
refused as truncated before HDF5 reads it (an SWMR reader skips HDF5's own check and can hang
on such a file). A file marked "open for writing" is read as an SWMR reader, which retries a
read whose checksum fails; it retries only while the recorded writer runs, so a killed run's
damaged file is refused in seconds, not after an hour of retries.
"""
from __future__ import annotations

import ctypes
import functools
import json
import os
import socket
import time
from dataclasses import dataclass

import h5py
import numpy as np

from . import __version__
from .problem import Problem

FORMAT = "landscape"
SCHEMA_VERSION = 1
N_EIGENVALUES = 3
COUNTERS = ("steps", "quenches", "converged", "accepted", "new_minima", "saddles", "refinements", "nfev",
            "cpu_seconds", "wall_seconds")
# how a run ended (its 'status' attribute), or that it has not: RUNNING, or KILLED if its process is gone
COMPLETED, TIME_UP, INTERRUPTED, FAILED = "completed", "time budget reached", "interrupted by user", "failed"
RUNNING, KILLED = "running", "killed (never ended)"

_MINIMA = {  # name: (dtype, trailing shape or 'P', description)
    "energy": ("f8", (), "energy E(w): mean cross-entropy over the training split + lam*||w||^2 (nats)"),
    "coords": ("f8", "P", "flat parameter vector w of the minimum (layout: /problem attribute 'layout')"),
    "grad_rms": ("f8", (), "RMS gradient ||grad E||/sqrt(P) at coords (nats per parameter unit)"),
    "eigenvalues": ("f8", (N_EIGENVALUES,), "lowest Hessian eigenvalues at coords, ascending (NaN: not computed)"),
    "hits": ("i8", (), "number of quenches that ended in this minimum"),
    "first_found": ("i8", (3,), "(run, walker, step) of the quench that first found this minimum"),
}


class DatabaseError(ValueError):
    """A database that cannot be used as asked (wrong file, other problem, corrupt)."""


@dataclass
class Minima:
    """All stored minima as arrays (N rows; see the module docstring for units). ``coords`` is
    None when they were left out (``Database.minima(coords=False)``)."""

    energy: np.ndarray
    coords: np.ndarray | None
    grad_rms: np.ndarray
    eigenvalues: np.ndarray
    hits: np.ndarray
    first_found: np.ndarray

    def __len__(self) -> int:
        return len(self.energy)


class Database:
    """An open landscape database. ``Database(path)`` opens read-only; ``Database(path, problem=p,
    mode='a')`` creates the file for ``p`` or opens it for appending, refusing a file made for a
    different problem. Use as a context manager."""

    def __init__(self, path: str | os.PathLike, problem: Problem | None = None, mode: str = "r"):
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        self.path = os.fspath(path)
        exists = os.path.exists(self.path)
        if not exists and (mode == "r" or problem is None):
            raise DatabaseError(f"{self.path}: no such database")
        folder = os.path.dirname(os.path.abspath(self.path))
        if not exists and not os.path.isdir(folder):
            raise DatabaseError(f"{self.path}: folder {folder} does not exist; create it or choose another path")
        if exists and not h5py.is_hdf5(self.path):
            raise DatabaseError(f"{self.path}: not an HDF5 file; give a new path or a landscape database")
        if exists and mode == "a":  # validate read-only first, so a refused file is left untouched
            Database(self.path, problem, "r").close()
        self.f = _open(self.path, mode)
        self._ds: dict[str, h5py.Dataset] | None = None  # /minima datasets of the open file
        self.writable = mode == "a"
        creating = False
        try:
            if exists and (len(self.f.keys()) > 0 or mode == "r"):
                self._check_format()
                if problem is not None and problem.to_dict() != self.problem.to_dict():
                    raise DatabaseError(f"{self.path} holds a different problem ({_diff(self.problem, problem)}); "
                                        "use a new database file for this one")
            elif problem is None:
                raise DatabaseError(f"{self.path}: empty file; a problem is needed to create a database")
            else:
                creating = True
                self._create(problem)
        except (KeyError, OSError, RuntimeError) as e:
            self.f.close()
            if creating:
                raise
            # HDF5 failed reading the file's own structures
            raise _damaged(self.path, e) from None
        except Exception:
            self.f.close()
            raise

    # -- structure -----------------------------------------------------------------------------
    def _create(self, problem: Problem) -> None:
        f = self.f
        f.attrs.update(format=FORMAT, schema_version=SCHEMA_VERSION, created_by=f"landscape {__version__}",
                       created=_now(), description="minima of a neural-network loss landscape; see /problem")
        pg = f.create_group("problem")
        pg.attrs.update(
            problem=problem.to_json(),
            layout=json.dumps([{"name": b.name, "shape": list(b.shape), "offset": b.offset}
                               for b in problem.model.blocks()]),
            dataset=json.dumps(problem.dataset().describe()),
            n_params=problem.model.n_params, lam=problem.lam, dtype=problem.dtype,
            energy="E(w) = mean softmax cross-entropy over the training split + lam * sum(w**2), float64",
            description="how to rebuild the network and the energy: landscape.Problem.from_json(attrs['problem'])")
        mg = f.create_group("minima")
        mg.attrs["description"] = "distinct minima, one row per minimum, in order of discovery"
        P = problem.model.n_params
        for name, (dt, shape, desc) in _MINIMA.items():
            shape = (P,) if shape == "P" else shape
            ds = mg.create_dataset(name, (0, *shape), maxshape=(None, *shape), dtype=dt, fletcher32=True,
                                   chunks=(max(1, min(256, 65536 // (8 * max(1, int(np.prod(shape)))))), *shape))
            ds.attrs["description"] = desc
        f.create_group("runs").attrs["description"] = "one group per sampling run, named by its number"
        f.flush()

    def _check_format(self) -> None:
        a = self.f.attrs
        if a.get("format") != FORMAT or "problem" not in self.f:
            raise DatabaseError(f"{self.path}: an HDF5 file, but not a landscape database")
        if int(a.get("schema_version", -1)) != SCHEMA_VERSION:
            raise DatabaseError(f"{self.path}: schema version {a.get('schema_version')} (this landscape reads "
                                f"{SCHEMA_VERSION})")

    @property
    def problem(self) -> Problem:
        return Problem.from_json(self.f["problem"].attrs["problem"])

    # -- minima --------------------------------------------------------------------------------
    @property
    def _minima(self) -> dict[str, h5py.Dataset]:
        """The /minima datasets, looked up once per open file (a lookup costs more than a row write)."""
        if self._ds is None:
            self._ds = {name: self.f["minima"][name] for name in _MINIMA}
        return self._ds

    def __len__(self) -> int:
        """Stored minima: rows present in every /minima dataset (a writer killed inside
        :meth:`add_minimum` can leave some datasets one row longer; that row is not a minimum)."""
        return min(ds.shape[0] for ds in self._minima.values())

    def minima(self, coords: bool = True) -> Minima:
        """Every stored minimum; ``coords=False`` leaves out the coordinates, which are most of the
        file (N x P floats: 2 GB for 100,000 digits minima)."""
        n = len(self)
        return Minima(**{name: self._read(ds, slice(0, n)) if coords or name != "coords" else None
                         for name, ds in self._minima.items()})

    def coords(self, rows: np.ndarray) -> np.ndarray:
        """The coordinates (len(rows), P) of the minima ``rows`` (ids in any order, repeats allowed)."""
        rows, n = np.asarray(rows), len(self)
        if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
            raise ValueError(f"rows must be a 1-D array of minimum ids, got {rows!r}")
        if rows.size and not (rows.min() >= 0 and rows.max() < n):
            raise ValueError(f"minimum ids must be in [0, {n}), got {rows.min()}..{rows.max()}")
        unique, inverse = np.unique(rows.astype(np.int64), return_inverse=True)  # h5py reads ascending rows
        return self._read(self._minima["coords"], unique)[inverse]

    def add_minimum(self, energy: float, coords: np.ndarray, grad_rms: float, eigenvalues: np.ndarray,
                    first_found: tuple[int, int, int]) -> int:
        """Append a new minimum (hits = 1); returns its id (row)."""
        g, n = self._minima, len(self)
        row = dict(energy=energy, coords=coords, grad_rms=grad_rms, eigenvalues=_pad(eigenvalues), hits=1,
                   first_found=first_found)
        for name, value in row.items():  # a torn row left by a killed writer is overwritten
            ds = g[name]
            ds.resize(n + 1, axis=0)
            ds[n] = value
        return n

    def update_minimum(self, id_: int, energy: float, coords: np.ndarray, grad_rms: float) -> None:
        """Replace a minimum's point by a better-converged copy; hits and provenance are kept."""
        g = self._minima
        for name, value in dict(energy=energy, coords=coords, grad_rms=grad_rms).items():
            g[name][id_] = value

    def add_hits(self, ids: np.ndarray) -> None:
        """Count one more find of each id in ``ids`` (repeats allowed)."""
        if len(ids):
            u, c = np.unique(np.asarray(ids, dtype=np.int64), return_counts=True)
            h = self._minima["hits"]
            for i, k in zip(u, c):
                h[i] = self._read(h, i) + k

    # -- scores --------------------------------------------------------------------------------
    def scores(self) -> dict[str, tuple[np.ndarray, dict]]:
        """Every stored score: name -> (values (N,) with NaN where not computed, attributes)."""
        if "scores" not in self.f:
            return {}
        n = len(self)
        out = {}
        for name, ds in self.f["scores"].items():
            v = np.full(n, np.nan)
            v[: ds.shape[0]] = self._read(ds)
            out[name] = (v, dict(ds.attrs))
        return out

    def write_score(self, name: str, ids: np.ndarray, values: np.ndarray, attrs: dict) -> None:
        """Store ``values`` of the minima ``ids`` in /scores/<name> (created with ``attrs``)."""
        g = self.f.require_group("scores")
        g.attrs["description"] = "scores of the minima, one dataset per score, rows as in /minima"
        if name not in g:
            ds = g.create_dataset(name, (0,), maxshape=(None,), dtype="f8", chunks=(1024,), fillvalue=np.nan,
                                  fletcher32=True)
            ds.attrs.update(attrs)
        ds = g[name]
        if ds.shape[0] < len(self):
            ds.resize((len(self),))
        ids = np.asarray(ids)
        order = np.argsort(ids)
        ds[ids[order]] = np.asarray(values)[order]
        self.f.flush()

    # -- runs ----------------------------------------------------------------------------------
    def start_run(self, command: str, seed: int, parameters: dict, walker_shapes: dict[str, tuple]) -> int:
        """Open a new run group and allocate its walker-state datasets (``walker_shapes``: name ->
        (shape, dtype, description)); returns the run id. Afterwards the file is in SWMR mode:
        minima and walker state can be written, nothing created."""
        runs = self.f["runs"]
        rid = len(runs)
        g = runs.create_group(str(rid))
        g.attrs.update(command=command, seed=seed, parameters=json.dumps(parameters, sort_keys=True),
                       software=f"landscape {__version__}", started=_now(),
                       status="running (or killed, if no 'ended' attribute)",
                       description="one invocation of landscape sample")
        c = g.create_dataset("counters", data=np.zeros(len(COUNTERS)), fletcher32=True)
        c.attrs.update(names=json.dumps(COUNTERS), description="running totals of this run, in order of 'names'")
        wg = g.create_group("walkers")
        wg.attrs["description"] = "state of each walker at the last flush, for --resume"
        for name, (shape, dt, desc) in walker_shapes.items():
            wg.create_dataset(name, shape, dtype=dt, fletcher32=True).attrs["description"] = desc
        self.f.attrs["writer"] = json.dumps(_process())
        self.f.flush()
        self.f.swmr_mode = True
        return rid

    def save_run_state(self, rid: int, counters: dict, walkers: dict[str, np.ndarray]) -> None:
        g = self.f[f"runs/{rid}"]
        g["counters"][:] = [float(counters.get(k, 0)) for k in COUNTERS]
        for name, value in walkers.items():
            g["walkers"][name][...] = value

    def end_run(self, rid: int, status: str) -> None:
        """Close SWMR mode (reopening the file) and stamp the run's end (``status``: COMPLETED,
        TIME_UP, INTERRUPTED or FAILED)."""
        self.f.close()
        self.f, self._ds = _open(self.path, "a"), None
        self.f[f"runs/{rid}"].attrs.update(ended=_now(), status=status)
        self.f.flush()

    def runs(self) -> list[dict]:
        """Every run's record, oldest first. A run that has not ended has status 'running' while
        its process runs (see ``writer``) and 'killed' otherwise."""
        out = []
        ids = sorted(self.f["runs"], key=int)
        for rid in ids:
            g = self.f[f"runs/{rid}"]
            a = dict(g.attrs)
            counters = dict(zip(json.loads(g["counters"].attrs["names"]), self._read(g["counters"]).tolist()))
            status = a.get("status")
            if a.get("ended") is None:
                live = rid == ids[-1] and _running(json.loads(self.f.attrs.get("writer", "{}")))
                status = RUNNING if live else KILLED
            out.append({"id": int(rid), "command": a.get("command"), "seed": int(a.get("seed", -1)),
                        "parameters": json.loads(a.get("parameters", "{}")), "software": a.get("software"),
                        "started": a.get("started"),
                        "ended": a.get("ended"), "status": status, "counters": counters})
        return out

    def walker_state(self, rid: int) -> dict[str, np.ndarray]:
        return {k: self._read(v) for k, v in self.f[f"runs/{rid}/walkers"].items()}

    def _read(self, ds: h5py.Dataset, selection: slice | int | tuple = ()) -> np.ndarray:
        """``ds[selection]``. Every dataset written here carries a Fletcher-32 checksum per chunk;
        data whose checksum fails is damage, reported as such. A reader of a file that a run may be
        writing tries twice more, 0.1 s apart, as the run may be rewriting that chunk."""
        live = self.f.swmr_mode and not self.writable
        for attempt in range(3 if live else 1):
            if attempt:
                time.sleep(0.1)
                ds.refresh()
            try:
                return ds[selection]
            except OSError as e:
                if "filter returned failure" not in str(e):
                    raise
        raise _damaged(self.path, f"the checksum of data in {ds.name} fails")

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        if self.f.id.valid:
            self.f.close()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_LIBVER = ("v110", "v110")  # superblock v3: what SWMR needs and what _check_length reads


def _open(path: str, mode: str) -> h5py.File:
    """Open read-only (as an SWMR reader when a run is writing the file, or was killed while it
    did) or for appending; a file left marked 'open for writing' by a killed run is recovered
    when its writer no longer runs."""
    if os.path.exists(path):
        _check_length(path)
    try:
        if mode == "r":
            try:  # HDF5 reads a closed file's metadata, checksums and all, at once
                return h5py.File(path, "r", libver=_LIBVER)
            except OSError as e:
                if "already open for write" not in str(e):
                    raise
            # a run writes it (or was killed while writing): read as SWMR. An SWMR reader retries reads
            # whose checksum fails, for a writer caught mid-write; a killed writer's file gets one
            # attempt, so damage is reported at once
            return _swmr_reader(path, None if _running(_writer(path)) else 1)
        return h5py.File(path, "a", libver=_LIBVER)
    except OSError as e:
        if mode == "a" and "already open for write" in str(e) and not _locked(path):
            writer = _writer(path)
            if _running(writer):
                raise DatabaseError(f"{path}: being written by process {writer['pid']} (a landscape sample run); "
                                    "wait for it to end, or stop it") from None
            _clear_write_flags(path)
            return h5py.File(path, "a", libver=_LIBVER)
        reason = str(e).splitlines()[0]
        if "checksum" in reason:
            raise _damaged(path, e) from None
        if "unable to lock file" in reason:  # HDF5's lock: held by any reader, or a writer before SWMR starts
            raise DatabaseError(f"{path}: another process has it open (reading, or creating it); close it there "
                                "and try again") from None
        raise DatabaseError(f"{path}: cannot open ({reason})") from None


_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _check_length(path: str) -> None:
    """Refuse a file shorter than the end-of-file address in its superblock (v2/v3, as written
    here; other versions are left to HDF5). Only while a file is being created, with HDF5's lock
    held, is a sound file shorter: measured over 2 million reads of the superblock during
    sampling runs, never once SWMR writing had started."""
    with open(path, "rb") as fh:
        sb = fh.read(48)
    if sb[:8] != _SIGNATURE or sb[8] not in (2, 3) or len(sb) < 12 + 3 * sb[9]:
        return
    o = sb[9]
    base, eof = int.from_bytes(sb[12:12 + o], "little"), int.from_bytes(sb[12 + 2 * o:12 + 3 * o], "little")
    size = os.path.getsize(path)
    if size < base + eof and not _locked(path):
        raise DatabaseError(f"{path}: truncated ({size} of {base + eof} bytes; an incomplete copy or a full disk?); "
                            "restore it from a backup or use a new path")


def _process() -> dict:
    """This process, as the ``writer`` attribute records it."""
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(), "start": _start_time(os.getpid())}


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot; Linux), None if it is gone or a zombie
    or there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _writer(path: str) -> dict:
    """The ``writer`` attribute of a file marked open for writing (empty if it has none), read with
    _PROBE_ATTEMPTS, three times 0.5 s apart: a live writer's half-written metadata is whole again
    within milliseconds, a damaged file's never."""
    for tries in range(3):
        time.sleep(0.5 if tries else 0.0)
        try:
            with _swmr_reader(path, _PROBE_ATTEMPTS) as f:
                return json.loads(f.attrs.get("writer", "{}"))
        except (OSError, RuntimeError, KeyError) as e:
            error = e
    raise _damaged(path, error)


def _damaged(path: str, reason: Exception | str) -> DatabaseError:
    """The one-line error for a damaged file (``reason``: what HDF5 raised, or what fails)."""
    return DatabaseError(f"{path}: damaged ({str(reason).splitlines()[0]}); restore it from a backup")


# HDF5 retries a metadata read whose checksum fails (a writer may be mid-write) with a delay that
# doubles each time: 20 attempts took 3 ms on a damaged file, 28 took 0.27 s, 32 took 4.3 s, and
# its default of 100, for each damaged piece of metadata, hung `inspect` for over an hour
_PROBE_ATTEMPTS = 24


def _swmr_reader(path: str, attempts: int | None) -> h5py.File:
    """``path`` opened read-only as an SWMR reader that reads a piece of metadata whose checksum
    fails at most ``attempts`` times (None: HDF5's default, 100). h5py does not expose the
    setting, so it is set through the HDF5 library h5py loaded; where that is not found, the
    default is kept."""
    setter = None if attempts is None else _metadata_read_attempts()
    if setter is not None:
        fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
        fapl.set_libver_bounds(h5py.h5f.LIBVER_V110, h5py.h5f.LIBVER_V110)
        if setter(fapl.id, attempts) >= 0:
            flags = h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ
            return h5py.File(h5py.h5f.open(os.fsencode(path), flags, fapl=fapl))
    return h5py.File(path, "r", libver=_LIBVER, swmr=True)


@functools.cache
def _metadata_read_attempts():
    """HDF5's ``H5Pset_metadata_read_attempts(fapl, n)`` from the library h5py loaded (found in
    /proc/self/maps; Linux), or None."""
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh}
        libs = [p for p in paths if os.path.basename(p).startswith("libhdf5") and "_hl" not in os.path.basename(p)]
        if len(libs) != 1:
            return None
        fn = ctypes.CDLL(libs[0]).H5Pset_metadata_read_attempts
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int64, ctypes.c_uint], ctypes.c_int  # hid_t is int64_t since HDF5 1.10
    return fn


def _running(w: dict) -> bool:
    """Whether the recorded writer ``w`` still runs. A writer on another host or before this
    boot does not; a pid whose start time differs is another process."""
    if not w or w.get("host") != socket.gethostname() or w.get("boot") != _boot_id():
        return False
    if os.path.isdir("/proc/self"):
        return _start_time(w["pid"]) == w.get("start")
    try:
        os.kill(w["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _locked(path: str) -> bool:
    """Whether another process holds the file (HDF5 locks files it opens with flock)."""
    import fcntl

    with open(path, "rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def _clear_write_flags(path: str) -> None:
    """Clear the superblock's file-consistency flags (what ``h5clear -s`` does) of a file whose
    writer was killed. Superblock v2/v3: flags at byte 11, Jenkins lookup3 checksum of bytes
    0..43 at byte 44 (8-byte offsets); the stored checksum is verified before anything is written."""
    with open(path, "r+b") as fh:
        sb = bytearray(fh.read(48))
        ok = (sb[:8] == _SIGNATURE and sb[8] in (2, 3) and sb[9] == 8
              and int.from_bytes(sb[44:48], "little") == _lookup3(bytes(sb[:44])))
        if not ok:
            raise DatabaseError(f"{path}: marked open for writing and its superblock is not one this tool can "
                                "recover; run 'h5clear -s' on it")
        sb[11] = 0
        sb[44:48] = _lookup3(bytes(sb[:44])).to_bytes(4, "little")
        fh.seek(0)
        fh.write(sb)


def _lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``, HDF5's metadata checksum."""
    M = 0xFFFFFFFF

    def rot(x: int, k: int) -> int:
        return ((x << k) | (x >> (32 - k))) & M

    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & M
    i = 0
    while n - i > 12:
        a = (a + int.from_bytes(data[i:i + 4], "little")) & M
        b = (b + int.from_bytes(data[i + 4:i + 8], "little")) & M
        c = (c + int.from_bytes(data[i + 8:i + 12], "little")) & M
        a = (a - c) & M; a ^= rot(c, 4); c = (c + b) & M  # noqa: E702
        b = (b - a) & M; b ^= rot(a, 6); a = (a + c) & M  # noqa: E702
        c = (c - b) & M; c ^= rot(b, 8); b = (b + a) & M  # noqa: E702
        a = (a - c) & M; a ^= rot(c, 16); c = (c + b) & M  # noqa: E702
        b = (b - a) & M; b ^= rot(a, 19); a = (a + c) & M  # noqa: E702
        c = (c - b) & M; c ^= rot(b, 4); b = (b + a) & M  # noqa: E702
        i += 12
    if n - i == 0:
        return c
    tail = data[i:] + bytes(12 - (n - i))
    a = (a + int.from_bytes(tail[0:4], "little")) & M
    b = (b + int.from_bytes(tail[4:8], "little")) & M
    c = (c + int.from_bytes(tail[8:12], "little")) & M
    c ^= b; c = (c - rot(b, 14)) & M  # noqa: E702
    a ^= c; a = (a - rot(c, 11)) & M  # noqa: E702
    b ^= a; b = (b - rot(a, 25)) & M  # noqa: E702
    c ^= b; c = (c - rot(b, 16)) & M  # noqa: E702
    a ^= c; a = (a - rot(c, 4)) & M  # noqa: E702
    b ^= a; b = (b - rot(a, 14)) & M  # noqa: E702
    c ^= b; c = (c - rot(b, 24)) & M  # noqa: E702
    return c


def _pad(eig: np.ndarray) -> np.ndarray:
    out = np.full(N_EIGENVALUES, np.nan)
    eig = np.asarray(eig, dtype=float).ravel()[:N_EIGENVALUES]
    out[: len(eig)] = eig
    return out


def _diff(a: Problem, b: Problem) -> str:
    da, db = a.to_dict(), b.to_dict()
    keys = [k for k in da if da[k] != db.get(k)]
    return "; ".join(f"{k}: file {json.dumps(da[k])} vs asked {json.dumps(db.get(k))}" for k in keys)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
