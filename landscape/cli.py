"""The ``landscape`` command: a thin face over the Python API (parse, call, print).

    landscape sample  DB [--config runs/iris.toml] [problem options] [sampler options]
    landscape score   DB --eps 0.01 0.05 0.1 [--method ibp|crown|ibp+crown] [--space logits|...]
                         [--split train|test]
    landscape inspect DB [--json] [--lowest N]

Errors are one line on stderr with exit status 2; nothing already in the database is lost. A
``sample`` run that leaves the database without a minimum says why in one such line (exit 2).
Warnings of the sampler (e.g. a temperature that accepts every step) are one line each,
``landscape: warning: ...``. Ctrl-C at any moment ends with exit status 130 (128 + SIGINT, as shells
expect) after keeping what was written: an interrupted ``sample`` stores its walkers, prints its
summary and can be resumed. SIGTERM (``kill``, a batch system's end of a job) is handled as Ctrl-C is,
with exit status 143 (128 + SIGTERM); the handler is installed for the command only. Output into a pipe whose reader has stopped ends quietly with status
141 (128 + SIGPIPE). Arguments are parsed before torch and the heavy modules are imported, so
``--version`` and errors in the command line come at once. For ``sample`` and ``score`` the
command sets the process's allocator to keep freed memory (see landscape/allocator.py); the
Python API leaves it alone.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import tomllib
import warnings
from typing import TYPE_CHECKING, Callable, Iterator

from . import __version__, allocator, signals

if TYPE_CHECKING:
    from .basinhopping import SampleResult
    from .problem import Problem

PROBLEM_KEYS = ("data", "data_path", "label_column", "scaling", "test_fraction", "split_seed", "limit", "arch",
                "hidden", "channels", "activation", "sharpness", "bias", "lam",
                "sensitivity_weight", "sensitivity_eps", "sensitivity_method", "sensitivity_space")
RUN_KEYS = ("steps", "minutes", "seed", "threads", "processes")
INTERRUPTED_EXIT = 130  # 128 + SIGINT
TERMINATED_EXIT = 143  # 128 + SIGTERM
BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE
FORCE_HELP = ("take the file over from a writer recorded on another host whose lease (10 minutes from its last "
              "heartbeat) has not run out: only when that writer is known to be dead")


class _Parser(argparse.ArgumentParser):
    """One-line errors; ``build(parser)``, if given, adds the options when the parser is first
    used, so a command's options (whose choices come from modules that import torch) cost nothing
    until that command is parsed."""

    def __init__(self, *args, build: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._build = build

    def _built(self) -> None:
        if self._build is not None:
            build, self._build = self._build, None
            build(self)

    def parse_known_args(self, args=None, namespace=None):
        self._built()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._built()
        return super().format_help()

    def error(self, message: str) -> None:  # one line, exit 2
        raise SystemExit(_fail(f"{message} (see {self.prog} --help)"))


def _fail(message: str) -> int:
    print(f"landscape: error: {message}", file=sys.stderr)
    return 2


CONFIG_COMMANDS = ("score", "connect", "analyze", "train")  # read their own table of a --config file


def _parse(argv: list[str]) -> argparse.Namespace:
    """The parsed command line; for score, connect and analyze, a --config file's table of that
    command supplies every option not given on the command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in CONFIG_COMMANDS and args.config:
        sub = parser.commands[args.command]
        table = _read_config(args.config)[args.command]
        allowed = _config_keys(sub)
        for key in table:
            if key not in allowed:
                raise ValueError(f"{args.config}: unknown key {key!r} in [{args.command}]; allowed: "
                                 f"{', '.join(sorted(allowed))}")
        actions = {a.dest: a for a in sub._actions}
        sub.set_defaults(**{key: _config_value(args.config, args.command, actions[key], value)
                            for key, value in table.items()})
        args = parser.parse_args(argv)
    return args


