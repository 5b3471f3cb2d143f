"""Tests of the compiled MLP energy+gradient kernel (landscape.kernel) against plain numpy."""
from __future__ import annotations

import os
import pickle
import select
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from landscape import kernel

pytestmark = pytest.mark.skipif(not kernel.available(), reason=f"MLP kernel unavailable: {kernel.unavailable_reason()}")

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- numpy reference

BETA = 3.0  # the softplus sharpness of these tests


def sharpness(act):
    """MLPKernel's sharpness option for ``act``: softplus needs it, the others refuse it."""
    return {"sharpness": BETA} if act == "softplus" else {}


def _act(name, z):
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "softplus":
        return np.logaddexp(0.0, BETA * z) / BETA
    return np.maximum(z, 0.0)


def _dact(name, a):
    if name == "tanh":
        return 1.0 - a * a
    if name == "sigmoid":
        return a * (1.0 - a)
    if name == "softplus":
        return -np.expm1(-BETA * a)  # sigmoid(beta z) from a = softplus(z)
    return (a > 0).astype(float)


def reference(widths, act, bias, X, y, lam, w):
    """E and dE/dw of one network, the straightforward formulas."""
    N = X.shape[0]
    L = len(widths) - 1
    k = 0
    layers = []
    for l in range(L):
        din, dout = widths[l], widths[l + 1]
        W = w[k:k + din * dout].reshape(din, dout)
        k += din * dout
        b = np.zeros(dout)
        if bias:
            b = w[k:k + dout]
            k += dout
        layers.append((W, b))
    assert k == w.size
    acts = [X]
    A = X
    for l, (W, b) in enumerate(layers):
        Z = A @ W + b
        if l < L - 1:
            A = _act(act, Z)
            acts.append(A)
    m = Z.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(Z - m).sum(1))
    E = np.mean(lse - Z[np.arange(N), y]) + lam * (w @ w)
    D = np.exp(Z - lse[:, None])
    D[np.arange(N), y] -= 1.0
    D /= N
    grads = []
    for l in range(L - 1, -1, -1):
        W, b = layers[l]
        grads.insert(0, [(acts[l].T @ D).ravel()] + ([D.sum(0)] if bias else []))
        if l > 0:
            D = (D @ W.T) * _dact(act, acts[l])
    g = np.concatenate([p for gl in grads for p in gl]) + 2.0 * lam * w
    return E, g


def n_params(widths, bias):
    return sum(a * b + (b if bias else 0) for a, b in zip(widths[:-1], widths[1:]))


def problem(widths, N, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, widths[0]))
    y = rng.integers(0, widths[-1], N)
    y[: widths[-1]] = np.arange(widths[-1])  # every class present
    return X, y


WIDTHS = [[4, 5, 3], [7, 3], [5, 9, 4, 6], [13, 11, 7, 5, 3], [3, 17, 2]]


# --------------------------------------------------------------------------- values

