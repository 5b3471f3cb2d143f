"""Basin-hopping benchmark: landscape's sampler beside scipy.optimize.basinhopping (and pele's
BasinHopping where ``import pele`` works: ``pip install pele==0.1.2``), on the same landscape,
in one invocation. The peers evaluate the loss with their own NumPy formulas (as the reference
figures were measured) or, with --peer-energy kernel, with our compiled energy one network at a
time, so that all tools pay the same per evaluation and the figures compare the samplers.

Landscapes (as in shared/peers/landscape): Iris 4-5(tanh)-3, lam 1e-4, all 150 samples
standardised, RMS gradient < 1e-6; digits 64-32(tanh)-10 with biases (2410 parameters), all 1797
samples standardised. Budgets are CPU-seconds (single-threaded: run with OMP_NUM_THREADS=1); ours
is also run on both cores, as two processes of twice the walkers (and, in the throughput case,
as one process of two threads), and timed per wall-second.

Cases:
  throughput  fixed step 1.0, T = 0.01: converged minimisations per CPU-second.
  digits      fixed step 0.3, T = 0.01: the same, ours once as pele works (stored at RMS 1e-6, no
              Hessian check) and once fully checked (refined to 1e-10, Lanczos eigenvalues).
  discovery   the peers adapt their steps (from 1.0); ours runs its discovery setting (fixed
              step 3, quench step cap 0.3, quench memory 20, each step from a known minimum
              drawn uniformly; --discovery-start walker: from the walker's own, with visit bias
              4): measured best, see the README and runs/iris_discovery.toml. Every minimum
              found by any tool is refined to RMS 1e-10 and matched under the network's
              symmetries; reports how many distinct minima each found, and whether ours, given a
              third of the peer's time, found every minimum the peer found. With --peer-seeds N,
              pele also runs with seeds 1..N-1 for the whole time, and each such run is scored
              the same way against pele's seed-0 run: the baseline of how completely the peer
              itself repeats its own finds.
  pairings    (not in 'all') pele's discovery runs with seeds 0..N-1 (--peer-seeds N) for the
              whole time; ours in its discovery setting with seeds F..F+R-1 (--first-seed F,
              default 1; --repeats R) for a third of it, as one process and as two processes of
              as many walkers each (on two cores). Reports how many (our run, pele run) pairings
              found every pele minimum, and as the baseline how many (pele run, other pele run)
              pairings did, each pele run with the whole time. As in the README: --seconds 60
              --repeats 16 --peer-seeds 3 (about 18 minutes).

usage: OMP_NUM_THREADS=1 python benchmarks/sampling.py [--case throughput|discovery|digits|pairings|all]
       [--seconds 60] [--walkers 256] [--peer-energy numpy|kernel] [--discovery-step 3.0]
       [--discovery-maxstep 0.3] [--discovery-memory 20] [--discovery-start uniform|walker]
       [--discovery-visit-bias 4.0] [--discovery-adaptive]
       [--repeats 1] [--first-seed 1] [--peer-seeds 1]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace

import numpy as np
import torch

import landscape
from landscape import hessian, identify
from landscape.database import Database
from landscape.estimates import chao1
from landscape.minimize import minimize

from energy import numpy_energy  # benchmarks/energy.py: the peers' NumPy formulas


def iris_problem() -> landscape.Problem:
    return landscape.Problem.create("iris", hidden=(5,), lam=1e-4, test_fraction=0.0)


def digits_problem() -> landscape.Problem:
    return landscape.Problem.create("digits", hidden=(32,), lam=1e-4, test_fraction=0.0, scaling="standardize")


def ours(problem: landscape.Problem, settings: landscape.Settings, seconds: float, threads: int = 1,
         seed: int = 0, processes: int = 1) -> dict:
    """Run our sampler for ``seconds`` of wall time; CPU time is the run's own count (its
    processes' together)."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bench.h5")
        res = landscape.sample(problem, path, settings, minutes=seconds / 60, seed=seed, threads=threads,
                               processes=processes, progress=False)
        with Database(path) as db:
            m = db.minima()
    c = res.counters
    wall, cpu = c["wall_seconds"], c["cpu_seconds"]
    return dict(tool=f"landscape (K={settings.walkers}, processes={processes}, threads={threads}, seed={seed})",
                cpu_s=round(cpu, 1), wall_s=round(wall, 1), quenches=c["quenches"], converged=c["converged"],
                nfev=c["nfev"], conv_per_cpu_s=round(c["converged"] / cpu, 1),
                conv_per_wall_s=round(c["converged"] / wall, 1),
                fev_per_quench=round(c["nfev"] / max(1, c["quenches"]), 1), stored_minima=len(m),
                refinements=c["refinements"], lowest=float(m.energy.min()), minima=m)


