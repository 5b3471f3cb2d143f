"""Database benchmark: how a large file of minima is written and read back.

Writes ``--minima`` N minima of the digits 64-32(tanh)-10 problem (2410 parameters; random
coordinates, as many rows as a quench-only digits run stores in about N / 2,200 minutes) through
landscape.database, flushing every 1,000 rows, then prints:
  - appends per second (each row checksummed, Fletcher-32 per chunk);
  - Database.minima() and Database.minima(coords=False): seconds and MB read;
  - Database.coords(rows) for 128 scattered rows (what `score` reads per batch);
  - `landscape inspect FILE` in a subprocess: wall seconds and peak memory;
  - Database.table(): the minima and their scores as a pandas DataFrame (where the schema has it);
  - building the identification index from the file's minima (what `sample` does before appending).

usage: OMP_NUM_THREADS=1 python benchmarks/database.py [--minima 50000] [--problem digits|iris]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import landscape
from landscape import identify
from landscape.database import Database


# `landscape inspect PATH` in a fresh process that reports its own peak resident memory (KiB) on
# stderr: VmHWM, as ru_maxrss would also count the parent's pages at the fork (Linux)
INSPECT = ("import contextlib, io, sys\n"
           "from landscape.cli import main\n"
           "with contextlib.redirect_stdout(io.StringIO()):\n"
           "    main(['inspect', sys.argv[1]])\n"
           "print([line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0], "
           "file=sys.stderr)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minima", type=int, default=50000)
    ap.add_argument("--problem", choices=("digits", "iris"), default="digits")
    a = ap.parse_args()
    problem = (landscape.Problem.create("digits", hidden=(32,), lam=1e-4, test_fraction=0.0, scaling="standardize")
               if a.problem == "digits" else landscape.Problem.create("iris", hidden=(5,), lam=1e-4, test_fraction=0.0))
    P = problem.model.n_params
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "big.h5")
        t = time.perf_counter()
        with Database(path, problem, "a") as db:
            rid = db.start_run("benchmarks/database.py", 0, {}, {"x": ((1, P), "f8", "unused")})
            for i in range(a.minima):
                db.add_minimum(float(rng.random()), rng.normal(size=P), 1e-11, np.array([1e-5, 2e-5, 3e-5]), (0, 0, i))
                if i % 1000 == 999:
                    db.flush()
            db.end_run(rid, "completed")
        write = time.perf_counter() - t
        print(json.dumps({"problem": a.problem, "n_params": P, "minima": a.minima,
                          "file_mb": round(os.path.getsize(path) / 1e6, 1),
                          "appends_per_s": round(a.minima / write)}), flush=True)
        with Database(path) as db:
            for coords in (True, False):
                t = time.perf_counter()
                m = db.minima(coords=coords)
                mb = sum(v.nbytes for v in vars(m).values() if v is not None) / 1e6
                print(json.dumps({"read": f"minima(coords={coords})", "seconds": round(time.perf_counter() - t, 3),
                                  "mb": round(mb, 1)}), flush=True)
            rows = np.sort(rng.choice(a.minima, size=min(128, a.minima), replace=False))
            t = time.perf_counter()
            db.coords(rows)
            print(json.dumps({"read": f"coords of {len(rows)} scattered rows",
                              "seconds": round(time.perf_counter() - t, 4)}), flush=True)
            m = db.minima()
            if hasattr(db, "table"):  # schema 2 on; run at an older commit, the benchmark skips it
                t = time.perf_counter()
                db.table()
                print(json.dumps({"read": "table()", "seconds": round(time.perf_counter() - t, 3)}), flush=True)
        t = time.perf_counter()
        child = subprocess.run([sys.executable, "-c", INSPECT, path], check=True, capture_output=True, text=True)
        print(json.dumps({"command": "landscape inspect", "seconds": round(time.perf_counter() - t, 2),
                          "peak_mb": round(int(child.stderr) / 1024)}), flush=True)
        t = time.perf_counter()
        identify.MinimaIndex.of(m, problem.model.unit_groups(), 2 * problem.lam)
        print(json.dumps({"index": f"{a.minima} minima", "seconds": round(time.perf_counter() - t, 2)}), flush=True)


if __name__ == "__main__":
    main()