@pytest.mark.parametrize("widths", WIDTHS, ids=lambda w: "-".join(map(str, w)))
@pytest.mark.parametrize("act", kernel.ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_numpy_reference(widths, act, bias):
    N = 37
    X, y = problem(widths, N)
    lam = 1e-3
    k = kernel.MLPKernel(widths, act, bias, X, y, lam, **sharpness(act))
    assert k.n_params == n_params(widths, bias)
    w = np.random.default_rng(1).normal(size=(3, k.n_params))
    E, G = k.energy_gradient(w)
    assert E.shape == (3,) and G.shape == (3, k.n_params)
    for j in range(3):
        Er, gr = reference(widths, act, bias, X, y, lam, w[j])
        assert abs(E[j] - Er) <= 1e-12 * abs(Er)
        np.testing.assert_allclose(G[j], gr, rtol=1e-12, atol=1e-12 * np.abs(gr).max())


@pytest.mark.parametrize("N,chunk", [(101, 16), (203, 40), (9, 0), (1, 0)])
def test_chunked_and_odd_sizes(N, chunk):
    widths = [6, 7, 5, 4]
    X, y = problem(widths, N, seed=N) if N >= 4 else (np.ones((N, 6)), np.zeros(N, dtype=int))
    k = kernel.MLPKernel(widths, "tanh", True, X, y, 1e-4, chunk=chunk)
    assert k.chunk % 2 == 0 and k.chunk >= max(chunk, 1)  # whole vectors (2, 4 or 8 samples by target)
    w = np.random.default_rng(2).normal(size=(2, k.n_params))
    E, G = k.energy_gradient(w)
    for j in range(2):
        Er, gr = reference(widths, "tanh", True, X, y, 1e-4, w[j])
        assert abs(E[j] - Er) <= 1e-12 * abs(Er)
        np.testing.assert_allclose(G[j], gr, rtol=1e-12, atol=1e-12 * np.abs(gr).max())


@pytest.mark.parametrize("act", ["tanh", "softplus"])
def test_iris_like_size_and_large_logits(act):
    # Iris shape; large weights push logits to hundreds (softplus: beta z to about 1,000, beyond
    # exp's range): the activation and the log-sum-exp must stay stable
    X, y = problem([4, 5, 3], 150, seed=3)
    k = kernel.MLPKernel([4, 5, 3], act, True, X, y, 1e-4, **sharpness(act))
    w = 60.0 * np.random.default_rng(4).normal(size=(4, k.n_params))
    E, G = k.energy_gradient(w)
    assert np.all(np.isfinite(E)) and np.all(np.isfinite(G))
    for j in range(4):
        Er, gr = reference([4, 5, 3], act, True, X, y, 1e-4, w[j])
        assert abs(E[j] - Er) <= 1e-12 * abs(Er)
        np.testing.assert_allclose(G[j], gr, rtol=1e-12, atol=1e-12 * np.abs(gr).max())


@pytest.mark.parametrize("act", kernel.ACTIVATIONS)
def test_gradient_matches_finite_differences(act):
    widths = [3, 4, 3, 3]
    X, y = problem(widths, 29, seed=5)
    k = kernel.MLPKernel(widths, act, True, X, y, 1e-2, **sharpness(act))
    w0 = np.random.default_rng(6).normal(size=k.n_params)
    _, g = k.energy_gradient(w0)
    h = 1e-5
    steps = np.eye(k.n_params) * h
    Ep, _ = k.energy_gradient(np.ascontiguousarray(w0 + steps))
    Em, _ = k.energy_gradient(np.ascontiguousarray(w0 - steps))
    fd = (Ep - Em) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_nan_parameters_give_nan():
    X, y = problem([4, 5, 3], 20)
    k = kernel.MLPKernel([4, 5, 3], "tanh", True, X, y, 1e-4)
    w = np.zeros((2, k.n_params))
    w[1, 7] = np.nan
    E, G = k.energy_gradient(w)
    assert np.isfinite(E[0]) and np.isnan(E[1])
    assert abs(E[0] - np.log(3)) < 1e-15  # all logits equal


# --------------------------------------------------------------------------- determinism

def test_batched_equals_single_calls_and_threads():
    widths = [9, 8, 5]
    X, y = problem(widths, 701, seed=7)  # enough work per walker for the threads to be used
    k = kernel.MLPKernel(widths, "sigmoid", True, X, y, 1e-4, chunk=64)
    K = 13
    w = np.random.default_rng(8).normal(size=(K, k.n_params))
    E1, G1 = k.energy_gradient(w, threads=1)
    for j in range(K):
        e, g = k.energy_gradient(np.array(w[j]))  # a fresh, differently placed buffer
        assert e == E1[j] and np.array_equal(g, G1[j])
    assert k.threads_used == 1
    for t in (2, 3, 5):
        Et, Gt = k.energy_gradient(w, threads=t)
        assert k.threads_used == t
        assert np.array_equal(Et, E1) and np.array_equal(Gt, G1)
    # misaligned rows (offset by one double in a larger buffer) give the same bits
    big = np.empty(K * k.n_params + 1)
    wo = big[1:].reshape(K, k.n_params)
    wo[...] = w
    Eo, Go = k.energy_gradient(wo, threads=2)
    assert np.array_equal(Eo, E1) and np.array_equal(Go, G1)


def test_outputs_reused_and_torch_tensors():
    torch = pytest.importorskip("torch")
    X, y = problem([4, 5, 3], 50)
    k = kernel.MLPKernel([4, 5, 3], "relu", False, X, y, 1e-3, threads=2)
    w = np.random.default_rng(9).normal(size=(6, k.n_params))
    E0, G0 = k.energy_gradient(w)
    E, G = np.empty(6), np.empty((6, k.n_params))
    rE, rG = k.energy_gradient(w, E, G)
    assert rE is E and rG is G and np.array_equal(E, E0) and np.array_equal(G, G0)
    tw = torch.from_numpy(w.copy())
    tE, tG = torch.empty(6, dtype=torch.float64), torch.zeros(6, k.n_params, dtype=torch.float64)
    rE, rG = k.energy_gradient(tw, tE, tG)
    assert rE is tE and rG is tG
    assert np.array_equal(tE.numpy(), E0) and np.array_equal(tG.numpy(), G0)
    rE, rG = k.energy_gradient(tw)
    assert isinstance(rE, torch.Tensor) and np.array_equal(rG.numpy(), G0)
    rE, rG = k.energy_gradient(tw.numpy(), tE.numpy(), tG.numpy())  # numpy views of tensors
    assert np.array_equal(tG.numpy(), G0)
    e, g = k.energy_gradient(w[2])
    assert isinstance(e, float) and e == E0[2] and np.array_equal(g, G0[2])


def test_empty_batch():
    X, y = problem([4, 5, 3], 10)
    k = kernel.MLPKernel([4, 5, 3], "tanh", True, X, y, 1e-4)
    E, G = k.energy_gradient(np.empty((0, k.n_params)))
    assert E.shape == (0,) and G.shape == (0, k.n_params)


@pytest.mark.parametrize("act", ["tanh", "softplus"])
def test_pickle_roundtrip(act):
    X, y = problem([4, 5, 3], 30)
    k = kernel.MLPKernel([4, 5, 3], act, True, X, y, 1e-4, **sharpness(act))
    k2 = pickle.loads(pickle.dumps(k))
    w = np.random.default_rng(10).normal(size=(2, k.n_params))
    assert k2.sharpness == k.sharpness and np.array_equal(k.energy_gradient(w)[1], k2.energy_gradient(w)[1])


# --------------------------------------------------------------------------- validation

def test_bad_inputs_raise_value_error():
    X, y = problem([4, 5, 3], 20)
    k = kernel.MLPKernel([4, 5, 3], "tanh", True, X, y, 1e-4)
    P = k.n_params
    w = np.zeros((3, P))
    bad = [
        (w.astype(np.float32), None, None),
        (np.zeros((3, P + 1)), None, None),
        (np.zeros((3, 2, P)), None, None),
        (np.zeros((P, 3)).T, None, None),           # not C-contiguous
        (np.zeros((3, 2 * P))[:, ::2], None, None),  # strided
        (w.tolist(), None, None),
        (w, np.empty(4), None),
        (w, None, np.empty((3, P), dtype=np.float32)),
        (w, None, np.empty((P, 3)).T),
        (w, None, w),                                # output overlaps input
    ]
    ro = np.empty(3)
    ro.flags.writeable = False
    bad.append((w, ro, None))
    for args in bad:
        with pytest.raises(ValueError) as info:
            k.energy_gradient(*args)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError):
        kernel.MLPKernel([4, 5, 3], "swish", True, X, y, 1e-4)
    for act, beta in (("softplus", None), ("tanh", 10.0), ("softplus", 0.0), ("softplus", np.inf)):
        with pytest.raises(ValueError, match="sharpness"):
            kernel.MLPKernel([4, 5, 3], act, True, X, y, 1e-4, sharpness=beta)
    with pytest.raises(ValueError):
        kernel.MLPKernel([5, 5, 3], "tanh", True, X, y, 1e-4)
    with pytest.raises(ValueError):
        kernel.MLPKernel([4, 5, 3], "tanh", True, X, y + 3, 1e-4)
    with pytest.raises(ValueError):
        kernel.MLPKernel([4, 5, 3], "tanh", True, X, y.astype(float), 1e-4)
    with pytest.raises(ValueError):
        kernel.MLPKernel([4], "tanh", True, X, y, 1e-4)


