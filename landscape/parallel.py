"""Basin-hopping in several processes that feed one database.

The walkers are split into ``processes`` contiguous parts. Each part runs the sampler's loop in
a forked worker process, with its own identification index that starts from the minima stored
before the run. A worker reports what it finds: new minima (refined and checked as in one
process), better-converged copies, and repeat finds, each tagged with its batch number (L-BFGS
iterations that finished quenches). This process is the only writer. A worker's index already
holds the minima stored before the run and its own finds, so the writer matches a report only
against the minima other workers found first in this run: a minimum two workers find is stored
once, with the first report's provenance. It writes minima, hits and walker state through the
run's store.

Reports are merged in the order (batch, worker), up to the last batch every running worker has
finished, so the same seed, step budget, threads and processes give the same minima. Each worker
walks as it would alone: its Metropolis test, its visit counts and the minima it draws steps
from (start 'uniform') are those stored before the run and its own finds, not the other
workers'. What this buys is wall time: on two cores, two processes run twice the quenches of one
(Iris discovery, 20 s: 41,100 against 21,000), where one process on two threads runs 1.1-1.2x.
Per CPU-second it buys nothing: with steps from the walkers' own minima and visit bias 4, two
processes for 10 s found every minimum of a pele run in 30 of 48 pairings, one process for 20 s
in 39 (16 seeds x 3 pele runs; two processes for 20 s: 47 of 48).

In the workers torch runs on one thread (GNU OpenMP hangs in a forked child once the parent has
used it); the compiled kernel, which handles forks, runs on ``threads``. Ctrl-C: the workers
ignore SIGINT; this process tells them to stop, and they finish refinements in flight as at a
time limit. A worker that fails stops the others; what was reported is stored, with the counters
of the failed worker's last report (which count only finds reported by then), and the error is
raised here. Workers whose writer dies exit at their next report.
"""
from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from multiprocessing import connection
from typing import Callable

import numpy as np
import torch

from .database import COMPLETED, COUNTERS, INTERRUPTED, TIME_UP, Minima
from .identify import MinimaIndex, Point, align, stored_point

AVAILABLE = "fork" in mp.get_all_start_methods()  # workers are forked (Linux)
SEND_EVERY = 0.05  # seconds between a worker's reports
STATE_EVERY = 1.0  # seconds between the walker states it sends along


class _Outbox:
    """A worker's stand-in for the run's store: the same methods, whose calls are collected and
    sent to the writer in packets. Ids of new minima continue the ids of the minima known at the
    start (``n_known``); walkers are numbered from ``first``."""

    def __init__(self, conn: connection.Connection, first: int, n_known: int):
        self.conn, self.first, self.next_id = conn, first, n_known
        self.events: list[tuple] = []
        self.batches = self.finished = 0
        self.last_send = self.last_state = time.perf_counter()

    def new_minimum(self, E: float, x: np.ndarray, grad: np.ndarray, grad_rms: float, eig: np.ndarray, walker: int,
                    step: int) -> int:
        i, self.next_id = self.next_id, self.next_id + 1
        self.events.append((self.batches, "new", i, E, x.copy(), grad.copy(), grad_rms, eig, self.first + walker, step))
        return i

    def better_copy(self, id_: int, E: float, x: np.ndarray, grad_rms: float) -> None:
        self.events.append((self.batches, "better_copy", id_, E, x.copy(), grad_rms))

    def hit(self, id_: int) -> None:
        self.events.append((self.batches, "hit", id_))

    def batch(self, finished: int, n_minima: int, counters: dict, walkers: Callable[[], dict]) -> None:
        self.batches += 1
        self.finished += finished
        now = time.perf_counter()
        if now - self.last_send > SEND_EVERY:
            self._send(counters, walkers() if now - self.last_state > STATE_EVERY else None)

    def save(self, counters: dict, walkers: dict[str, np.ndarray]) -> None:
        self._send(counters, walkers)

    def _send(self, counters: dict, walkers: dict | None) -> None:
        self.conn.send(dict(through=self.batches - 1, events=self.events, finished=self.finished,
                            counters=counters, walkers=walkers))
        self.events, self.finished = [], 0
        self.last_send = time.perf_counter()
        if walkers is not None:
            self.last_state = self.last_send


