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

Every converged quench is checked against the stored minima (:mod:`landscape.identify`);
new points are refined to ``refine_tol`` first. A new point is stored only if no Hessian
eigenvalue is below ``-eig_tol`` (:mod:`landscape.hessian`): a saddle is pushed off along its
negative-curvature direction and minimised again, never stored.

Each walker draws from its own random stream (spawned from ``seed``), so the same seed, step
budget and thread count give the same minima (with the compiled kernel, any thread count gives
the same). Defaults are :class:`Settings`.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from . import allocator, hessian
from .database import Database
from .energy import Energy
from .identify import MinimaIndex, Point
from .minimize import LBFGS
from .problem import Problem

HESSIAN_MODES = ("auto", *hessian.MODES, "none")
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
    (h_old / h_new)^a on the Metropolis acceptance (0: none; see the module docstring; 4 with a
    fixed step of 3 is the measured best for discovery on Iris).
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

    def __post_init__(self) -> None:
        for f in fields(self):
            v, want = getattr(self, f.name), type(f.default)
            ok = isinstance(v, want) and not (want is not bool and isinstance(v, bool))
            if not ok and not (want is float and isinstance(v, int) and not isinstance(v, bool)):
                raise ValueError(f"setting {f.name} must be {want.__name__}, got {type(v).__name__} {v!r}")
        if self.walkers < 1:
            raise ValueError(f"walkers must be >= 1, got {self.walkers}")
        if not self.temperature > 0 or not self.step > 0 or not self.tol > 0:
            raise ValueError("temperature, step and tol must be > 0")
        if not 0 < self.target_acceptance < 1:
            raise ValueError(f"target_acceptance must be in (0, 1), got {self.target_acceptance}")
        if not self.visit_bias >= 0:
            raise ValueError(f"visit_bias must be >= 0, got {self.visit_bias}")
        if not 0 < self.step_min <= self.step_max:
            raise ValueError(f"need 0 < step_min <= step_max, got {self.step_min}, {self.step_max}")
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


def sample(problem: Problem, path: str, settings: Settings = Settings(), steps: int | None = None,
           minutes: float | None = None, seed: int = 0, resume: bool = False, threads: int = 1,
           progress: bool = True, command: str = "") -> SampleResult:
    """Run basin-hopping on ``problem`` and store its minima in the database at ``path``.

    Stops after ``steps`` basin-hopping steps per walker or ``minutes`` of wall time (whichever
    comes first; one is required). At the time limit, quenches in flight are abandoned, but
    refinements of points that may be new minima are finished, checked and stored: on Iris that
    takes milliseconds; on digits with refinement to 1e-10 and the Lanczos check it took 11-13 s
    (a 5-s budget then stored 32 minima, where abandoning them stored none). ``resume``
    continues the walkers of the file's last run. NumPy's and SciPy's BLAS run on ``threads``
    threads during the run (idle OpenBLAS threads spin: with their default of one per core, a
    one-thread run took 1.35 CPU-seconds a second). Sets the process's allocator to keep freed
    memory (:mod:`landscape.allocator`).
    """
    if steps is None and minutes is None:
        raise ValueError("give a budget: steps (per walker) or minutes")
    if steps is not None and steps < 1 or minutes is not None and not minutes > 0:
        raise ValueError("steps must be >= 1 and minutes > 0")
    torch.set_num_threads(threads)
    allocator.keep_freed_memory()
    with threadpool_limits(limits=threads), Database(path, problem, mode="a") as db:
        return _Sampler(db, problem, settings, steps, minutes, seed, resume, threads, progress, command).run()