# --------------------------------------------------------------------------- processes

# the subprocesses load landscape/kernel.py alone (not the package, which imports torch)
_LOAD = f"""
import importlib.util
_spec = importlib.util.spec_from_file_location("lkernel", {str(REPO / "landscape" / "kernel.py")!r})
kernel = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kernel)
"""


def _run(code: str, env_extra: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "-c", _LOAD + textwrap.dedent(code)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_disabled_by_environment():
    r = _run("""
        print(kernel.available(), kernel.unavailable_reason())
    """, {"LANDSCAPE_KERNEL": "off"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("False") and "LANDSCAPE_KERNEL" in r.stdout


def test_concurrent_builds_into_a_fresh_cache(tmp_path):
    # several processes compile into the same empty cache at once: all load a whole library
    code = _LOAD + """
import numpy as np
assert kernel.available(), kernel.unavailable_reason()
k = kernel.MLPKernel([2, 3, 2], "tanh", True, np.eye(2), np.array([0, 1]), 0.0)
print(k.energy_gradient(np.zeros((1, k.n_params)))[0][0])
"""
    env = dict(os.environ, LANDSCAPE_KERNEL_CACHE=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert abs(float(out) - np.log(2)) < 1e-15
    files = sorted(f.name for f in tmp_path.iterdir())
    assert len(files) == 1 and files[0].endswith(".so"), files


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_thread_pool_survives_fork():
    X, y = problem([4, 5, 3], 2000)
    k = kernel.MLPKernel([4, 5, 3], "tanh", True, X, y, 1e-4, threads=2)
    w = np.random.default_rng(11).normal(size=(8, k.n_params))
    E, _ = k.energy_gradient(w)  # starts the pool in the parent
    assert k.threads_used == 2
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the pool's workers do not exist here
        try:
            Ec, _ = k.energy_gradient(w)
            assert k.threads_used == 2
            os.write(wfd, Ec.tobytes())
        finally:
            os._exit(0)
    os.close(wfd)
    ready, _, _ = select.select([rfd], [], [], 60)
    if not ready:
        os.kill(pid, 9)
    os.waitpid(pid, 0)
    assert ready, "child deadlocked in the thread pool"
    data = os.read(rfd, 1 << 16)
    os.close(rfd)
    assert np.array_equal(np.frombuffer(data), E)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 targets")
@pytest.mark.parametrize("march", ["x86-64-v3", pytest.param("x86-64-v2", marks=pytest.mark.slow)])
# AVX2 (4-wide vectors) and SSE (2-wide) builds of the same source
def test_narrower_vector_builds(tmp_path, march):
    widths = [5, 9, 4, 3]
    X, y = problem(widths, 45, seed=12)
    w = np.random.default_rng(13).normal(size=(3, n_params(widths, True)))
    np.savez(tmp_path / "in.npz", X=X, y=y, w=w)
    r = _run(f"""
        import numpy as np
        d = np.load({str(tmp_path / "in.npz")!r})
        assert kernel.available(), kernel.unavailable_reason()
        out = {{}}
        for act, options in (("sigmoid", {{}}), ("softplus", {{"sharpness": {BETA}}})):
            k = kernel.MLPKernel({widths}, act, True, d["X"], d["y"], 1e-3, chunk=16, **options)
            out["E" + act], out["G" + act] = k.energy_gradient(d["w"], threads=2)
        np.savez({str(tmp_path / "out.npz")!r}, **out)
    """, {"LANDSCAPE_KERNEL_MARCH": march, "LANDSCAPE_KERNEL_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    out = np.load(tmp_path / "out.npz")
    for act in ("sigmoid", "softplus"):
        for j in range(3):
            Er, gr = reference(widths, act, True, X, y, 1e-3, w[j])
            assert abs(out["E" + act][j] - Er) <= 1e-12 * abs(Er)
            np.testing.assert_allclose(out["G" + act][j], gr, rtol=1e-12, atol=1e-12 * np.abs(gr).max())
