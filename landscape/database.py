"""The HDF5 database of a landscape (h5py): the only module that reads or writes the file.

Layout (schema version 2; every group and dataset carries a ``description`` attribute). Every
table exists from the file's creation, empty until a command fills it, so a command writing in
SWMR mode (which can create nothing) can write any of them::

    /                      attrs: format, schema_version, created_by, created, upgrades (JSON: each
                           upgrade of an older file: from, to, software, at), writer (JSON: host,
                           boot id, pid and start time of the process writing the file)
    /writer_heartbeat      (1,)    float64  Unix time of the writer's last sign of life (its lease)
    /problem               attrs: problem (JSON: data spec, model spec, loss terms, data hash), layout
                           (JSON: flat-parameter blocks), dataset (JSON: what was loaded, class labels)
    /problem/shift, scale  (D,)    float64  preprocessing: model input = (raw - shift) / scale
    /problem/train_index   (n,)    int64    rows of the source data (after 'limit') in each split
    /problem/test_index
    /minima/energy         (N,)    float64  E at the stored coordinates (the loss in /problem, nats)
    /minima/coords         (N, P)  float64  flat parameter vectors (layout in /problem)
    /minima/grad_rms       (N,)    float64  ||grad E|| / sqrt(P) at coords
    /minima/eigenvalues    (N, k)  float64  lowest Hessian eigenvalues, ascending
    /minima/hits           (N,)    int64    how often a quench found this minimum
    /minima/first_found    (N, 3)  int64    (run, walker, step) of the first find
    /minima/version        (N,)    int64    coordinate version: 0 when stored, +1 each time refined
    /transition_states/*   (M, ..)          energy, coords, minima (M, 2) the two minima it joins,
                                            eigenvalues (lowest, ascending; one negative), grad_rms,
                                            found (run, a, b: the pair whose search found it)
    /scores/kinds          (S,)    compound what each score is: quantity, eps, eps_unit, method,
                                            space, split, aggregation, n_points, options (JSON)
    /scores/table, row, kind, version, value, run  (R,)  a long table, one row per computed value:
                                            of row `row` of table `table` (0: minima), score kind
                                            `kind`, computed from coordinate version `version`
    /attempts/*            (A, ..)          double-ended searches tried: minima (A, 2), transition_states
                                            (how many it found), run
    /networks/*            (T, ..)          trained networks (`landscape train`): coords, objective (JSON:
                                            objective, its parameters, training settings), seed, run;
                                            their evaluations are scores of table 2
    /runs/<id>             attrs: kind (sample, score, connect, ...), command, seed, parameters
                           (JSON), software, started, ended, status
    /runs/<id>/counters    (C,)    float64  names in attr 'names'
    /runs/<id>/walkers/*   walker state that --resume continues from (zeros until the run first saves it;
                           once saved, rng's 4th column, the low word of a PCG64 increment, is odd)

A minimum keeps its id (row) forever. Refining it in place (:meth:`Database.update_minimum`)
raises its coordinate version; a score computed from an older version is stale: readers see
NaN for it and the next ``score`` recomputes it.

Version policy: files of schema 1 are read as they are and upgraded when first opened for
writing (on a copy that replaces the file only when complete; the upgrade is recorded in the
root attribute ``upgrades``); a file of a newer schema is refused.

Every dataset is chunked and carries a Fletcher-32 checksum per chunk (HDF5's own filter, which
any HDF5 reader applies): data damaged on disk or in a copy is refused, not read as if sound.
Metadata has HDF5's checksums.

Sampling runs write in HDF5's single-writer/multiple-reader mode (SWMR), whose ordered
writes keep the file readable at every moment, and flush after every batch of reported
minima: a killed run leaves a file holding everything it had reported. Commands that only
read open the file read-only; a reader of a file being written sees the rows added since it
opened the file.

One writer at a time. HDF5 locks a file while it is open for writing, but lifts the lock once
SWMR writing starts, so a second writer would find the file marked "open for writing" and
nothing else to tell a live run from a killed one. The root attribute ``writer`` names the
sampling run's process: its file is recovered for appending only when that process no longer
runs (or ran on another host or before a reboot). A file shorter than its superblock says is
refused as truncated before HDF5 reads it (an SWMR reader skips HDF5's own check and can hang
on such a file). A file marked "open for writing" is read as an SWMR reader, which retries a
read whose checksum fails; it retries only while the recorded writer runs, so a killed run's
damaged file is refused in seconds, not after an hour of retries.

A command killed while it held the file open for writing before its SWMR writing began (while
preparing its work) leaves it marked open for plain writing, which HDF5 opens neither plainly nor
as an SWMR reader: such a file, once no process holds HDF5's lock on it, is read as it is through
a view of its superblock with the flags clear (not a byte changed) and taken over by the next
writer.

A writer on another host (a shared filesystem, another node of a cluster) cannot be checked
that way: the writer refreshes ``/writer_heartbeat`` as it flushes (at most every
HEARTBEAT_SECONDS), and its file is taken over, with a warning, only once that heartbeat is
older than LEASE_SECONDS (10 minutes; the hosts' clocks must agree to within minutes); before
that it is refused, unless ``force`` (``--force``) says the writer is known to be dead. A process
on this host that still runs is never taken over.

Out of space: a command stops growing the file while the disk (or the process's file-size limit,
``ulimit -f``) leaves less than DISK_RESERVE bytes beyond what it is about to write, and ends its run
cleanly in that reserve (DiskFullError: everything written before is kept, a sample run can be
resumed). A write that fails anyway (another process took the reserve) ends the command at once:
the file is left as a killed run leaves it, for the next command to recover.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import functools
import io
import json
import math
import os
import resource
import shutil
import signal
import socket
import time
import warnings
from dataclasses import dataclass
from typing import Iterator

import h5py
import numpy as np

from . import __version__, signals
from .data import eps_unit
from .problem import Problem

FORMAT = "landscape"
SCHEMA_VERSION = 2
INT64_END = 2**63  # a run's seed is stored as an int64 attribute: seeds are in [0, INT64_END)
N_EIGENVALUES = 3
COUNTERS = ("steps", "quenches", "converged", "accepted", "new_minima", "saddles", "refinements", "nfev",
            "cpu_seconds", "wall_seconds")
# how a run ended (its 'status' attribute), or that it has not: RUNNING, or KILLED if its process is gone
COMPLETED, TIME_UP, INTERRUPTED, FAILED = "completed", "time budget reached", "interrupted by user", "failed"
RUNNING, KILLED = "running", "killed (never ended)"
TABLES = ("minima", "transition_states", "networks")  # what a score row's 'table' column counts
LEASE_SECONDS = 600.0  # a writer on another host whose heartbeat is older may be taken over
HEARTBEAT_SECONDS = 5.0  # a writer refreshes its heartbeat at a flush at most this often
DISK_RESERVE = 4 * 2**20  # bytes a writing command keeps free to end its run cleanly

_WALKER_STATE = {"x": "P", "energy": (), "step": (), "steps": (), "acc": (), "best": (), "since_best": (),
                 "minimum": (), "rng": (6,)}  # /runs/<id>/walkers/*: the row shape of each walker's state
_MINIMA = {  # name: (dtype, trailing shape or 'P', description)
    "energy": ("f8", (), "energy E(w) of the loss in /problem (nats)"),
    "coords": ("f8", "P", "flat parameter vector w of the minimum (layout: /problem attribute 'layout')"),
    "grad_rms": ("f8", (), "RMS gradient ||grad E||/sqrt(P) at coords (nats per parameter unit)"),
    "eigenvalues": ("f8", (N_EIGENVALUES,), "lowest Hessian eigenvalues at coords, ascending (NaN: not computed)"),
    "hits": ("i8", (), "number of quenches that ended in this minimum"),
    "first_found": ("i8", (3,), "(run, walker, step) of the quench that first found this minimum"),
    "version": ("i8", (), "coordinate version: 0 when stored, +1 each time coords were replaced by a refined copy"),
}
_TRANSITION_STATES = {
    "energy": ("f8", (), "energy E(w) at the saddle (nats)"),
    "coords": ("f8", "P", "flat parameter vector of the index-1 saddle"),
    "minima": ("i8", (2,), "ids (rows of /minima) of the two minima this saddle joins"),
    "eigenvalues": ("f8", (N_EIGENVALUES,), "lowest Hessian eigenvalues, ascending: the first (only) one negative"),
    "grad_rms": ("f8", (), "RMS gradient at coords"),
    "found": ("i8", (3,), "(run, a, b): the run, and the pair of minima whose search found it"),
}
_ATTEMPTS = {
    "minima": ("i8", (2,), "ids of the two minima a double-ended search tried to join"),
    "transition_states": ("i8", (), "how many verified transition states it found"),
    "run": ("i8", (), "the run that tried"),
}
_NETWORKS = {
    "coords": ("f8", "P", "flat parameter vector of a trained network (layout as /minima/coords)"),
    "objective": ("S1024", (), "JSON: the objective it was trained with"),
    "seed": ("i8", (), "seed of its training"),
    "run": ("i8", (), "the run that trained it"),
}
_SCORE_ROWS = {
    "table": ("i8", (), "what is scored: 0 a minimum, 1 a transition state, 2 a network (TABLES)"),
    "row": ("i8", (), "its row (id) in that table"),
    "kind": ("i8", (), "row of /scores/kinds: what the value is"),
    "version": ("i8", (), "coordinate version of the scored row when computed (stale once it is refined)"),
    "value": ("f8", (), "the value (units: see the kind)"),
    "run": ("i8", (), "the run that computed it"),
}
_KIND_DTYPE = np.dtype([("quantity", "S32"), ("eps", "f8"), ("eps_unit", "S32"), ("method", "S16"),
                        ("space", "S16"), ("split", "S8"), ("aggregation", "S16"), ("n_points", "i8"),
                        ("options", "S256")])
_GROUPS = {  # group: (datasets, description)
    "minima": (_MINIMA, "distinct minima, one row per minimum, in order of discovery; a row is its id forever"),
    "transition_states": (_TRANSITION_STATES, "index-1 saddles joining pairs of minima, one row each"),
    "attempts": (_ATTEMPTS, "double-ended searches tried, one row each (so a resumed connect skips them)"),
    "networks": (_NETWORKS, "networks trained with an objective (not minima of the landscape)"),
    "scores": (_SCORE_ROWS, "per-row quantities as a long table; join 'kind' with /scores/kinds"),
}


class DatabaseError(ValueError):
    """A database that cannot be used as asked (wrong file, other problem, corrupt)."""


class _Busy(DatabaseError):
    """The file is locked by another process for a moment (a reader opening it, a run recording
    its end); :func:`_open` retries before it says so."""


class DiskFullError(OSError):
    """The disk (or the file-size limit) has no room for what a command writes; what it wrote
    before is kept."""


class DatabaseWarning(UserWarning):
    """Something done to a database that its user should know of (a writer's file taken over)."""


@dataclass(frozen=True)
class ScoreKind:
    """What a score is, as plain data (a row of /scores/kinds). ``eps``: radius of the l-inf ball
    (NaN where none applies) in ``eps_unit``; ``aggregation`` over data points (e.g. 'mean_log':
    mean of per-point log-volumes); ``options``: JSON of anything else. ``n_points`` is recorded,
    not part of what the score is."""

    quantity: str
    eps: float = math.nan
    eps_unit: str = ""
    method: str = ""
    space: str = ""
    split: str = ""
    aggregation: str = ""
    n_points: int = 0
    options: str = "{}"

    def key(self) -> tuple:
        """What identifies the kind: every field but n_points (NaN eps compares equal)."""
        return tuple("nan" if k == "eps" and math.isnan(v) else v
                     for k, v in dataclasses.asdict(self).items() if k != "n_points")

    def label(self) -> str:
        """A readable name, e.g. ``sensitivity_logits_ibp_eps0.1_test``; for display, never parsed."""
        parts = [self.quantity, self.space, self.method, "" if math.isnan(self.eps) else f"eps{_eps_text(self.eps)}",
                 self.split, "" if self.aggregation in ("", "mean_log") else self.aggregation]
        parts += [f"{k}{v}" for k, v in sorted(json.loads(self.options).items())]
        return "_".join(str(p) for p in parts if p != "")

    def sort_key(self) -> tuple:
        return (self.quantity, self.method, self.space, self.split, self.aggregation,
                -math.inf if math.isnan(self.eps) else self.eps)


def _eps_text(eps: float) -> str:
    """eps in 6 significant digits, or exactly where those do not give it back."""
    e = f"{eps:g}"
    return e if float(e) == eps else repr(float(eps))


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
    version: np.ndarray

    def __len__(self) -> int:
        return len(self.energy)


@dataclass
class TransitionStates:
    """All stored transition states as arrays (M rows; see the module docstring)."""

    energy: np.ndarray
    coords: np.ndarray | None
    minima: np.ndarray
    eigenvalues: np.ndarray
    grad_rms: np.ndarray
    found: np.ndarray

    def __len__(self) -> int:
        return len(self.energy)


@dataclass
class Networks:
    """All stored trained networks (T rows): ``coords`` (T, P) or None when left out, ``objective``
    (T dicts: what each was trained with), ``seed`` and ``run`` (T,)."""

    coords: np.ndarray | None
    objective: list[dict]
    seed: np.ndarray
    run: np.ndarray

    def __len__(self) -> int:
        return len(self.seed)


class Database:
    """An open landscape database. ``Database(path)`` opens read-only; ``Database(path, problem=p,
    mode='a')`` creates the file for ``p`` or opens it for appending, refusing a file made for a
    different problem (an older schema is upgraded first). ``data_path`` points to the problem's
    data where it has moved (its content hash is still checked). ``force`` takes over a file that a
    process on another host is recorded as writing within its lease (see the module docstring): for
    a writer known to be dead. Use as a context manager."""

    def __init__(self, path: str | os.PathLike, problem: Problem | None = None, mode: str = "r",
                 data_path: str | None = None, force: bool = False):
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        self.path, self.data_path = os.fspath(path), data_path
        exists = os.path.exists(self.path)
        if not exists and (mode == "r" or problem is None):
            raise DatabaseError(f"{self.path}: no such database")
        folder = os.path.dirname(os.path.abspath(self.path))
        if not exists and not os.path.isdir(folder):
            raise DatabaseError(f"{self.path}: folder {folder} does not exist; create it or choose another path")
        if exists and not h5py.is_hdf5(self.path):
            raise DatabaseError(f"{self.path}: not an HDF5 file; give a new path or a landscape database")
        if exists and mode == "a":  # validate read-only first, so a refused file is left untouched
            with Database(self.path, problem, "r", data_path) as old:
                old._check_rows()
                if old.schema < SCHEMA_VERSION:
                    _upgrade(self.path, problem or old.problem)
        unclean = exists and _marked_open(self.path)  # before _open, which clears the mark of a killed writer's file
        self.f = _open(self.path, mode, force)
        self._ds: dict[str, dict[str, h5py.Dataset]] = {}  # datasets of the open file, by group
        self.writable = mode == "a"
        self._broken = ""  # why a write failed (out of space): nothing more is written, the file is left as it is
        self._heartbeat_at = -math.inf  # time.monotonic() of the last heartbeat written
        self._hb: h5py.Dataset | None = None  # /writer_heartbeat while this object writes a run
        self._run_ds: dict[int, tuple] = {}  # the run's counters and walker datasets, kept open while it writes
        self._unclean = unclean  # marked open for writing: a table's last rows may be torn (see _whole_rows)
        self._shared_lock: list[int] = []  # a descriptor holding a shared flock while HDF5's lock is not taken
        creating = False
        try:
            if exists and (len(self.f.keys()) > 0 or mode == "r"):
                self._check_format()
                self._check_contents()
                if problem is not None and not _same_problem(self.problem, problem):
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
                       created=_now(), upgrades="[]",
                       description="minima of a neural-network loss landscape; see /problem")
        _write_problem(f.create_group("problem"), problem, problem.dataset())
        _create_tables(f, problem.model.n_params)
        f.create_group("runs").attrs["description"] = "one group per run of a command, named by its number"
        f.flush()

    def _check_format(self) -> None:
        a = self.f.attrs
        if a.get("format") != FORMAT or "problem" not in self.f:
            raise DatabaseError(f"{self.path}: an HDF5 file, but not a landscape database")
        try:
            version = int(a.get("schema_version", -1))
        except (TypeError, ValueError):
            version = -1
        if version > SCHEMA_VERSION:
            raise DatabaseError(f"{self.path}: schema version {version} is newer than this landscape "
                                f"{__version__} reads (up to {SCHEMA_VERSION}); upgrade landscape")
        if version < 1:
            raise DatabaseError(f"{self.path}: schema version {a.get('schema_version')} is not one landscape wrote")

    def _check_contents(self) -> None:
        """Refuse, as damaged, a file whose metadata a command could not use: the problem
        description readable and agreeing with the attributes that repeat it, its preprocessing and
        split. What is read later is checked as it is read: a table
        (every column there, with its dtype and row shape, coordinates as wide as the network) as
        first used, a run's record by runs(); a command that writes checks all of it, and reads
        every row but the coordinates, before it writes (_check_rows). Reads metadata only, no
        rows. A run group without counters (left by an old bug) is allowed: runs() shows it
        without counters."""
        where = "/"
        try:
            where = "/problem"
            g = self.f["problem"]
            where = "/problem attribute 'problem'"
            try:
                problem = Problem.from_json(_text(g, "problem"))
            except (ValueError, TypeError, AttributeError, KeyError) as e:
                raise _Bad(f"{where} is not a readable problem description ({_first_line(e)})") from None
            schema = self.schema
            _check_problem_attrs(g, problem, schema)
            if schema >= 2:  # the tables are checked as first used (_table), by a writer all at once (_check_rows)
                where = "/scores/kinds"
                if "kinds" not in self.f["scores"]:
                    raise _Bad(f"{where} is missing")
                if self.f["scores/kinds"].dtype != _KIND_DTYPE or self.f["scores/kinds"].ndim != 1:
                    raise _Bad(f"{where} has dtype {self.f['scores/kinds'].dtype}, not the score-kind record")
            else:
                where = "/scores"
                self._v1_scores()
            where = "/runs"  # each run's record is checked as runs() reads it
            if "runs" not in self.f or not isinstance(self.f["runs"], h5py.Group):
                raise _Bad("/runs is missing")
            for rid in self.f["runs"]:
                if not rid.isdigit():
                    raise _Bad(f"/runs/{rid} is not a run record")
            where = "the root attributes"
            for name, kind in (("writer", dict), ("upgrades", list)):
                if name in self.f.attrs and not isinstance(json.loads(_text(self.f, name)), kind):
                    raise _Bad(f"root attribute {name!r} is not a JSON {kind.__name__}")
        except _Bad as e:
            raise _damaged(self.path, str(e)) from None
        except Exception as e:  # HDF5 (or a value in it) failed on the file's own structures
            raise _damaged(self.path, f"{where}: {_first_line(e)}") from None

    def _check_rows(self) -> None:
        """Read every dataset but the coordinates (which commands read themselves before writing)
        and the runs' walker states (--resume reads the last), so that damaged data (a failing
        checksum) is found before a command writes anything: HDF5 rewrites a whole chunk to add a
        row to it."""
        try:  # every object's header (HDF5 checks its checksum), those no command reads first too
            h5py.h5o.visit(self.f.id, lambda name, info: None, info=True)
        except (OSError, RuntimeError, KeyError) as e:
            raise _damaged(self.path, f"an object of the file: {_first_line(e)}") from None
        for group in _GROUPS:
            self._table(group)

        def visit(name: str, obj: h5py.HLObject) -> None:
            if isinstance(obj, h5py.Dataset) and not name.endswith("coords") and "/walkers/" not in name:
                self._read(obj)

        self.f.visititems(visit)
        self.runs()

    @property
    def schema(self) -> int:
        """The file's schema version (1 is read as it is and upgraded when opened for writing)."""
        return int(self.f.attrs["schema_version"])

    @property
    def problem(self) -> Problem:
        """The problem the minima belong to (its data at ``data_path`` where one was given)."""
        p = Problem.from_json(self.f["problem"].attrs["problem"])
        return p if self.data_path is None else dataclasses.replace(
            p, data=dataclasses.replace(p.data, path=os.fspath(self.data_path)))

    def preprocessing(self) -> tuple[np.ndarray, np.ndarray]:
        """(shift, scale), each (D,): a raw input x enters the network as (x - shift) / scale."""
        g = self.f["problem"]
        if "shift" in g:
            return self._read(g["shift"]), self._read(g["scale"])
        ds = self.problem.dataset()  # schema 1 did not store it
        return ds.shift, ds.scale

    def _table(self, group: str) -> dict[str, h5py.Dataset]:
        """The datasets of ``group``, looked up once per open file (a lookup costs more than a row
        write); empty for a table the file's schema lacks."""
        if group not in self._ds:
            names = _GROUPS[group][0]
            try:  # checked as first used (a writer checked every table before it wrote: _check_rows)
                _check_table(self.f, group, names, self.problem.model.n_params, self.schema)
                g = self.f.get(group)
                self._ds[group] = {} if g is None else {n: g[n] for n in names if n in g}
            except _Bad as e:
                raise _damaged(self.path, str(e)) from None
            except (OSError, RuntimeError, KeyError) as e:
                raise _damaged(self.path, f"/{group}: {_first_line(e)}") from None
        tables = self._ds[group]
        if self.f.swmr_mode and not self.writable:  # a reader of a file being written: see its new rows
            for ds in tables.values():
                ds.refresh()
        return tables

    def _rows(self, tables: dict[str, h5py.Dataset]) -> int:
        """Rows present in every dataset of a table (a writer killed inside an append can leave
        some datasets one row longer; that row does not count), and, in a file marked open for
        writing, written whole (see _whole_rows)."""
        n = min((ds.id.shape[0] for ds in tables.values()), default=0)
        return _whole_rows(tables, n) if self._unclean and n else n

    def _trim_torn(self) -> None:
        """Cut the torn last rows of every table (see _whole_rows) of a file taken over from a
        killed or failed writer, so that new rows follow the last whole one."""
        for group in _GROUPS:
            tables = self._table(group)
            n = self._rows(tables)
            for ds in tables.values():
                if ds.id.shape[0] > n:
                    ds.id.set_extent((n, *ds.id.shape[1:]))
        self._unclean = False

    def _append(self, group: str, row: dict) -> int:
        tables = self._table(group)
        n = self._rows(tables)
        with self._writing(grow=sum(ds.id.dtype.itemsize * int(np.prod(ds.id.shape[1:])) for ds in tables.values())):
            for name, value in row.items():  # a torn row left by a killed writer is overwritten
                _write_row(tables[name], n, value)
        return n

    @contextlib.contextmanager
    def _writing(self, grow: int = 0) -> Iterator[None]:
        """Around a write to the file. Refused (DiskFullError) after a write failed, and where the
        file grows by about ``grow`` bytes, while the disk or the file-size limit would leave less
        than DISK_RESERVE bytes (kept to end the run cleanly). A write that fails for want of space
        leaves the file as it is: nothing more is written to it (see :meth:`_break`)."""
        if self._broken:
            raise _abandoned(self._broken)
        if grow:
            room = _room(self.path)
            if room is not None and room < grow + DISK_RESERVE:
                raise DiskFullError(f"{self.path}: out of space ({room / 2**20:.1f} MiB left, landscape keeps "
                                    f"{DISK_RESERVE / 2**20:.0f} MiB to end a run cleanly); the run ended and what it "
                                    "wrote before is kept: free space and run it again (sample --resume continues)")
        try:
            yield
        except (OSError, RuntimeError) as e:
            if not _out_of_space(e):
                raise
            self._break(f"{self.path}: out of space ({_space_reason(e)}); the command ended at once, the file keeps "
                        "what was written before (the next command recovers it); free space and run it again")
            raise _abandoned(self._broken) from None

    def _break(self, message: str) -> None:
        """After a write that failed for want of space: no further write reaches the file (HDF5's
        descriptor becomes a read-only one, so neither a flush nor the close, nor HDF5's own at
        exit, writes a half of what is cached or extends the file with holes); the file stays as
        the failed write left it, which the next command recovers as a killed run's. Its HDF5
        objects are kept, never closed: closing them after a failed write crashed HDF5 (a segfault);
        the ``landscape`` command ends the process without closing them."""
        self._broken = message
        _ABANDONED.append((self.f, self._ds, self._run_ds, self._hb))
        try:
            fd = self.f.id.get_vfd_handle()
            ro = os.open(self.path, os.O_RDONLY)
            try:
                os.dup2(ro, fd)
            finally:
                os.close(ro)
        except (OSError, ValueError, TypeError):
            pass

    # -- minima --------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Stored minima."""
        return self._rows(self._table("minima"))

    def minima(self, coords: bool = True) -> Minima:
        """Every stored minimum; ``coords=False`` leaves out the coordinates, which are most of the
        file (N x P floats: 2 GB for 100,000 digits minima)."""
        tables = self._table("minima")
        n = self._rows(tables)
        out = {name: self._read(ds, slice(0, n)) if coords or name != "coords" else None
               for name, ds in tables.items()}
        out.setdefault("version", np.zeros(n, np.int64))  # schema 1: never refined in place
        return Minima(**out)

    def coords(self, rows: np.ndarray) -> np.ndarray:
        """The coordinates (len(rows), P) of the minima ``rows`` (ids in any order, repeats allowed)."""
        return self._rows_of("minima", "coords", rows)

    def _rows_of(self, group: str, name: str, rows: np.ndarray) -> np.ndarray:
        tables = self._table(group)
        rows, n = np.asarray(rows), self._rows(tables)
        if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
            raise ValueError(f"rows must be a 1-D array of ids, got {rows!r}")
        if rows.size and not (rows.min() >= 0 and rows.max() < n):
            raise ValueError(f"ids must be in [0, {n}), got {rows.min()}..{rows.max()}")
        unique, inverse = np.unique(rows.astype(np.int64), return_inverse=True)  # h5py reads ascending rows
        return self._read(tables[name], unique)[inverse]

    def add_minimum(self, energy: float, coords: np.ndarray, grad_rms: float, eigenvalues: np.ndarray,
                    first_found: tuple[int, int, int]) -> int:
        """Append a new minimum (hits = 1, version 0); returns its id."""
        return self._append("minima", dict(energy=energy, coords=coords, grad_rms=grad_rms,
                                           eigenvalues=_pad(eigenvalues), hits=1, first_found=first_found,
                                           version=0))

    def update_minimum(self, id_: int, energy: float, coords: np.ndarray, grad_rms: float) -> None:
        """Replace a minimum's point by a better-converged copy: its id, hits and provenance are
        kept, its coordinate version goes up by one (scores of the old coordinates become stale)."""
        g = self._table("minima")
        with self._writing():
            for name, value in dict(energy=energy, coords=coords, grad_rms=grad_rms).items():
                g[name][id_] = value
            g["version"][id_] = self._read(g["version"], id_) + 1

    def add_hits(self, ids: np.ndarray) -> None:
        """Count one more find of each id in ``ids`` (repeats allowed)."""
        if len(ids):
            u, c = np.unique(np.asarray(ids, dtype=np.int64), return_counts=True)
            h = self._table("minima")["hits"]
            with self._writing():
                for i, k in zip(u, c):
                    h[i] = self._read(h, i) + k

    # -- transition states ---------------------------------------------------------------------
    def add_transition_state(self, energy: float, coords: np.ndarray, minima: tuple[int, int],
                             eigenvalues: np.ndarray, grad_rms: float, found: tuple[int, int, int]) -> int:
        """Append an index-1 saddle joining the minima ids ``minima`` (``eigenvalues``: its lowest
        Hessian eigenvalues, the first negative); returns its id."""
        return self._append("transition_states", dict(energy=energy, coords=coords, minima=minima,
                                                      eigenvalues=_pad(eigenvalues), grad_rms=grad_rms, found=found))

    def transition_states(self, coords: bool = True) -> TransitionStates:
        """Every stored transition state (empty for a file that has none)."""
        tables = self._table("transition_states")
        if not tables:
            return TransitionStates(np.zeros(0), np.zeros((0, self.problem.model.n_params)) if coords else None,
                                    np.zeros((0, 2), np.int64), np.zeros((0, N_EIGENVALUES)), np.zeros(0),
                                    np.zeros((0, 3), np.int64))
        n = self._rows(tables)
        return TransitionStates(**{name: self._read(ds, slice(0, n)) if coords or name != "coords" else None
                                   for name, ds in tables.items()})

    def add_attempt(self, a: int, b: int, found: int, run: int) -> None:
        """Record a double-ended search between minima ``a`` and ``b`` that found ``found``
        verified transition states."""
        self._append("attempts", dict(minima=(a, b), transition_states=found, run=run))

    def attempts(self) -> np.ndarray:
        """(A, 3) int64: the pairs of minima tried (a, b) and how many transition states each found."""
        tables = self._table("attempts")
        n = self._rows(tables)
        if not n:
            return np.zeros((0, 3), np.int64)
        return np.column_stack([self._read(tables["minima"], slice(0, n)),
                                self._read(tables["transition_states"], slice(0, n))])

    # -- scores --------------------------------------------------------------------------------
    def score_kinds(self) -> list[ScoreKind]:
        """Every kind of score stored, in the order of /scores/kinds (the row is the kind's index)."""
        if self.schema == 1:
            return [k for k, _ in self._v1_scores()]
        return [_kind_of(r) for r in self._read(self.f["scores/kinds"])]

    def score_values(self, kind: int, table: str = "minima") -> tuple[np.ndarray, np.ndarray]:
        """(values, versions), each (rows of ``table``,), of score kind ``kind``: the value last
        computed for each row (NaN where none) and the coordinate version it was computed from
        (-1 where none). A value is current where its version equals the row's version."""
        n = len(self) if table == "minima" else self._rows(self._table(table))
        values, versions = np.full(n, np.nan), np.full(n, -1, np.int64)
        r = self._score_rows()
        sel = (r["kind"] == kind) & (r["table"] == TABLES.index(table)) & (r["row"] < n)
        rows, ver, val = r["row"][sel], r["version"][sel], r["value"][sel]
        order = np.lexsort((np.arange(len(rows)), ver))  # the latest version, then the latest written, wins
        values[rows[order]], versions[rows[order]] = val[order], ver[order]
        return values, versions

    def scores(self) -> dict[str, tuple[np.ndarray, ScoreKind]]:
        """Every score of the minima, by label (:meth:`ScoreKind.label`), sorted by kind (eps
        numerically): (values (N,), kind), values NaN where not computed or stale."""
        current = self.minima(coords=False).version
        out = {}
        kinds = self.score_kinds()
        for i in sorted(range(len(kinds)), key=lambda i: kinds[i].sort_key()):
            values, versions = self.score_values(i)
            values[versions != current] = np.nan
            out[kinds[i].label()] = (values, kinds[i])
        return out

    def write_scores(self, kind: ScoreKind, ids: np.ndarray, values: np.ndarray, run: int,
                     table: str = "minima") -> None:
        """Store ``values`` of score ``kind`` for the rows ``ids`` of ``table``, as computed now from
        their current coordinates by run ``run``."""
        ids = np.asarray(ids, dtype=np.int64)
        versions = self._table("minima")["version"] if table == "minima" else None
        ver = np.zeros(len(ids), np.int64) if versions is None else self._read(versions, slice(None))[ids]
        k = self._kind_index(kind)
        tables = self._table("scores")
        n = self._rows(tables)
        cols = dict(table=np.full(len(ids), TABLES.index(table)), row=ids, kind=np.full(len(ids), k), version=ver,
                    value=np.asarray(values, dtype=np.float64), run=np.full(len(ids), run))
        with self._writing(grow=8 * len(cols) * len(ids)):
            for name, value in cols.items():
                tables[name].resize(n + len(ids), axis=0)
                tables[name][n:] = value
        self.flush()

    def _kind_index(self, kind: ScoreKind) -> int:
        """The row of ``kind`` in /scores/kinds, appended if new."""
        for i, k in enumerate(self.score_kinds()):
            if k.key() == kind.key():
                return i
        ds = self.f["scores/kinds"]
        n = ds.shape[0]
        with self._writing(grow=_KIND_DTYPE.itemsize):
            ds.resize(n + 1, axis=0)
            ds[n] = _kind_row(kind)
        return n

    def _score_rows(self) -> dict[str, np.ndarray]:
        if self.schema == 1:
            return self._v1_score_rows()
        tables = self._table("scores")
        n = self._rows(tables)
        return {name: self._read(ds, slice(0, n)) for name, ds in tables.items()}

    def _v1_scores(self) -> list[tuple[ScoreKind, h5py.Dataset]]:
        """Schema 1 kept one dataset per score, its parameters in attributes."""
        unit = eps_unit(json.loads(self.f["problem"].attrs["dataset"]).get("scaling", ""))
        g = self.f.get("scores", {})
        return [(ScoreKind("sensitivity", float(ds.attrs["eps"]), unit, str(ds.attrs["method"]),
                           str(ds.attrs["space"]), str(ds.attrs["split"]), "mean_log", int(ds.attrs["n_points"])), ds)
                for _, ds in sorted(g.items())]

    def _v1_score_rows(self) -> dict[str, np.ndarray]:
        cols: dict[str, list] = {name: [] for name in _SCORE_ROWS}
        for k, (_, ds) in enumerate(self._v1_scores()):
            v = self._read(ds)
            rows = np.flatnonzero(np.isfinite(v))
            for name, value in dict(table=0, row=rows, kind=k, version=0, value=v[rows], run=-1).items():
                cols[name].append(np.broadcast_to(value, rows.shape))
        return {name: np.concatenate(c) if c else np.zeros(0, _SCORE_ROWS[name][0]) for name, c in cols.items()}

    # -- runs ----------------------------------------------------------------------------------
    def start_run(self, command: str, seed: int, parameters: dict, walker_shapes: dict[str, tuple],
                  kind: str = "sample", counters: tuple[str, ...] = COUNTERS) -> int:
        """Open a new run group of command ``kind`` and allocate its walker-state datasets
        (``walker_shapes``: name -> (shape, dtype, description)); returns the run id. Afterwards
        the file is in SWMR mode (rows can be written, nothing created), whose ordered writes leave a
        killed run's file readable and recoverable."""
        check_seed(seed)
        if self._unclean:
            self._trim_torn()
        grow = 2**14 + sum(int(np.prod(shape)) * np.dtype(dt).itemsize for shape, dt, _ in walker_shapes.values())
        with self._writing(grow=grow):  # a run group, its datasets and the writer record (metadata: ~10 kB)
            runs = self.f["runs"]
            rid = len(runs)
            g = runs.create_group(str(rid))
            g.attrs.update(kind=kind, command=command, seed=seed, parameters=json.dumps(parameters, sort_keys=True),
                           software=f"landscape {__version__}", started=_now(),
                           status="running (or killed, if no 'ended' attribute)",
                           description=f"one invocation of landscape {kind}")
            c = g.create_dataset("counters", data=np.zeros(len(counters)), fletcher32=True)
            c.attrs.update(names=json.dumps(counters),
                           description="running totals of this run, in order of 'names'")
            wg = g.create_group("walkers")
            wg.attrs["description"] = "state of each walker at the last flush, for --resume"
            for name, (shape, dt, desc) in walker_shapes.items():
                wg.create_dataset(name, shape, dtype=dt, fletcher32=True).attrs["description"] = desc
            if "writer_heartbeat" not in self.f:  # files of earlier versions lack it
                hb = self.f.create_dataset("writer_heartbeat", (1,), dtype="f8", chunks=(1,), fletcher32=True)
                hb.attrs["description"] = ("Unix time (s) of the last sign of life of the process in attribute "
                                           "'writer', refreshed as it flushes; another host's writer is taken over "
                                           f"only once it is older than {LEASE_SECONDS:.0f} s")
            self._hb = self.f["writer_heartbeat"]
            self._hb[0] = time.time()
            self._heartbeat_at = time.monotonic()
            self.f.attrs["writer"] = json.dumps(_process())
            self.f.flush()
            self.f.swmr_mode = True
        # the run's datasets stay open (one closed flushes its chunks where a failed write could not be seen)
        self._run_ds = {rid: (g["counters"], {name: wg[name] for name in walker_shapes})}
        return rid

    def save_run_state(self, rid: int, counters: dict, walkers: dict[str, np.ndarray]) -> None:
        c, w = self._run_ds.get(rid) or (self.f[f"runs/{rid}/counters"], self.f[f"runs/{rid}/walkers"])
        names = json.loads(c.attrs["names"])
        with self._writing():
            c[:] = [float(counters.get(k, 0)) for k in names]
            for name, value in walkers.items():
                w[name][...] = value

    def end_run(self, rid: int, status: str) -> None:
        """Close SWMR mode (reopening the file) and stamp the run's end (``status``: COMPLETED,
        TIME_UP, INTERRUPTED or FAILED). SIGINT and SIGTERM wait until it is done, so the end is
        recorded whole; a reader holding the file does not stop it (HDF5's lock, which a reader
        takes, is not needed by the writer the file names: a second writer is still refused, by the
        superblock's flags). After a write failed for want of space, nothing is written."""
        if self._broken:
            return
        with _signals_deferred():
            self._run_ds, self._hb = {}, None
            self.f.close()
            self.f, self._ds = _reopen(self.path, self._shared_lock), {}
            with self._writing():
                self.f[f"runs/{rid}"].attrs.update(ended=_now(), status=status)
                self.f.flush()

    def runs(self, kind: str | None = None) -> list[dict]:
        """Every run's record (those of command ``kind`` only, if given), oldest first. A run that
        has not ended has status 'running' while its process runs (see ``writer``) and 'killed'
        otherwise. Schema-1 runs are all of kind 'sample'."""
        out = []
        ids = sorted(self.f["runs"], key=int)
        for rid in ids:
            try:  # a damaged record is refused as such, naming it
                g = self.f[f"runs/{rid}"]
                _check_run(rid, g)
                a = dict(g.attrs)
            except _Bad as e:
                raise _damaged(self.path, str(e)) from None
            except (OSError, RuntimeError, KeyError, ValueError) as e:
                raise _damaged(self.path, f"/runs/{rid}: {_first_line(e)}") from None
            if kind is not None and a.get("kind", "sample") != kind:
                continue
            counters = (dict(zip(json.loads(g["counters"].attrs["names"]), self._read(g["counters"]).tolist()))
                        if "counters" in g else {})  # none: a run group an old bug left before its counters
            status = a.get("status")
            if a.get("ended") is None:
                live = rid == ids[-1] and _running(_writer_of(self.f))
                status = RUNNING if live else KILLED
            out.append({"id": int(rid), "kind": a.get("kind", "sample"), "command": a.get("command"),
                        "seed": int(a.get("seed", -1)), "parameters": json.loads(a.get("parameters", "{}")),
                        "software": a.get("software"), "started": a.get("started"),
                        "ended": a.get("ended"), "status": status, "counters": counters})
        return out

    def walker_state(self, rid: int) -> dict[str, np.ndarray]:
        if "walkers" not in self.f[f"runs/{rid}"]:
            raise DatabaseError(f"{self.path}: run {rid} has no walkers to resume (it ended before it began); "
                                "start a new run without --resume")
        try:
            state = {k: self._read(v) for k, v in self.f[f"runs/{rid}/walkers"].items()}
        except (OSError, RuntimeError, KeyError) as e:
            raise _damaged(self.path, f"/runs/{rid}/walkers: {_first_line(e)}") from None
        P, K = self.problem.model.n_params, len(state.get("energy", ()))
        for name, row in _WALKER_STATE.items():  # what a sampling run saves (all but 'minimum' needed to resume)
            a = state.get(name)
            if a is None and name == "minimum":
                continue
            if a is None or a.shape != (K, *((P,) if row == "P" else row)):
                raise _damaged(self.path, f"run {rid}'s walker state {name!r} is "
                                          f"{'missing' if a is None else f'of shape {a.shape}'}; start a new run "
                                          "without --resume")
        return state

    # -- trained networks ----------------------------------------------------------------------
    def add_network(self, coords: np.ndarray, objective: str, seed: int, run: int) -> int:
        """Append a trained network: ``coords`` (P,) in the problem's layout, ``objective`` the JSON of
        what it was trained with (at most 1024 bytes), its training ``seed`` and ``run``; returns its id.
        Its evaluation is stored as scores of table 'networks' (:meth:`write_scores`)."""
        text = objective.encode()
        if len(text) > 1024:
            raise ValueError(f"a network's objective JSON holds at most 1024 bytes, got {len(text)}")
        return self._append("networks", dict(coords=coords, objective=text, seed=seed, run=run))

    def networks(self, coords: bool = True) -> Networks:
        """Every stored trained network (empty for a file that has none)."""
        tables = self._table("networks")
        n = self._rows(tables)
        if not n:
            return Networks(np.zeros((0, self.problem.model.n_params)) if coords else None, [],
                            np.zeros(0, np.int64), np.zeros(0, np.int64))
        objective = [json.loads(v.decode()) for v in self._read(tables["objective"], slice(0, n))]
        return Networks(self._read(tables["coords"], slice(0, n)) if coords else None, objective,
                        self._read(tables["seed"], slice(0, n)), self._read(tables["run"], slice(0, n)))

    def network_scores(self) -> dict[str, tuple[np.ndarray, ScoreKind]]:
        """Every score of the trained networks, by label, sorted by kind: (values (T,), kind), NaN
        where not computed."""
        kinds = self.score_kinds()
        out = {}
        for i in sorted(range(len(kinds)), key=lambda i: kinds[i].sort_key()):
            values, versions = self.score_values(i, table="networks")
            if (versions >= 0).any():
                out[kinds[i].label()] = (values, kinds[i])
        return out

    def trained_network(self, id_: int):
        """Trained network ``id_`` as a ``torch.nn.Module`` on raw inputs, preprocessing included
        (as :meth:`network` for a minimum): logits (N, C), float64."""
        from .models import with_preprocessing

        shift, scale = self.preprocessing()
        w = self._rows_of("networks", "coords", np.array([id_]))[0]
        return with_preprocessing(self.problem.model.to_module(w), shift, scale)

    # -- views ---------------------------------------------------------------------------------
    def table(self):
        """The minima as a pandas DataFrame indexed by id: energy, grad_rms, eigenvalue_0..k-1,
        hits, first_run, first_walker, first_step, version, and one column per score kind named
        by its label (NaN where not computed or stale). Needs pandas (``pip install pandas``)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Database.table() needs pandas: pip install pandas") from None
        m = self.minima(coords=False)
        cols = {"energy": m.energy, "grad_rms": m.grad_rms}
        cols.update({f"eigenvalue_{j}": m.eigenvalues[:, j] for j in range(m.eigenvalues.shape[1])})
        cols.update(hits=m.hits, first_run=m.first_found[:, 0], first_walker=m.first_found[:, 1],
                    first_step=m.first_found[:, 2], version=m.version)
        cols.update({label: values for label, (values, _) in self.scores().items()})
        return pd.DataFrame(cols, index=pd.RangeIndex(len(m), name="id"))

    def network(self, id_: int):
        """Minimum ``id_`` as a ``torch.nn.Module`` on raw inputs (N, ...) in the source's units
        (trailing dimensions flatten to the D features), preprocessing included: its output is the
        logits (N, C) of the stored energy's network, float64."""
        from .models import with_preprocessing

        shift, scale = self.preprocessing()
        return with_preprocessing(self.problem.model.to_module(self.coords(np.array([id_]))[0]), shift, scale)

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
            except (OSError, RuntimeError, KeyError) as e:  # HDF5 failed on the data or its chunk index
                why = (f"the checksum of data in {ds.name} fails" if "filter returned failure" in str(e)
                       else f"{ds.name}: {_first_line(e)}")
        raise _damaged(self.path, why)

    def flush(self) -> None:
        """Write what is cached to the file (readers see it), with the writer's heartbeat."""
        with self._writing():
            if self._hb is not None and time.monotonic() - self._heartbeat_at >= HEARTBEAT_SECONDS:
                self._hb[0] = time.time()
                self._heartbeat_at = time.monotonic()
            self.f.flush()

    def close(self) -> None:
        if self.f.id.valid and not self._broken:  # a broken file's objects are kept open (see _break)
            self._run_ds, self._hb = {}, None
            self.f.close()
        for fd in self._shared_lock:
            os.close(fd)
        self._shared_lock.clear()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_seed(seed: object) -> None:
    """Refuse a seed that is not an integer in [0, 2**63) (the range of the int64 attribute that stores it)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < INT64_END:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")


def _write_row(ds: h5py.Dataset, n: int, value) -> None:
    """Row ``n`` of a table column, which grows to n + 1 rows: ``ds.resize`` and ``ds[n] = value``
    through h5py's low-level calls, a third of the high-level ones' cost (they are most of an
    append)."""
    shape = ds.id.shape[1:]
    ds.id.set_extent((n + 1, *shape))
    file_space = ds.id.get_space()
    file_space.select_hyperslab((n, *(0 for _ in shape)), (1, *shape))
    data = np.ascontiguousarray(np.asarray(value, dtype=ds.id.dtype).reshape((1, *shape)))
    ds.id.write(h5py.h5s.create_simple(data.shape), file_space, data)


def _create_dataset(g: h5py.Group, name: str, dtype: str, shape: tuple, desc: str) -> h5py.Dataset:
    """An empty, resizable, chunked, checksummed table column of rows of ``shape``."""
    size = np.dtype(dtype).itemsize * max(1, int(np.prod(shape)))
    ds = g.create_dataset(name, (0, *shape), maxshape=(None, *shape), dtype=dtype, fletcher32=True,
                          chunks=(max(1, min(256, 65536 // size)), *shape))
    ds.attrs["description"] = desc
    return ds


def _create_tables(f: h5py.File, P: int) -> None:
    """Every table of the schema, empty (those a schema-1 file has are left as they are)."""
    for group, (columns, desc) in _GROUPS.items():
        g = f.require_group(group)
        g.attrs["description"] = desc
        for name, (dt, shape, cdesc) in columns.items():
            if name not in g:
                _create_dataset(g, name, dt, (P,) if shape == "P" else shape, cdesc)
    if "kinds" not in f["scores"]:
        kinds = f["scores"].create_dataset("kinds", (0,), maxshape=(None,), dtype=_KIND_DTYPE, chunks=(64,),
                                           fletcher32=True)
        kinds.attrs["description"] = ("what each score is: quantity, eps (radius of the l-inf input ball, NaN if "
                                      "none) in eps_unit, method, output space, data split, aggregation over the "
                                      "points, point count, other options (JSON)")


def _write_problem(g: h5py.Group, problem: Problem, ds) -> None:
    """The problem's description and the preprocessing, split and labels of its data ``ds``."""
    d = problem.to_dict()
    g.attrs.update(
        problem=problem.to_json(),
        layout=json.dumps([{"name": b.name, "shape": list(b.shape), "offset": b.offset}
                           for b in problem.model.blocks()]),
        dataset=json.dumps(ds.describe()), n_params=problem.model.n_params, dtype=problem.dtype,
        loss=json.dumps(d.get("loss", [])),
        description="how to rebuild the network and the energy: landscape.Problem.from_json(attrs['problem'])")
    for name in ("lam", "energy"):  # schema 1's, superseded by 'loss'
        g.attrs.pop(name, None)
    for name, value, desc in (
            ("shift", ds.shift, "preprocessing: network input = (raw - shift) / scale, per feature"),
            ("scale", ds.scale, "preprocessing: network input = (raw - shift) / scale, per feature"),
            ("train_index", ds.train_index, "rows of the source data (after 'limit') in the training split"),
            ("test_index", ds.test_index, "rows of the source data (after 'limit') in the test split")):
        if name in g:
            del g[name]
        g.create_dataset(name, data=np.asarray(value), fletcher32=True, chunks=True if len(value) else None
                         ).attrs["description"] = desc


