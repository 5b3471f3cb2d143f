"""Transition states benchmark: landscape.transitions.connect beside pele's DoubleEndedConnect on
the same pairs of minima, in one invocation (pele where ``import pele`` works: pip install
pele==0.1.2).

Landscape (as in shared/peers/landscape): Iris 4-5(tanh)-3, lam 1e-4, all 150 samples
standardised. The lowest minima come from L-BFGS minimisations from --starts seeded normal
starts, refined to RMS 1e-10, matched under the network's symmetries and Hessian-checked. The
lowest is connected to each of the next --pairs lowest, all pairs in one call; CPU seconds are
the call's own. Every transition state found is verified independently: RMS gradient <= 1e-10,
exactly one eigenvalue of the full Hessian below -1e-6 max(1, |largest|) (Energy.hessian and
numpy's eigvalsh), and the minima reached by descending from it are the ones it records. The
call is repeated with the same seed (--repeats) to check that the result is the same.

pele runs as shared/peers/landscape/bench_pele_connect.py ran it (its run 2 settings: quench
maxstep 0.1, push-off 0.1, image density 3, at most 40 images, iteration density 15, TS search
tolerance 1e-6 without zero-mode projection, 20 connect cycles, plain Euclidean distance: pele
does not know the network's symmetries; its own NumPy energy, one network at a time), each pair
by itself, stopping new pairs once --pele-budget CPU-seconds are used. Its transition states are
checked as that script checks them (finite-difference Hessian, RMS gradient < 1e-6).

--case all: a discovery database (runs/iris_discovery.toml's settings, --discovery-seconds of
sampling), then `landscape connect --all` on it through the database (landscape.connecting):
every stored minimum joined to the global minimum; prints minima, pairs joined, transition
states, and the connect run's CPU seconds.

usage: OMP_NUM_THREADS=1 python benchmarks/connect.py [--case pairs|all|both] [--pairs 4] [--seed 0]
       [--starts 2000] [--repeats 2] [--pele-budget 150] [--no-pele] [--discovery-seconds 60]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import time

import numpy as np

import landscape
from landscape import hessian, transitions
from landscape.identify import MinimaIndex, Point
from landscape.minimize import minimize

from energy import numpy_energy  # benchmarks/energy.py: the peers' NumPy formulas

PELE_ELSEWHERE = ("measured elsewhere, from ../shared/peers/landscape/bench_pele_connect.py: "
                  "3 of 4 pairs in 33 CPU-seconds")


def lowest_minima(problem: landscape.Problem, starts: int, seed: int) -> MinimaIndex:
    """An index of the distinct minima reached from ``starts`` N(0, 1) starts, ids in energy order."""
    E, groups = problem.energy(), problem.model.unit_groups()
    r = minimize(E.energy_gradient, np.random.default_rng(seed).normal(size=(starts, E.n_params)), tol=1e-10,
                 memory=60)
    index = MinimaIndex(groups, 2.0 * problem.lam, E.energy_gradient)
    for j in np.argsort(r.energy):
        p = Point(float(r.energy[j]), r.x[j], float(r.grad_rms[j]) * np.sqrt(E.n_params), grad=r.grad[j])
        if not r.converged[j] or index.match(p, ambiguity=False).same is not None:
            continue
        h = hessian.check(E, r.x[j], "full")
        if not h.saddle:
            index.add(len(index), Point(p.energy, p.x, p.gnorm, float(h.eigenvalues[0]), p.grad))
    return index


def verified(energy, index: MinimaIndex, c: transitions.Connection) -> bool:
    """RMS gradient <= 1e-10, one negative eigenvalue of the full Hessian, descent to the recorded minima."""
    x = c.ts.x
    rms = float(np.sqrt(np.mean(energy.energy_gradient(x)[1] ** 2)))
    lam = np.linalg.eigvalsh(energy.hessian(x))
    one_negative = int((lam < -1e-6 * max(1.0, abs(lam[-1]))).sum()) == 1
    d = transitions.descend(energy, c.ts)
    ends = []
    for m in (d.plus, d.minus):
        ends.append(index.match(Point(m.energy, m.x, m.grad_rms * np.sqrt(len(x)), grad=m.grad), ambiguity=False).same)
    return rms <= 1e-10 and one_negative and ends == [c.minimum_plus, c.minimum_minus]


def ours(problem: landscape.Problem, pairs: list[tuple[int, int]], starts: int, seed: int) -> dict:
    energy, groups = problem.energy(), problem.model.unit_groups()
    index = lowest_minima(problem, starts, 0)
    c0 = time.process_time()
    res = transitions.connect(energy, groups, index, pairs, seed=seed)
    cpu = time.process_time() - c0
    good = sum(verified(energy, index, c) for c in res.connections)
    return dict(tool=f"landscape.transitions (seed {seed})", cpu_s=round(cpu, 2), pairs=len(pairs),
                connected=int(res.connected.sum()), saddles=len(res.connections), verified=good,
                new_minima=len(res.minima), tried=len(res.tried), nfev=res.nfev, rejected=res.rejected,
                status=res.status, fingerprint=[round(c.ts.energy, 12) for c in res.connections])


def pele_connect(problem: landscape.Problem, pairs: list[tuple[int, int]], starts: int, budget: float) -> dict:
    """pele's DoubleEndedConnect on the same minima and pairs (see the module docstring)."""
    from pele.landscape import DoubleEndedConnect
    from pele.optimize import lbfgs_cpp
    from pele.potentials import BasePotential
    from pele.storage import Database

    logging.getLogger("pele").setLevel(logging.ERROR)  # its connect logs every cycle to stdout
    fg = numpy_energy(problem)
    count = [0]

    class Pot(BasePotential):
        def getEnergy(self, x):
            return self.getEnergyGradient(x)[0]

        def getEnergyGradient(self, x):
            count[0] += 1
            return fg(x)

    pot = Pot()
    index = lowest_minima(problem, starts, 0)
    db = Database(db=":memory:", accuracy=3e-8)
    stored = {i: db.addMinimum(index.points[i].energy, index.points[i].x) for i in sorted(index.points)}
    lcp = dict(tsSearchParams=dict(orthogZeroEigs=None, tol=1e-6),
               pushoff_params=dict(quench=lambda x: lbfgs_cpp(x, pot, tol=1e-6, maxstep=0.1, M=10), stepmin=0.1),
               NEBparams=dict(image_density=3.0, max_images=40, iter_density=15.0))
    np.random.seed(0)
    c0 = time.process_time()
    connected = 0
    for a, b in pairs:
        if time.process_time() - c0 > budget:
            break
        conn = DoubleEndedConnect(stored[a], stored[b], pot, lambda x1, x2: (float(np.linalg.norm(x1 - x2)), x1, x2),
                                  db, local_connect_params=lcp, verbosity=-1, niter=20)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pele prints as it refines
                conn.connect()
            connected += bool(conn.success())
        except Exception as e:  # pele's failures are part of what is measured
            print(f"pele: pair ({a}, {b}) raised {type(e).__name__}: {e}")
    cpu = time.process_time() - c0
    checks = []
    for ts in db.transition_states():
        h = pot.NumericalHessian(ts.coords, eps=1e-6)
        lam = np.linalg.eigvalsh(0.5 * (h + h.T))
        rms = float(np.sqrt(np.mean(fg(ts.coords)[1] ** 2)))
        checks.append(int((lam < -1e-8).sum()) == 1 and rms < 1e-6)
    return dict(tool="pele 0.1.2 DoubleEndedConnect", cpu_s=round(cpu, 2), pairs=len(pairs), connected=connected,
                saddles=len(checks), verified=sum(checks), nfev=count[0])