PEER_ENERGY = "numpy"


def peer_energy(problem: landscape.Problem):
    """One-network energy+gradient for the peers: 'numpy', the peers' own formulas (the issue's
    protocol, shared/peers/landscape/mlp_iris.py), or 'kernel', our compiled energy with K = 1, so
    that every tool pays the same per evaluation and only the samplers differ."""
    E = problem.energy()
    count = [0]
    base = numpy_energy(problem) if PEER_ENERGY == "numpy" else None

    def fg(w: np.ndarray) -> tuple[float, np.ndarray]:
        count[0] += 1
        if base is not None:
            return base(w)
        e, g = E.energy_gradient(w)
        return float(e[0]), g[0]

    return fg, count, E


def _peer_row(tool: str, E, cpu: float, wall: float, X: np.ndarray, nfev: int) -> dict:
    rms = np.sqrt(np.mean(E.energy_gradient(X)[1] ** 2, axis=1)) if len(X) else np.zeros(0)
    conv = rms < 1e-6
    return dict(tool=tool, cpu_s=round(cpu, 1), wall_s=round(wall, 1), quenches=len(X), converged=int(conv.sum()),
                nfev=nfev, conv_per_cpu_s=round(conv.sum() / cpu, 1), fev_per_quench=round(nfev / max(1, len(X)), 1),
                points=X[conv])


def scipy_bh(problem: landscape.Problem, step: float, fixed: bool, seconds: float) -> dict:
    """scipy.optimize.basinhopping with L-BFGS-B, as in shared/peers/landscape/bench_scipy_bh.py."""
    from scipy.optimize import basinhopping

    torch.set_num_threads(1)
    fg, count, E = peer_energy(problem)
    log: list[np.ndarray] = []
    c0, t0 = time.process_time(), time.perf_counter()
    x0 = np.random.default_rng(0).normal(size=problem.model.n_params)
    basinhopping(fg, x0, niter=10 ** 7, T=0.01, stepsize=step, interval=10 ** 9 if fixed else 50, seed=0,
                 minimizer_kwargs=dict(method="L-BFGS-B", jac=True,
                                       options=dict(maxiter=100000, gtol=1e-7, ftol=0.0, maxcor=10)),
                 callback=lambda x, f, acc: log.append(x.copy()) or time.process_time() - c0 >= seconds)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    return _peer_row(f"scipy basinhopping + L-BFGS-B ({PEER_ENERGY} energy)", E, cpu, wall, np.array(log), count[0])


