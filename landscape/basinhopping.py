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

import contextlib
import math
import numbers
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from typing import Iterator

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from . import allocator, hessian, parallel, signals
from .database import COMPLETED, FAILED, INT64_END, INTERRUPTED, TIME_UP, Database, Minima, check_seed
from .energy import Energy
from .identify import MinimaIndex, Point, minimum_check, tolerances
from .loss import Sensitivity, sampling_refusal
from .minimize import LBFGS, minimize
from .problem import Problem

HESSIAN_MODES = ("auto", *hessian.MODES, "none")
START_MODES = ("walker", "uniform")
FULL_HESSIAN_MAX_P = 1000
# what a run counts (converged: quenches that converged and were identified, counted with their outcome, so each
# is a stored minimum's first find, a hit or a saddle, and a refinement that never ends is not one; uphill: steps
# whose quench reached another minimum, higher than the walker's, where the temperature decides; abandoned:
# refinements given up after the time budget's grace period), stored with its CPU and wall seconds
SAMPLER_COUNTERS = ("steps", "quenches", "converged", "accepted", "uphill", "uphill_accepted", "new_minima",
                    "saddles", "refinements", "abandoned", "nfev")
AUTO = "auto"  # temperature set from the walkers' first minima
AUTO_T_MINIMA = 1024  # at most this many walkers' minima set it
GRACE_FRACTION, GRACE_MIN_SECONDS = 0.1, 5.0  # refinements may run this long past a time budget
# a warning when the acceptance of uphill steps is outside these bounds, judged once the walkers took this many
# adaptation windows on average and this many steps went uphill
ACCEPTANCE_BOUNDS, JUDGE_AFTER_WINDOWS, JUDGE_MIN_UPHILL = (0.05, 0.95), 2, 100
MAX_THREADS = 1024  # threads (and processes) of a run at most: more is a typo, and torch's count is a C int


class SamplingWarning(UserWarning):
    """A run that works but does not do what basin-hopping is for (e.g. every step accepted)."""


