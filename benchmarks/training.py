"""Training objectives compared on digits (run by hand, prints Markdown tables).

Digits 8x8, pixels / 16 in [0, 1] (landscape.data, scaling 'unit'; stratified 80/20 split, split
seed 0), a 64-64-64-10 ReLU MLP (torch's default initialisation from the seed), Adam lr 1e-3,
batch 64, float32, one thread; training eps 0.1 (warm-up 10%, ramp 40% of the steps). Per method
and seed (robustness.training): training time, clean accuracy, PGD-40 accuracy (one random start)
at eps 0.05 and 0.1, verified accuracy (ibp+crown) at both, the mean IBP log-volume of the logits
(nats) at both, DeepFool rho_adv, all on the held-out split (360 points), the ball clipped to [0, 1].

Then:
* epoch cost: seconds per epoch (median over epochs, full ramp from the start) of plain training,
  of the sensitivity term, IBP training and PGD training, and their ratio to plain;
* our PGD-40 against foolbox's LinfPGD (40 steps, its defaults) on the same networks and points:
  accuracy under each attack (lower = stronger attack);
* the issue's targets, each marked met or missed.

Usage: OMP_NUM_THREADS=1 python benchmarks/training.py [--epochs 60] [--seeds 0 1 2]
       [--objectives plain sensitivity ...] [--lambda-s 0.03] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from landscape import data  # noqa: E402
from robustness import from_sequential, robust_accuracy  # noqa: E402
from robustness import training as rt  # noqa: E402

EPS = (0.05, 0.1)
DOMAIN = (0.0, 1.0)
WIDTHS = (64, 64, 64, 10)


def points():
    ds = data.load(data.DataSpec("digits", scaling="unit"))
    return tuple(torch.tensor(a) for a in (ds.X_train, ds.y_train, ds.X_test, ds.y_test))


def objectives(args) -> dict[str, rt.Objective]:
    params = {"sensitivity": {"lambda_s": args.lambda_s}, "input_gradient": {"lambda_g": args.lambda_g},
              "pgd": {"steps": 10}, "trades": {"steps": 10}}
    return {name: rt.make_objective(name, **params.get(name, {})) for name in args.objectives}


def train_one(obj, seed: int, epochs: int, x, y, **schedule) -> rt.TrainResult:
    module = rt.reset_parameters(rt.mlp(WIDTHS, "relu"), seed)
    config = rt.TrainConfig(epochs=epochs, eps=0.1, domain=DOMAIN, seed=seed, **schedule)
    return rt.train(module, x, y, obj, config)


def row(name: str, seed: int, result: rt.TrainResult, xt, yt) -> dict:
    ev = rt.evaluate(result.module, xt, yt, rt.EvalConfig(eps=EPS, pgd_steps=40, seed=seed), domain=DOMAIN)
    r = {"method": name, "seed": seed, "train_s": result.seconds, "clean": ev.clean_accuracy, "rho_adv": ev.rho_adv}
    for e in EPS:
        d = ev.per_eps[e]
        r.update({f"pgd@{e}": d["pgd_accuracy"], f"verified@{e}": d["verified_accuracy"],
                  f"logvol@{e}": d["sensitivity_ibp"], f"widths@{e}": (min(d["log_widths_ibp"]),
                                                                        max(d["log_widths_ibp"]))})
    return r


def mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """mean ± std of the finite values (NaN: rho_adv of a collapsed network), with how many were not."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values):
        return (mean_std(finite, scale, digits) if finite else "-") + f" ({len(values) - len(finite)} NaN)"
    values = finite
    m = statistics.fmean(values) * scale
    s = (statistics.stdev(values) if len(values) > 1 else 0.0) * scale
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def table(rows: list[dict]) -> str:
    cols = [("train_s", "train s", 1, 1), ("clean", "clean %", 100, 1)]
    cols += [(f"pgd@{e}", f"PGD-40 % ε={e}", 100, 1) for e in EPS]
    cols += [(f"verified@{e}", f"verified % ε={e}", 100, 1) for e in EPS]
    cols += [(f"logvol@{e}", f"IBP log-vol ε={e}", 1, 2) for e in EPS]
    cols += [("rho_adv", "ρ_adv", 1, 3)]
    out = ["| method | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == m]
        out.append(f"| {m} ({len(mine)}) | " + " | ".join(mean_std([r[k] for r in mine], f, d) for k, _, f, d in cols)
                   + " |")
    return "\n".join(out)


def epoch_costs(x, y, epochs: int = 8) -> dict[str, float]:
    """Median seconds per epoch at full ramp (no warm-up) of a few objectives, the first epoch left out."""
    out = {}
    for name, obj in (("plain", rt.Plain()), ("l2", rt.L2()), ("sensitivity", rt.SensitivityLoss(lambda_s=0.03)),
                      ("ibp", rt.IBPTraining()), ("pgd", rt.PGDTraining(steps=10))):
        r = train_one(obj, 0, epochs, x, y, warmup=0.0, ramp=0.0)
        out[name] = statistics.median(r.epoch_seconds[1:])
    return out


def foolbox_check(modules: dict[str, torch.nn.Module], xt, yt) -> list[tuple[str, float, float, float]]:
    """(method, eps, our PGD-40 accuracy, foolbox LinfPGD-40 accuracy) per network and eps."""
    try:
        import foolbox as fb
    except ImportError:
        print("foolbox is not installed: comparison skipped (pip install foolbox==3.3.4)")
        return []
    out = []
    for name, module in modules.items():
        module = module.eval()
        fmodel = fb.PyTorchModel(module, bounds=DOMAIN)
        x = xt.float()
        clean = module(x).argmax(-1) == yt
        for e in EPS:
            _, _, success = fb.attacks.LinfPGD(steps=40)(fmodel, x, yt, epsilons=e)
            theirs = (clean & ~success).double().mean().item()
            ours = robust_accuracy(from_sequential(module), xt, yt, e, steps=40, domain=DOMAIN,
                                   generator=torch.Generator().manual_seed(0)).item()
            out.append((name, e, ours, theirs))
    return out


def targets(rows: list[dict], costs: dict[str, float]) -> list[str]:
    def mean(method: str, key: str) -> float:
        return statistics.fmean(r[key] for r in rows if r["method"] == method)

    methods = {r["method"] for r in rows}
    lines = []
    if {"plain", "sensitivity"} <= methods:
        drop = 100 * (mean("plain", "clean") - mean("sensitivity", "clean"))
        lines.append(f"clean accuracy lost by the paper's loss: {drop:.1f} points (target <= 1): "
                     f"{'met' if drop <= 1 else 'missed'}")
        for e in EPS:
            gain = mean("plain", f"logvol@{e}") - mean("sensitivity", f"logvol@{e}")
            lines.append(f"IBP log-volume lowered at eps {e}: {gain:.2f} nats (target >= 5): "
                         f"{'met' if gain >= 5 else 'missed'}")
    if {"sensitivity", "input_gradient"} <= methods:
        for e in EPS:
            s, g = mean("sensitivity", f"pgd@{e}"), mean("input_gradient", f"pgd@{e}")
            lines.append(f"PGD accuracy at eps {e}: sensitivity {100 * s:.1f}% vs input gradient {100 * g:.1f}% "
                         f"(target: beat it): {'met' if s > g else 'missed'}")
    if {"sensitivity", "pgd"} <= methods:
        for e in EPS:
            s, p = mean("sensitivity", f"pgd@{e}"), mean("pgd", f"pgd@{e}")
            lines.append(f"PGD accuracy at eps {e}: sensitivity {100 * s:.1f}% vs PGD training {100 * p:.1f}% "
                         f"(target: within 5 points): {'met' if p - s <= 0.05 else 'missed'}")
        ts, tp = mean("sensitivity", "train_s"), mean("pgd", "train_s")
        lines.append(f"training time: sensitivity {ts:.1f} s vs PGD training {tp:.1f} s, ratio {ts / tp:.2f} "
                     f"(target <= 1/3): {'met' if ts <= tp / 3 else 'missed'}")
    if costs:
        ratio, same_l2 = costs["sensitivity"] / costs["plain"], costs["sensitivity"] / costs["l2"]
        lines.append(f"epoch with the IBP term: {ratio:.2f}x a plain epoch, {same_l2:.2f}x an epoch of the same loss "
                     f"without it (cross-entropy + L2) (target <= 2): {'met' if ratio <= 2 else 'missed'}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--objectives", nargs="+", default=list(rt.OBJECTIVES), choices=list(rt.OBJECTIVES))
    p.add_argument("--lambda-s", dest="lambda_s", type=float, default=0.03)
    p.add_argument("--lambda-g", dest="lambda_g", type=float, default=1.0)
    p.add_argument("--no-foolbox", dest="foolbox", action="store_false")
    p.add_argument("--no-costs", dest="costs", action="store_false")
    p.add_argument("--json", help="write every row here")
    args = p.parse_args()
    torch.set_num_threads(1)
    x, y, xt, yt = points()
    train_one(rt.Plain(), 0, 1, x, y)  # imports the optimiser's lazy modules before anything is timed
    rows, first = [], {}
    for name, obj in objectives(args).items():
        for seed in args.seeds:
            result = train_one(obj, seed, args.epochs, x, y)
            rows.append(row(name, seed, result, xt, yt))
            first.setdefault(name, result.module)
            print(f"{name} seed {seed}: {json.dumps({k: v for k, v in rows[-1].items() if k != 'method'})}",
                  file=sys.stderr, flush=True)
    print(f"## digits 64-64-64-10 ReLU, {args.epochs} epochs, seeds {args.seeds}, lambda_s {args.lambda_s}, "
          f"lambda_g {args.lambda_g}\n")
    print(table(rows))
    costs = epoch_costs(x, y) if args.costs else {}
    if costs:
        print("\n| objective | s/epoch | x plain |\n|---|---|---|")
        for k, v in costs.items():
            print(f"| {k} | {v:.3f} | {v / costs['plain']:.2f} |")
        print("\n(sensitivity = cross-entropy + L2 + the IBP term: its cost over the IBP term alone is the ratio to l2)")
    checks = foolbox_check(first, xt, yt) if args.foolbox else []
    if checks:
        print("\n| network (seed 0) | eps | our PGD-40 acc % | foolbox LinfPGD-40 acc % |\n|---|---|---|---|")
        for name, e, ours, theirs in checks:
            print(f"| {name} | {e} | {100 * ours:.1f} | {100 * theirs:.1f} |")
    print()
    for line in targets(rows, costs):
        print(f"- {line}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "epoch_seconds": costs, "foolbox": checks}, indent=1))


if __name__ == "__main__":
    main()
