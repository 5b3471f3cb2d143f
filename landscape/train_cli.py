"""``landscape train``: its options and what it does (the rest of the command line is landscape/cli.py).

    landscape train DB [--config F] [problem options] [--objective NAME] [objective options]
                       [--epochs N] [--eps E] [--seed S] [--device cpu|cuda] [--compare OUT]

Trains one network of the problem's model with the objective, evaluates it on the held-out split
and stores both in DB (created for the problem if new; an existing DB must hold the same data and
model). ``--compare OUT`` trains every objective (or those of ``--objectives``) for every seed of
``--seeds`` (default: three from ``--seed``), stores them all and writes OUT/results.csv,
results.json, results.md (mean ± std over seeds) and three figures. A ``--config`` file's
[problem] table gives the problem, its [train] table any option of this command (the command line
wins).
"""
from __future__ import annotations

import argparse

# option -> (objectives that take it, their field)
OBJECTIVE_OPTIONS = {
    "lambda_s": (("sensitivity",), "lambda_s"),
    "space": (("sensitivity",), "space"),
    "l2": (("l2", "sensitivity"), "lam"),
    "lambda_g": (("input_gradient",), "lambda_g"),
    "lambda_j": (("jacobian",), "lambda_j"),
    "trades_beta": (("trades",), "beta"),
    "kappa": (("ibp", "crown_ibp"), "kappa"),
    "crown_beta": (("crown_ibp",), "beta"),
    "attack_steps": (("pgd", "trades"), "steps"),
}
PROBLEM_OPTIONS = ("data", "data_path", "label_column", "scaling", "test_fraction", "split_seed", "limit", "arch",
                   "hidden", "channels", "activation")
TRAIN_OPTIONS = ("epochs", "batch_size", "lr", "optimizer", "eps", "warmup", "ramp", "device")


def add_options(t: argparse.ArgumentParser) -> None:
    from robustness.sensitivity import SPACES
    from robustness.training import OBJECTIVES, OPTIMIZERS, EvalConfig, TrainConfig

    tc, ec = TrainConfig(), EvalConfig()
    t.add_argument("db")
    t.add_argument("--config", help="TOML file: [problem] the problem, [train] options of this command "
                   "(the command line wins)")
    p = t.add_argument_group("problem (a new database; an existing one keeps its own)")
    p.add_argument("--data", choices=("iris", "digits", "csv", "npz", "mnist"), help="dataset (default iris)")
    p.add_argument("--data-path", dest="data_path", help="file or folder of csv, npz or mnist data")
    p.add_argument("--label-column", dest="label_column", help="class column of a CSV file")
    p.add_argument("--scaling", choices=("auto", "standardize", "unit", "none"),
                   help="auto (default): images to [0, 1], tabular data standardised")
    p.add_argument("--test-fraction", dest="test_fraction", type=float, help="held-out fraction (default 0.2)")
    p.add_argument("--split-seed", dest="split_seed", type=int, help="seed of the split (default 0)")
    p.add_argument("--limit", type=int, help="use the first N samples only")
    p.add_argument("--arch", choices=("mlp", "cnn"), help="model (default mlp)")
    p.add_argument("--hidden", type=int, nargs="+", help="hidden widths of the MLP (default 5)")
    p.add_argument("--channels", type=int, nargs="+", help="channels of the CNN's convolutions (default 8)")
    p.add_argument("--activation", choices=("relu", "tanh", "sigmoid"), help="hidden activation (default tanh)")
    o = t.add_argument_group("objective")
    o.add_argument("--objective", choices=tuple(OBJECTIVES), default="plain", help="what to minimise (default plain)")
    o.add_argument("--lambda-s", dest="lambda_s", type=float, help="sensitivity: weight of the IBP log-volume")
    o.add_argument("--space", choices=SPACES, help="sensitivity: output space of the log-volume (default logits)")
    o.add_argument("--l2", type=float, help="l2 and sensitivity: coefficient of the sum of squared parameters")
    o.add_argument("--lambda-g", dest="lambda_g", type=float, help="input_gradient: weight of ||grad_x CE||^2")
    o.add_argument("--lambda-j", dest="lambda_j", type=float,
                   help="jacobian: weight of ||J||_F^2 / 2, the logits' input Jacobian (default 0.01)")
    o.add_argument("--trades-beta", dest="trades_beta", type=float, help="trades: weight of the KL term")
    o.add_argument("--kappa", type=float, help="ibp, crown_ibp: final weight of the natural loss")
    o.add_argument("--crown-beta", dest="crown_beta", type=float, help="crown_ibp: final weight of the CROWN bound")
    o.add_argument("--attack-steps", dest="attack_steps", type=int, help="pgd, trades: attack steps per batch")
    r = t.add_argument_group("training")
    r.add_argument("--epochs", type=int, default=tc.epochs, help=f"passes over the data (default {tc.epochs})")
    r.add_argument("--batch-size", dest="batch_size", type=int, default=tc.batch_size,
                   help=f"mini-batch size (default {tc.batch_size})")
    r.add_argument("--lr", type=float, default=tc.lr, help=f"learning rate (default {tc.lr})")
    r.add_argument("--optimizer", choices=OPTIMIZERS, default=tc.optimizer, help="default adam")
    r.add_argument("--eps", type=float, default=tc.eps, help=f"training radius, input units (default {tc.eps})")
    r.add_argument("--warmup", type=float, default=tc.warmup,
                   help=f"fraction of training before eps and the robust terms start (default {tc.warmup})")
    r.add_argument("--ramp", type=float, default=tc.ramp,
                   help=f"fraction of training over which they rise to full size (default {tc.ramp})")
    r.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and attacks (default 0)")
    r.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    r.add_argument("--threads", type=int, default=1, help="torch threads (default 1: small networks run "
                   "fastest on one)")
    e = t.add_argument_group("evaluation (on the held-out split)")
    e.add_argument("--eval-eps", dest="eval_eps", type=float, nargs="+", default=list(ec.eps),
                   help=f"radii of the robustness scores (default {' '.join(map(str, ec.eps))})")
    e.add_argument("--pgd-steps", dest="pgd_steps", type=int, default=ec.pgd_steps,
                   help=f"PGD steps of the evaluation (default {ec.pgd_steps})")
    e.add_argument("--pgd-restarts", dest="pgd_restarts", type=int, default=ec.pgd_restarts,
                   help=f"PGD random starts of the evaluation (default {ec.pgd_restarts})")
    c = t.add_argument_group("comparison")
    c.add_argument("--compare", metavar="OUT", help="train every objective x seed; tables and figures in OUT")
    c.add_argument("--objectives", nargs="+", choices=tuple(OBJECTIVES), help="objectives compared (default all)")
    c.add_argument("--seeds", type=int, nargs="+", help="seeds compared (default: --seed and the next two)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")