def _upgrade(path: str, problem: Problem) -> None:
    """Upgrade a schema-1 file to the current schema: on a copy, which replaces the file only
    once complete (a kill leaves the original as it was)."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.upgrade-{os.getpid()}")
    dataset = problem.dataset()
    with Database(path) as old:
        rows, kinds = old._v1_score_rows(), old.score_kinds()
        schema = old.schema
    try:
        shutil.copyfile(path, tmp)
        with _open(tmp, "a") as f:  # a killed run's copy is recovered as the file would be
            _write_problem(f["problem"], problem, dataset)
            for name in list(f.get("scores", {})):  # schema 1: one dataset per score
                del f["scores"][name]
            _create_tables(f, problem.model.n_params)
            n = f["minima/energy"].shape[0]
            f["minima/version"].resize(n, axis=0)
            f["minima/version"][:] = 0
            f["scores/kinds"].resize(len(kinds), axis=0)
            for i, k in enumerate(kinds):
                f["scores/kinds"][i] = _kind_row(k)
            for name, value in rows.items():
                f[f"scores/{name}"].resize(len(value), axis=0)
                f[f"scores/{name}"][:] = value
            for g in f["runs"].values():
                g.attrs.setdefault("kind", "sample")
            upgrades = json.loads(f.attrs.get("upgrades", "[]"))
            upgrades.append({"from": schema, "to": SCHEMA_VERSION, "software": f"landscape {__version__}",
                             "at": _now()})
            f.attrs.update(schema_version=SCHEMA_VERSION, upgrades=json.dumps(upgrades))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _kind_row(k: ScoreKind) -> np.ndarray:
    row = np.zeros((), _KIND_DTYPE)
    for name in _KIND_DTYPE.names:
        v = getattr(k, name)
        row[name] = v.encode() if isinstance(v, str) else v
    return row


def _kind_of(row: np.void) -> ScoreKind:
    return ScoreKind(**{name: row[name].decode() if isinstance(row[name], bytes) else row[name].item()
                        for name in _KIND_DTYPE.names})


def _same_problem(a: Problem, b: Problem) -> bool:
    """Whether two problems are the same loss landscape: equal specs, the data's path aside (the
    content hash is compared instead)."""
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d["data"] = {**d["data"], "path": None}
    return da == db


_LIBVER = ("v110", "v110")  # superblock v3: what SWMR needs and what _check_length reads
BUSY_WAIT = 3.0  # seconds _open keeps retrying a file another process holds locked for a moment


def _open(path: str, mode: str, force: bool = False) -> h5py.File:
    """:func:`_open_once`, retried for up to ``BUSY_WAIT`` seconds while another process holds the
    file's lock (a reader opening it while a command starts to write, a run recording its end
    while a reader opens it)."""
    deadline = time.monotonic() + BUSY_WAIT
    while True:
        try:
            return _open_once(path, mode, force)
        except _Busy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _open_once(path: str, mode: str, force: bool = False) -> h5py.File:
    """Open read-only (as an SWMR reader when a run is writing the file, or was killed while it
    did) or for appending; a file left marked 'open for writing' by a killed run is recovered
    when its writer no longer runs (another host's: once its lease ran out, or at once with
    ``force``)."""
    if os.path.exists(path):
        _check_length(path)
    try:
        if mode == "r":
            try:  # HDF5 reads a closed file's metadata, checksums and all, at once
                return h5py.File(path, "r", libver=_LIBVER)
            except OSError as e:  # (a file left short by a failed write passed _check_length: read it as SWMR)
                if "already open for write" not in str(e) and "truncated file" not in str(e):
                    raise
            # a run writes it (or was killed while writing): read as SWMR. An SWMR reader retries reads
            # whose checksum fails, for a writer caught mid-write; a killed writer's file gets one
            # attempt, so damage is reported at once
            if _plain_write_mark(path):  # opened for writing, not in SWMR mode (yet), by a process now gone
                if _locked(path):  # (a run recording its end: see _reopen; for milliseconds)
                    raise _Busy(f"{path}: a run is recording its end; try again in a moment")
                return h5py.File(_Unflagged(path), "r", libver=_LIBVER)
            return _swmr_reader(path, None if _running(_writer(path)) else 1)
        return h5py.File(path, "a", libver=_LIBVER)
    except OSError as e:
        if mode == "a" and ("already open for write" in str(e) or "truncated file" in str(e)) and not _locked(path):
            writer = _writer(path)
            if not (_plain_write_mark(path) and writer.get("host") == socket.gethostname()):
                _take_over(path, writer, force)  # (a plain mark of this host, unlocked: its process is gone)
            _extend_to_eof(path)
            _clear_write_flags(path)
            return h5py.File(path, "a", libver=_LIBVER)
        reason = str(e).splitlines()[0]
        if "checksum" in reason:
            raise _damaged(path, e) from None
        if "unable to lock file" in reason:  # HDF5's lock: held by any reader, or a writer before SWMR starts
            raise _Busy(f"{path}: another process has it open (reading, or creating it); close it there "
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
    if sb[:8] == _SIGNATURE and len(sb) < 48 and not _locked(path):  # no superblock is shorter
        raise DatabaseError(f"{path}: truncated ({len(sb)} bytes, shorter than an HDF5 superblock); restore it "
                            "from a backup or use a new path")
    if sb[:8] != _SIGNATURE or sb[8] not in (2, 3) or len(sb) < 12 + 3 * sb[9]:
        return
    o = sb[9]
    base, eof = int.from_bytes(sb[12:12 + o], "little"), int.from_bytes(sb[12 + 2 * o:12 + 3 * o], "little")
    size = os.path.getsize(path)
    if size < base + eof and not _locked(path) and not _short_by_a_failed_write(path, sb):
        raise DatabaseError(f"{path}: truncated ({size} of {base + eof} bytes; an incomplete copy or a full disk?); "
                            "restore it from a backup or use a new path")


_TAIL = 512  # the last rows of a table checked for being whole (the coordinates of the last 8)


def _whole_rows(tables: dict[str, h5py.Dataset], n: int) -> int:
    """The first ``n`` rows of a table less its last rows that were not written whole. A write that
    failed for want of space can leave a table's row count raised while some of its columns kept
    the fill value (0) there; each table has columns that no row written whole holds at 0 (a
    minimum's hits and gradient, a transition state's gradient, a score's run)."""
    group = next(iter(tables.values())).name.split("/")[1]
    test = _WHOLE.get(group)
    if test is None:
        return n
    a = max(0, n - _TAIL)
    cols = {name: ds[a:n] for name, ds in tables.items() if name in ("hits", "grad_rms", "run", "minima")}
    if "coords" in tables:  # of the last few rows only (a row is P floats)
        b = max(a, n - 8)
        cols["coords"] = np.ones((n - a, 1))
        cols["coords"][b - a:] = np.any(tables["coords"][b:n] != 0, axis=1, keepdims=True)
    try:
        whole = test(cols)
    except KeyError:  # a table of an older schema
        return n
    bad = np.flatnonzero(~whole)
    while len(bad) and bad[-1] == n - a - 1:  # cut from the end while torn
        n -= 1
        bad = bad[:-1]
    return n


_WHOLE = {
    "minima": lambda c: (c["hits"] >= 1) & (c["grad_rms"] > 0) & np.any(c["coords"] != 0, axis=1),
    "transition_states": lambda c: (c["grad_rms"] > 0) & np.any(c["coords"] != 0, axis=1),
    "attempts": lambda c: c["minima"][:, 0] != c["minima"][:, 1],
    "networks": lambda c: np.any(c["coords"] != 0, axis=1),
    "scores": lambda c: c["run"] != 0,
}


def _plain_write_mark(path: str) -> bool:
    """Whether the superblock marks the file open for writing but not for SWMR writing (HDF5's
    flag bits 0 and 2): a command opened it for writing and had not started SWMR writing, or ends
    its run. While that process lives it holds HDF5's lock, except in end_run's moment without."""
    try:
        with open(path, "rb") as fh:
            sb = fh.read(12)
    except OSError:
        return False
    return len(sb) == 12 and sb[:8] == _SIGNATURE and sb[8] in (2, 3) and sb[11] & 0x01 and not sb[11] & 0x04


class _Unflagged(io.RawIOBase):
    """The file at ``path`` read-only as a file object (for h5py's 'fileobj' driver) whose
    superblock reads with its file-consistency flags clear (checksum recomputed): a file a killed
    process left marked open for writing, read as it is without changing a byte of it (HDF5 opens
    such a file neither plainly nor as an SWMR reader)."""

    def __init__(self, path: str):
        super().__init__()
        self.fh = open(path, "rb")
        sb = bytearray(self.fh.read(48))
        if len(sb) == 48 and sb[9] == 8:
            sb[11] = 0
            sb[44:48] = _lookup3(bytes(sb[:44])).to_bytes(4, "little")
        self.sb, self.pos = bytes(sb), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = self.fh.seek(offset, whence)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b) -> int:
        self.fh.seek(self.pos)
        n = self.fh.readinto(b)
        if self.pos < len(self.sb) and n:
            k = min(n, len(self.sb) - self.pos)
            memoryview(b)[:k] = self.sb[self.pos:self.pos + k]
        self.pos += n
        return n

    def close(self) -> None:
        self.fh.close()
        super().close()