def _config_value(path: str, command: str, action: argparse.Action, value: object) -> object:
    """A config table's ``value`` for the option of ``action``, checked as the command line
    would check it (a list where the option takes several values); ValueError naming the key."""
    key = f"{path}: {action.dest} in [{command}]"
    if action.nargs == 0:  # a switch (--all, --json)
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
        return value if value else action.default
    many = action.nargs in ("+", "*")
    items = value if many and isinstance(value, list) else [value]
    if many and not isinstance(value, list) or not items and action.nargs == "+":
        raise ValueError(f"{key} must be a list of one or more values, e.g. [{_example(action)}], got {value!r}")
    out = []
    for v in items:
        if action.type is _pair and isinstance(v, list) and len(v) == 2 and all(type(i) is int for i in v):
            v = f"{v[0]},{v[1]}"
        if action.type in (int, float) and (isinstance(v, bool) or not isinstance(v, (int, float))
                                            or action.type is int and not isinstance(v, int)):
            raise ValueError(f"{key} must be {'a whole number' if action.type is int else 'a number'}"
                             f"{' each' if many else ''}, got {v!r}")
        if action.type not in (int, float) and not isinstance(v, str):
            raise ValueError(f"{key} must be text{' each' if many else ''}, e.g. {_example(action)}, got {v!r}")
        if isinstance(v, str) and action.type is not None:
            try:
                v = action.type(v)
            except (argparse.ArgumentTypeError, ValueError) as e:
                raise ValueError(f"{key}: {e}") from None
        if action.choices is not None and v not in action.choices:
            raise ValueError(f"{key} must be one of {', '.join(map(str, action.choices))}, got {v!r}")
        out.append(v)
    return out if many else out[0]


def _example(action: argparse.Action) -> str:
    if action.choices:
        return ", ".join(f'"{c}"' for c in list(action.choices)[:2])
    return {int: "1", float: "0.1", _pair: '"0,1"'}.get(action.type, '"..."')