@dataclass(frozen=True)
class Settings:
    """Sampler settings (defaults in brackets are the field defaults).

    walkers: K walkers advanced together. temperature: Metropolis T (nats), or 'auto': before the
    run, walkers without a minimum are quenched and T is the median of |E_i - E_j| over the pairs
    of the walkers' minima (their first ones in a new run, the current ones of resumed walkers; the
    first 1,024 walkers) whose energies differ by more than two quench endpoints of one minimum can
    (:func:`landscape.identify.tolerances`), so a step to a typical other minimum, uphill by about T,
    is accepted with probability about 1/e whatever the landscape's energy scale; the run's
    parameters record the number chosen (needs walkers >= 2). A run warns (:class:`SamplingWarning`)
    when, after 2 adaptation windows per walker on average, more than 95% or fewer than 5% of its
    uphill steps (to another, higher minimum; at least 100), the ones T decides, were accepted.
    step: initial maximum displacement per coordinate. adaptive: adapt the step toward target_acceptance every
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
    temperature: float | str = 0.01
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
            if f.name == "temperature" and isinstance(v, str) and v == AUTO:
                continue
            ok = isinstance(v, numeric.get(want, want)) and not (want is not bool and isinstance(v, bool))
            if not ok:
                kind = "a number or 'auto'" if f.name == "temperature" else want.__name__
                raise ValueError(f"setting {f.name} must be {kind}, got {type(v).__name__} {v!r}")
            if want is float and not math.isfinite(v):
                raise ValueError(f"setting {f.name} must be a finite number, got {v!r}")
            object.__setattr__(self, f.name, want(v))  # plain Python values: the settings are stored as JSON
        for name in ("walkers", "adapt_every", "reseed_after", "maxiter", "memory"):
            if not 1 <= getattr(self, name) < INT64_END:
                raise ValueError(f"{name} must be in [1, 2**63), got {getattr(self, name)}")
        for name in ("temperature", "step", "tol", "refine_tol", "maxstep", "init_scale"):
            if getattr(self, name) != AUTO and not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.temperature == AUTO and self.walkers < 2:
            raise ValueError("temperature 'auto' is set from the spread of the walkers' minima: use walkers >= 2 "
                             "or give a temperature")
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
    """What a run did: its id in the database, its counters (``abandoned``: refinements given up
    after the time budget's grace period), the database's totals, its status, how many seconds it
    ran past its time budget (0 without one), and ``reason``: why the database holds no minimum
    after the run (None when it holds some)."""

    run: int
    counters: dict
    n_minima: int
    lowest_energy: float
    status: str
    overrun_seconds: float = 0.0
    reason: str | None = None


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
           processes: int = 1, progress: bool = True, command: str = "", force: bool = False) -> SampleResult:
    """Run basin-hopping on ``problem`` and store its minima in the database at ``path``.

    Stops after ``steps`` basin-hopping steps per walker or ``minutes`` of wall time from the call
    (whichever comes first; one is required). At the time limit, quenches in flight are abandoned;
    refinements of points that may be new minima get a grace period (10% of the budget, at least
    5 s) to finish and be checked and stored, and those still running then are abandoned: the run
    overruns its budget by at most the grace period and the energy or Hessian evaluation in
    progress (``overrun_seconds``, ``counters['abandoned']``). ``resume`` continues the walkers of the
    file's last run (as many as it had, with their random streams: ``settings.walkers`` and ``seed``
    are not used, and the run records the seed of the run its walkers came from). ``processes`` > 1
    splits the walkers over that many worker processes of ``threads`` threads each
    (:mod:`landscape.parallel`; Linux: needs the fork start method). NumPy's and SciPy's BLAS and
    torch run on ``threads`` threads during the run; torch's thread count is restored afterwards
    (idle OpenBLAS threads spin, so their default of one per core would slow the run). The
    process's allocator is left alone (the ``landscape`` command sets it: :mod:`landscape.allocator`).
    ``force`` takes the file over from a writer on another host within its lease (:class:`Database`).
    Out of space (DiskFullError), the run saves its walkers and ends as failed, what it wrote kept.
    Whatever is refused (a new run whose walkers cannot fit in the available memory, temperature
    'auto' without two distinct minima) is refused before the file is written.
    """
    _check_arguments(problem, settings, steps, minutes, seed, threads, processes)
    steps, minutes = (None if steps is None else int(steps)), (None if minutes is None else float(minutes))
    seed, threads, processes = int(seed), int(threads), int(processes)  # numpy integers too (JSON in the file)
    if resume and not os.path.exists(path):
        raise ValueError(f"{path}: no database to resume; drop --resume")
    energy = problem.energy(threads=threads)
    if not resume:
        _check_new_walkers(settings, problem.model.n_params, processes)
    deadline = time.perf_counter() + 60.0 * minutes if minutes is not None else math.inf
    grace = max(GRACE_MIN_SECONDS, GRACE_FRACTION * 60.0 * minutes) if minutes is not None else GRACE_MIN_SECONDS
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            walkers, seed = _start(path, problem, settings, seed, resume)
            if processes > len(walkers.E):
                raise ValueError(f"{processes} processes for {len(walkers.E)} walkers: give at least one walker per "
                                 "process")
            temperature = settings.temperature
            if temperature == AUTO:
                temperature = _auto_temperature(problem, energy, walkers, settings, threads)
            plan = _Plan(problem, energy, replace(settings, temperature=temperature), _hessian_mode(settings, problem),
                         seed, threads, processes, steps, deadline, grace)
            with Database(path, problem, mode="a", force=force) as db:
                params = {**asdict(plan.settings), "temperature_auto": settings.temperature == AUTO,
                          "walkers": len(walkers.E), "steps": steps, "minutes": minutes, "threads": threads,
                          "processes": processes, "resume": resume, "energy_backend": energy.backend,
                          "hessian_used": plan.hessian_mode}
                run_id, status, counters = _walk(plan, db, walkers, params, progress, command)
                m = db.minima(coords=False)
    finally:
        torch.set_num_threads(torch_threads)
    overrun = max(0.0, time.perf_counter() - deadline)
    return SampleResult(run_id, counters, len(m), float(m.energy.min()) if len(m) else math.nan, status, overrun,
                        None if len(m) else _why_empty(counters, settings, problem))


def _check_arguments(problem: Problem, settings: Settings, steps: int | None, minutes: float | None, seed: int,
                     threads: int, processes: int) -> None:
    """Refuse arguments of the wrong type or range (see :func:`sample`)."""
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a landscape.Problem (e.g. Problem.create('iris')), got {problem!r}")
    if not isinstance(settings, Settings):
        raise TypeError(f"settings must be a landscape.Settings (e.g. Settings(**options)), got {settings!r}")
    if (why := sampling_refusal(problem.loss, problem.model.activation)) is not None:
        raise ValueError(why)
    if problem.model.activation == "relu":
        raise ValueError(RELU_REFUSAL)
    if steps is None and minutes is None:
        raise ValueError("give a budget: steps (per walker) or minutes")
    if steps is not None and not (_is_int(steps) and 1 <= steps < INT64_END):
        raise ValueError(f"steps must be an integer in [1, 2**63), got {steps!r}")
    if minutes is not None and not (isinstance(minutes, numbers.Real) and not isinstance(minutes, bool)
                                    and 0 < minutes < math.inf):
        raise ValueError(f"minutes must be a finite number > 0, got {minutes!r}")
    if not (_is_int(threads) and _is_int(processes) and 1 <= threads <= MAX_THREADS and 1 <= processes <= MAX_THREADS):
        raise ValueError(f"threads and processes must be integers in [1, {MAX_THREADS}], got {threads!r} and "
                         f"{processes!r}")
    if processes > 1 and not parallel.AVAILABLE:
        raise ValueError("processes > 1 needs the fork start method (Linux); use processes = 1")
    check_seed(seed)


def _check_new_walkers(settings: Settings, P: int, processes: int) -> None:
    """Refuse a new run with fewer walkers than processes, or whose walkers cannot fit in memory."""
    if processes > settings.walkers:
        raise ValueError(f"{processes} processes for {settings.walkers} walkers: give at least one walker per process")
    # a lower bound on a new run's memory: per walker and parameter, its 2 * memory 8-bit L-BFGS pairs and
    # six float64 (K, P) arrays (a 16,384-walker Iris run measured 1.6x it)
    if (free := allocator.available_bytes()) is not None \
            and (need := settings.walkers * P * (2 * settings.memory + 48)) > free:
        raise ValueError(f"{settings.walkers} walkers of {P} parameters need at least {need / 2**30:.1f} GiB "
                         f"and {free / 2**30:.1f} GiB is available: use fewer walkers")


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _hessian_mode(s: Settings, problem: Problem) -> str:
    """The Hessian check a run uses: 'auto' is 'full' up to FULL_HESSIAN_MAX_P parameters, else 'lanczos'."""
    if s.hessian != "auto":
        return s.hessian
    return "full" if problem.model.n_params <= FULL_HESSIAN_MAX_P else "lanczos"


@dataclass(frozen=True)
class _Plan:
    """What a run is given: its problem and energy, its settings (temperature a number), Hessian
    mode, seed, threads and processes, step budget per walker (None: none), deadline (in
    ``time.perf_counter()`` seconds; inf: none) and the grace (seconds) refinements get after it."""

    problem: Problem
    energy: Energy
    settings: Settings
    hessian_mode: str
    seed: int
    threads: int
    processes: int
    steps: int | None
    deadline: float
    grace: float

    def sampler(self, energy: Energy, walkers: _Walkers, stored: Minima, out) -> _Sampler:
        return _Sampler(self.problem, energy, self.settings, self.hessian_mode, walkers, stored, self.threads, out,
                        self.grace)


def _walk(plan: _Plan, db: Database, walkers: _Walkers, params: dict, progress: bool,
          command: str) -> tuple[int, str, dict]:
    """Start a run with ``params`` in ``db``, walk until the budget is spent, end the run; returns
    its id, status and counters."""
    stored = db.minima()  # read, and with the runs checksum-checked, before anything is written
    db.runs()
    K, P = len(walkers.E), plan.problem.model.n_params
    shapes = {name: (a.shape, a.dtype, _WALKER_FIELDS[name]) for name, a in walkers.arrays().items()}
    run_id = db.start_run(command, plan.seed, params, shapes,
                          counters=(*SAMPLER_COUNTERS, "cpu_seconds", "wall_seconds"))
    bar = _progress(progress, K * plan.steps if plan.steps else None)
    store = _Store(db, run_id, bar, K, plan.settings)
    budget = plan.steps if plan.steps is not None else np.iinfo(np.int64).max
    status = FAILED
    try:
        if plan.processes == 1:
            sampler = plan.sampler(plan.energy, walkers, stored, store)
            with _ctrl_c_remembered() as interrupted:
                status = sampler.run(plan.deadline, budget, interrupted=interrupted.is_set)
            counters = sampler.totals()
        else:
            def make(part: dict[str, np.ndarray], out) -> _Sampler:  # called in a worker process
                w = _Walkers(len(part["energy"]), P, plan.seed, plan.settings)
                w.restore(part)
                return plan.sampler(plan.problem.energy(threads=plan.threads), w, stored, out)

            status, counters = parallel.run(store, stored, lambda: _index(plan.problem, plan.energy, plan.threads),
                                            walkers.arrays(), plan.processes, make, plan.deadline, budget)
    finally:
        bar.close()
        db.end_run(run_id, status)
    return run_id, status, counters


@contextlib.contextmanager
def _ctrl_c_remembered() -> Iterator[threading.Event]:
    """While the sampler runs in this (main) thread, SIGINT sets the event yielded and raises
    KeyboardInterrupt: the loop checks the event too, so an interrupt raised inside a finaliser
    or weakref callback, where Python prints and drops it, still ends the run. The previous
    handler comes back afterwards."""
    interrupted = threading.Event()

    def handler(signum: int, frame) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:  # (a background job's: left as it is)
        yield interrupted
        return
    with signals.handling(signal.SIGINT, handler):
        yield interrupted


def _start(path: str, problem: Problem, settings: Settings, seed: int, resume: bool) -> tuple[_Walkers, int]:
    """The walkers of the last run in the database at ``path`` and the seed of the run they came
    from (``resume``; as many new ones drawn from that seed, with a warning, when that run never
    saved its walkers), or ``settings.walkers`` new ones at N(0, init_scale^2) weights drawn from
    their own streams and ``seed``."""
    P = problem.model.n_params
    if not resume:
        return _new_walkers(settings.walkers, P, seed, settings), seed
    with Database(path, problem) as db:
        previous = db.runs(kind="sample")
        if not previous:
            raise ValueError(f"{db.path} has no run to resume; drop --resume")
        state = db.walker_state(previous[-1]["id"])
    K, seed = len(state["energy"]), _origin_seed(previous)
    if not _saved(state):
        warnings.warn(f"run {previous[-1]['id']} ended before it saved its walkers: starting {K} new walkers from "
                      f"its seed {seed}", SamplingWarning, stacklevel=2)
        return _new_walkers(K, P, seed, settings), seed
    walkers = _Walkers(K, P, seed, settings)
    walkers.restore(state)
    return walkers, seed


def _new_walkers(K: int, P: int, seed: int, settings: Settings) -> _Walkers:
    """K new walkers at N(0, init_scale^2) weights drawn from their own streams, spawned from ``seed``."""
    walkers = _Walkers(K, P, seed, settings)
    for k, r in enumerate(walkers.rngs):
        walkers.x[k] = r.normal(0.0, settings.init_scale, P)
    return walkers


def _saved(state: dict[str, np.ndarray]) -> bool:
    """Was this walker state written? A PCG64 increment is odd, so the zeros of a state allocated
    and never written (a run killed before its first save) show in its random streams."""
    return bool(len(state["rng"]) and (state["rng"][:, 3] % 2 == 1).all())


def _origin_seed(runs: list[dict]) -> int:
    """The seed of the newest run that drew its walkers (was not a resume): the one the last run's
    walkers and random streams came from."""
    return next((r["seed"] for r in reversed(runs) if not r["parameters"].get("resume")), runs[0]["seed"])


def _auto_temperature(problem: Problem, energy: Energy, walkers: _Walkers, s: Settings, threads: int) -> float:
    """Temperature 'auto' (see :class:`Settings`): quench the walkers without a minimum (those that
    converge start the run from the minimum reached) and return the median |E_i - E_j| over the
    pairs of walkers' minima that are told apart by energy (beyond :func:`landscape.identify.tolerances`)."""
    fresh = np.flatnonzero(np.isinf(walkers.E))
    E = walkers.E.copy()
    if len(fresh):
        r = minimize(energy.quench_fun, walkers.x[fresh], tol=s.tol, maxiter=s.maxiter, memory=s.memory,
                     maxstep=s.maxstep, threads=threads, kinks=energy.kinks)
        walkers.x[fresh[r.converged]] = r.x[r.converged]
        E[fresh] = np.where(r.converged, r.energy, np.inf)
    E = E[np.isfinite(E)][:AUTO_T_MINIMA]
    if len(E) < 2:
        raise ValueError(f"temperature 'auto' needs the minima of two walkers, and {len(E)} of {len(walkers.E)} "
                         f"quenches converged to RMS gradient <= tol ({s.tol:g}) within maxiter ({s.maxiter}) "
                         "iterations: raise tol or maxiter, or give a temperature")
    # a pair closer in energy than two quench endpoints (RMS gradient tol) of one minimum may be one: no gap
    p = Point(float(np.abs(E).max()), walkers.x[0], s.tol * math.sqrt(walkers.x.shape[1]))
    gaps = np.abs(E[:, None] - E[None, :])[np.triu_indices(len(E), 1)]
    gaps = gaps[gaps > tolerances(p, p, 2.0 * problem.lam)[0]]
    if not len(gaps):
        raise ValueError(f"temperature 'auto': the {len(E)} walkers' minima all have one energy, which sets no "
                         "scale: use more walkers, or give a temperature")
    return float(np.median(gaps))


