"""Energy and minimiser benchmark: loss+gradient evaluations per CPU-second and per wall-second.

Case 1: Iris 4-5(tanh)-3, lam 1e-4, 43 parameters, all 150 samples standardised.
Case 2: digits 64-32(tanh)-10 with biases, 2410 parameters, all 1797 samples standardised.
For K = 1, 16, 256, 1024, 4096 walkers (digits: 1, 2, 4, 8, 16): our compiled kernel and the
torch-autograd energy, single-threaded (evaluations per CPU-second, process time) and on both
cores (per wall-second); beside a plain NumPy energy (the formulas of the peers' mlp_iris.py)
driven by scipy's L-BFGS-B on one network. Then evaluations per minimisation: our batched
L-BFGS against scipy's L-BFGS-B from the same 32 random starts (ours stops on RMS gradient 1e-6;
scipy on max |g_i| <= 1e-6, which implies it and is slightly stricter).

Reference figures on this machine (issue 2): pele ~22k evaluations per CPU-second on Iris,
1,150-1,210 on digits; the float64 matrix-product limit of one core ~2,800 on digits.

usage: python benchmarks/energy.py [--case iris|digits|all] [--seconds 2]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.optimize import minimize as scipy_minimize

import landscape
from landscape.energy import Energy
from landscape.minimize import minimize


def problems(case: str) -> list[tuple[str, landscape.Problem, tuple[int, ...]]]:
    out = []
    if case in ("iris", "all"):
        out.append(("iris 4-5-3", landscape.Problem.create("iris", hidden=(5,), lam=1e-4, test_fraction=0.0),
                    (1, 16, 256, 1024, 4096)))
    if case in ("digits", "all"):
        out.append(("digits 64-32-10", landscape.Problem.create("digits", hidden=(32,), lam=1e-4, test_fraction=0.0,
                                                                 scaling="standardize"), (1, 2, 4, 8, 16)))
    return out


def rate(E: Energy, K: int, seconds: float) -> tuple[float, float]:
    """(evaluations per CPU-second, per wall-second) of E on K random walkers."""
    w = np.random.default_rng(0).normal(size=(K, E.n_params))
    E.energy_gradient(w)
    n, c0, t0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        E.energy_gradient(w)
        n += K
    return n / (time.process_time() - c0), n / (time.perf_counter() - t0)


def numpy_energy(problem: landscape.Problem):
    """Plain NumPy loss+gradient of a one-hidden-layer MLP (the peers' formulas), one network."""
    ds = problem.dataset()
    X, y = ds.X_train, ds.y_train
    (d, H, C), lam, n = problem.model.widths, problem.lam, len(y)
    Y = np.eye(C)[y]

    def fg(th: np.ndarray) -> tuple[float, np.ndarray]:
        W1, b1 = th[:d * H].reshape(d, H), th[d * H:d * H + H]
        W2, b2 = th[d * H + H:d * H + H + H * C].reshape(H, C), th[-C:]
        A = np.tanh(X @ W1 + b1)
        Z = A @ W2 + b2
        Z -= Z.max(1, keepdims=True)
        logp = Z - np.log(np.exp(Z).sum(1, keepdims=True))
        dZ = (np.exp(logp) - Y) / n
        dA = (dZ @ W2.T) * (1 - A * A)
        g = np.concatenate([(X.T @ dA).ravel(), dA.sum(0), (A.T @ dZ).ravel(), dZ.sum(0)]) + 2 * lam * th
        return float(-(Y * logp).sum() / n + lam * th @ th), g

    return fg


def scipy_rate(fg, P: int, seconds: float) -> tuple[float, float]:
    """Evaluations per CPU-second and wall-second of L-BFGS-B minimisations from random starts."""
    n = [0]

    def counted(w):
        n[0] += 1
        return fg(w)

    rng = np.random.default_rng(1)
    c0, t0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        scipy_minimize(counted, rng.normal(size=P), jac=True, method="L-BFGS-B",
                       options=dict(gtol=1e-6, ftol=0, maxiter=100000, maxcor=10))
    return n[0] / (time.process_time() - c0), n[0] / (time.perf_counter() - t0)


def evaluations_per_minimisation(problem: landscape.Problem, starts: int = 32) -> None:
    E = problem.energy()
    x0 = np.random.default_rng(2).normal(scale=0.5, size=(starts, E.n_params))
    ours = minimize(E.energy_gradient, x0, tol=1e-6)
    fevs, rms = [], []
    for x in x0:
        n = [0]

        def fg(w):
            n[0] += 1
            e, g = E.energy_gradient(w)
            return float(e[0]), g[0]

        r = scipy_minimize(fg, x, jac=True, method="L-BFGS-B",
                           options=dict(gtol=1e-6, ftol=0, maxiter=100000, maxcor=10))
        fevs.append(n[0])
        rms.append(np.sqrt(np.mean(r.jac ** 2)))
    print(f"  evaluations per minimisation from {starts} random starts (RMS grad 1e-6): ours "
          f"{ours.nfev.mean():.0f} (median {np.median(ours.nfev):.0f}, all converged: {ours.converged.all()}), "
          f"scipy L-BFGS-B {np.mean(fevs):.0f} (median {np.median(fevs):.0f}, converged on RMS: "
          f"{np.mean(np.array(rms) <= 1e-6):.0%})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", default="all", choices=("iris", "digits", "all"))
    ap.add_argument("--seconds", type=float, default=2.0)
    a = ap.parse_args()
    for name, problem, Ks in problems(a.case):
        print(f"# {name} ({problem.model.n_params} parameters)")
        print(f"  {'energy':<10} {'K':>5} {'eval/CPU-s 1 thread':>20} {'eval/wall-s 2 threads':>22}")
        for backend in ("kernel", "autograd"):
            for K in Ks:
                torch.set_num_threads(1)
                E1 = problem.energy(backend=backend, threads=1)
                cpu, _ = rate(E1, K, a.seconds)
                torch.set_num_threads(2)
                E2 = problem.energy(backend=backend, threads=2)
                _, wall = rate(E2, K, a.seconds)
                print(f"  {backend:<10} {K:>5} {cpu:>20,.0f} {wall:>22,.0f}", flush=True)
        torch.set_num_threads(1)
        cpu, wall = scipy_rate(numpy_energy(problem), problem.model.n_params, a.seconds)
        print(f"  {'numpy+scipy L-BFGS-B':<22} 1 {cpu:>14,.0f} {wall:>22,.0f}  (one network, 1 thread)")
        evaluations_per_minimisation(problem)


if __name__ == "__main__":
    main()
