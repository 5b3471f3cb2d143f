"""Transition states of a database's minima: :func:`connect` runs :func:`landscape.transitions.connect`
on the stored minima and stores what each round finds, as it goes.

Targets: the global minimum with each of the next ``lowest`` lowest minima (default 4), chosen
``pairs``, or (``every``) every stored minimum with the global minimum. Transition states already
stored count as connections, and pairs an earlier run tried are not tried again, so a second run
continues where the first stopped (a killed run keeps every round it completed). New minima that
descents reach are stored as the sampler stores minima (hits 1; first_found = (run, -1, -1)),
each transition state with the pair whose search found it and the run. The same seed, database
and attempt budget give the same result.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from . import transitions
from .database import COMPLETED, FAILED, INTERRUPTED, TIME_UP, Database, check_seed
from .identify import MinimaIndex

COUNTERS = ("attempts", "transition_states", "new_minima", "joined", "nfev", "cpu_seconds", "wall_seconds")


@dataclass
class ConnectSummary:
    """What a :func:`connect` call did: its run id, the target pairs and whether each is joined
    now, the transition states and minima it stored, the pairs it tried, why it stopped, the
    candidates it dropped by reason, and CPU seconds."""

    run: int
    pairs: list[tuple[int, int]]
    connected: np.ndarray
    transition_states: int
    new_minima: int
    attempts: int
    status: str
    rejected: dict[str, int]
    cpu_seconds: float


def connect(db: str | os.PathLike | Database, pairs: Sequence[tuple[int, int]] | None = None, lowest: int = 4,
            every: bool = False, seed: int = 0, max_attempts: int | None = None, minutes: float | None = None,
            settings: transitions.Settings = transitions.Settings(), progress: bool = True, command: str = "",
            data_path: str | None = None) -> ConnectSummary:
    """Join target pairs of stored minima by transition states (see the module docstring) and
    store them in ``db`` (a path, or a Database opened with mode 'a'). ``max_attempts``: pairs
    tried at most (default 10 per target); ``minutes``: wall-time budget (checked between
    rounds)."""
    _check_budget(seed, max_attempts, minutes, lowest)
    if isinstance(db, Database):
        if not db.writable:
            raise ValueError(f"{db.path} is open read-only: open it with Database(path, mode='a')")
        return _connect(db, pairs, lowest, every, seed, max_attempts, minutes, settings, progress, command)
    with Database(db, mode="a", data_path=data_path) as d:
        return _connect(d, pairs, lowest, every, seed, max_attempts, minutes, settings, progress, command)


def _check_budget(seed, max_attempts, minutes, lowest) -> None:
    check_seed(seed)
    if isinstance(lowest, bool) or not isinstance(lowest, (int, np.integer)) or lowest < 1:
        raise ValueError(f"lowest must be an integer >= 1, got {lowest!r}")
    if max_attempts is not None and not (isinstance(max_attempts, (int, np.integer)) and max_attempts >= 1):
        raise ValueError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
    if minutes is not None and not (isinstance(minutes, (int, float)) and 0 < minutes < math.inf):
        raise ValueError(f"minutes must be a finite number > 0, got {minutes!r}")


def targets(energies: np.ndarray, pairs: Sequence[tuple[int, int]] | None, lowest: int,
            every: bool) -> list[tuple[int, int]]:
    """The pairs to join: ``pairs`` as given (checked), every minimum with the global minimum
    (``every``), or the global minimum with each of the next ``lowest`` lowest."""
    n = len(energies)
    if n < 2:
        raise ValueError(f"the database holds {n} minimum: connect needs at least 2 (run landscape sample)")
    if pairs is not None:
        out = [(int(a), int(b)) for a, b in pairs]
        for a, b in out:
            if not (0 <= a < n and 0 <= b < n) or a == b:
                raise ValueError(f"pair {a},{b}: give two different minimum ids in [0, {n})")
        return out
    order = np.argsort(energies, kind="stable")
    rest = order[1:] if every else order[1:1 + lowest]
    return [(int(order[0]), int(i)) for i in rest]


def _connect(db: Database, pairs, lowest: int, every: bool, seed: int, max_attempts: int | None,
             minutes: float | None, settings: transitions.Settings, progress: bool, command: str) -> ConnectSummary:
    problem = db.problem
    energy = problem.energy()
    if energy.kinks is not None:
        raise ValueError(f"{db.path}: its loss has a sensitivity term, whose minima sit on kinks of |W| where the "
                         "gradient the band and the saddle search follow is not defined: connect takes a smooth "
                         "loss (no --sensitivity-weight)")
    m = db.minima()
    goals = targets(m.energy, pairs, lowest, every)
    groups = problem.model.unit_groups()
    index = MinimaIndex.of(m, groups, 2.0 * problem.lam, energy.energy_gradient)
    known = _known(db)
    tried = [tuple(int(v) for v in row[:2]) for row in db.attempts()]
    budget = 10 * len(goals) if max_attempts is None else int(max_attempts)
    params = dict(pairs=goals, seed=seed, max_attempts=budget, minutes=minutes, settings=vars(settings))
    rid = db.start_run(command, seed, params, {}, kind="connect", counters=COUNTERS)
    store = _Store(db, rid, len(goals), progress)
    status, result = FAILED, None
    try:
        result = transitions.connect(energy, groups, index, goals, known, settings, seed=seed, max_attempts=budget,
                                     max_seconds=math.inf if minutes is None else 60.0 * minutes,
                                     next_id=len(m), tried=tried, on_round=store.round)
        status = TIME_UP if result.status.startswith("time budget") else COMPLETED
    except KeyboardInterrupt:
        status = INTERRUPTED
        raise
    finally:
        store.close(energy.nfev)
        db.end_run(rid, status)
    return ConnectSummary(rid, goals, result.connected, store.counts["transition_states"],
                          store.counts["new_minima"], store.counts["attempts"], result.status, result.rejected,
                          store.counts["cpu_seconds"])


def _known(db: Database) -> list[transitions.Connection]:
    ts = db.transition_states()
    return [transitions.Connection(transitions.TransitionState.stored(ts.energy[i], ts.coords[i], ts.grad_rms[i],
                                                                      ts.eigenvalues[i][np.isfinite(ts.eigenvalues[i])]),
                                   int(ts.minima[i, 0]), int(ts.minima[i, 1]))
            for i in range(len(ts))]


class _Store:
    """Writes each round of a connect run to the database (minima first, then the transition
    states that refer to them, then the pairs tried) and flushes; shows progress."""

    def __init__(self, db: Database, rid: int, n_targets: int, progress: bool):
        from tqdm.auto import tqdm

        self.db, self.rid = db, rid
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        self.bar = tqdm(total=n_targets, disable=not progress, unit="pair", desc="connect")

    def round(self, r: transitions.Round) -> None:
        for m in r.minima:
            if self.db.add_minimum(m.energy, m.x, m.grad_rms, m.eigenvalues, (self.rid, -1, -1)) != m.id:
                raise RuntimeError("minimum ids out of step with the database: another writer?")
        for c in r.connections:
            self.db.add_transition_state(c.ts.energy, c.ts.x, (c.minimum_plus, c.minimum_minus), c.ts.eigenvalues,
                                         c.ts.grad_rms, (self.rid, *c.pair))
        for (a, b), n in r.tried.items():
            self.db.add_attempt(a, b, n, self.rid)
        c = self.counts
        c["attempts"] += len(r.tried)
        c["transition_states"] += len(r.connections)
        c["new_minima"] += len(r.minima)
        self.bar.update(r.joined - c["joined"])
        c["joined"] = r.joined
        self._save()
        self.bar.set_postfix(ts=c["transition_states"], minima=c["new_minima"], refresh=False)

    def _save(self) -> None:
        self.counts.update(cpu_seconds=time.process_time() - self.c0, wall_seconds=time.perf_counter() - self.t0)
        self.db.save_run_state(self.rid, self.counts, {})
        self.db.flush()

    def close(self, nfev: int) -> None:
        self.counts["nfev"] = nfev
        self._save()
        self.bar.close()
