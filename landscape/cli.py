"""The ``landscape`` command: a thin face over the Python API (parse, call, print).

    landscape sample  DB [--config runs/iris.toml] [problem options] [sampler options]
    landscape score   DB --eps 0.01 0.05 0.1 [--method ibp|crown|ibp+crown] [--space logits|...]
                         [--split train|test]
    landscape inspect DB [--json] [--lowest N]

Errors are one line on stderr with exit status 2; nothing already in the database is lost.
Ctrl-C ends with exit status 130 (128 + SIGINT, as shells expect) after keeping what was written:
an interrupted ``sample`` stores its walkers, prints its summary and can be resumed. Output into a
pipe whose reader has stopped ends quietly with status 141 (128 + SIGPIPE).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import tomllib
from dataclasses import fields

import numpy as np

from . import __version__
from .basinhopping import HESSIAN_MODES, START_MODES, Settings, sample
from .data import SCALINGS, SOURCES, DataSpec, source_for_path
from .database import INTERRUPTED, Database, DatabaseError
from .estimates import chao1
from .loss import SENSITIVITY_METHODS, describe, from_dicts
from .models import ACTIVATIONS
from .problem import ARCHITECTURES, Problem
from .scoring import METHODS, SPACES, SPLITS, score

PROBLEM_KEYS = ("data", "data_path", "label_column", "scaling", "test_fraction", "split_seed", "limit", "arch",
                "hidden", "channels", "activation", "sharpness", "bias", "lam",
                "sensitivity_weight", "sensitivity_eps", "sensitivity_method", "sensitivity_space")
SAMPLER_KEYS = tuple(f.name for f in fields(Settings))
RUN_KEYS = ("steps", "minutes", "seed", "threads", "processes")
INTERRUPTED_EXIT = 130  # 128 + SIGINT
BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise SystemExit(_fail(f"{message} (see {self.prog} --help)"))


def _fail(message: str) -> int:
    print(f"landscape: error: {message}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="landscape", description="Explore the energy landscape of a neural-network loss.")
    p.add_argument("--version", action="version", version=f"landscape {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("sample", help="basin-hopping: collect minima into an HDF5 database")
    s.add_argument("db", help="database file (created if missing)")
    s.add_argument("--config", help="TOML file with [problem] and [sample] tables (command-line options win)")
    g = s.add_argument_group("problem (default: iris, one hidden layer of 5 tanh units, lam 1e-4)")
    g.add_argument("--data", choices=SOURCES)
    g.add_argument("--data-path", dest="data_path", help="file or directory for csv / npz / mnist data")
    g.add_argument("--label-column", dest="label_column")
    g.add_argument("--scaling", choices=SCALINGS)
    g.add_argument("--test-fraction", dest="test_fraction", type=float)
    g.add_argument("--split-seed", dest="split_seed", type=int)
    g.add_argument("--limit", type=int, help="use only the first N samples")
    g.add_argument("--arch", choices=ARCHITECTURES)
    g.add_argument("--hidden", type=int, nargs="+", help="hidden-layer widths of the MLP")
    g.add_argument("--channels", type=int, nargs="+", help="convolution channels of the CNN")
    g.add_argument("--activation", choices=tuple(ACTIVATIONS))
    g.add_argument("--sharpness", type=float,
                   help="beta of --activation softplus, log(1 + exp(beta x)) / beta (default 10; ReLU as beta -> inf)")
    g.add_argument("--no-bias", dest="bias", action="store_const", const=False)
    g.add_argument("--lam", type=float, help="L2 coefficient (> 0)")
    g.add_argument("--sensitivity-weight", dest="sensitivity_weight", type=float,
                   help="add weight x mean log-volume of the outputs' box over an l-inf ball to the loss "
                        "(needs --sensitivity-eps)")
    g.add_argument("--sensitivity-eps", dest="sensitivity_eps", type=float, help="radius of that ball (input units)")
    g.add_argument("--sensitivity-method", dest="sensitivity_method", choices=SENSITIVITY_METHODS,
                   help="bounds of that term (default ibp)")
    g.add_argument("--sensitivity-space", dest="sensitivity_space", choices=SPACES,
                   help="output space of that term (default logits)")
    h = s.add_argument_group("sampler (defaults: landscape.Settings)")
    h.add_argument("--walkers", type=int)
    h.add_argument("--temperature", type=float)
    h.add_argument("--step", type=float, help="initial step: max displacement per coordinate")
    h.add_argument("--fixed-step", dest="adaptive", action="store_const", const=False)
    h.add_argument("--target-acceptance", dest="target_acceptance", type=float)
    h.add_argument("--visit-bias", dest="visit_bias", type=float,
                   help="favour rarely found minima in the Metropolis test, for discovery (default 0: off)")
    h.add_argument("--start", choices=START_MODES,
                   help="where a step starts: the walker's minimum (default) or, for discovery, a known minimum "
                        "drawn uniformly (needs --fixed-step)")
    h.add_argument("--tol", type=float, help="RMS-gradient convergence of quenches")
    h.add_argument("--hessian", choices=HESSIAN_MODES)
    r = s.add_argument_group("run")
    r.add_argument("--steps", type=int, help="basin-hopping steps per walker")
    r.add_argument("--minutes", type=float, help="wall-time budget")
    r.add_argument("--seed", type=int)
    r.add_argument("--threads", type=int, help="threads of each process (default 1)")
    r.add_argument("--processes", type=int,
                   help="split the walkers over N worker processes feeding this one (default 1)")
    r.add_argument("--resume", action="store_true",
                   help="continue the walkers of the last run, with its settings unless given now")
    r.add_argument("--quiet", action="store_true", help="no progress bar")

    c = sub.add_parser("score", help="robustness scores (sensitivity) of every stored minimum")
    c.add_argument("db")
    c.add_argument("--eps", type=float, nargs="+", required=True, help="l-inf radii in input units")
    c.add_argument("--method", choices=METHODS, default="ibp", help="bounds (default ibp)")
    c.add_argument("--space", choices=SPACES, default="logits", help="output space (default logits)")
    c.add_argument("--split", choices=SPLITS, default="test", help="data points (default test)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")

    i = sub.add_parser("inspect", help="what is in a database")
    i.add_argument("db")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument("--lowest", type=int, default=10, help="how many of the lowest minima to list (default 10, 0: none)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        if args.command == "sample":
            return _sample(args, "landscape " + shlex.join(argv))
        if args.command == "score":
            return _score(args)
        return _inspect(args)
    except BrokenPipeError:  # the reader of stdout stopped (`landscape inspect DB | head`): end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush fails silently
        return BROKEN_PIPE_EXIT
    except (ValueError, DatabaseError, OSError) as e:
        return _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except KeyboardInterrupt:
        print("landscape: interrupted; what was written is kept", file=sys.stderr)
        return INTERRUPTED_EXIT


def _read_config(path: str) -> tuple[dict, dict]:
    if not os.path.isfile(path):
        raise ValueError(f"config file {path} does not exist (runs/ holds examples)")
    with open(path, "rb") as f:
        try:
            cfg = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML: {e}") from None
    allowed = {"problem": PROBLEM_KEYS, "sample": SAMPLER_KEYS + RUN_KEYS}
    for table, values in cfg.items():
        if table not in allowed or not isinstance(values, dict):
            raise ValueError(f"{path}: unknown table [{table}]; use [problem] and [sample]")
        for key in values:
            if key not in allowed[table]:
                raise ValueError(f"{path}: unknown key {key!r} in [{table}]; allowed: {', '.join(allowed[table])}")
    return cfg.get("problem", {}), cfg.get("sample", {})


def _sample(args: argparse.Namespace, command: str) -> int:
    cfg_problem, cfg_sample = _read_config(args.config) if args.config else ({}, {})
    given = {k: getattr(args, k) for k in PROBLEM_KEYS if getattr(args, k) is not None}
    prob_opts = {**cfg_problem, **given}
    run_opts = {**cfg_sample, **{k: getattr(args, k) for k in SAMPLER_KEYS + RUN_KEYS
                                 if getattr(args, k, None) is not None}}
    if not prob_opts and os.path.exists(args.db):
        with Database(args.db) as db:  # append to the file's own problem
            problem = db.problem
    else:
        problem = _problem(prob_opts)
    if args.resume and os.path.exists(args.db):
        with Database(args.db) as db:  # the last run's settings, unless given now
            runs = db.runs()
        last = runs[-1]["parameters"] if runs else {}
        # the walkers and their random streams come from the file (a config's values are not used)
        if args.walkers is not None and args.walkers != last.get("walkers", args.walkers):
            raise ValueError(f"--resume continues the last run's {last['walkers']} walkers, not {args.walkers}: "
                             "drop --walkers, or start a new run without --resume")
        if args.seed is not None:
            raise ValueError("--resume continues each walker's own random stream: drop --seed")
        run_opts = {**{k: last[k] for k in SAMPLER_KEYS + ("threads", "processes") if k in last}, **run_opts}
    settings = Settings(**{k: run_opts[k] for k in SAMPLER_KEYS if k in run_opts})
    steps, minutes = run_opts.get("steps"), run_opts.get("minutes")
    if steps is None and minutes is None:
        raise ValueError("give a budget: --steps N (per walker) or --minutes M")
    res = sample(problem, args.db, settings, steps=steps, minutes=minutes, seed=run_opts.get("seed", 0),
                 resume=args.resume, threads=run_opts.get("threads", 1),
                 processes=run_opts.get("processes", 1), progress=not args.quiet, command=command)
    c = res.counters
    print(f"run {res.run} ({res.status}): {c['steps']} steps, {c['quenches']} quenches "
          f"({c['converged']} converged), {c['new_minima']} new minima, acceptance "
          f"{c['accepted'] / max(1, c['steps']):.2f}; {args.db} now holds {res.n_minima} minima, "
          f"lowest E = {res.lowest_energy:.10g}")
    return INTERRUPTED_EXIT if res.status == INTERRUPTED else 0


def _score(args: argparse.Namespace) -> int:
    done = score(args.db, args.eps, method=args.method, space=args.space, split=args.split, progress=not args.quiet)
    for name, n in done.items():
        print(f"{name}: {n} minima scored" + ("" if n else " (all were scored already)"))
    return 0


def _problem(o: dict) -> Problem:
    data_fields = {"data_path": "path", "label_column": "label_column", "scaling": "scaling",
                   "test_fraction": "test_fraction", "split_seed": "split_seed", "limit": "limit"}
    name = o["data"] if "data" in o else source_for_path(o["data_path"]) if "data_path" in o else "iris"
    spec = DataSpec(name=name, **{v: o[k] for k, v in data_fields.items() if k in o})
    return Problem.create(spec, hidden=o.get("hidden", (5,)), activation=o.get("activation", "tanh"),
                          bias=o.get("bias", True), arch=o.get("arch", "mlp"), channels=o.get("channels", (8,)),
                          lam=o.get("lam", 1e-4), sharpness=o.get("sharpness"), sensitivity=_sensitivity(o))


def _sensitivity(o: dict) -> dict | None:
    """The sensitivity term's options among the problem options, or None when none is given."""
    given = {k[len("sensitivity_"):]: v for k, v in o.items() if k.startswith("sensitivity_")}
    if given and not {"weight", "eps"} <= set(given):
        raise ValueError("a sensitivity term needs both --sensitivity-weight and --sensitivity-eps "
                         "(sensitivity_weight and sensitivity_eps in [problem])")
    return given or None