def _marked_open(path: str) -> bool:
    """Whether the superblock (v2/v3) marks the file open for writing: a run writes it, or was
    killed or failed while it did."""
    try:
        with open(path, "rb") as fh:
            sb = fh.read(12)
    except OSError:
        return False
    return len(sb) == 12 and sb[:8] == _SIGNATURE and sb[8] in (2, 3) and sb[11] != 0


def _short_by_a_failed_write(path: str, sb: bytes) -> bool:
    """Whether a file shorter than its superblock says was left so by a writer whose write failed
    for want of space (its run ended at once; see Database._break): the file is marked open for
    writing and that writer no longer runs. Such a file is read as it is (HDF5 reads its missing
    end as zeros: whatever lay there is refused by its checksums) and extended when taken over."""
    if sb[11] == 0:
        return False
    try:
        return not _running(_writer(path))
    except DatabaseError:
        return False


def _extend_to_eof(path: str) -> None:
    """Extend a file left short by a failed write (see _short_by_a_failed_write) to the end its
    superblock records, with a hole that reads as zeros, as HDF5's writer needs."""
    with open(path, "rb") as fh:
        sb = fh.read(48)
    if sb[:8] != _SIGNATURE or sb[8] not in (2, 3) or len(sb) < 12 + 3 * sb[9]:
        return
    o = sb[9]
    end = int.from_bytes(sb[12:12 + o], "little") + int.from_bytes(sb[12 + 2 * o:12 + 3 * o], "little")
    if os.path.getsize(path) < end:
        os.truncate(path, end)


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
    """The ``writer`` record of a file marked open for writing (see _writer_of), read with
    _PROBE_ATTEMPTS, three times 0.5 s apart: a live writer's half-written metadata is whole again
    within milliseconds, a damaged file's never."""
    for tries in range(3):
        time.sleep(0.5 if tries else 0.0)
        try:
            if _plain_write_mark(path):  # killed before SWMR writing began: no SWMR reader opens it
                with h5py.File(_Unflagged(path), "r", libver=_LIBVER) as f:
                    return _writer_of(f)
            with _swmr_reader(path, _PROBE_ATTEMPTS) as f:
                return _writer_of(f)
        except (OSError, RuntimeError, KeyError) as e:
            error = e
    raise _damaged(path, error)