def _config_keys(sub: argparse.ArgumentParser) -> set[str]:
    """The options of a command that a config table may set."""
    return {a.dest for a in sub._actions if a.option_strings and a.dest not in ("help", "config", "quiet", "force")}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="landscape", description="Explore the energy landscape of a neural-network loss.",
                epilog="sample and score set the allocator to keep freed memory (see landscape/allocator.py)")
    p.add_argument("--version", action="version", version=f"landscape {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("sample", help="basin-hopping: collect minima into an HDF5 database", build=_sample_options)
    sub.add_parser("score", help="per-minimum quantities (sensitivity, accuracy, loss, pgd, verified, flatness)",
                   build=_score_options)
    sub.add_parser("connect", help="transition states joining stored minima (double-ended searches)",
                   build=_connect_options)
    sub.add_parser("analyze", help="disconnectivity graph, energy-robustness correlations, a report",
                   build=_analyze_options)
    sub.add_parser("train", help="train networks with an objective (or compare objectives), evaluate and store them",
                   build=_train_options)
    i = sub.add_parser("inspect", help="what is in a database")
    i.add_argument("db")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument("--lowest", type=int, default=10, help="how many of the lowest minima to list (default 10, 0: none)")
    p.commands = sub.choices
    return p


def _config_option(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--config", help=f"TOML file whose [{command}] table gives options (the command line wins)")


def _sample_options(s: argparse.ArgumentParser) -> None:
    from .basinhopping import HESSIAN_MODES, START_MODES
    from .data import SCALINGS, SOURCES
    from .loss import SENSITIVITY_METHODS
    from .models import ACTIVATIONS
    from .problem import ARCHITECTURES
    from .scoring import SPACES

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
    h.add_argument("--temperature", type=_number_or_auto,
                   help="Metropolis temperature (default 0.01), or auto: set from the walkers' first minima")
    h.add_argument("--step", type=float, help="initial step: max displacement per coordinate")
    h.add_argument("--fixed-step", dest="adaptive", action="store_const", const=False)
    h.add_argument("--target-acceptance", dest="target_acceptance", type=float)
    h.add_argument("--visit-bias", dest="visit_bias", type=float,
                   help="favour rarely found minima in the Metropolis test, for discovery (default 0: off)")
    h.add_argument("--start", choices=START_MODES,
                   help="where a step starts: the walker's minimum (default) or, for discovery, a known minimum "
                        "drawn uniformly (needs --fixed-step)")
    h.add_argument("--tol", type=float, help="RMS-gradient convergence of quenches")
    h.add_argument("--maxiter", type=int, help="iteration cap of a quench (default 10000)")
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
    r.add_argument("--force", action="store_true", help=FORCE_HELP)


def _number_or_auto(text: str) -> float | str:
    """--temperature: a number, or 'auto'."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or auto, got {text!r}") from None


def _score_options(c: argparse.ArgumentParser) -> None:
    from .flatness import Flatness
    from .scoring import AGGREGATIONS, METHODS, PGD, QUANTITIES, SPACES, SPLITS

    pgd, flatness = PGD(), Flatness()
    c.add_argument("db")
    _config_option(c, "score")
    c.add_argument("--eps", type=float, nargs="+", default=[],
                   help="l-inf radii in input units (needed by sensitivity, pgd and verified)")
    c.add_argument("--quantity", dest="quantities", nargs="+", choices=QUANTITIES, default=["sensitivity"], metavar="Q",
                   help="what to compute (default sensitivity): sensitivity; accuracy and loss (cross-entropy) on "
                   "every split; pgd (PGD robust accuracy); verified (verified accuracy); flatness (log-determinant "
                   "of the Hessian of E)")
    c.add_argument("--aggregation", nargs="+", choices=AGGREGATIONS, default=["mean_log"], metavar="A",
                   help="of the sensitivity over the points: mean_log (the mean log-volume, the default), log_mean "
                   "(the log of the mean volume)")
    c.add_argument("--method", choices=METHODS, default="ibp", help="bounds of the sensitivity (default ibp)")
    c.add_argument("--space", choices=SPACES, default="logits", help="output space (default logits)")
    c.add_argument("--verify-method", dest="verify_method", choices=METHODS, default="ibp+crown",
                   help="bounds of verified (default ibp+crown)")
    c.add_argument("--split", choices=SPLITS, help="data points of sensitivity, pgd and verified (default: the "
                   "test split where the problem has one, else the training split)")
    c.add_argument("--pgd-steps", dest="pgd_steps", type=int, metavar="N", default=pgd.steps,
                   help=f"PGD steps per restart (default {pgd.steps})")
    c.add_argument("--pgd-restarts", dest="pgd_restarts", type=int, metavar="N", default=pgd.restarts,
                   help=f"PGD random starts (default {pgd.restarts})")
    c.add_argument("--full-spectrum-max", dest="full_max", type=int, metavar="P", default=flatness.full_max,
                   help=f"flatness from the full Hessian spectrum up to this many parameters, above it by "
                   f"stochastic Lanczos quadrature (default {flatness.full_max})")
    c.add_argument("--probes", type=int, metavar="N", default=flatness.probes,
                   help=f"random probes of the quadrature (default {flatness.probes})")
    c.add_argument("--lanczos-steps", dest="lanczos_steps", type=int, metavar="N", default=flatness.steps,
                   help=f"Lanczos steps per probe (default {flatness.steps})")
    c.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of the PGD starts and of the probes (default 0)")
    c.add_argument("--data-path", dest="data_path", help="where the problem's data is now, if it moved "
                   "(its content hash is checked)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.add_argument("--force", action="store_true", help=FORCE_HELP)


def _connect_options(c: argparse.ArgumentParser) -> None:
    c.add_argument("db")
    _config_option(c, "connect")
    t = c.add_mutually_exclusive_group()
    t.add_argument("--pairs", nargs="+", type=_pair, metavar="A,B", help="pairs of minimum ids to join")
    t.add_argument("--lowest", type=int, default=4,
                   help="join the global minimum with each of the next N lowest minima (default 4)")
    t.add_argument("--all", dest="every", action="store_true", help="join every stored minimum to the global minimum")
    c.add_argument("--seed", type=int, default=0, help="seed of the searches (default 0)")
    c.add_argument("--max-attempts", dest="max_attempts", type=int,
                   help="pairs of minima tried at most (default 10 per target pair)")
    c.add_argument("--minutes", type=float, help="wall-time budget, checked between rounds of searches")
    c.add_argument("--data-path", dest="data_path", help="where the problem's data is now, if it moved "
                   "(its content hash is checked)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.add_argument("--force", action="store_true", help=FORCE_HELP)


def _train_options(t: argparse.ArgumentParser) -> None:
    from .train_cli import add_options

    add_options(t)


def _pair(text: str) -> tuple[int, int]:
    """--pairs: 'A,B', two minimum ids."""
    try:
        a, b = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a pair is two minimum ids as A,B, got {text!r}") from None
    return a, b


def _analyze_options(a: argparse.ArgumentParser) -> None:
    a.add_argument("db")
    _config_option(a, "analyze")
    a.add_argument("--out", help="folder for the figures, minima.csv, summary.json and report.html (required)")
    a.add_argument("--levels", type=int, default=20, help="energy levels of the disconnectivity graph (default 20)")
    a.add_argument("--resamples", type=int, default=2000,
                   help="bootstrap resamples of each correlation's interval (default 2000)")
    a.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    a.add_argument("--compare", nargs="+", metavar="DB",
                   help="compare DB's landscape with these (minima, energy spread, sensitivity, accuracy, "
                   "flatness): writes comparison.csv, .json and .md to --out and prints the table")
    a.add_argument("--eps", type=float, help="eps of the compared sensitivity (default: the loss term's, else 0.05)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with _ctrl_c_recorded() as interrupted, _sigterm_as_ctrl_c() as terminated:
        code = _main(argv, interrupted)
    return TERMINATED_EXIT if terminated and code == INTERRUPTED_EXIT else code


@contextlib.contextmanager
def _ctrl_c_recorded() -> Iterator[list[int]]:
    """While the command runs, Ctrl-C raises KeyboardInterrupt as Python's own handler does and is
    also recorded in the list yielded: an interrupt that lands in a compiled module's import comes
    out as an ImportError ("initialization failed"), which is then told from a broken install.
    SIGINT left ignored (a background job) stays ignored."""
    received: list[int] = []

    def handler(signum: int, frame) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield received
        return
    with signals.handling(signal.SIGINT, handler):
        yield received


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[list[int]]:
    """While the command runs (in the main thread), SIGTERM does what SIGINT does now: the SIGINT
    handler in place runs (a KeyboardInterrupt where SIGINT is ignored); the list yielded gets the
    signal's number when one came. The previous SIGTERM handler is restored afterwards."""
    received: list[int] = []

    def handler(signum: int, frame) -> None:
        received.append(signum)
        on_int = signal.getsignal(signal.SIGINT)
        if not callable(on_int):
            raise KeyboardInterrupt
        on_int(signal.SIGINT, frame)

    with signals.handling(signal.SIGTERM, handler):
        yield received


def _main(argv: list[str], interrupted: list[int]) -> int:
    """The command ``argv``; its exit status. ``interrupted``: Ctrl-Cs received so far."""
    try:  # Ctrl-C while torch is imported (during parsing, or by a command) ends as at any other moment
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return _command(_parse(argv), "landscape " + shlex.join(argv))
    except BrokenPipeError:  # the reader of stdout stopped (`landscape inspect DB | head`): end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush fails silently
        return BROKEN_PIPE_EXIT
    except (ValueError, OSError) as e:  # DatabaseError is a ValueError
        code = _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
        if getattr(e, "abandoned", False):  # a write failed for want of space: HDF5 must not close the file
            sys.stdout.flush()
            os._exit(code)
        return code
    except MemoryError as e:  # sizes are checked before allocating; this is the rest
        return _fail(f"out of memory ({str(e).splitlines()[0] if str(e) else 'an allocation failed'}); use a "
                     "smaller model (--hidden, --channels), fewer --walkers or fewer samples (--limit)")
    except (KeyboardInterrupt, ImportError) as e:
        if isinstance(e, ImportError) and not interrupted:  # a broken install, not Ctrl-C during an import
            raise
        print("landscape: interrupted; what was written is kept", file=sys.stderr)
        return INTERRUPTED_EXIT


def _command(args: argparse.Namespace, command: str) -> int:
    """Run the parsed command; ``command``: the command line, recorded with the run."""
    if args.command == "inspect":
        return _inspect(args)
    if args.command == "analyze":
        return _analyze(args)
    if args.command == "connect":
        return _connect(args, command)
    if args.command == "train":
        from .train_cli import train

        return train(args, command)
    allocator.keep_freed_memory()  # batched work then reuses the process's pages
    return _sample(args, command) if args.command == "sample" else _score(args, command)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """landscape's warnings as one line, ``landscape: warning: ...``, above a progress bar;
    others as Python formats them."""
    if not category.__module__.startswith("landscape"):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
        return
    from tqdm.auto import tqdm

    tqdm.write(f"landscape: warning: {message}", file=sys.stderr)


def _sampler_keys() -> tuple[str, ...]:
    from dataclasses import fields

    from .basinhopping import Settings

    return tuple(f.name for f in fields(Settings))


def _read_config(path: str) -> dict[str, dict]:
    if os.path.isdir(path):
        raise ValueError(f"config file {path} is a directory: give the TOML file (runs/ holds examples)")
    if not os.path.isfile(path):
        raise ValueError(f"config file {path} does not exist (runs/ holds examples)")
    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}; fix the file (runs/ holds examples)") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file (TOML is UTF-8 text); give a TOML config (runs/ holds "
                         "examples)") from None
    except OSError as e:
        raise ValueError(f"config file {path}: cannot read it ({e.strerror or e})") from None
    allowed = {"problem": PROBLEM_KEYS, "sample": _sampler_keys() + RUN_KEYS}
    for table, values in cfg.items():
        if table in (*allowed, *CONFIG_COMMANDS) and not isinstance(values, dict):
            raise ValueError(f"{path}: {table} must be a table (a [{table}] section of key = value lines), got "
                             f"{values!r}"[:300])
        if table not in (*allowed, *CONFIG_COMMANDS):
            raise ValueError(f"{path}: unknown table [{table}]; use [problem], [sample], "
                             f"{', '.join(f'[{c}]' for c in CONFIG_COMMANDS)}")
        for key in values if table in allowed else ():
            if key not in allowed[table]:
                raise ValueError(f"{path}: unknown key {key!r} in [{table}]; allowed: {', '.join(allowed[table])}")
    return {table: cfg.get(table, {}) for table in (*allowed, *CONFIG_COMMANDS)}