def pele_bh(problem: landscape.Problem, step: float, fixed: bool, seconds: float, seed: int = 0) -> dict | None:
    """pele's BasinHopping with lbfgs_cpp(tol=1e-6, maxstep=1.0, M=10), as in
    shared/peers/landscape/bench_pele_bh.py --tuned (its random steps and start from ``seed``);
    None where pele is not installed."""
    try:
        from pele.basinhopping import BasinHopping
        from pele.optimize import lbfgs_cpp
        from pele.potentials import BasePotential
        from pele.storage import Database as PeleDatabase
        from pele.takestep import AdaptiveStepsize, RandomDisplacement
    except ImportError:
        return None
    torch.set_num_threads(1)
    fg, count, E = peer_energy(problem)

    class Pot(BasePotential):
        def getEnergy(self, x):
            return fg(x)[0]

        def getEnergyGradient(self, x):
            return fg(x)

    pot, log = Pot(), []

    def quench(x):
        r = lbfgs_cpp(x, pot, tol=1e-6, maxstep=1.0, M=10)
        log.append(np.array(r.coords))
        return r

    np.random.seed(seed)
    take = AdaptiveStepsize(RandomDisplacement(stepsize=step), acc_ratio=0.5, interval=10 ** 9 if fixed else 50)
    db = PeleDatabase(db=":memory:", accuracy=3e-8)
    x0 = np.random.default_rng(seed).normal(size=problem.model.n_params)
    c0, t0 = time.process_time(), time.perf_counter()
    bh = BasinHopping(x0, pot, take, storage=db.minimum_adder(), temperature=0.01, quench=quench, outstream=None,
                      insert_rejected=True)
    while time.process_time() - c0 < seconds:
        bh.run(5)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    row = _peer_row(f"pele 0.1.2 BasinHopping + lbfgs_cpp ({PEER_ENERGY} energy, seed {seed})", E, cpu, wall,
                    np.array(log), count[0])
    row["pele_db_minima"] = db.number_of_minima()
    return row


def _stored(problem: landscape.Problem, minima: landscape.database.Minima) -> identify.MinimaIndex:
    """An index of stored minima (each at RMS 1e-10 with its lowest eigenvalue)."""
    return identify.MinimaIndex.of(minima, problem.model.unit_groups(), 2 * problem.lam)


def _distinct(problem: landscape.Problem, points: list[identify.Point]) -> identify.MinimaIndex:
    """An index of the distinct minima among refined ``points`` (the first of each)."""
    own = identify.MinimaIndex(problem.model.unit_groups(), 2 * problem.lam)
    for p in points:
        if own.match(p).same is None:
            own.add(len(own), p)
    return own


def _count(problem: landscape.Problem, ref: identify.MinimaIndex, points: list[identify.Point]) -> tuple[int, int]:
    """(distinct minima among refined ``points``, how many of those ``ref`` lacks)."""
    own = _distinct(problem, points)
    return len(own), sum(ref.match(p).same is None for p in own.points.values())


def _refined(problem: landscape.Problem, X: np.ndarray) -> list[identify.Point]:
    """The rows of ``X`` (n, P) minimised to RMS 1e-10 that are minima (converged, no negative
    Hessian eigenvalue), as points that carry their lowest eigenvalue: identification's
    tolerances need it, as the sampler's do (without it, the fallback 2 lam splits a flat minimum,
    lowest eigenvalue ~3e-7 on Iris, into several "distinct" ones)."""
    E = problem.energy()
    r = minimize(E.energy_gradient, X, tol=1e-10)
    P = problem.model.n_params
    points = []
    for k in np.flatnonzero(r.converged):
        h = hessian.check(E, r.x[k], "full" if P <= 1000 else "lanczos")
        if not h.saddle:
            points.append(identify.Point(r.energy[k], r.x[k], r.grad_rms[k] * np.sqrt(P), float(h.eigenvalues[0])))
    return points