def _why_empty(c: dict, s: Settings, problem: Problem) -> str:
    """Why a run left the database without a minimum, from its counters ``c``."""
    if not c["quenches"]:
        return "no quench finished within the budget: give more minutes (--minutes) or steps (--steps)"
    if not c["converged"] and not c.get("abandoned", 0):
        term = next((t for t in problem.loss if isinstance(t, Sensitivity)), None)
        if term is not None:
            return (f"none of the {c['quenches']} quenches converged: with a sensitivity weight of "
                    f"{term.weight / problem.lam:g} x lam the log-volume pulls output widths down to their floor, "
                    "where E has kinks off the coordinate planes that no quench converges on; lower "
                    "--sensitivity-weight against --lam (README: the landscape of the paper's loss)")
        return (f"none of the {c['quenches']} quenches converged to RMS gradient <= tol ({s.tol:g}) within maxiter "
                f"({s.maxiter}) iterations: raise tol or maxiter (--tol, --maxiter), or check the data")
    return (f"{c['converged'] + c.get('abandoned', 0)} quenches converged but none was stored ({c['saddles']} saddles, "
            f"{c.get('abandoned', 0)} refinements abandoned at the time limit): give a longer budget")


def _index(problem: Problem, energy: Energy, threads: int, stored: Minima | None = None) -> MinimaIndex:
    """An identification index (ids = database rows) holding the ``stored`` minima, or none."""
    args = (problem.model.unit_groups(), 2.0 * problem.lam, energy.energy_pseudo_gradient, threads)
    return MinimaIndex(*args) if stored is None else MinimaIndex.of(stored, *args)