def _work(conn: connection.Connection, inherited: list[connection.Connection], stop, make: Callable, part: dict,
          first: int, n_known: int, deadline: float, budget: int) -> None:
    """A worker process: run the walkers ``part`` and report to ``conn``; last a packet with
    ``status`` or ``error``. It closes the writer's ends of the pipes (``inherited``), so that
    when the writer dies its sends fail at once; it also stops when it finds itself orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the writer's handler (the command's) is not the worker's
    torch.set_num_threads(1)
    for c in inherited:
        c.close()
    writer = os.getppid()
    try:
        sampler = make(part, _Outbox(conn, first, n_known))
        status = sampler.run(deadline, budget, lambda: stop.is_set() or os.getppid() != writer)
        conn.send(dict(status=status))
    except BrokenPipeError:  # the writer is gone: nobody to report to
        pass
    except BaseException:  # reported to the writer, which raises it
        with contextlib.suppress(BrokenPipeError):
            conn.send(dict(error=traceback.format_exc()))
    finally:
        conn.close()


class _Worker:
    def __init__(self, process, conn: connection.Connection, part: dict[str, np.ndarray]):
        self.process, self.conn = process, conn
        self.state = part  # latest walker state; its 'minimum' holds the worker's own ids
        self.queue: list[tuple] = []  # reported events not yet merged
        self.through = -1  # last batch whose events have all arrived
        self.counters: dict = {}
        self.status: str | None = None
        self.error: str | None = None
        self.ids: dict[int, int] = {}  # the worker's ids of new minima -> database rows

    @property
    def running(self) -> bool:
        return self.status is None and self.error is None

    def receive(self) -> int:
        """Take one packet; returns the steps it reports finished."""
        try:
            p = self.conn.recv()
        except EOFError:
            self.process.join(timeout=5.0)  # it closed its end: reap it for the exit code
            self.error = f"worker process exited without reporting (exit code {self.process.exitcode})"
            return 0
        if "error" in p:
            self.error = p["error"]
        elif "status" in p:
            self.status, self.through = p["status"], math.inf
        else:
            self.queue.extend(p["events"])
            self.through, self.counters = p["through"], p["counters"]
            if p["walkers"] is not None:
                self.state = p["walkers"]
            return p["finished"]
        return 0


class _Merge:
    """Identifies the workers' reports and writes them to the store. A worker's index holds the
    minima stored before the run and its own finds, so a report it calls new is matched here only
    against the minima other workers found first in this run (one index per worker)."""

    def __init__(self, store, stored: Minima, new_index: Callable[[], MinimaIndex], processes: int):
        self.store, self.n_known, self.new = store, len(stored), 0
        self.points = {i: stored_point(stored, i) for i in range(len(stored))}  # row -> best copy
        self.found = [new_index() for _ in range(processes)]  # per worker: rows it reported first
        self.owner: dict[int, int] = {}  # row -> index in found

    def row(self, w: _Worker, id_: int) -> int:
        return id_ if id_ < self.n_known else w.ids[id_]

    def events(self, workers: list[_Worker]) -> None:
        """Merge every event up to the last batch all running workers have finished."""
        limit = min((w.through for w in workers if w.error is None), default=math.inf)
        todo = []
        for n, w in enumerate(workers):
            k = 0
            while k < len(w.queue) and w.queue[k][0] <= limit:
                k += 1
            todo += [(e[0], n, j, e) for j, e in enumerate(w.queue[:k])]
            del w.queue[:k]
        for _, n, _, e in sorted(todo, key=lambda t: t[:3]):
            getattr(self, "_" + e[1])(n, workers[n], *e[2:])

    def _new(self, n: int, w: _Worker, id_: int, E: float, x: np.ndarray, grad: np.ndarray, grad_rms: float,
             eig: np.ndarray, walker: int, step: int) -> None:
        # with its gradient, as in the worker: on soft landscapes the Newton test is what tells
        # neighbouring minima apart (without it, one digits run stored 132 of 4,559 minima)
        p = Point(E, x, grad_rms * math.sqrt(x.size), float(eig[0]) if eig.size else math.nan, grad)
        for v, index in enumerate(self.found):
            m = index.match(p, ambiguity=False) if v != n and len(index) else None
            if m is not None and m.same is not None:  # another worker's find
                w.ids[id_] = m.same
                self.store.hit(m.same)
                self._better(m.same, E, m.aligned, grad_rms)
                return
        w.ids[id_] = row = self.store.new_minimum(E, x, grad, grad_rms, eig, walker, step)
        self.points[row], self.owner[row] = p, n
        self.found[n].add(row, p)
        self.new += 1

    def _better(self, row: int, E: float, x: np.ndarray, grad_rms: float) -> None:
        q = self.points[row]
        if grad_rms * math.sqrt(x.size) < q.gnorm:
            x = align(q.x, x, self.found[0].groups)
            self.store.better_copy(row, E, x, grad_rms)
            self.points[row] = Point(E, x, grad_rms * math.sqrt(x.size), q.curvature)
            if row in self.owner:
                self.found[self.owner[row]].add(row, self.points[row])

    def _hit(self, n: int, w: _Worker, id_: int) -> None:
        self.store.hit(self.row(w, id_))

    def _better_copy(self, n: int, w: _Worker, id_: int, E: float, x: np.ndarray, grad_rms: float) -> None:
        self._better(self.row(w, id_), E, x, grad_rms)

    def walkers(self, workers: list[_Worker]) -> dict[str, np.ndarray]:
        """The walker state of all workers, with their minima as database rows (-1: not merged yet)."""
        state = {name: np.concatenate([w.state[name] for w in workers]) for name in workers[0].state}
        state["minimum"] = np.array([self.row(w, i) if i < self.n_known or i in w.ids else -1
                                     for w in workers for i in w.state["minimum"].tolist()], dtype=np.int64)
        return state


def run(store, stored: Minima, new_index: Callable[[], MinimaIndex], walkers: dict[str, np.ndarray], processes: int,
        make: Callable, deadline: float, budget: int) -> tuple[str, dict]:
    """Run the ``walkers`` (state arrays, K rows) split over ``processes`` workers; ``make(part,
    outbox)`` builds a worker's sampler, ``new_index()`` an empty identification index;
    ``stored``: the minima stored before the run. Returns the run's status and its counters
    (summed over the workers; CPU seconds include this process's)."""
    ctx = mp.get_context("fork")
    t0, c0 = time.perf_counter(), time.process_time()
    cuts = np.linspace(0, len(walkers["energy"]), processes + 1).round().astype(int)
    stop = ctx.Event()
    workers = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        recv, send = ctx.Pipe(duplex=False)
        part = {name: v[a:b] for name, v in walkers.items()}
        inherited = [w.conn for w in workers] + [recv]
        p = ctx.Process(target=_work, args=(send, inherited, stop, make, part, int(a), len(stored), deadline, budget),
                        name=f"landscape-walkers-{a}-{b - 1}", daemon=True)
        p.start()
        send.close()
        workers.append(_Worker(p, recv, part))
    merge = _Merge(store, stored, new_index, processes)
    interrupted = threading.Event()
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set()) if on_main else None

    def totals() -> dict:
        c = dict.fromkeys(COUNTERS, 0)
        for w in workers:
            for k, v in w.counters.items():
                c[k] = c.get(k, 0) + v
        c.update(new_minima=merge.new, wall_seconds=time.perf_counter() - t0,
                 cpu_seconds=c.get("cpu_seconds", 0.0) + time.process_time() - c0)
        return c

    try:
        while any(w.running for w in workers):
            running = {w.conn: w for w in workers if w.running}
            finished = sum(running[c].receive() for c in connection.wait(list(running), timeout=0.5))
            if interrupted.is_set() or any(w.error for w in workers):
                stop.set()
            merge.events(workers)
            store.batch(finished, len(merge.points), totals(), lambda: merge.walkers(workers))
    finally:
        stop.set()
        if on_main:
            signal.signal(signal.SIGINT, previous)
        for w in workers:
            w.process.join(timeout=10.0)
            if w.process.is_alive():
                w.process.terminate()
        try:
            merge.events(workers)
        finally:  # out of space storing the last reports: the walkers are still saved, in the reserve
            store.save(totals(), merge.walkers(workers))
    failed = [w for w in workers if w.error]
    if failed:
        w = failed[0]
        lines = w.error.strip().splitlines()
        raise RuntimeError("\n".join([f"{w.process.name} failed: {lines[-1]}", *lines[:-1]]))
    if interrupted.is_set():
        return INTERRUPTED, totals()
    statuses = {w.status for w in workers}
    return (TIME_UP if TIME_UP in statuses else COMPLETED), totals()