class _Sampler:
    def __init__(self, db: Database, problem: Problem, s: Settings, steps: int | None, minutes: float | None,
                 seed: int, resume: bool, threads: int, progress: bool, command: str):
        self.db, self.s, self.steps, self.minutes, self.progress = db, s, steps, minutes, progress
        self.energy: Energy = problem.energy(threads=threads)
        self.groups = problem.model.unit_groups()
        P = problem.model.n_params
        self.P = P
        self.hessian_mode = s.hessian if s.hessian != "auto" else ("full" if P <= FULL_HESSIAN_MAX_P else "lanczos")
        previous = db.runs()
        K = s.walkers
        if resume:
            if not previous:
                raise ValueError(f"{db.path} has no run to resume; drop --resume")
            state = db.walker_state(previous[-1]["id"])
            K = len(state["energy"])
        self.K = K
        self.walkers = _Walkers(K, P, seed, s)
        if resume:
            self.walkers.restore(state)
        else:
            for k, r in enumerate(self.walkers.rngs):
                self.walkers.x[k] = r.normal(0.0, s.init_scale, P)
        stored = db.minima()
        self.index = MinimaIndex.of(stored, self.groups, fallback_curvature=2.0 * problem.lam,
                                    energy_gradient=self.energy.energy_gradient, threads=threads)
        self.counters = dict.fromkeys(("steps", "quenches", "converged", "accepted", "new_minima", "saddles",
                                       "refinements", "nfev"), 0)
        shapes = {name: (a.shape, a.dtype, _WALKER_FIELDS[name]) for name, a in self.walkers.arrays().items()}
        params = {**asdict(s), "walkers": K, "steps": steps, "minutes": minutes, "threads": threads,
                  "resume": resume, "energy_backend": self.energy.backend, "hessian_used": self.hessian_mode}
        self.run_id = db.start_run(command, seed, params, shapes)
        self.opt = LBFGS(self.energy.energy_gradient, P, tol=s.tol, maxiter=s.maxiter, memory=s.memory,
                         maxstep=s.maxstep, threads=threads)
        self.pushes = np.zeros(K, np.int64)
        self.refining = np.zeros(K, bool)
        self.hits = stored.hits.tolist()  # times each stored minimum was found, this run's finds included
        self.pending_hits: list[int] = []  # repeat finds, written with the walker state (about once a second)

    # -- main loop -----------------------------------------------------------------------------
    def run(self) -> SampleResult:
        w = self.walkers
        t0, c0 = time.perf_counter(), time.process_time()
        deadline = t0 + 60.0 * self.minutes if self.minutes is not None else math.inf
        budget = self.steps if self.steps is not None else np.iinfo(np.int64).max
        w.steps[:] = 0  # the step budget counts within this run
        fresh = np.isinf(w.E)  # new walkers quench their random start; resumed ones take a step
        self.opt.add(np.stack([w.x[k] if fresh[k] else self._perturb(k) for k in range(self.K)]), np.arange(self.K))
        bar = _progress(self.progress, self.K * self.steps if self.steps else None)
        status, last_save = "completed", time.perf_counter()
        try:
            while len(self.opt):
                done = self.opt.step()
                self.counters["nfev"] = self.energy.nfev
                out_of_time = time.perf_counter() > deadline
                for j in range(len(done)):
                    k = int(done.tag[j])
                    if self._finish_quench(k, done, j):  # True: the walker's step is complete
                        w.steps[k] += 1
                        self.counters["steps"] += 1
                        bar.update(1)
                        if w.steps[k] < budget and not out_of_time:
                            self.opt.add(self._perturb(k)[None], np.array([k]))
                if len(done):
                    now = time.perf_counter()
                    if now - last_save > 1.0:
                        self._save(t0, c0)
                        last_save = now
                    self.db.flush()
                    bar.set_postfix(minima=len(self.index), acc=f"{self._acceptance():.2f}",
                                    q_per_s=f"{self.counters['quenches'] / max(now - t0, 1e-9):.0f}", refresh=False)
                if out_of_time:  # abandon plain quenches, finish refinements (each may be a new minimum)
                    status = "time budget reached"
                    self.opt.drop(np.flatnonzero(~self.refining))
        except KeyboardInterrupt:
            status = "interrupted by user"
        finally:
            bar.close()
            self._save(t0, c0)
            self.db.end_run(self.run_id, status)
        m = self.db.minima()
        return SampleResult(self.run_id, dict(self.counters), len(m), float(m.energy.min()) if len(m) else math.nan,
                            status)

    def _acceptance(self) -> float:
        return self.counters["accepted"] / max(1, self.counters["steps"])

    def _save(self, t0: float, c0: float) -> None:
        self.db.add_hits(np.array(self.pending_hits, dtype=np.int64))
        self.pending_hits.clear()
        counters = {**self.counters, "cpu_seconds": time.process_time() - c0, "wall_seconds": time.perf_counter() - t0}
        self.db.save_run_state(self.run_id, counters, self.walkers.arrays())
        self.db.flush()

    def _perturb(self, k: int) -> np.ndarray:
        w = self.walkers
        return w.x[k] + w.rngs[k].uniform(-w.step[k], w.step[k], self.P)

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
        if accept := self._metropolis(k, E, found):
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

    def _metropolis(self, k: int, E: float, found: int) -> bool:
        """Accept the walker's new minimum? exp(-dE/T), times (h_current/h_new)^visit_bias."""
        w, s = self.walkers, self.s
        if not math.isfinite(E):
            return False
        if not math.isfinite(w.E[k]):
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
            self.pending_hits.append(m.same)
            self.hits[m.same] += 1
            q = self.index.points[m.same]
            if p.gnorm < q.gnorm:  # a better-converged copy, in the stored copy's symmetry image
                self.db.update_minimum(m.same, E, m.aligned, grad_rms)
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
        i = self.db.add_minimum(E, x, grad_rms, eig, (self.run_id, walker, int(self.walkers.steps[walker])))
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
