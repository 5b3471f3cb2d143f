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

--case digits: the digits 64-32(tanh)-10 landscape of runs/digits.toml (2410 parameters, all
1797 samples standardised, lam 1e-4). The database is --digits-db if given, else sampled here
with runs/digits.toml's settings on one process for --digits-minutes (the same as
`landscape sample digits.h5 --config runs/digits.toml --minutes 2 --processes 1`). On a copy,
`landscape connect --lowest 4` (landscape.connecting, --digits-connect-minutes of wall time at
most); every transition state stored is recomputed from the file: RMS gradient <= 1e-10, exactly
one Lanczos eigenvalue below -1e-6, descent to the minima it records. pele runs on the same pairs
as above with all the database's minima known to it, its CPU time bounded by --pele-budget (its
potential raises once the budget is spent, ending the pair in progress); its transition states
are checked with our energy (RMS gradient < 1e-6, pele's tolerance, and the Lanczos test).

usage: OMP_NUM_THREADS=1 python benchmarks/connect.py [--case pairs|all|both|digits] [--pairs 4] [--seed 0]
       [--starts 2000] [--repeats 2] [--pele-budget 150] [--no-pele] [--discovery-seconds 60]
       [--digits-db PATH] [--digits-minutes 2] [--digits-connect-minutes 10]
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


class _Budget(Exception):
    """pele's CPU budget is spent."""


def digits_database(path: str | None, minutes: float, seed: int) -> str:
    """``path``, or a database sampled with runs/digits.toml's settings (one process) for ``minutes``."""
    import os
    import tempfile
    import tomllib

    if path:
        return path
    with open(os.path.join(os.path.dirname(__file__), os.pardir, "runs", "digits.toml"), "rb") as fh:
        cfg = tomllib.load(fh)
    problem = landscape.Problem.create("digits", **{k: (tuple(v) if k == "hidden" else v)
                                                    for k, v in cfg["problem"].items() if k != "data"})
    skip = ("minutes", "seed", "processes")
    settings = landscape.Settings(**{k: v for k, v in cfg["sample"].items() if k not in skip})
    out = os.path.join(tempfile.mkdtemp(), "digits.h5")
    landscape.sample(problem, out, settings, minutes=minutes, seed=seed, progress=False)
    return out


def verify_stored(path: str) -> tuple[int, int]:
    """(transition states, verified ones) of a database: recomputed from the file, RMS gradient <=
    1e-10, one Lanczos eigenvalue below -1e-6, descent to the recorded minima."""
    from landscape.database import Database

    with Database(path) as db:
        problem, m, ts = db.problem, db.minima(), db.transition_states()
    energy, groups = problem.energy(), problem.model.unit_groups()
    index = MinimaIndex.of(m, groups, 2.0 * problem.lam, energy.energy_gradient)
    good = 0
    for i in range(len(ts)):
        x = ts.coords[i]
        rms = float(np.sqrt(np.mean(energy.energy_gradient(x)[1] ** 2)))
        h = hessian.check(energy, x, "lanczos")
        state = transitions.TransitionState(float(ts.energy[i]), x, rms, h.eigenvalues, h.vector, h.eig_tol, True, True)
        d = transitions.descend(energy, state)
        ends = {index.match(Point(e.energy, e.x, e.grad_rms * np.sqrt(len(x)), grad=e.grad), ambiguity=False).same
                for e in (d.plus, d.minus)}
        good += rms <= 1e-10 and h.index == 1 and ends == {int(ts.minima[i, 0]), int(ts.minima[i, 1])}
    return len(ts), good


def digits_ours(path: str, seed: int, minutes: float) -> dict:
    import os
    import shutil
    import tempfile

    from landscape.connecting import connect

    work = os.path.join(tempfile.mkdtemp(), "connect.h5")
    shutil.copyfile(path, work)
    r = connect(work, lowest=4, seed=seed, minutes=minutes, progress=False)
    n, good = verify_stored(work)
    return dict(tool=f"landscape connect --lowest 4 (seed {seed})", pairs=[list(p) for p in r.pairs],
                connected=int(r.connected.sum()), cpu_s=round(r.cpu_seconds, 1), saddles=r.transition_states,
                verified=good, stored_ts=n, new_minima=r.new_minima, tried=r.attempts, status=r.status,
                rejected=r.rejected)


def digits_pele(path: str, pairs: list[tuple[int, int]], budget: float) -> dict:
    """pele's DoubleEndedConnect on the database's minima and ``pairs``, at most ``budget`` CPU-seconds."""
    from pele.landscape import DoubleEndedConnect
    from pele.optimize import lbfgs_cpp
    from pele.potentials import BasePotential
    from pele.storage import Database as PeleDatabase

    from landscape.database import Database

    logging.getLogger("pele").setLevel(logging.ERROR)
    with Database(path) as db:
        problem, m = db.problem, db.minima()
    energy = problem.energy()
    fg = numpy_energy(problem)
    count, c0 = [0], time.process_time()

    class Pot(BasePotential):
        def getEnergy(self, x):
            return self.getEnergyGradient(x)[0]

        def getEnergyGradient(self, x):
            if time.process_time() - c0 > budget:
                raise _Budget()
            count[0] += 1
            return fg(x)

    pot = Pot()
    pdb = PeleDatabase(db=":memory:", accuracy=1e-9)
    stored = {i: pdb.addMinimum(float(m.energy[i]), m.coords[i]) for i in range(len(m.energy))}
    lcp = dict(tsSearchParams=dict(orthogZeroEigs=None, tol=1e-6),
               pushoff_params=dict(quench=lambda x: lbfgs_cpp(x, pot, tol=1e-6, maxstep=0.1, M=10), stepmin=0.1),
               NEBparams=dict(image_density=3.0, max_images=40, iter_density=15.0))
    np.random.seed(0)
    connected, notes = 0, []
    for a, b in pairs:
        if time.process_time() - c0 > budget:
            notes.append(f"({a}, {b}) not started: budget spent")
            continue
        conn = DoubleEndedConnect(stored[a], stored[b], pot, lambda x1, x2: (float(np.linalg.norm(x1 - x2)), x1, x2),
                                  pdb, local_connect_params=lcp, verbosity=-1, niter=20)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                conn.connect()
            connected += bool(conn.success())
        except _Budget:
            notes.append(f"({a}, {b}) stopped: budget spent")
        except Exception as e:  # pele's failures are part of what is measured
            notes.append(f"({a}, {b}) raised {type(e).__name__}: {e}")
    cpu = time.process_time() - c0
    checks = []
    for ts in pdb.transition_states():
        rms = float(np.sqrt(np.mean(energy.energy_gradient(ts.coords)[1] ** 2)))
        checks.append(rms < 1e-6 and hessian.check(energy, ts.coords, "lanczos").index == 1)
    return dict(tool="pele 0.1.2 DoubleEndedConnect", pairs=[list(p) for p in pairs], connected=connected,
                cpu_s=round(cpu, 1), saddles=len(checks), verified=sum(checks), nfev=count[0], budget_s=budget,
                notes=notes)


def digits_case(a: argparse.Namespace) -> None:
    path = digits_database(a.digits_db, a.digits_minutes, a.seed)
    print(json.dumps(dict(case="digits", database=path)), flush=True)
    rows = [digits_ours(path, a.seed, a.digits_connect_minutes)]
    print(json.dumps(rows[0]), flush=True)
    if not a.no_pele:
        rows.append(digits_pele(path, [tuple(p) for p in rows[0]["pairs"]], a.pele_budget))
        print(json.dumps(rows[-1]), flush=True)
    print(f"{'tool':44s} {'joined':>7s} {'CPU s':>8s} {'saddles':>8s} {'verified':>9s}")
    for r in rows:
        print(f"{r['tool']:44s} {r['connected']:>3d} of {len(r['pairs'])} {r['cpu_s']:8.1f} {r['saddles']:8d} "
              f"{r['verified']:9d}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--starts", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--pele-budget", type=float, default=150.0)
    ap.add_argument("--no-pele", action="store_true")
    ap.add_argument("--case", choices=("pairs", "all", "both", "digits"), default="pairs")
    ap.add_argument("--discovery-seconds", type=float, default=60.0)
    ap.add_argument("--digits-db")
    ap.add_argument("--digits-minutes", type=float, default=2.0)
    ap.add_argument("--digits-connect-minutes", type=float, default=10.0)
    a = ap.parse_args()
    if a.case == "digits":
        digits_case(a)
        return
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