def _damaged(path: str, reason: Exception | str) -> DatabaseError:
    """The one-line error for a damaged file (``reason``: what HDF5 raised, or what fails)."""
    return DatabaseError(f"{path}: damaged ({_first_line(reason)}); restore it from a backup")


class _Bad(Exception):
    """What is wrong with a file's structure (Database._check_contents reports it as damage)."""


def _first_line(e: Exception | str) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _text(obj: h5py.HLObject, name: str, attrs: dict | None = None) -> str:
    """The text attribute ``name`` of ``obj`` (from ``attrs``, its attributes read already, if given)."""
    attrs = obj.attrs if attrs is None else attrs
    if name not in attrs:
        raise _Bad(f"{obj.name} attribute {name!r} is missing")
    v = attrs[name]
    if isinstance(v, (bytes, np.bytes_)):
        v = bytes(v).decode()
    if not isinstance(v, str):
        raise _Bad(f"{obj.name} attribute {name!r} is {type(v).__name__}, not text")
    return v


def _check_problem_attrs(g: h5py.Group, problem: Problem, schema: int) -> None:
    """The attributes of /problem that repeat the problem description agree with it, and the
    preprocessing and split datasets have their shapes."""
    model, a = problem.model, dict(g.attrs)
    repeats = {"n_params": model.n_params, "dtype": problem.dtype,
               "layout": [{"name": b.name, "shape": list(b.shape), "offset": b.offset} for b in model.blocks()]}
    if "loss" in a:
        repeats["loss"] = problem.to_dict()["loss"]
    for name, expected in repeats.items():
        if name not in a:
            continue
        value = a[name]
        if isinstance(value, (str, bytes, np.bytes_)):
            value = json.loads(_text(g, name, a)) if name in ("layout", "loss") else _text(g, name, a)
        elif isinstance(value, np.generic):
            value = value.item()
        if value != expected:
            raise _Bad(f"/problem attribute {name!r} ({value}) disagrees with the problem description ({expected})")
    if "dataset" in a:
        d = json.loads(_text(g, "dataset", a))
        spec = problem.data.to_dict()
        if not isinstance(d, dict) or not isinstance(d.get("spec"), dict) or any(
                spec.get(k) != v for k, v in d["spec"].items()) or (
                problem.data_sha256 is not None and d.get("sha256", problem.data_sha256) != problem.data_sha256):
            raise _Bad("/problem attribute 'dataset' disagrees with the problem description")
    for name in ("shift", "scale", "train_index", "test_index"):
        if not g.id.links.exists(name.encode()):
            if schema >= 2:
                raise _Bad(f"/problem/{name} is missing")
            continue
        ds = h5py.h5o.open(g.id, name.encode())
        kind = "f" if name in ("shift", "scale") else "i"
        n = model.n_inputs
        if not isinstance(ds, h5py.h5d.DatasetID) or ds.dtype.kind != kind or len(ds.shape) != 1 or (
                kind == "f" and ds.shape[0] != n):
            what = f"{ds.dtype} {ds.shape}" if isinstance(ds, h5py.h5d.DatasetID) else "not a dataset"
            raise _Bad(f"/problem/{name} is {what}, not a 1-D {'float' if kind == 'f' else 'integer'} "
                       f"array{f' of {n}' if kind == 'f' else ''}")