def connect_all(seconds: float, seed: int) -> dict:
    """Sample a discovery database for ``seconds``, then join every minimum to the global minimum."""
    import os
    import tempfile
    import tomllib

    from landscape.connecting import connect

    with open(os.path.join(os.path.dirname(__file__), os.pardir, "runs", "iris_discovery.toml"), "rb") as fh:
        cfg = tomllib.load(fh)
    problem = landscape.Problem.create("iris", hidden=(5,), lam=1e-4, test_fraction=0.0)
    settings = landscape.Settings(**{k: v for k, v in cfg["sample"].items() if k not in ("minutes", "seed")})
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "discovery.h5")
        landscape.sample(problem, path, settings, minutes=seconds / 60, seed=seed, progress=False)
        r = connect(path, every=True, seed=seed, progress=False)
    return dict(case="connect --all", discovery_seconds=seconds, minima=len(r.pairs) + 1,
                joined=int(r.connected.sum()), pairs_tried=r.attempts, transition_states=r.transition_states,
                new_minima=r.new_minima, status=r.status, cpu_seconds=round(r.cpu_seconds, 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--starts", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--pele-budget", type=float, default=150.0)
    ap.add_argument("--no-pele", action="store_true")
    ap.add_argument("--case", choices=("pairs", "all", "both"), default="pairs")
    ap.add_argument("--discovery-seconds", type=float, default=60.0)
    a = ap.parse_args()
    if a.case in ("all", "both"):
        print(json.dumps(connect_all(a.discovery_seconds, a.seed)), flush=True)
        if a.case == "all":
            return
    problem = landscape.Problem.create("iris", hidden=(5,), lam=1e-4, test_fraction=0.0)
    pairs = [(0, i) for i in range(1, a.pairs + 1)]
    rows = [ours(problem, pairs, a.starts, a.seed) for _ in range(a.repeats)]
    for r in rows:
        print(json.dumps({k: v for k, v in r.items() if k != "fingerprint"}))
    print(json.dumps(dict(same_result_every_repeat=all(r["fingerprint"] == rows[0]["fingerprint"] for r in rows))))
    if a.no_pele:
        return
    try:
        import pele  # noqa: F401
    except ImportError:
        print(json.dumps(dict(tool="pele", note=PELE_ELSEWHERE)))
        return
    print(json.dumps(pele_connect(problem, pairs, a.starts, a.pele_budget)))


if __name__ == "__main__":
    main()