def objective_params(args: argparse.Namespace, name: str) -> dict:
    """The parameters of objective ``name`` given as options."""
    return {field: getattr(args, opt) for opt, (names, field) in OBJECTIVE_OPTIONS.items()
            if name in names and getattr(args, opt, None) is not None}


def train(args: argparse.Namespace, command: str) -> int:
    """Run ``landscape train``; its exit status."""
    import torch

    from robustness.training import OBJECTIVES, EvalConfig, TrainConfig

    from . import training as lt

    if isinstance(args.threads, bool) or not isinstance(args.threads, int) or not 1 <= args.threads <= 1024:
        raise ValueError(f"--threads must be an integer in [1, 1024], got {args.threads!r}")
    base = lt.Job(train=TrainConfig(seed=args.seed, **{k: getattr(args, k) for k in TRAIN_OPTIONS}),
                  evaluate=EvalConfig(eps=tuple(args.eval_eps), pgd_steps=args.pgd_steps,
                                      pgd_restarts=args.pgd_restarts, seed=args.seed))
    if args.compare:
        objectives = args.objectives or list(OBJECTIVES)
        seeds = args.seeds or [args.seed, args.seed + 1, args.seed + 2]
        jobs = lt.compare_jobs(base, objectives, seeds, {n: objective_params(args, n) for n in objectives})
    else:
        if args.objectives or args.seeds:
            raise ValueError("--objectives and --seeds belong to --compare OUT; give one --objective and --seed")
        jobs = [lt.Job(args.objective, objective_params(args, args.objective), base.train, base.evaluate)]
    problem = _problem(args)
    torch.set_num_threads(args.threads)
    trained = lt.run_jobs(args.db, problem, jobs, command, progress=not args.quiet)
    for t in trained:
        print(_line(t))
    if args.compare:
        files = lt.write_comparison(args.compare, trained)
        print(f"wrote {', '.join(files)} to {args.compare}")
    return 0


def _problem(args: argparse.Namespace):
    """The problem of the options and the config's [problem] table; None to use the database's own."""
    import os

    from .cli import _problem as problem_of, _read_config
    from .database import Database

    cfg = _read_config(args.config)["problem"] if args.config else {}
    given = {k: getattr(args, k) for k in PROBLEM_OPTIONS if getattr(args, k, None) is not None}
    options = {**cfg, **given}
    if not options and os.path.exists(args.db):
        with Database(args.db) as db:
            return db.problem
    return problem_of(options)


def _line(t) -> str:
    """One line about a trained network."""
    ev = t.evaluation
    parts = [f"network {t.id} ({t.job.objective}, seed {t.job.train.seed}): {t.seconds:.1f} s, "
             f"clean accuracy {ev.clean_accuracy:.4f}"]
    for eps, d in ev.per_eps.items():
        parts.append(f"eps {eps:g}: PGD {d['pgd_accuracy']:.4f}, verified {d.get('verified_accuracy', float('nan')):.4f}, "
                     f"IBP log-volume {d['sensitivity_ibp']:.2f}")
    return "; ".join(parts)


SHOWN = ("accuracy_", "pgd_accuracy_", "verified_accuracy_ibp+crown_", "sensitivity_logits_ibp_")


def network_line(n: dict) -> str:
    """The line ``inspect`` prints about a trained network (an entry of the summary's 'networks')."""
    shown = "; ".join(f"{label} {value:.4g}" for label, value in n["scores"].items()
                      if value is not None and label.startswith(SHOWN))
    params = ", ".join(f"{k}={v}" for k, v in n["params"].items())
    return f"network {n['id']} ({n['objective']}({params}), seed {n['seed']}, run {n['run']}): {shown}"
