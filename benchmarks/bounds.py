"""Speed and tightness of the output bounds of ``robustness`` (run by hand, prints a table).

Digits 64-64-64-10 MLPs (ReLU and tanh; pixels / 16; stratified 70/30 split,
random_state 0; Adam lr 1e-3, weight decay 1e-4, batch 64, 60 epochs, seed 0),
first 100 test points, float32, one thread, no gradients:

* time per call (median) of IBP, CROWN and their intersection;
* tightness: the gap in nats between the log-volume of the outer box (logits, not
  clipped to [0, 1]) and of an inner box around 1,000 random corners of the ball and
  50-step PGD maximising and minimising each output, averaged over the points.

Then the time to score 1,000 Iris-sized networks (4-5 tanh-3, random weights) on 150
points with the IBP log-volume, and 80 digits-sized ones (64-32 tanh-10, random weights,
float64) on the 1,257 training points, with points bounded in chunks
(robustness.bounds.CHUNK_BYTES, the default) and in one piece. Trained networks are cached in
benchmarks/_cache/.

``--case tightness`` compares our CROWN and alpha-CROWN with auto_LiRPA's (CROWN, method
'backward', and alpha-CROWN, 'CROWN-Optimized' with 20 iterations, lower and upper bound in two
calls), computed live (tests/robustness/lirpa.py loads auto_LiRPA 0.3 onto this torch): mean
log-volume of the output box (nats, sum of log-widths) over the points, on tanh and sigmoid MLPs
of 1-4 hidden layers of 32 (breast cancer and wine, standardised features, trained with Adam lr
1e-2 for 500 batches of 64, seed = depth; first 20 points; float64) at eps 0.01, 0.1, 0.5, and
on the digits ReLU and tanh MLPs above (float32), where the gap to the inner box is printed too.

Usage: OMP_NUM_THREADS=1 python benchmarks/bounds.py [--case speed|tightness]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine
from sklearn.model_selection import train_test_split
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "robustness"))
from robustness import Linear, Network, Tanh, forward, from_sequential, log_volume, output_bounds, pgd  # noqa: E402
from robustness import bounds  # noqa: E402
from robustness.sensitivity import box_log_volume  # noqa: E402

CACHE = Path(__file__).resolve().parent / "_cache"
EPS = (0.01, 0.05, 0.1)
METHODS = ("ibp", "crown", "ibp+crown", "alpha-crown")
AUTO_LIRPA = {  # reference figures measured on this machine (ms; gaps in nats for EPS)
    "relu": {"ibp_ms": 0.78, "crown_ms": 8.0, "crown_gap": (0.34, 1.65, 3.07), "alpha_gap": (0.27, 1.28, 2.30)},
    "tanh": {"ibp_ms": 0.78, "crown_ms": 14.0, "crown_gap": (1.27, 5.05, 6.36), "alpha_gap": None},
}


def digits() -> tuple[torch.Tensor, ...]:
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    parts = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    return tuple(torch.tensor(a) for a in parts)


def trained_mlp(act: str, Xtr, ytr) -> nn.Sequential:
    """The reference recipe; cached as a state_dict under benchmarks/_cache/."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), {"relu": nn.ReLU, "tanh": nn.Tanh}[act](), nn.Linear(64, 64),
                          {"relu": nn.ReLU, "tanh": nn.Tanh}[act](), nn.Linear(64, 10))
    path = CACHE / f"digits_mlp_{act}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model
    opt = torch.optim.Adam(model.parameters(), 1e-3, weight_decay=1e-4)
    for _ in range(60):
        perm = torch.randperm(len(Xtr))
        for i in range(0, len(Xtr), 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(Xtr[b]), ytr[b]).backward()
            opt.step()
    CACHE.mkdir(exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def inner_box(net: Network, x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Box around outputs at 1,000 random corners and at PGD optima of +-each output: (N, out)."""
    gen = torch.Generator().manual_seed(0)
    n, out = x.shape[0], net.n_outputs
    signs = torch.randint(0, 2, (1000, n, x.shape[1]), generator=gen).to(x.dtype) * 2 - 1
    ys = forward(net, (x + eps * signs).reshape(-1, x.shape[1]))[0].view(1000, n, out)
    lo, hi = ys.min(0).values, ys.max(0).values
    direction = torch.cat([torch.eye(out), -torch.eye(out)]).to(x.dtype)  # (2 out, out)
    xr = x.repeat(2 * out, 1)  # (2 out N, in), point-major within each direction
    d = direction.repeat_interleave(n, 0).unsqueeze(0)
    ya = forward(net, pgd(net, xr, eps, direction=d, steps=50, step_size=eps / 10, generator=gen))[0]
    ya = ya.view(2 * out, n, out)
    return torch.minimum(lo, ya.min(0).values), torch.maximum(hi, ya.max(0).values)


def iris_seconds() -> float:
    X = torch.tensor(load_iris().data)
    X = (X - X.mean(0)) / X.std(0)
    gen = torch.Generator().manual_seed(0)
    k = 1000
    net = Network((Linear(torch.randn(k, 5, 4, generator=gen, dtype=torch.float64),
                          torch.randn(k, 5, generator=gen, dtype=torch.float64)), Tanh(),
                   Linear(torch.randn(k, 3, 5, generator=gen, dtype=torch.float64),
                          torch.randn(k, 3, generator=gen, dtype=torch.float64))), (4,))
    return median_ms(lambda: log_volume(net, X, 0.1, method="ibp"), 20) / 1e3


def chunk_seconds(X: torch.Tensor) -> list[str]:
    """Seconds of one log_volume call of 80 digits-sized networks on the points X, chunked
    (default) and in one piece, for CROWN+IBP logits and CROWN softmax."""
    gen = torch.Generator().manual_seed(0)
    k = 80

    def layer(n_out: int, n_in: int) -> Linear:
        return Linear(torch.randn(k, n_out, n_in, generator=gen, dtype=torch.float64) / n_in ** 0.5,
                      torch.zeros(k, n_out, dtype=torch.float64))

    net = Network((layer(32, 64), Tanh(), layer(10, 32)), (64,))
    X = X.double()
    out, default = [], bounds.CHUNK_BYTES
    for method, space in (("ibp+crown", "logits"), ("crown", "softmax")):
        times = []
        for chunk in (default, 1 << 50):
            bounds.CHUNK_BYTES = chunk
            t = time.perf_counter()
            log_volume(net, X, 0.05, method=method, space=space)
            times.append(time.perf_counter() - t)
        bounds.CHUNK_BYTES = default
        out.append(f"{method} {space}: {times[0]:.2f} s in chunks, {times[1]:.2f} s in one piece")
    return out


def rows(net: Network, x: torch.Tensor, act: str) -> list[str]:
    """One table row per eps: times (ms) and gaps (nats) of our methods, then auto_LiRPA's."""
    ref, out = AUTO_LIRPA[act], []
    for i, eps in enumerate(EPS):
        times, gaps = [], []
        inner = box_log_volume(*inner_box(net, x, eps))
        for m in METHODS:
            repeats = {"ibp": 300, "alpha-crown": 3}.get(m, 50)
            times.append(median_ms(lambda m=m, eps=eps: output_bounds(net, x, eps, m), repeats))
            gaps.append((box_log_volume(*output_bounds(net, x, eps, m))[0] - inner).mean().item())
        alpha = "-" if ref["alpha_gap"] is None else f"{ref['alpha_gap'][i]:.2f}"
        out.append(f"{act:5} {eps:5.2f} " + " ".join(f"{t:12.3f}" for t in times) + " | "
                   + " ".join(f"{g:9.2f}" for g in gaps) + f" | {ref['crown_gap'][i]:21.2f} {alpha:>6}")
    return out


def tabular(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    X, y = (load_breast_cancer if name == "cancer" else load_wine)(return_X_y=True)
    return torch.tensor((X - X.mean(0)) / X.std(0)), torch.tensor(y)


def tabular_mlp(act: str, depth: int, X: torch.Tensor, y: torch.Tensor) -> nn.Sequential:
    """``depth`` hidden layers of 32, trained briefly (float64)."""
    torch.manual_seed(depth)
    layers, width = [], X.shape[1]
    for _ in range(depth):
        layers += [nn.Linear(width, 32), {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[act]()]
        width = 32
    model = nn.Sequential(*layers, nn.Linear(width, int(y.max()) + 1)).double()
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(500):
        b = torch.randint(0, len(X), (64,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(X[b]), y[b]).backward()
        opt.step()
    return model.requires_grad_(False)


def tightness() -> None:
    from lirpa import lirpa_bounds, load
    if load() is None:
        sys.exit("auto_LiRPA is not importable: pip install --no-deps auto_LiRPA==0.3 appdirs pyyaml")

    def lv(lo: torch.Tensor, hi: torch.Tensor) -> float:
        return box_log_volume(lo.reshape(1, *lo.shape[-2:]), hi.reshape(1, *hi.shape[-2:]))[0].mean().item()

    def ours(net: Network, x: torch.Tensor, eps: float, method: str) -> tuple[float, float]:
        if method not in bounds.METHODS:  # an older robustness (for before/after tables)
            return float("nan"), float("nan")
        t = time.perf_counter()
        with torch.no_grad():
            lo, hi = output_bounds(net, x, eps, method)
        return lv(lo, hi), time.perf_counter() - t

    print("mean log-volume of the output box (nats); d = ours - auto_LiRPA's (negative: ours tighter)\n")
    head = (f"{'data':6} {'act':7} {'depth':>5} {'eps':>5} | {'IBP':>8} | {'CROWN':>8} {'LiRPA':>8} {'d':>7} | "
            f"{'alpha':>8} {'LiRPA':>8} {'d':>7} | {'ms CROWN':>8} {'alpha':>8}")
    print(head)
    print("-" * len(head))
    worst = {"crown": -float("inf"), "alpha": -float("inf")}
    for name in ("cancer", "wine"):
        X, y = tabular(name)
        x = X[:20]
        for act in ("tanh", "sigmoid"):
            for depth in (1, 2, 3, 4):
                model = tabular_mlp(act, depth, X, y)
                net = from_sequential(model)
                for eps in (0.01, 0.1, 0.5):
                    ibp_lv, _ = ours(net, x, eps, "ibp")
                    (c, tc), (a, ta) = ours(net, x, eps, "crown"), ours(net, x, eps, "alpha-crown")
                    rc, ra = lv(*lirpa_bounds(model, x, eps, "backward")), lv(*lirpa_bounds(model, x, eps, "alpha"))
                    worst["crown"], worst["alpha"] = max(worst["crown"], c - rc), max(worst["alpha"], a - ra)
                    print(f"{name:6} {act:7} {depth:5} {eps:5.2f} | {ibp_lv:8.3f} | {c:8.3f} {rc:8.3f} {c - rc:+7.3f} | "
                          f"{a:8.3f} {ra:8.3f} {a - ra:+7.3f} | {1e3 * tc:8.1f} {1e3 * ta:8.1f}", flush=True)
    print(f"largest d: CROWN {worst['crown']:+.4f}, alpha-CROWN {worst['alpha']:+.4f}\n")
    def peer_gap(model, x, eps: float, method: str, inner: float) -> float:
        """auto_LiRPA's gap to the inner box, NaN (said on stderr) where auto_LiRPA itself fails."""
        try:
            return lv(*lirpa_bounds(model, x, eps, method)) - inner
        except RuntimeError as e:
            print(f"auto_LiRPA {method} at eps {eps} failed: {str(e).splitlines()[0]}", file=sys.stderr)
            return float("nan")

    Xtr, Xte, ytr, _ = digits()
    x = Xte[:100]
    print("digits 64-64-64-10 (float32, first 100 test points): gap to the inner box (nats)")
    print(f"{'act':5} {'eps':>5} | {'CROWN':>7} {'LiRPA':>7} | {'alpha':>7} {'LiRPA':>7}")
    for act in ("relu", "tanh"):
        model = trained_mlp(act, Xtr, ytr).requires_grad_(False)
        net = from_sequential(model, dtype=torch.float32)
        for eps in EPS:
            inner = box_log_volume(*inner_box(net, x, eps))[0].mean().item()
            gaps = [ours(net, x, eps, m)[0] - inner for m in ("crown", "alpha-crown")]
            ref = [peer_gap(model, x, eps, m, inner) for m in ("backward", "alpha")]
            print(f"{act:5} {eps:5.2f} | {gaps[0]:7.2f} {ref[0]:7.2f} | {gaps[1]:7.2f} {ref[1]:7.2f}", flush=True)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("speed", "tightness"), default="speed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.case == "tightness":
        tightness()
        return
    Xtr, Xte, ytr, yte = digits()
    x = Xte[:100]
    print("digits MLP 64-64-64-10, first 100 test points, float32, 1 thread, no_grad; time = median ms per call;\n"
          "gap = mean over points of log-volume(outer box) - log-volume(inner box), nats (logits, not clipped);\n"
          "targets: IBP <= 0.15 ms; CROWN gap <= auto_LiRPA's CROWN gap at <= its time (8 ms ReLU, 14 ms tanh);\n"
          "alpha-CROWN gap <= auto_LiRPA's alpha-CROWN gap\n")
    header = (f"{'act':5} {'eps':>5} " + " ".join(f"{m + ' ms':>12}" for m in METHODS) + " | "
              + " ".join(f"{m + ' gap':>9}" for m in METHODS[:2]) + f" {'i+c gap':>9} {'alpha gap':>9}"
              + " | auto_LiRPA gap: crown  alpha")
    print(header)
    print("-" * len(header))
    for act in ("relu", "tanh"):
        net = from_sequential(trained_mlp(act, Xtr, ytr).requires_grad_(False), dtype=torch.float32)
        with torch.no_grad():
            acc = (forward(net, Xte)[0].argmax(-1) == yte).double().mean().item()
            print("\n".join(rows(net, x, act)))
        ref = AUTO_LIRPA[act]
        print(f"{act:5} test accuracy {acc:.4f}; auto_LiRPA: IBP {ref['ibp_ms']} ms, CROWN {ref['crown_ms']} ms")
    print(f"\nIris-sized 4-5(tanh)-3, K = 1000 networks x 150 points, IBP log-volume (float64): "
          f"{iris_seconds():.4f} s per call (target <= 1 s)")
    print(f"digits-sized 64-32(tanh)-10, K = 80 networks x {len(Xtr)} points (float64), one log_volume call:")
    with torch.no_grad():
        print("\n".join("  " + line for line in chunk_seconds(Xtr)))


if __name__ == "__main__":
    main()