def show(row: dict) -> None:
    print(json.dumps({k: v for k, v in row.items() if k not in ("minima", "points")}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", default="all", choices=("throughput", "discovery", "digits", "pairings", "all"))
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--walkers", type=int, default=256)
    ap.add_argument("--discovery-step", type=float, default=3.0,
                    help="our step in the discovery case (the peers start at 1.0 and adapt)")
    ap.add_argument("--discovery-maxstep", type=float, default=0.3,
                    help="our quench's step cap in the discovery case (smaller: closer to steepest-descent basins)")
    ap.add_argument("--discovery-memory", type=int, default=20,
                    help="our quench's L-BFGS memory in the discovery case (60 measured worse than 20)")
    ap.add_argument("--discovery-start", choices=landscape.basinhopping.START_MODES, default="uniform",
                    help="where our steps start in the discovery case: a known minimum drawn uniformly, or the "
                         "walker's own minimum")
    ap.add_argument("--discovery-visit-bias", type=float, default=4.0,
                    help="our visit bias in the discovery case with --discovery-start walker (0: plain Metropolis)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="discovery: our third-of-the-time runs with seeds 0..repeats-1 (the peers run once); "
                         "pairings: with seeds first-seed..first-seed+repeats-1")
    ap.add_argument("--first-seed", type=int, default=1, help="pairings: our seeds start here (default 1)")
    ap.add_argument("--peer-seeds", type=int, default=1,
                    help="discovery: also run pele with seeds 1..N-1 and score each against its seed-0 run; "
                         "pairings: pele runs with seeds 0..N-1")
    ap.add_argument("--discovery-adaptive", action="store_true",
                    help="adapt our step toward 50%% acceptance in the discovery case (default: fixed)")
    ap.add_argument("--peer-energy", choices=("numpy", "kernel"), default="numpy",
                    help="the peers' energy: their own NumPy formulas (default) or our compiled kernel")
    a = ap.parse_args()
    global PEER_ENERGY
    PEER_ENERGY = a.peer_energy
    cases = ("throughput", "discovery", "digits") if a.case == "all" else (a.case,)
    problem = iris_problem()
    if "throughput" in cases:
        print("# throughput: Iris 4-5-3, fixed step 1.0, T 0.01 (pele 0.1.2: ~120 converged quenches per CPU-s)")
        s = landscape.Settings(walkers=a.walkers, step=1.0, adaptive=False, temperature=0.01)
        show(ours(problem, s, a.seconds))
        show(ours(problem, s, a.seconds, threads=2))
        show(ours(problem, replace(s, walkers=2 * a.walkers), a.seconds, processes=2))
        show(scipy_bh(problem, 1.0, True, a.seconds))
        show(pele_bh(problem, 1.0, True, a.seconds) or {"tool": "pele", "skipped": "not installed"})
    discovery = landscape.Settings(walkers=a.walkers, step=a.discovery_step, adaptive=a.discovery_adaptive,
                                   temperature=0.01, maxstep=a.discovery_maxstep, memory=a.discovery_memory,
                                   visit_bias=a.discovery_visit_bias, start=a.discovery_start)
    if "discovery" in cases:
        print("# discovery: Iris 4-5-3, T 0.01, peers' steps adaptive from 1.0 (pele: 78-90 stored minima, "
              "68-72 after clustering energies at 1e-5)")
        s = discovery
        full = ours(problem, s, a.seconds)
        thirds = {n: [ours(problem, replace(s, walkers=n * a.walkers), a.seconds / 3, seed=seed, processes=n)
                      for seed in range(a.repeats)] for n in (1, 2)}
        for row in (full, *thirds[1], *thirds[2]):
            show(row)
        peers = [r for r in (scipy_bh(problem, 1.0, False, a.seconds), pele_bh(problem, 1.0, False, a.seconds)) if r]
        for peer in peers:
            show(peer)
            peer["refined"] = _refined(problem, peer["points"])
            for n, name in ((1, "a third of the CPU time"), (2, "a third of the time, on 2 cores")):
                missed = [_count(problem, _stored(problem, row["minima"]), peer["refined"]) for row in thirds[n]]
                print(json.dumps({"peer": peer["tool"], "peer_distinct_minima": missed[0][0],
                                  f"of_which_ours_missed_in_{name.replace(' ', '_')}_per_seed": [m for _, m in missed]}))
        pele = [p for p in peers if p["tool"].startswith("pele")]
        for seed in range(1, a.peer_seeds if pele else 1):
            again = pele_bh(problem, 1.0, False, a.seconds, seed=seed)
            show(again)
            again["refined"] = _refined(problem, again["points"])
            mine = _distinct(problem, again["refined"])
            print(json.dumps({"peer": again["tool"], "distinct_minima": len(mine),
                              "of_pele_seed_0_minima_missed_by_this_run": _count(problem, mine, pele[0]["refined"])[1]}))
            peers.append(again)
        everything = [p for peer in peers for p in peer["refined"]] + [
            identify.stored_point(row["minima"], i) for rows in thirds.values() for row in rows
            for i in range(len(row["minima"]))]
        _, missing = _count(problem, _stored(problem, full["minima"]), everything)
        print(json.dumps({"distinct_minima_ours_full_run": len(full["minima"]),
                          "found_by_the_other_runs_but_not_by_ours_full_run": missing,
                          "union": len(full["minima"]) + missing,
                          "chao1_estimate_from_ours_full_run": round(chao1(full["minima"].hits), 1)}))
    if "pairings" in cases:
        print(f"# pairings: does a run of ours, given a third of the time, find every minimum of a pele run? "
              f"(pele seeds 0..{a.peer_seeds - 1}; ours seeds {a.first_seed}..{a.first_seed + a.repeats - 1}, "
              "one process, then two on two cores)")
        peers = [pele_bh(problem, 1.0, False, a.seconds, seed=seed) for seed in range(a.peer_seeds)]
        if None in peers:
            show({"tool": "pele", "skipped": "not installed"})
            return
        refined = [_refined(problem, p["points"]) for p in peers]
        indexes = [_distinct(problem, points) for points in refined]
        missed = [[_count(problem, indexes[i], refined[j])[1] for j in range(len(peers)) if j != i]
                  for i in range(len(peers))]
        flat = [m for row in missed for m in row]
        print(json.dumps({"pele": f"each run, {a.seconds:g} s, against each other pele run",
                          "pairings_with_no_miss": sum(m == 0 for m in flat), "pairings": len(flat),
                          "mean_missed": round(float(np.mean(flat)), 2) if flat else None,
                          "missed_per_run_and_other_run": missed}), flush=True)
        for n in (1, 2):
            missed = []
            for seed in range(a.first_seed, a.first_seed + a.repeats):
                row = ours(problem, replace(discovery, walkers=n * a.walkers), a.seconds / 3, seed=seed, processes=n)
                index = _stored(problem, row["minima"])
                missed.append([_count(problem, index, points)[1] for points in refined])
            flat = [m for per_seed in missed for m in per_seed]
            print(json.dumps({"ours": f"processes={n}, K={n * a.walkers}, {a.seconds / 3:g} s each",
                              "pairings_with_no_miss": sum(m == 0 for m in flat), "pairings": len(flat),
                              "mean_missed": round(float(np.mean(flat)), 2), "missed_per_seed_and_pele_run": missed}),
                  flush=True)
    if "digits" in cases:
        print("# digits 64-32-10: fixed step 0.3, T 0.01 (pele: 14.4 converged quenches per CPU-s, 80 evaluations each)")
        d = digits_problem()
        # like pele: stored at RMS 1e-6, no Hessian check; 32 walkers per process (measured best on one
        # thread: 32 > 64 > 128)
        for n in (1, 2):
            quench_only = landscape.Settings(walkers=32 * n, step=0.3, adaptive=False, temperature=0.01,
                                             hessian="none", refine_tol=1e-6)
            show({**ours(d, quench_only, a.seconds, processes=n), "mode": "quenches at 1e-6, no refinement or Hessian check"})
        checked = landscape.Settings(walkers=32, step=0.3, adaptive=False, temperature=0.01, hessian="lanczos")
        show({**ours(d, checked, a.seconds), "mode": "refined to 1e-10, Lanczos Hessian check"})
        show(scipy_bh(d, 0.3, True, a.seconds))
        show(pele_bh(d, 0.3, True, a.seconds) or {"tool": "pele", "skipped": "not installed"})


if __name__ == "__main__":
    main()
