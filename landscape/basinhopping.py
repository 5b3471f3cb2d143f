"""Basin-hopping with K walkers advanced together, streaming new minima into the database.

Each walker repeats: displace its current minimum by a uniform random step in
[-step, step] per coordinate, minimise locally (one batched :class:`landscape.minimize.LBFGS`
shared by all walkers; a walker whose quench ends takes its next step at once, so no walker
waits for another), and accept the new minimum by the Metropolis test at temperature T.
Every ``adapt_every`` steps a walker scales its step toward the target acceptance ratio,
within [step_min, step_max]; a walker that has not lowered its own best energy for
``reseed_after`` steps restarts from fresh random weights.

With ``visit_bias`` = a > 0 the acceptance exp(-dE/T) is multiplied by (h_old / h_new)^a, where
h counts how often each minimum has been found: walkers leave minima found often for ones
found rarely, so every known minimum's neighbourhood gets explored, not mainly the lowest
ones'. This is for discovering many distinct minima; the walkers then no longer sample the
Boltzmann distribution over minima. The default, 0, is plain basin-hopping.

With ``start = 'uniform'`` a step starts not from the walker's own minimum but from one drawn
uniformly at random from the minima the process knows (those stored before the run and its own
finds), and every converged quench is accepted: there is no Metropolis chain, so temperature
and visit_bias do not apply and the step stays fixed. Every known minimum's neighbourhood is
then explored equally often, the low ones' no more than the rest. Measured on Iris (discovery
setting, runs/iris_discovery.toml, one process): 155 and 160 distinct minima in 60 s (seeds 1, 2)
against 148 and 142 with visit_bias 4 from the walkers' own minima.

Every converged quench is checked against the stored minima (:mod:`landscape.identify`);
new points are refined to ``refine_tol`` first. A new point is stored only if no Hessian
eigenvalue is below ``-eig_tol`` (:mod:`landscape.hessian`): a saddle is pushed off along its
negative-curvature direction and minimised again, never stored.

Each walker draws from its own random stream (spawned from ``seed``), so the same seed, step
budget, thread count and process count give the same minima (with the compiled kernel, any
thread count gives the same; ``processes`` > 1 splits the walkers into independent groups,
:mod:`landscape.parallel`, so it changes the walk). On two cores, two processes of one thread
each run 1.65x the quenches of one process of two threads (Iris, 4,510 against 2,730 a second).
Defaults are :class:`Settings`.
"""
from __future__ import annotations

import math
import numbers
import os
import sys
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from . import allocator, hessian, parallel
from .database import COMPLETED, FAILED, INTERRUPTED, TIME_UP, Database, Minima
from .energy import Energy
from .identify import MinimaIndex, Point
from .minimize import LBFGS
from .problem import Problem

HESSIAN_MODES = ("auto", *hessian.MODES, "none")
START_MODES = ("walker", "uniform")
FULL_HESSIAN_MAX_P = 1000