def _describe(obj) -> str:
    return f"{obj.dtype} {obj.shape}" if isinstance(obj, h5py.Dataset) else type(obj).__name__


def _check_table(f: h5py.File, group: str, columns: dict, P: int, schema: int) -> None:
    """The datasets of table ``group``: all there (schema 1: its minima but 'version'), each with
    its dtype and row shape and resizable along its rows (HDF5's low-level calls: a fraction of
    the high-level ones' cost, and every command opens the file this way)."""
    if schema < 2 and group != "minima":
        return  # schema 1 had no other tables (and kept scores its own way)
    if group not in f or not isinstance(f[group], h5py.Group):
        raise _Bad(f"/{group} is missing")
    gid = f[group].id
    for name, (dt, shape, _) in columns.items():
        if not gid.links.exists(name.encode()):
            if schema < 2 and name == "version":
                continue
            raise _Bad(f"/{group}/{name} is missing")
        ds = h5py.h5o.open(gid, name.encode())
        row = (P,) if shape == "P" else shape
        if not isinstance(ds, h5py.h5d.DatasetID):
            raise _Bad(f"/{group}/{name} is not a dataset")
        if shape == "P" and len(ds.shape) == 2 and ds.shape[1] != P:
            raise _Bad(f"/{group}/{name} holds {ds.shape[1]} parameters per row, but the network in /problem has {P}")
        maxrows = ds.get_space().get_simple_extent_dims(True)[:1]
        if ds.dtype.kind != np.dtype(dt).kind or ds.shape[1:] != row or len(ds.shape) != 1 + len(row) or maxrows != (
                h5py.h5s.UNLIMITED,):
            raise _Bad(f"/{group}/{name} is {ds.dtype} {ds.shape}, not resizable rows of {np.dtype(dt)} {row}")