class _Store:
    """Where a run reports to: the database and the progress bar. Repeat finds are counted in
    memory and written with the walker state, at most about once a second. It warns once if the
    acceptance ratio of the run's ``K`` walkers shows the temperature does not fit (see
    :func:`_acceptance_warning`)."""

    def __init__(self, db: Database, run_id: int, bar, K: int, settings: Settings):
        self.db, self.run_id, self.bar, self.K, self.settings = db, run_id, bar, K, settings
        self.pending_hits: list[int] = []
        self.last_save = time.perf_counter()
        self.warned = False

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
        if not self.warned and (message := _acceptance_warning(counters, self.K, self.settings)):
            warnings.warn(message, SamplingWarning, stacklevel=2)
            self.warned = True
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


def _acceptance_warning(c: dict, K: int, s: Settings) -> str | None:
    """What the counters ``c`` of K walkers say about the temperature: once the walkers took 2
    adaptation windows of steps on average and 100 steps went uphill to another minimum, a line when
    more than 95% of those were accepted (the walk is a random search) or fewer than 5% (the walkers
    stay put); else None, and always for start 'uniform' (no Metropolis test). Only uphill steps
    count: the others are accepted whatever T is."""
    uphill = c.get("uphill", 0)  # absent until a worker process reports
    if s.start == "uniform" or c["steps"] < JUDGE_AFTER_WINDOWS * s.adapt_every * K or uphill < JUDGE_MIN_UPHILL:
        return None
    ratio = c["uphill_accepted"] / uphill
    if ACCEPTANCE_BOUNDS[0] <= ratio <= ACCEPTANCE_BOUNDS[1]:
        return None
    head = (f"{c['uphill_accepted']} of {uphill} steps uphill to another minimum were accepted: temperature "
            f"{s.temperature:g} is ")
    if ratio > ACCEPTANCE_BOUNDS[1]:
        return head + ("large against the energy differences between minima, so the walk is a random search, not "
                       "basin-hopping; use temperature 'auto' (--temperature auto) or a lower one")
    return head + ("small against the energy differences between minima, so the walkers stay where they are; use "
                   "temperature 'auto' (--temperature auto) or a higher one")