def summary(db: Database, lowest: int = 10) -> dict:
    """What a database holds, as plain data (the ``inspect`` command prints this), with the
    ``lowest`` minima by energy (>= 0)."""
    if not lowest >= 0:
        raise ValueError(f"lowest must be >= 0, got {lowest}")
    m = db.minima(coords=False)
    order = np.argsort(m.energy)[:lowest]
    return {
        "path": db.path,
        "problem": db.problem.to_dict(),
        "n_params": db.problem.model.n_params,
        "n_minima": len(m),
        "total_hits": int(m.hits.sum()),
        "found_once": int((m.hits == 1).sum()),
        "found_twice": int((m.hits == 2).sum()),
        "chao1_minima": chao1(m.hits),
        "lowest": [{"id": int(i), "energy": float(m.energy[i]), "grad_rms": float(m.grad_rms[i]),
                    "hits": int(m.hits[i]), "lowest_eigenvalue": _nan_none(m.eigenvalues[i, 0]),
                    "first_found": [int(v) for v in m.first_found[i]]} for i in order],
        "scores": {name: {**{k: (v.item() if hasattr(v, "item") else v) for k, v in attrs.items()},
                          "scored": int(np.isfinite(values).sum()),
                          "lowest_minima": [_nan_none(values[i]) for i in order]}
                   for name, (values, attrs) in db.scores().items()},
        "runs": db.runs(),
    }