@dataclass(frozen=True)
class Settings:
    """Sampler settings (defaults in brackets are the field defaults).

    walkers: K walkers advanced together. temperature: Metropolis T (nats). step: initial
    maximum displacement per coordinate. adaptive: adapt the step toward target_acceptance every
    adapt_every steps by adapt_factor, within [step_min, step_max]. reseed_after: steps without a
    new walker-best before a walker restarts from N(0, init_scale^2) weights. tol: RMS-gradient
    convergence of quenches; maxiter: their iteration cap; refine_tol: tolerance to which
    ambiguous comparisons are refined. hessian: 'full', 'lanczos', 'none' or 'auto' (full up to
    1000 parameters). maxstep, memory: of the L-BFGS quench (memory 60 against 20, measured in
    the sampler: 75 against 88 evaluations per digits quench, 91 against 141 on Iris; its pairs
    are 8-bit, see :mod:`landscape.minimize`). visit_bias: exponent a of the visit-count factor
    (h_old / h_new)^a on the Metropolis acceptance (0: none; see the module docstring). start:
    where a step starts, 'walker' (the walker's current minimum: basin-hopping) or 'uniform' (a
    known minimum drawn uniformly, every converged quench accepted; needs adaptive = false; with
    a fixed step of 3 the measured best for discovery on Iris, ahead of visit_bias 4; see the
    module docstring).
    """

    walkers: int = 32
    temperature: float = 0.01
    step: float = 1.0
    adaptive: bool = True
    target_acceptance: float = 0.5
    adapt_every: int = 10
    adapt_factor: float = 0.9
    step_min: float = 1e-3
    step_max: float = 10.0
    reseed_after: int = 100
    init_scale: float = 1.0
    tol: float = 1e-6
    maxiter: int = 10000
    refine_tol: float = 1e-10
    hessian: str = "auto"
    maxstep: float = 1.0
    memory: int = 60
    visit_bias: float = 0.0
    start: str = "walker"

    def __post_init__(self) -> None:
        numeric = {int: numbers.Integral, float: numbers.Real}  # NumPy numbers too
        for f in fields(self):
            v, want = getattr(self, f.name), type(f.default)
            ok = isinstance(v, numeric.get(want, want)) and not (want is not bool and isinstance(v, bool))
            if not ok:
                raise ValueError(f"setting {f.name} must be {want.__name__}, got {type(v).__name__} {v!r}")
            if want is float and not math.isfinite(v):
                raise ValueError(f"setting {f.name} must be a finite number, got {v!r}")
            object.__setattr__(self, f.name, want(v))  # plain Python values: the settings are stored as JSON
        for name in ("walkers", "adapt_every", "reseed_after", "maxiter", "memory"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("temperature", "step", "tol", "refine_tol", "maxstep", "init_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.adapt_factor <= 1:
            raise ValueError(f"adapt_factor must be in (0, 1], got {self.adapt_factor}")
        if not 0 < self.target_acceptance < 1:
            raise ValueError(f"target_acceptance must be in (0, 1), got {self.target_acceptance}")
        if not self.visit_bias >= 0:
            raise ValueError(f"visit_bias must be >= 0, got {self.visit_bias}")
        if not 0 < self.step_min <= self.step_max:
            raise ValueError(f"need 0 < step_min <= step_max, got {self.step_min}, {self.step_max}")
        if self.start not in START_MODES:
            raise ValueError(f"unknown start {self.start!r}: choose one of {', '.join(START_MODES)}")
        if self.start == "uniform" and self.adaptive:
            raise ValueError("start 'uniform' accepts every converged quench, so there is no acceptance ratio to "
                             "adapt the step to: set adaptive = false (CLI: --fixed-step)")
        if self.hessian not in HESSIAN_MODES:
            raise ValueError(f"unknown hessian mode {self.hessian!r}: choose one of {', '.join(HESSIAN_MODES)}")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass
class SampleResult:
    """What a run did: its id in the database, its counters, and the database's totals."""

    run: int
    counters: dict
    n_minima: int
    lowest_energy: float
    status: str


_WALKER_FIELDS = {
    "x": "current (last accepted) minimum of each walker, flat parameters",
    "energy": "its energy (inf: the walker restarts from x)",
    "step": "current step size: max displacement per coordinate",
    "steps": "basin-hopping steps taken in this run",
    "acc": "acceptances since the last step-size adjustment",
    "best": "lowest energy the walker reached since its last reseed",
    "since_best": "steps since it last improved on best",
    "minimum": "database row of the current minimum (-1: none yet)",
    "rng": "PCG64 state: state hi, lo, inc hi, lo, has_uint32, uinteger",
}


class _Walkers:
    """State of K walkers as arrays, plus one random stream each."""

    def __init__(self, K: int, P: int, seed: int, settings: Settings):
        self.rngs = [np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(seed).spawn(K)]
        self.x = np.zeros((K, P))
        self.E = np.full(K, np.inf)
        self.step = np.full(K, settings.step)
        self.steps = np.zeros(K, np.int64)
        self.acc = np.zeros(K, np.int64)  # acceptances since the last step adjustment
        self.best = np.full(K, np.inf)
        self.since_best = np.zeros(K, np.int64)
        self.minimum = np.full(K, -1, np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        rng = np.array([_pack_rng(r) for r in self.rngs], dtype=np.uint64)
        return dict(x=self.x, energy=self.E, step=self.step, steps=self.steps, acc=self.acc, best=self.best,
                    since_best=self.since_best, minimum=self.minimum, rng=rng)

    def restore(self, a: dict[str, np.ndarray]) -> None:
        for name in ("x", "step", "steps", "acc", "best", "since_best"):
            getattr(self, name)[...] = a[name]
        self.E[...] = a["energy"]
        self.minimum[...] = a.get("minimum", -1)  # files written before visit_bias existed lack it
        for r, packed in zip(self.rngs, a["rng"]):
            _unpack_rng(r, packed)


RELU_REFUSAL = ("ReLU minima sit on kinks where the gradient test cannot pass; use --activation softplus "
                "(--sharpness B, default 10) for a smooth ReLU-like network")


def sample(problem: Problem, path: str, settings: Settings = Settings(), steps: int | None = None,
           minutes: float | None = None, seed: int = 0, resume: bool = False, threads: int = 1,
           processes: int = 1, progress: bool = True, command: str = "") -> SampleResult:
    """Run basin-hopping on ``problem`` and store its minima in the database at ``path``.

    Stops after ``steps`` basin-hopping steps per walker or ``minutes`` of wall time (whichever
    comes first; one is required). At the time limit, quenches in flight are abandoned, but
    refinements of points that may be new minima are finished, checked and stored: on Iris that
    takes milliseconds; on digits with refinement to 1e-10 and the Lanczos check it took 11-13 s (a
    5-s budget then stored 32 minima, where abandoning them stored none). ``resume`` continues the
    walkers of the file's last run (as many as it had: ``settings.walkers`` is not used).
    ``processes`` > 1 splits the walkers over that many worker processes of ``threads`` threads each
    (:mod:`landscape.parallel`; Linux: needs the fork start method). NumPy's and SciPy's BLAS run on
    ``threads`` threads during the run (idle OpenBLAS threads spin: with their default of one per
    core, a one-thread run took 1.35 CPU-seconds a second, and two worker processes slowed each
    other by a quarter). Sets the process's allocator to keep freed memory
    (:mod:`landscape.allocator`). A new run whose walkers cannot fit in the available memory is
    refused before the file is touched.
    """
    # everything that can be refused is checked before the database file is created or opened
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a landscape.Problem (e.g. Problem.create('iris')), got {problem!r}")
    if not isinstance(settings, Settings):
        raise TypeError(f"settings must be a landscape.Settings (e.g. Settings(**options)), got {settings!r}")
    if problem.model.activation == "relu":
        raise ValueError(RELU_REFUSAL)
    if steps is None and minutes is None:
        raise ValueError("give a budget: steps (per walker) or minutes")
    if steps is not None and not (_is_int(steps) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if minutes is not None and not (isinstance(minutes, numbers.Real) and not isinstance(minutes, bool)
                                    and 0 < minutes < math.inf):
        raise ValueError(f"minutes must be a finite number > 0, got {minutes!r}")
    if not (_is_int(threads) and _is_int(processes) and threads >= 1 and processes >= 1):
        raise ValueError(f"threads and processes must be integers >= 1, got {threads!r} and {processes!r}")
    if processes > 1 and not parallel.AVAILABLE:
        raise ValueError("processes > 1 needs the fork start method (Linux); use processes = 1")
    if not (_is_int(seed) and seed >= 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    steps, minutes = (None if steps is None else int(steps)), (None if minutes is None else float(minutes))
    seed, threads, processes = int(seed), int(threads), int(processes)  # numpy integers too (JSON in the file)
    if resume and not os.path.exists(path):
        raise ValueError(f"{path}: no database to resume; drop --resume")
    energy = problem.energy(threads=threads)
    if not resume and processes > settings.walkers:
        raise ValueError(f"{processes} processes for {settings.walkers} walkers: give at least one walker per process")
    P = problem.model.n_params
    # a lower bound on a new run's memory: per walker and parameter, its 2 * memory 8-bit L-BFGS pairs and
    # six float64 (K, P) arrays (a 16,384-walker Iris run measured 1.6x it)
    if not resume and (free := allocator.available_bytes()) is not None \
            and (need := settings.walkers * P * (2 * settings.memory + 48)) > free:
        raise ValueError(f"{settings.walkers} walkers of {P} parameters need at least {need / 2**30:.1f} GiB "
                         f"and {free / 2**30:.1f} GiB is available: use fewer walkers")
    torch.set_num_threads(threads)
    allocator.keep_freed_memory()
    with threadpool_limits(limits=threads), Database(path, problem, mode="a") as db:
        walkers = _start(db, P, settings, seed, resume)
        stored = db.minima()  # read (and checksum-checked) before anything is written
        K = len(walkers.E)
        if processes > K:
            raise ValueError(f"{processes} processes for {K} walkers: give at least one walker per process")
        hessian_mode = settings.hessian
        if hessian_mode == "auto":
            hessian_mode = "full" if P <= FULL_HESSIAN_MAX_P else "lanczos"
        shapes = {name: (a.shape, a.dtype, _WALKER_FIELDS[name]) for name, a in walkers.arrays().items()}
        params = {**asdict(settings), "walkers": K, "steps": steps, "minutes": minutes, "threads": threads,
                  "processes": processes, "resume": resume, "energy_backend": energy.backend,
                  "hessian_used": hessian_mode}
        run_id = db.start_run(command, seed, params, shapes)
        bar = _progress(progress, K * steps if steps else None)
        store = _Store(db, run_id, bar)
        deadline = time.perf_counter() + 60.0 * minutes if minutes is not None else math.inf
        budget = steps if steps is not None else np.iinfo(np.int64).max
        status = FAILED
        try:
            if processes == 1:
                sampler = _Sampler(problem, energy, settings, hessian_mode, walkers, stored, threads, store)
                status = sampler.run(deadline, budget)
                counters = sampler.totals()
            else:
                def make(part: dict[str, np.ndarray], out) -> _Sampler:  # called in a worker process
                    w = _Walkers(len(part["energy"]), P, seed, settings)
                    w.restore(part)
                    return _Sampler(problem, problem.energy(threads=threads), settings, hessian_mode, w, stored,
                                    threads, out)

                status, counters = parallel.run(store, stored, lambda: _index(problem, energy, threads),
                                                walkers.arrays(), processes, make, deadline, budget)
        finally:
            bar.close()
            db.end_run(run_id, status)
        m = db.minima(coords=False)
    return SampleResult(run_id, counters, len(m), float(m.energy.min()) if len(m) else math.nan, status)


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _start(db: Database, P: int, settings: Settings, seed: int, resume: bool) -> _Walkers:
    """The walkers of the file's last run (``resume``), or ``settings.walkers`` new ones at
    N(0, init_scale^2) weights drawn from their own streams."""
    previous = db.runs()
    if resume and not previous:
        raise ValueError(f"{db.path} has no run to resume; drop --resume")
    state = db.walker_state(previous[-1]["id"]) if resume else None
    walkers = _Walkers(len(state["energy"]) if resume else settings.walkers, P, seed, settings)
    if state is not None:
        walkers.restore(state)
    else:
        for k, r in enumerate(walkers.rngs):
            walkers.x[k] = r.normal(0.0, settings.init_scale, P)
    return walkers


def _index(problem: Problem, energy: Energy, threads: int, stored: Minima | None = None) -> MinimaIndex:
    """An identification index (ids = database rows) holding the ``stored`` minima, or none."""
    args = (problem.model.unit_groups(), 2.0 * problem.lam, energy.energy_gradient, threads)
    return MinimaIndex(*args) if stored is None else MinimaIndex.of(stored, *args)


class _Store:
    """Where a run reports to: the database and the progress bar. Repeat finds are counted in
    memory and written with the walker state, at most about once a second."""

    def __init__(self, db: Database, run_id: int, bar):
        self.db, self.run_id, self.bar = db, run_id, bar
        self.pending_hits: list[int] = []
        self.last_save = time.perf_counter()

    def new_minimum(self, E: float, x: np.ndarray, grad: np.ndarray, grad_rms: float, eig: np.ndarray, walker: int,
                    step: int) -> int:
        """Store a new minimum (flushed with the batch; its gradient ``grad`` is not stored);
        returns its id (database row)."""
        return self.db.add_minimum(E, x, grad_rms, eig, (self.run_id, walker, step))

    def better_copy(self, id_: int, E: float, x: np.ndarray, grad_rms: float) -> None:
        self.db.update_minimum(id_, E, x, grad_rms)

    def hit(self, id_: int) -> None:
        self.pending_hits.append(id_)

    def batch(self, finished: int, n_minima: int, counters: dict, walkers) -> None:
        """After a batch of quenches: ``finished`` steps done, the totals so far; ``walkers``
        gives the walker state, saved with the counters about once a second."""
        self.bar.update(finished)
        if time.perf_counter() - self.last_save > 1.0:
            self.save(counters, walkers())
        self.db.flush()
        self.bar.set_postfix(minima=n_minima, acc=f"{counters['accepted'] / max(1, counters['steps']):.2f}",
                             q_per_s=f"{counters['quenches'] / max(counters['wall_seconds'], 1e-9):.0f}",
                             refresh=False)

    def save(self, counters: dict, walkers: dict[str, np.ndarray]) -> None:
        self.db.add_hits(np.array(self.pending_hits, dtype=np.int64))
        self.pending_hits.clear()
        self.db.save_run_state(self.run_id, counters, walkers)
        self.db.flush()
        self.last_save = time.perf_counter()


class _Sampler:
    """The basin-hopping loop of a set of walkers, reporting to ``out`` (a :class:`_Store`, or a
    worker's outbox in :mod:`landscape.parallel`, with the same methods). Its index holds the
    ``stored`` minima (ids = rows) and the new ones ``out`` gives ids to."""

    def __init__(self, problem: Problem, energy: Energy, s: Settings, hessian_mode: str, walkers: _Walkers,
                 stored: Minima, threads: int, out):
        self.s, self.energy, self.hessian_mode, self.walkers, self.out = s, energy, hessian_mode, walkers, out
        self.P = problem.model.n_params
        self.K = len(walkers.E)
        self.index = _index(problem, energy, threads, stored)
        self.counters = dict.fromkeys(("steps", "quenches", "converged", "accepted", "new_minima", "saddles",
                                       "refinements", "nfev"), 0)
        self.opt = LBFGS(energy.energy_gradient, self.P, tol=s.tol, maxiter=s.maxiter, memory=s.memory,
                         maxstep=s.maxstep, threads=threads)
        self.pushes = np.zeros(self.K, np.int64)
        self.refining = np.zeros(self.K, bool)
        self.hits = stored.hits.tolist()  # times each known minimum was found, this run's finds included

    # -- main loop -----------------------------------------------------------------------------
    def run(self, deadline: float, budget: int, stop=None) -> str:
        """Advance the walkers until each took ``budget`` steps, ``time.perf_counter()`` passes
        ``deadline`` or ``stop()`` is true; returns the run's status."""
        w = self.walkers
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        w.steps[:] = 0  # the step budget counts within this run
        fresh = np.isinf(w.E)  # new walkers quench their random start; resumed ones take a step
        self.opt.add(np.stack([w.x[k] if fresh[k] else self._perturb(k) for k in range(self.K)]), np.arange(self.K))
        status = COMPLETED
        try:
            while len(self.opt):
                done = self.opt.step()
                self.counters["nfev"] = self.energy.nfev
                out_of_time = time.perf_counter() > deadline or stop is not None and stop()
                finished = 0
                for j in range(len(done)):
                    k = int(done.tag[j])
                    if self._finish_quench(k, done, j):  # True: the walker's step is complete
                        w.steps[k] += 1
                        self.counters["steps"] += 1
                        finished += 1
                        if w.steps[k] < budget and not out_of_time:
                            self.opt.add(self._perturb(k)[None], np.array([k]))
                if len(done):
                    self.out.batch(finished, len(self.index), self.totals(), w.arrays)
                if out_of_time:  # abandon plain quenches, finish refinements (each may be a new minimum)
                    status = TIME_UP
                    self.opt.drop(np.flatnonzero(~self.refining))
        except KeyboardInterrupt:
            status = INTERRUPTED
        finally:
            self.out.save(self.totals(), w.arrays())
        return status

    def totals(self) -> dict:
        """The counters with this run's CPU and wall seconds so far."""
        return {**self.counters, "cpu_seconds": time.process_time() - self.c0,
                "wall_seconds": time.perf_counter() - self.t0}

    def _perturb(self, k: int) -> np.ndarray:
        w, r = self.walkers, self.walkers.rngs[k]
        x = w.x[k]
        if self.s.start == "uniform" and len(self.index):
            x = self.index.points[self.index.nth(int(r.integers(len(self.index))))].x
        return x + r.uniform(-w.step[k], w.step[k], self.P)

    # -- one finished quench -------------------------------------------------------------------
    def _finish_quench(self, k: int, r, j: int) -> bool:
        """Identify / store a quench result and apply the Metropolis test. Returns False when the
        walker continues the same step (a refinement, or a saddle pushed off and re-minimised)."""
        s, w, c = self.s, self.walkers, self.counters
        refining, self.refining[k] = self.refining[k], False
        if not refining:
            c["quenches"] += 1
            c["converged"] += int(r.converged[j])
        E = float(r.energy[j]) if r.converged[j] else math.inf  # an unconverged quench is no minimum
        found = -1
        if r.converged[j]:
            outcome, found = self._identify(k, r.x[j], r.grad[j], E, float(r.grad_rms[j]), refining)
            if outcome == "refine":
                c["refinements"] += 1
                self.refining[k] = True
                self.opt.add(r.x[j][None], np.array([k]), tol=s.refine_tol)
                return False
            if outcome == "saddle":
                c["saddles"] += 1
                if self.pushes[k] < 3:
                    self.pushes[k] += 1
                    self.opt.add(self._pushed[None], np.array([k]))
                    return False
                E = math.inf
        self.pushes[k] = 0
        if self._accept(k, E, found):
            w.x[k], w.E[k], w.minimum[k] = r.x[j], E, found
            w.acc[k] += 1
            c["accepted"] += 1
        if E < w.best[k]:
            w.best[k], w.since_best[k] = E, 0
        else:
            w.since_best[k] += 1
        if s.adaptive and (w.steps[k] + 1) % s.adapt_every == 0:
            ratio = w.acc[k] / s.adapt_every
            f = 1.0 / s.adapt_factor if ratio > s.target_acceptance else s.adapt_factor
            w.step[k] = min(s.step_max, max(s.step_min, w.step[k] * f))
            w.acc[k] = 0
        if w.since_best[k] >= s.reseed_after:  # stagnant: restart from fresh random weights
            w.x[k] = w.rngs[k].normal(0.0, s.init_scale, self.P)
            w.E[k], w.best[k], w.since_best[k], w.minimum[k] = math.inf, math.inf, 0, -1
            w.step[k] = s.step
        return True

    def _accept(self, k: int, E: float, found: int) -> bool:
        """Accept the walker's new minimum? Always with start 'uniform'; otherwise the Metropolis
        test, exp(-dE/T) times (h_current/h_new)^visit_bias."""
        w, s = self.walkers, self.s
        if not math.isfinite(E):
            return False
        if s.start == "uniform" or not math.isfinite(w.E[k]):
            return True
        log_a = -(E - w.E[k]) / s.temperature
        if s.visit_bias and w.minimum[k] >= 0:
            log_a += s.visit_bias * math.log(self.hits[w.minimum[k]] / self.hits[found])
        return log_a >= 0 or w.rngs[k].random() < math.exp(log_a)

    def _identify(self, walker: int, x: np.ndarray, grad: np.ndarray, E: float, grad_rms: float,
                  refined: bool) -> tuple[str, int]:
        """(outcome, row): 'same' (a stored minimum found again: hits + 1, coordinates improved if
        this copy is better converged), 'new' (stored), 'refine' (converge further before deciding)
        or 'saddle' (row -1)."""
        p = Point(E, x, grad_rms * np.sqrt(self.P), grad=grad)
        m = self.index.match(p, ambiguity=grad_rms > self.s.refine_tol and not refined, track=walker)
        if m.same is not None:
            self.out.hit(m.same)
            self.hits[m.same] += 1
            q = self.index.points[m.same]
            if p.gnorm < q.gnorm:  # a better-converged copy, in the stored copy's symmetry image
                self.out.better_copy(m.same, E, m.aligned, grad_rms)
                self.index.add(m.same, Point(E, m.aligned, p.gnorm, q.curvature))
            return "same", m.same
        if grad_rms > self.s.refine_tol and not refined:
            return "refine", -1
        eig = np.array([])
        if self.hessian_mode != "none":
            h = hessian.check(self.energy, x, self.hessian_mode)
            if h.saddle:
                self._pushed = x + 1e-2 * h.vector
                return "saddle", -1
            eig = h.eigenvalues
        i = self.out.new_minimum(E, x, grad, grad_rms, eig, walker, int(self.walkers.steps[walker]))
        self.index.add(i, Point(E, x, p.gnorm, float(eig[0]) if eig.size else math.nan, grad))
        self.hits.append(1)
        self.counters["new_minima"] += 1
        return "new", i


def _progress(enabled: bool, total: int | None):
    """A progress bar on stderr, redrawn at most every 0.5 s on a terminal and every 10 s
    otherwise (a log file gets a line per redraw)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit="step", desc="basin-hopping", leave=True,
                mininterval=0.5 if sys.stderr.isatty() else 10.0)


def _pack_rng(r: np.random.Generator) -> list[int]:
    st = r.bit_generator.state
    m = (1 << 64) - 1
    a, b = st["state"]["state"], st["state"]["inc"]
    return [a >> 64, a & m, b >> 64, b & m, st["has_uint32"], st["uinteger"]]


def _unpack_rng(r: np.random.Generator, p: np.ndarray) -> None:
    p = [int(v) for v in p]
    r.bit_generator.state = {"bit_generator": "PCG64", "state": {"state": (p[0] << 64) | p[1],
                                                                 "inc": (p[2] << 64) | p[3]},
                             "has_uint32": p[4], "uinteger": p[5]}