def _sample(args: argparse.Namespace, command: str) -> int:
    from .basinhopping import Settings, sample
    from .database import INTERRUPTED, Database

    cfg = _read_config(args.config) if args.config else {}
    cfg_problem, cfg_sample = cfg.get("problem", {}), cfg.get("sample", {})
    given = {k: getattr(args, k) for k in PROBLEM_KEYS if getattr(args, k) is not None}
    prob_opts = {**cfg_problem, **given}
    sampler_keys = _sampler_keys()
    run_opts = {**cfg_sample, **{k: getattr(args, k) for k in sampler_keys + RUN_KEYS
                                 if getattr(args, k, None) is not None}}
    if not prob_opts and os.path.exists(args.db):
        with Database(args.db) as db:  # append to the file's own problem
            problem = db.problem
    else:
        problem = _problem(prob_opts)
    if args.resume and os.path.exists(args.db):
        with Database(args.db) as db:  # the last run's settings, unless given now
            runs = db.runs(kind="sample")
        last = runs[-1]["parameters"] if runs else {}
        # the walkers and their random streams come from the file (a config's values are not used)
        if args.walkers is not None and args.walkers != last.get("walkers", args.walkers):
            raise ValueError(f"--resume continues the last run's {last['walkers']} walkers, not {args.walkers}: "
                             "drop --walkers, or start a new run without --resume")
        if args.seed is not None:
            raise ValueError("--resume continues each walker's own random stream: drop --seed")
        run_opts = {**{k: last[k] for k in sampler_keys + ("threads", "processes") if k in last}, **run_opts}
    settings = Settings(**{k: run_opts[k] for k in sampler_keys if k in run_opts})
    steps, minutes = run_opts.get("steps"), run_opts.get("minutes")
    if steps is None and minutes is None:
        raise ValueError("give a budget: --steps N (per walker) or --minutes M")
    res = sample(problem, args.db, settings, steps=steps, minutes=minutes, seed=run_opts.get("seed", 0),
                 resume=args.resume, threads=run_opts.get("threads", 1),
                 processes=run_opts.get("processes", 1), progress=not args.quiet, command=command, force=args.force)
    print(_summary_line(res, args.db))
    if res.status == INTERRUPTED:
        return INTERRUPTED_EXIT
    return _fail(res.reason) if res.reason else 0