def _nan_none(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def _inspect(args: argparse.Namespace) -> int:
    with Database(args.db) as db:
        s = summary(db, args.lowest)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    p = s["problem"]
    model = p["model"]
    arch = (f"MLP {'-'.join(map(str, model['widths']))} ({model['activation']}, bias {model['bias']})"
            if model["kind"] == "mlp" else f"CNN channels {model['channels']} ({model['activation']})")
    print(f"{s['path']}: {arch}, {s['n_params']} parameters, data {p['data']['name']} "
          f"(test fraction {p['data']['test_fraction']}, sha256 {p['data_sha256'][:12]}), "
          f"loss {describe(from_dicts(p['loss']))}")
    print(f"{s['n_minima']} minima, found {s['total_hits']} times ({s['found_once']} once, {s['found_twice']} twice; "
          f"Chao1 estimate of all minima: {s['chao1_minima']:.1f})")
    if s["lowest"]:
        print(f"{'id':>6} {'energy':>18} {'grad_rms':>10} {'hits':>6} {'lowest eig':>11}  "
              "first found (run, walker, step)")
        for r in s["lowest"]:
            eig = "-" if r["lowest_eigenvalue"] is None else f"{r['lowest_eigenvalue']:.3e}"
            print(f"{r['id']:>6} {r['energy']:>18.12f} {r['grad_rms']:>10.2e} {r['hits']:>6} {eig:>11}  "
                  f"{tuple(r['first_found'])}")
    for name, sc in s["scores"].items():
        vals = ", ".join("-" if v is None else f"{v:.3f}" for v in sc["lowest_minima"])
        print(f"score {name}: {sc['scored']}/{s['n_minima']} minima; lowest minima: {vals}")
    for r in s["runs"]:
        c = r["counters"]
        print(f"run {r['id']}: {r['status']}; {r['started']} -> {r['ended'] or '?'}; seed {r['seed']}; "
              f"{int(c['steps'])} steps, {int(c['quenches'])} quenches, {int(c['new_minima'])} new minima, "
              f"{c['cpu_seconds']:.1f} CPU-s; {r['command']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