def _check_run(rid: str, g: h5py.Group) -> None:
    """A run record readable: a group named by number, its attributes of the right types, its
    counters (where it has any) as many as their names."""
    if not rid.isdigit() or not isinstance(g, h5py.Group):
        raise _Bad(f"/runs/{rid} is not a run record")
    a = g.attrs
    for name in ("kind", "command", "software", "started", "ended", "status"):
        if name in a:
            _text(g, name)
    if "seed" in a and not isinstance(a["seed"], (int, np.integer)):
        raise _Bad(f"/runs/{rid} attribute 'seed' is not an integer")
    if "parameters" in a and not isinstance(json.loads(_text(g, "parameters")), dict):
        raise _Bad(f"/runs/{rid} attribute 'parameters' is not a JSON object")
    if "counters" in g:
        c = g["counters"]
        names = json.loads(_text(c, "names")) if isinstance(c, h5py.Dataset) else None
        if (not isinstance(names, list) or not all(isinstance(n, str) for n in names) or c.dtype.kind != "f"
                or c.shape != (len(names),)):
            raise _Bad(f"/runs/{rid}/counters is {_describe(c)}, not one float per name in its 'names'")


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


def _take_over(path: str, writer: dict, force: bool) -> None:
    """Refuse (DatabaseError) to take the file ``path`` over from the recorded ``writer`` while it
    may run: a process of this host that runs, always; another host's within its lease, unless
    ``force``. Taking over from another host's writer is said in a warning."""
    here = writer.get("host") == socket.gethostname()
    if here and _running(writer):
        raise DatabaseError(f"{path}: being written by process {writer['pid']} (a landscape run); wait for it to end, "
                            "or stop it")
    if here or not writer:
        return
    age = time.time() - writer["heartbeat"] if writer.get("heartbeat") is not None else None
    who = f"process {writer.get('pid')} on host {writer.get('host')}"
    beat = "no heartbeat recorded" if age is None else f"last heartbeat {age:.0f} s ago"
    if _running(writer) and not force:
        raise DatabaseError(f"{path}: being written by {who} ({beat}; its lease lasts {LEASE_SECONDS:.0f} s); wait "
                            "for it to end, or pass --force if it is known to be dead")
    why = "as --force asks" if _running(writer) else f"its lease of {LEASE_SECONDS:.0f} s ran out"
    warnings.warn(f"{path}: taking it over from {who} ({beat}): {why}", DatabaseWarning, stacklevel=4)