def _summary_line(res: SampleResult, db: str) -> str:
    """The line ``sample`` prints about its run (``res``: a SampleResult) and the database ``db``."""
    c = res.counters
    line = (f"run {res.run} ({res.status}): {c['steps']} steps, {c['quenches']} quenches "
            f"({c['converged']} converged), {c['new_minima']} new minima, acceptance "
            f"{c['accepted'] / max(1, c['steps']):.2f}; {db} now holds {res.n_minima} minima, "
            f"lowest E = {res.lowest_energy:.10g}")
    if res.overrun_seconds > 0:
        line += (f"; time budget exceeded by {res.overrun_seconds:.1f} s, {c['abandoned']} refinements "
                 "abandoned after the grace period")
    return line


def _score(args: argparse.Namespace, command: str) -> int:
    from .flatness import Flatness
    from .scoring import EPS_QUANTITIES, PGD, score

    for name in ("seed", "pgd_steps", "pgd_restarts", "full_max", "probes", "lanczos_steps"):
        if not 0 <= getattr(args, name) < 2**63:  # the range of the int64 torch and numpy take them as
            raise ValueError(f"--{name.replace('_', '-') if name != 'full_max' else 'full-spectrum-max'} must be "
                             f"an integer in [0, 2**63), got {getattr(args, name)}")
    res = score(args.db, args.eps, method=args.method, space=args.space, split=args.split, progress=not args.quiet,
                data_path=args.data_path, command=command, quantities=args.quantities, aggregation=args.aggregation,
                verify_method=args.verify_method, pgd=PGD(args.pgd_steps, args.pgd_restarts, args.seed),
                flatness=Flatness(full_max=args.full_max, probes=args.probes, steps=args.lanczos_steps, seed=args.seed),
                force=args.force)
    if any(q in EPS_QUANTITIES for q in args.quantities):
        print(f"on the {res.split} split ({res.n_points} points)" + ("" if args.split else ", the default"))
    for name, n in res.computed.items():
        print(f"{name}: {n} minima scored" + ("" if n else " (all were current already)"))
    return 0


