"""Soak: random SIGKILL / SIGTERM / SIGINT sent to real `landscape` processes, and what each leaves.

    python benchmarks/soak.py [--trials 100] [--seed 0] [--dir DIR] [--quiet]

Each trial copies a small Iris database (4-3(tanh)-3) and, at random, runs one of:

- ``sample``: ``landscape sample --minutes 0.1`` (one or two processes) sent a random signal at a
  random time in its first 8 seconds (torch's import included);
- ``end``: a ``--steps`` run sent its signal around its end (within about a second of when such a
  run ends: where it stores its last minima, saves its walkers and records its status);
- ``score``: ``landscape score`` (PGD accuracy at three radii, a few seconds) sent its signal at a
  random time before it would end.

A reader in this process follows the file while the command runs (an SWMR reader once the run
writes, as ``inspect`` reads it). Afterwards: does the file open (``landscape inspect`` exits 0);
minima lost (the most the reader saw, or the count the command's summary line reported, against
what is stored); then the command is resumed (``sample --resume`` / ``score`` again) and the
stored minima are checked for duplicates (two rows the project's identification calls the same
minimum, as tests/test_sampler.py checks) and the resume for doing nothing (exit status not 0, no
quench ending in a minimum, or scores still missing). The table: trials, files that open,
minima lost, duplicates, resumes that did nothing; the goal is N of N, 0, 0, 0.

``run_trials`` is the importable core (tests/test_soak.py runs a few trials).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

KINDS = ("sample", "end", "score")
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)
PROBLEM = ["--hidden", "3", "--test-fraction", "0", "--quiet"]
SCORE = ["--quantity", "pgd", "--pgd-steps", "100", "--eps", "0.1", "0.2", "0.3", "--split", "train", "--quiet"]
END_STEPS = 6  # steps per walker of an 'end' trial's run (about a second of sampling on Iris 4-3-3)


@dataclass
class Trial:
    """One trial: what was run and sent when (seconds after the start), and what it left."""

    kind: str
    signal: str
    delay: float
    processes: int = 1
    exit: int | None = None  # the killed command's exit status
    opens: bool = False  # landscape inspect exits 0 on the file
    seen: int = 0  # the most minima the reader saw, or the command reported
    stored: int = 0  # minima stored after the kill
    lost: int = 0
    duplicates: int = 0  # pairs of stored minima that are one minimum, after the resume
    resume_did_nothing: bool = False
    notes: list[str] = field(default_factory=list)


def run_trials(trials: int = 100, seed: int = 0, workdir: str | None = None, kinds: tuple[str, ...] = KINDS,
               log=print, cycle: bool = False) -> list[Trial]:
    """Run ``trials`` random trials (kinds drawn from ``kinds``, or taken in turn with ``cycle``) in
    ``workdir`` (a temporary folder if None); ``log`` gets one line per trial."""
    rng = random.Random(seed)
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-"))
        os.makedirs(workdir, exist_ok=True)
        base = os.path.join(workdir, "base.h5")
        if os.path.exists(base):
            os.remove(base)
        _cli(["sample", base, *PROBLEM, "--walkers", "8", "--steps", "5"])
        end_time = _timed(Trial("end", "", 0.0), base, workdir) if "end" in kinds else 0.0
        score_time = _timed(Trial("score", "", 0.0), base, workdir) if "score" in kinds else 0.0
        out = []
        for i in range(trials):
            kind = kinds[i % len(kinds)] if cycle else rng.choice(kinds)
            sig = rng.choice(SIGNALS)
            if kind == "end":
                delay = rng.uniform(max(0.5, end_time - 1.0), end_time + 0.2)
            elif kind == "score":
                delay = rng.uniform(0.5, score_time + 0.2)
            else:
                delay = rng.uniform(0.5, 8.0)
            t = Trial(kind, sig.name, round(delay, 2), processes=rng.choice((1, 1, 1, 2)) if kind == "sample" else 1)
            path = os.path.join(workdir, f"trial{i}.h5")
            shutil.copyfile(base, path)
            _trial(t, path, sig)
            log(f"{i + 1:>4} {t.kind:6} {t.signal:7} at {t.delay:5.2f} s (processes {t.processes}): exit {t.exit}, "
                f"opens {t.opens}, seen {t.seen}, stored {t.stored}, lost {t.lost}, duplicates {t.duplicates}, "
                f"resume did nothing {t.resume_did_nothing}{'; ' + '; '.join(t.notes) if t.notes else ''}")
            out.append(t)
            os.remove(path)
    return out


def table(results: list[Trial]) -> str:
    """The soak's table: trials, files that open, minima lost, duplicates, resumes that did nothing;
    one row per kind of trial and the total."""
    rows = [("", "trials", "files that open", "minima lost", "duplicates", "resumes that did nothing")]
    for kind in (*KINDS, "total"):
        r = [t for t in results if kind in (t.kind, "total")]
        if r:
            rows.append((kind, str(len(r)), f"{sum(t.opens for t in r)} of {len(r)}", str(sum(t.lost for t in r)),
                         str(sum(t.duplicates for t in r)), str(sum(t.resume_did_nothing for t in r))))
    widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths)))
                     for row in rows)


def _cli(argv: list[str]) -> tuple[int, str, str]:
    """``landscape argv`` in this process: (exit status, stdout, stderr)."""
    from landscape.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _command(t: Trial, path: str) -> list[str]:
    if t.kind == "score":
        return ["score", path, *SCORE]
    if t.kind == "end":
        return ["sample", path, "--resume", "--steps", str(END_STEPS), "--quiet"]
    return ["sample", path, "--resume", "--minutes", "0.1", "--processes", str(t.processes), "--quiet"]


def _popen(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "landscape.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _timed(t: Trial, base: str, workdir: str) -> float:
    """Seconds from the start of the command of trial ``t`` to its exit, unkilled."""
    path = os.path.join(workdir, "timing.h5")
    shutil.copyfile(base, path)
    start = time.monotonic()
    proc = _popen(_command(t, path))
    proc.communicate(timeout=300)
    elapsed = time.monotonic() - start
    os.remove(path)
    if proc.returncode != 0:
        raise RuntimeError(f"the timing run failed with exit {proc.returncode}")
    return elapsed


class _Reader(threading.Thread):
    """Follows ``path`` while a command writes it: once the superblock says it is open for SWMR
    writing (read from the bytes, without HDF5's lock, so the writer's own open is never refused),
    an SWMR reader counts the minima; ``seen`` is the most it saw."""

    def __init__(self, path: str):
        super().__init__(daemon=True)
        self.path, self.seen, self.stop = path, 0, threading.Event()

    def run(self) -> None:
        from landscape.database import Database

        while not self.stop.is_set():
            try:
                with open(self.path, "rb") as fh:
                    swmr = len(sb := fh.read(12)) == 12 and sb[11] != 0
                if swmr:
                    with Database(self.path) as db:
                        while not self.stop.is_set() and db.f.swmr_mode:
                            self.seen = max(self.seen, len(db))
                            time.sleep(0.02)
            except Exception:  # a file being written: whatever a read meets is retried
                pass
            time.sleep(0.02)


def _trial(t: Trial, path: str, sig: signal.Signals) -> None:
    from landscape.database import Database

    with Database(path) as db:
        before = len(db)
        hits_before = int(db.minima(coords=False).hits.sum())
    reader = _Reader(path)
    reader.start()
    proc = _popen(_command(t, path))
    try:
        proc.wait(timeout=t.delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        t.notes.append("did not end within 120 s of the signal")
    reader.stop.set()
    reader.join()
    t.exit = proc.returncode
    reported = re.search(r"now holds (\d+) minima", out)
    t.seen = max(reader.seen, int(reported.group(1)) if reported else 0, before)
    if err.strip() and t.exit not in (-9, 130, 143):
        t.notes.append(f"stderr: {err.strip().splitlines()[-1][:200]}")
    elif err.strip() and "interrupted" not in err and "Traceback" in err:
        t.notes.append(f"traceback: {err.strip().splitlines()[-1][:200]}")
    code, _, inspect_err = _cli(["inspect", path, "--lowest", "0"])
    t.opens = code == 0
    if not t.opens:
        t.notes.append(f"inspect: {inspect_err.strip()[:200]}")
        t.lost = t.seen
        return
    with Database(path) as db:
        t.stored = len(db)
    t.lost = max(0, t.seen - t.stored)
    if t.kind == "score":
        code, _, resume_err = _cli(["score", path, *SCORE])
        with Database(path) as db:
            missing = sum(int((~_finite(v)).sum()) for v, _ in db.scores().values())
            kinds = len(db.scores())
        t.resume_did_nothing = code != 0 or missing > 0 or kinds < 3
    else:
        code, _, resume_err = _cli(["sample", path, "--resume", "--steps", "2", "--quiet"])
        with Database(path) as db:
            hits_after = int(db.minima(coords=False).hits.sum())
        t.resume_did_nothing = code != 0 or hits_after <= max(hits_before, 0)
    if code != 0:
        t.notes.append(f"resume: {resume_err.strip()[:200]}")
    t.duplicates = _duplicates(path)


def _finite(v):
    import numpy as np

    return np.isfinite(v)


def _duplicates(path: str) -> int:
    """Pairs of stored minima that are the same minimum by the project's identification (energy
    and symmetry-aligned distance within the tolerances of landscape.identify)."""
    from landscape import identify
    from landscape.database import Database

    with Database(path) as db:
        m = db.minima()
        problem = db.problem
    groups = problem.model.unit_groups()
    points = [identify.stored_point(m, i) for i in range(len(m))]
    n = 0
    for a in range(len(m)):
        for b in range(a + 1, len(m)):
            e_tol, d_tol = identify.tolerances(points[a], points[b], 2 * problem.lam)
            if abs(m.energy[a] - m.energy[b]) <= e_tol and identify.distance(m.coords[a], m.coords[b], groups) <= d_tol:
                n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", help="working folder (default: a temporary one)")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--quiet", action="store_true", help="no line per trial")
    args = p.parse_args(argv)
    start = time.monotonic()
    results = run_trials(args.trials, args.seed, args.dir, tuple(args.kinds),
                         log=(lambda line: None) if args.quiet else (lambda line: print(line, flush=True)))
    print(table(results))
    print(f"{len(results)} trials in {time.monotonic() - start:.0f} s wall time (seed {args.seed})")
    bad = [t for t in results if not t.opens or t.lost or t.duplicates or t.resume_did_nothing]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