def _lease_left(w: dict) -> float:
    """Seconds left of the lease of another host's writer ``w`` (-inf without a heartbeat: a writer
    of a version without leases)."""
    return -math.inf if w.get("heartbeat") is None else w["heartbeat"] + LEASE_SECONDS - time.time()


def _writer_of(f: h5py.File) -> dict:
    """The ``writer`` record of the open file ``f`` with its ``heartbeat`` (Unix time; None where the
    file has none), empty if it has no writer."""
    w = json.loads(f.attrs.get("writer", "{}"))
    hb = f.get("writer_heartbeat")
    if w:
        if hb is not None and f.swmr_mode and f.mode == "r":
            hb.refresh()
        w["heartbeat"] = float(hb[0]) if hb is not None else None
    return w


def _reopen(path: str, shared_lock: list[int]) -> h5py.File:
    """The file a run has just closed, reopened for writing by that run. A reader that opened it
    meanwhile holds HDF5's lock; the file is then opened without taking the lock (a second writer
    would have marked the superblock open for writing, which HDF5 refuses without the lock too),
    and a shared flock, which readers share, is held instead (its descriptor appended to
    ``shared_lock``), so that others see the file locked (see _open), not left by a dead writer."""
    import fcntl

    try:
        return h5py.File(path, "a", libver=_LIBVER)
    except OSError as e:
        if "unable to lock file" not in str(e):
            raise
    fd = os.open(path, os.O_RDONLY)
    shared_lock.append(fd)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return h5py.File(path, "a", libver=_LIBVER, locking=False)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM received in the block are handled when it ends (in the main thread; in
    others the block runs as it is)."""
    received: list[int] = []
    try:
        with contextlib.ExitStack() as held:
            for sig in (signal.SIGINT, signal.SIGTERM):
                handler = signal.getsignal(sig)
                if handler is not None and handler != signal.SIG_IGN:  # None: set outside Python, left alone
                    held.enter_context(signals.handling(sig, lambda signum, frame: received.append(signum)))
            yield
    finally:  # the previous handlers are back: each signal received is handled now
        for sig in received:
            signal.raise_signal(sig)


def _room(path: str) -> int | None:
    """Bytes the file at ``path`` can still grow by: the free space of its disk (for unprivileged
    users) and what the process's file-size limit leaves; None where neither can be told."""
    room = None
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
        room = st.f_bavail * st.f_frsize
    except OSError:
        pass
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        with contextlib.suppress(OSError):
            left = max(0, limit - os.path.getsize(path))
            room = left if room is None else min(room, left)
    return room