def _problem(o: dict) -> Problem:
    """The problem the options ``o`` describe."""
    from .data import DataSpec, source_for_path
    from .problem import Problem

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


def _connect(args: argparse.Namespace, command: str) -> int:
    from .connecting import connect
    from .database import Database

    if args.force:  # take the file over first (connect opens a path without force)
        with Database(args.db, mode="a", data_path=args.data_path, force=True):
            pass
    r = connect(args.db, pairs=args.pairs, lowest=args.lowest, every=args.every, seed=args.seed,
                max_attempts=args.max_attempts, minutes=args.minutes, progress=not args.quiet, command=command,
                data_path=args.data_path)
    dropped = ", ".join(f"{n} {why}" for why, n in sorted(r.rejected.items())) or "none"
    print(f"run {r.run} ({r.status}): {int(r.connected.sum())} of {len(r.pairs)} pairs joined; {r.attempts} pairs "
          f"tried, {r.transition_states} transition states and {r.new_minima} new minima stored; candidates "
          f"dropped: {dropped}; {r.cpu_seconds:.1f} CPU-s")
    for (a, b), ok in zip(r.pairs, r.connected):
        if not ok:
            print(f"not joined: {a},{b}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from .report import analyze

    if not args.out:
        raise ValueError("give --out DIR: the folder for the report (or 'out' in the config's [analyze] table)")
    for name, low, high in (("levels", 2, 2**31), ("resamples", 1, 2**31), ("seed", 0, 2**63)):
        if not low <= getattr(args, name) < high:  # before the folder is made
            raise ValueError(f"--{name} must be an integer in [{low}, {high - 1}], got {getattr(args, name)}")
    if args.compare:
        from .report import compare

        rep, table = compare([args.db, *args.compare], args.out, eps=args.eps)
        print(table, end="")
        print(f"wrote {', '.join(sorted(rep.files))} to {rep.out}")
        return 0
    rep = analyze(args.db, args.out, levels=args.levels, resamples=args.resamples, seed=args.seed)
    for m in rep.missing:
        print(f"landscape: missing: {m}", file=sys.stderr)
    print(f"wrote {', '.join(sorted(rep.files))} to {rep.out}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .analysis import summary
    from .database import Database
    from .loss import describe, from_dicts

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
        stale = f" ({sc['stale']} stale: rescore)" if sc["stale"] else ""
        print(f"score {name}: {sc['scored']}/{s['n_minima']} minima{stale}; lowest minima: {vals}")
    if s["n_transition_states"]:
        c = s["connectivity"]
        print(f"{s['n_transition_states']} transition states; {c['connected_to_global_minimum']} of {s['n_minima']} "
              f"minima connected to the global minimum ({c['components']} separate trees)")
    for n in s.get("networks", []):
        from .train_cli import network_line

        print(network_line(n))
    for r in s["runs"]:
        print(f"run {r['id']} ({r['kind']}): {r['status']}; {r['started']} -> {r['ended'] or '?'}; {_counts(r)}; "
              f"{r['command']}")
    return 0


def _counts(run: dict) -> str:
    """A run's counters as the inspect line shows them."""
    c = run["counters"]
    if not c:  # a run group left without counters (an old bug)
        return "no counters"
    if run["kind"] == "sample":
        return (f"seed {run['seed']}; {int(c['steps'])} steps, {int(c['quenches'])} quenches, "
                f"{int(c['new_minima'])} new minima, {c['cpu_seconds']:.1f} CPU-s")
    return ", ".join(f"{v:.1f} {k}" if k.endswith("seconds") else f"{int(v)} {k}" for k, v in c.items())


if __name__ == "__main__":
    sys.exit(main())