class _Sampler:
    """The basin-hopping loop of a set of walkers, reporting to ``out`` (a :class:`_Store`, or a
    worker's outbox in :mod:`landscape.parallel`, with the same methods). Its index holds the
    ``stored`` minima (ids = rows) and the new ones ``out`` gives ids to. Refinements may run
    ``grace`` seconds past the end of the budget."""

    def __init__(self, problem: Problem, energy: Energy, s: Settings, hessian_mode: str, walkers: _Walkers,
                 stored: Minima, threads: int, out, grace: float = GRACE_MIN_SECONDS):
        self.s, self.energy, self.hessian_mode, self.walkers, self.out = s, energy, hessian_mode, walkers, out
        self.grace = grace
        self.P = problem.model.n_params
        self.K = len(walkers.E)
        self.index = _index(problem, energy, threads, stored)
        self.counters = dict.fromkeys(SAMPLER_COUNTERS, 0)
        self.opt = LBFGS(energy.quench_fun, self.P, tol=s.tol, maxiter=s.maxiter, memory=s.memory,
                         maxstep=s.maxstep, threads=threads, kinks=energy.kinks)  # OWL-QN where E has kinks
        self.pushes = np.zeros(self.K, np.int64)
        self.refining = np.zeros(self.K, bool)
        self.hits = stored.hits.tolist()  # times each known minimum was found, this run's finds included

    # -- main loop -----------------------------------------------------------------------------
    def run(self, deadline: float, budget: int, stop=None, interrupted=None) -> str:
        """Advance the walkers until each took ``budget`` steps, ``time.perf_counter()`` passes
        ``deadline`` or ``stop()`` is true; then plain quenches are abandoned and refinements (each
        may be a new minimum) finish within the grace period, or are abandoned too. A
        KeyboardInterrupt, or ``interrupted()`` true after a batch, ends the run at once as
        interrupted. Returns the run's status."""
        w = self.walkers
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        w.steps[:] = 0  # the step budget counts within this run
        fresh = np.isinf(w.E)  # new walkers quench their random start; resumed ones take a step
        self.opt.add(np.stack([w.x[k] if fresh[k] else self._perturb(k) for k in range(self.K)]), np.arange(self.K))
        status, stopped = COMPLETED, math.inf  # stopped: when the budget ran out
        try:
            while len(self.opt):
                done = self.opt.step()
                if interrupted is not None and interrupted():
                    raise KeyboardInterrupt  # one raised where Python swallows it (a finaliser) ends the run here
                self.counters["nfev"] = self.energy.nfev
                if stopped == math.inf and (time.perf_counter() > deadline or stop is not None and stop()):
                    status, stopped = TIME_UP, time.perf_counter()
                finished = 0
                for j in range(len(done)):
                    if time.perf_counter() > stopped + self.grace:
                        break
                    k = int(done.tag[j])
                    if self._finish_quench(k, done, j):  # True: the walker's step is complete
                        w.steps[k] += 1
                        self.counters["steps"] += 1
                        finished += 1
                        if w.steps[k] < budget and stopped == math.inf:
                            self.opt.add(self._perturb(k)[None], np.array([k]))
                if len(done):
                    self.out.batch(finished, len(self.index), self.totals(), w.arrays)
                if stopped < math.inf:
                    self._wind_down(time.perf_counter() > stopped + self.grace)
        except KeyboardInterrupt:
            status = INTERRUPTED
        finally:
            self.out.save(self.totals(), w.arrays())
        return status

    def _wind_down(self, late: bool) -> None:
        """After the budget: drop the plain quenches, and the refinements too when ``late`` (past
        the grace period; those still to be identified count as abandoned)."""
        if late:
            self.counters["abandoned"] += int(self.refining.sum())
            self.refining[:] = False
        self.opt.drop(np.flatnonzero(~self.refining))

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
        E = float(r.energy[j]) if r.converged[j] else math.inf  # an unconverged quench is no minimum
        found = -1
        if r.converged[j]:
            outcome, found = self._identify(k, r.x[j], r.grad[j], E, float(r.grad_rms[j]), refining)
            if outcome == "refine":
                c["refinements"] += 1
                self.refining[k] = True
                self.opt.add(r.x[j][None], np.array([k]), tol=s.refine_tol)
                return False
            # counted with its outcome, whose hit or new minimum is reported in the same call: counters saved or
            # sent with the reports never count a find still being refined (lost when a worker process dies, or
            # given up after the grace period)
            c["converged"] += 1
            if outcome == "saddle":
                c["saddles"] += 1
                if self.pushes[k] < 3:
                    self.pushes[k] += 1
                    self.opt.add(self._pushed[None], np.array([k]))
                    return False
                E = math.inf
        self.pushes[k] = 0
        uphill = math.isfinite(E) and E > w.E[k] and found != w.minimum[k]  # to another, higher minimum
        c["uphill"] += uphill
        if self._accept(k, E, found):
            w.x[k], w.E[k], w.minimum[k] = r.x[j], E, found
            w.acc[k] += 1
            c["accepted"] += 1
            c["uphill_accepted"] += uphill
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
            h = minimum_check(self.energy, x, self.hessian_mode)  # on the face of x where E has kinks
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