_ABANDONED: list = []  # the HDF5 objects of files whose write failed for want of space (never closed)
_SPACE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "the file-size limit is reached",
                 errno.EDQUOT: "the disk quota is exceeded"}


def _out_of_space(e: BaseException) -> bool:
    """Whether an error of h5py (which names the errno in its message) or of the OS is a write
    that failed for want of space."""
    return getattr(e, "errno", None) in _SPACE_ERRNOS or any(f"errno = {n}," in str(e) for n in _SPACE_ERRNOS)


def _abandoned(message: str) -> DiskFullError:
    """The error of a write that failed for want of space; its ``abandoned`` says the file is left
    open, never closed (see Database._break): the ``landscape`` command ends with os._exit."""
    error = DiskFullError(message)
    error.abandoned = True
    return error


def _space_reason(e: BaseException) -> str:
    for n, reason in _SPACE_ERRNOS.items():
        if getattr(e, "errno", None) == n or f"errno = {n}," in str(e):
            return reason
    return str(e).splitlines()[0]


def _running(w: dict) -> bool:
    """Whether the recorded writer ``w`` may still run. On this host: its pid runs and started
    when recorded (not before this boot). On another host, where its process cannot be seen:
    while its lease lasts, LEASE_SECONDS from its last heartbeat."""
    if not w:
        return False
    if w.get("host") != socket.gethostname():
        return _lease_left(w) > 0
    if w.get("boot") != _boot_id():
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
