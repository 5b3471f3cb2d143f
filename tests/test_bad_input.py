"""Bad input: one line on stderr and exit status 2, every time (issue 19, item 2).

A table of generated cases (hypothesis: malformed option values per command, malformed TOML
configs, malformed data files, databases damaged by flipped bits, truncation, deleted datasets
and attributes, wrong dtypes, shapes and values written with h5py, and odd files). Each runs
``landscape.cli.main(argv)`` in-process in a folder of its own, holding a copy of one small
sampled database, and must end with exit status 2, exactly one stderr line ``landscape: ...``
(no traceback; stdout and stderr are captured at the file-descriptor level too, so HDF5's own
messages would count), every file there byte-identical and no file added. Flipped bits may land
where they change nothing (free space, a chunk of a run's walker state that the command does not
read): such a case may also succeed, if the file it leaves is one ``inspect`` accepts.

``benchmarks/bad_input.py`` runs the same generators and prints the table per category.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import landscape
from landscape import cli

HYPOTHESIS = dict(deadline=None, derandomize=True, database=None, print_blob=False,
                  suppress_health_check=list(HealthCheck))
DB = "db.h5"  # the copy of the sampled database in every case's folder


# -- running a case --------------------------------------------------------------------------------
@dataclass
class Case:
    """One bad input: ``argv`` ('{d}' is the case's folder), what ``prepare(folder)`` puts there
    beside the database copy, and whether it may succeed (bits flipped where they change nothing)."""

    category: str
    what: str
    argv: list[str]
    prepare: Callable[[Path], None] | None = None
    may_succeed: bool = False


@dataclass
class Outcome:
    code: object
    err: str
    one_line: bool  # exit 2 and one stderr line 'landscape: ...', no traceback
    unchanged: bool  # every file byte-identical, none added or removed
    ok: bool
    why: str = ""


def run_cli(argv: list[str]) -> tuple[object, str, str]:
    """``cli.main(argv)`` with stdout and stderr captured, Python's and the file descriptors' (an
    exception escaping main is reported as its traceback, code 'raised')."""
    out, err = io.StringIO(), io.StringIO()
    with tempfile.TemporaryFile() as fd_out, tempfile.TemporaryFile() as fd_err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(fd_out.fileno(), 1)
        os.dup2(fd_err.fileno(), 2)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = cli.main(argv)
                except SystemExit as e:  # argparse's errors and --help
                    code = e.code
                except BaseException:  # noqa: BLE001 - what the user would see
                    import traceback

                    code = "raised"
                    traceback.print_exc(file=err)
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        fd_out.seek(0)
        fd_err.seek(0)
        return (code, out.getvalue() + fd_out.read().decode(errors="replace"),
                err.getvalue() + fd_err.read().decode(errors="replace"))


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder``: its SHA-256, or 'folder'."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), folder)] = "folder"
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def check(case: Case, base: Base, folder: Path) -> Outcome:
    """Run ``case`` in ``folder`` (empty) beside a copy of the base database."""
    shutil.copyfile(base.path, folder / DB)
    if case.prepare is not None:
        case.prepare(folder)
    before = snapshot(folder)
    argv = [a.replace("{d}", str(folder)) for a in case.argv]
    code, out, err = run_cli(argv)
    after = snapshot(folder)
    lines = err.splitlines()
    one_line = (code == 2 and len(lines) == 1 and lines[0].startswith("landscape: ") and "Traceback" not in err)
    unchanged = before == after
    if one_line and unchanged:
        return Outcome(code, err, True, True, True)
    if code == 0 and case.may_succeed and "Traceback" not in err:
        # the bits changed nothing the command needed: nothing added, and what it leaves inspect accepts
        code2, _, err2 = run_cli(["inspect", str(folder / DB)])
        ok = set(after) == set(before) and code2 == 0
        return Outcome(code, err, False, unchanged, ok, "" if ok else f"succeeded, then inspect: {code2} {err2}")
    why = []
    if not one_line:
        why.append(f"exit {code} with stderr {err[-2000:]!r}")
    if not unchanged:
        why.append(f"files changed: {sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))}")
    return Outcome(code, err, one_line, unchanged, False, "; ".join(why))


TABLE: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


def record(case: Case, out: Outcome) -> None:
    t = TABLE[case.category]
    t["cases"] += 1
    t["one line, exit 2"] += out.one_line
    t["files unchanged"] += out.unchanged
    t["succeeded harmlessly"] += out.code == 0 and out.ok


def table_text(table: dict[str, collections.Counter]) -> str:
    cols = ("cases", "one line, exit 2", "files unchanged", "succeeded harmlessly")
    rows = [f"{'category':<42}" + "".join(f"{c:>22}" for c in cols)]
    for cat in sorted(table):
        rows.append(f"{cat:<42}" + "".join(f"{table[cat][c]:>22}" for c in cols))
    rows.append(f"{'all':<42}" + "".join(f"{sum(t[c] for t in table.values()):>22}" for c in cols))
    return "\n".join(rows)


# -- the database every case starts from ------------------------------------------------------------
@dataclass
class Base:
    """The sampled database (Iris 4-3-3, lam 1e-4, two minima) and where its bytes are: raw data
    chunks, attribute text (HDF5's global heap, which has no checksum), the objects' headers, and
    the rest (superblock, chunk indexes, heaps, free space); its objects and attributes."""

    path: Path
    size: int
    chunks: list[tuple[int, int]]
    texts: list[tuple[int, int]]
    headers: list[tuple[int, int]]
    other: list[tuple[int, int]]
    objects: list[str]
    attributes: list[tuple[str, str]]
    n_params: int


def make_base(folder: Path) -> Base:
    path = folder / "base.h5"
    problem = landscape.Problem.create("iris", hidden=(3,), lam=1e-4, test_fraction=0.0)
    landscape.sample(problem, path, landscape.Settings(walkers=4), steps=3, progress=False)
    with h5py.File(path, "a", libver=("v110", "v110")) as f:
        f.attrs["writer"] = json.dumps({})  # the writer is this process: nothing looks live
    return describe(path)


def describe(path: Path) -> Base:
    raw = path.read_bytes()
    chunks, texts, headers, objects, attributes = [], [], [], [], []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            objects.append(name)
            info = h5py.h5o.get_info(obj.id)
            headers.append((info.addr, info.addr + info.hdr.space.total))
            attributes.extend((name, a) for a in obj.attrs)
            if isinstance(obj, h5py.Dataset) and obj.chunks:
                for i in range(obj.id.get_num_chunks()):
                    info = obj.id.get_chunk_info(i)
                    chunks.append((info.byte_offset, info.byte_offset + info.size))

        f.visititems(visit)
        attributes.extend(("/", a) for a in f.attrs)
        values = [v for name in ["/", *objects] for v in f[name].attrs.values() if isinstance(v, str)]
        n_params = landscape.Problem.from_json(f["problem"].attrs["problem"]).model.n_params
    for v in values:
        start = raw.find(v.encode())
        if start >= 0 and len(v) > 8:
            texts.append((start, start + len(v.encode())))
    info = h5py.h5o.get_info(h5py.h5f.open(os.fsencode(path)))
    taken = np.zeros(len(raw), np.int8)  # 1 chunks, 2 text, 3 headers (the later wins)
    for kind, spans in enumerate((chunks, texts, headers + [(info.addr, info.addr + info.hdr.space.total)]), 1):
        for a, b in spans:
            taken[a:b] = kind
    regions = []
    for kind in range(4):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], (taken == kind).astype(np.int8), [0]])))
        regions.append([(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])])
    other, chunks, texts, headers = regions
    return Base(path, len(raw), chunks, texts, headers, other, sorted(objects), attributes, n_params)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Base:
    b = make_base(tmp_path_factory.mktemp("base"))
    yield b
    print("\nbad input, per category:\n" + table_text(TABLE))


# -- generators ---------------------------------------------------------------------------------------
Sub = tuple  # (name, strategy of Case, examples): a part of a category, run with its own examples
SAMPLE_NEW = ["sample", "{d}/new.h5", "--steps", "1", "--walkers", "2", "--quiet"]
SAMPLE_APPEND = ["sample", "{d}/" + DB, "--steps", "1", "--walkers", "2", "--quiet"]
SCORE = ["score", "{d}/" + DB, "--eps", "0.1", "--quiet"]
CONNECT = ["connect", "{d}/" + DB, "--quiet"]
ANALYZE = ["analyze", "{d}/" + DB, "--out", "{d}/report"]
INSPECT = ["inspect", "{d}/" + DB]
READ_AND_WRITE = [INSPECT, SAMPLE_APPEND, SCORE, INSPECT + ["--json"]]

NOT_INT = ["", "x", "1.5", "1e3", "0x10", "one", "NaN", "2,3", "+-1", "--"]
NOT_FLOAT = ["", "x", "1,5", "0.1.2", "e", "one", "--", "1e", "0x1p"]
INT64 = st.integers(-2**63, 2**63 - 1)
WORDS = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12)


def bad_int(low: int | None = None, high: int | None = None) -> st.SearchStrategy[str]:
    """Text that is not a whole number in [low, high]."""
    options = [st.sampled_from(NOT_INT), st.floats(allow_nan=False, allow_infinity=False).filter(
        lambda v: not v.is_integer()).map(repr)]
    if low is not None:
        options.append(st.integers(max_value=low - 1).map(str))
    if high is not None:
        options.append(st.integers(min_value=high + 1).map(str))
    return st.one_of(options)


def bad_float(low: float | None = None, high: float | None = None, low_ok: bool = False,
              high_ok: bool = False) -> st.SearchStrategy[str]:
    """Text that is not a finite number in the interval from ``low`` to ``high`` (each end
    allowed only where ``low_ok``, ``high_ok``)."""
    options = [st.sampled_from(NOT_FLOAT + ["nan", "inf", "-inf", "NaN"])]
    if low is not None:
        options.append(st.floats(max_value=low, exclude_max=low_ok, allow_nan=False, allow_infinity=False).filter(
            lambda v: not (low_ok and v == low)).map(repr))
    if high is not None:
        options.append(st.floats(min_value=high, exclude_min=high_ok, allow_nan=False, allow_infinity=False).filter(
            lambda v: not (high_ok and v == high)).map(repr))
    return st.one_of(options)


def not_in(choices) -> st.SearchStrategy[str]:
    return WORDS.filter(lambda w: w not in choices and not w.startswith("-"))


def _args(option: str, values: st.SearchStrategy[str], before: tuple[str, ...] = ()) -> st.SearchStrategy:
    return values.map(lambda v: [*before, option, v])


def _option_subs(category: str, base_argv: list[str], options: dict[str, st.SearchStrategy[list[str]]],
                 n: int) -> list[Sub]:
    return [(name, s.map(lambda extra, name=name: Case(category, " ".join(extra), base_argv + extra)), n)
            for name, s in options.items()]


def sample_options() -> list[Sub]:
    """One malformed option of ``sample`` on a new database, or a refused combination; options
    of another problem, or against --resume's rules, on an existing one."""
    cnn = ("--data", "digits", "--arch", "cnn")
    choices = {"--data": landscape.data.SOURCES, "--scaling": landscape.data.SCALINGS, "--arch": ("mlp", "cnn"),
               "--activation": ("tanh", "sigmoid", "softplus", "relu"),
               "--hessian": ("auto", "full", "lanczos", "none"), "--start": ("walker", "uniform"),
               "--sensitivity-method": ("ibp", "crown", "ibp+crown"),
               "--sensitivity-space": ("logits", "logit_diff", "softmax")}
    new = {
        "--hidden": _args("--hidden", st.one_of(bad_int(low=1), st.integers(10**10, 10**30).map(str))),
        "--channels": _args("--channels", st.one_of(bad_int(low=1), st.integers(10**9, 10**30).map(str)), cnn),
        "--lam": _args("--lam", bad_float(low=0.0)),
        "--test-fraction": _args("--test-fraction", bad_float(low=0.0, high=1.0, low_ok=True)),
        "--split-seed": _args("--split-seed", bad_int(0, 2**32 - 1)),
        "--limit": _args("--limit", bad_int(low=2)),
        "--sharpness": _args("--sharpness", bad_float(low=0.0), ("--activation", "softplus")),
        "--walkers": _args("--walkers", st.one_of(bad_int(low=1), st.integers(10**13, 10**18).map(str))),
        "--temperature": _args("--temperature", st.one_of(bad_float(low=0.0), not_in({"auto"}))),
        "--step": _args("--step", bad_float(low=0.0)),
        "--tol": _args("--tol", bad_float(low=0.0)),
        "--maxiter": _args("--maxiter", bad_int(1, 2**63 - 1)),
        "--target-acceptance": _args("--target-acceptance", bad_float(low=0.0, high=1.0)),
        "--visit-bias": _args("--visit-bias", bad_float(low=0.0, low_ok=True)),
        "--steps": _args("--steps", bad_int(1, 2**63 - 1)),
        "--minutes": _args("--minutes", bad_float(low=0.0)),
        "--seed": _args("--seed", bad_int(0, 2**63 - 1)),
        "--threads": _args("--threads", bad_int(1, 1024)),
        "--processes": _args("--processes", bad_int(1, 1024)),
        "--sensitivity-weight": _args("--sensitivity-weight", bad_float(low=0.0, low_ok=True),
                                      ("--sensitivity-eps", "0.1")),
        "--sensitivity-eps": _args("--sensitivity-eps", bad_float(low=0.0), ("--sensitivity-weight", "0.1")),
        **{o: _args(o, not_in(c)) for o, c in choices.items()},
    }
    combinations = {"refused combinations": st.sampled_from([
            ["--activation", "relu"], ["--sharpness", "5"], ["--data", "csv"], ["--data", "npz"], ["--data", "mnist"],
            ["--data-path", "{d}/nothing.npz"], ["--data-path", "{d}/nothing.csv"], ["--data-path", "{d}/nothing.txt"],
            ["--data", "iris", "--data-path", "{d}/" + DB], ["--label-column", "species"], ["--arch", "cnn"],
            ["--start", "uniform"], ["--sensitivity-weight", "0.1"], ["--sensitivity-eps", "0.1"],
            ["--data", "digits", "--arch", "cnn", "--channels", "4", "4", "4", "4"], ["--resume"],
            ["--temperature", "auto", "--walkers", "1"], ["--processes", "3"], ["--no-such-option"],
            ["--hidden"], ["--steps"], ["--hidden", "3", "--", "extra"]])}
    existing = {"another problem, --resume's rules": st.one_of(
        st.integers(1, 6).filter(lambda h: h != 3).map(lambda h: ["--hidden", str(h)]),
        st.sampled_from([["--lam", "1e-3"], ["--activation", "sigmoid"], ["--test-fraction", "0.2"],
                         ["--data", "digits"], ["--resume", "--seed", "1"], ["--resume", "--walkers", "3"],
                         ["--no-bias"], ["--scaling", "none"]]))}
    return (_option_subs("options: sample", SAMPLE_NEW, new, 3)
            + _option_subs("options: sample", SAMPLE_NEW, combinations, 12)
            + _option_subs("options: sample", SAMPLE_APPEND, existing, 8))


def other_options() -> list[Sub]:
    """One malformed option of score, connect, analyze or inspect, or a malformed command line."""
    pgd, flat = ("--quantity", "pgd"), ("--quantity", "flatness")
    methods, spaces = ("ibp", "crown", "ibp+crown"), ("logits", "logit_diff", "softmax")
    score = {
        "--eps": _args("--eps", bad_float(low=0.0, low_ok=True)),
        "--quantity": _args("--quantity", not_in(("sensitivity", "accuracy", "loss", "pgd", "verified", "flatness"))),
        "--method": _args("--method", not_in(methods)),
        "--verify-method": _args("--verify-method", not_in(methods)),
        "--space": _args("--space", not_in(spaces)),
        "--aggregation": _args("--aggregation", not_in(("mean_log", "log_mean"))),
        "--split": _args("--split", not_in(("train", "test"))),
        "--pgd-steps": _args("--pgd-steps", bad_int(1, 2**63 - 1), pgd),
        "--pgd-restarts": _args("--pgd-restarts", bad_int(1, 2**63 - 1), pgd),
        "--probes": _args("--probes", bad_int(2, 2**63 - 1), flat),
        "--lanczos-steps": _args("--lanczos-steps", bad_int(1, 2**63 - 1), flat),
        "--full-spectrum-max": _args("--full-spectrum-max", bad_int(0, 2**63 - 1), flat),
        "--seed": _args("--seed", bad_int(0, 2**63 - 1), pgd),
        "refused": st.sampled_from([["--split", "test"], ["--data-path", "{d}/nothing.csv"], ["--eps"], ["--bogus"]]),
    }
    connect = {
        "--lowest": _args("--lowest", bad_int(low=1)),
        "--pairs": _args("--pairs", st.one_of(
            not_in(()).filter(lambda w: "," not in w), st.sampled_from(["0,0", "1,1", "a,b", "0,1,2", ",", "0,"]),
            st.integers(2, 10**20).map(lambda k: f"0,{k}"), st.integers(max_value=-1).map(lambda k: f"{k},0"))),
        "--max-attempts": _args("--max-attempts", bad_int(low=1)),
        "--minutes": _args("--minutes", bad_float(low=0.0)),
        "--seed": _args("--seed", bad_int(0, 2**63 - 1)),
        "refused": st.sampled_from([["--pairs", "0,1", "--lowest", "2"], ["--lowest", "1", "--all"],
                                    ["--data-path", "{d}/nothing.csv"]]),
    }
    analyze = {
        "--levels": _args("--levels", bad_int(2, 2**31 - 1)),
        "--resamples": _args("--resamples", bad_int(1, 2**31 - 1)),
        "--seed": _args("--seed", bad_int(0, 2**63 - 1)),
        "--out a file": st.just(["--out", "{d}/" + DB]),
    }
    inspect = {"--lowest": _args("--lowest", bad_int(low=0)), "refused": st.sampled_from([["--jsn"], ["extra"]])}
    category = "options: score, connect, analyze, inspect"
    line = st.one_of(
        st.lists(not_in(("sample", "score", "connect", "analyze", "inspect")), min_size=1, max_size=3),
        st.sampled_from([[], ["sample"], ["score"], ["--verbose"], ["inspect", "{d}/" + DB, "{d}/" + DB],
                         ["score", "{d}/" + DB, "--quiet"], ["analyze", "{d}/" + DB]]))
    subs = []
    for command, argv, options in (("score", SCORE, score), ("connect", CONNECT, connect),
                                   ("analyze", ANALYZE, analyze), ("inspect", INSPECT, inspect)):
        subs += [(f"{command} {name}", s, n) for name, s, n in _option_subs(category, argv, options, 3)]
    return subs + [("command line", line.map(lambda argv: Case(category, " ".join(argv), argv)), 8)]


# -- configs
def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # TOML's basic strings; JSON's surrogate pairs are not TOML
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{toml_value(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml(config: dict) -> str:
    lines = [f"{toml_value(k)} = {toml_value(v)}" for k, v in config.items() if not isinstance(v, dict)]
    for table, values in config.items():
        if isinstance(values, dict):
            lines.append(f"[{toml_value(table)}]")
            lines += [f"{toml_value(k)} = {toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


SCALARS = {"int": st.integers(-2**63, 2**63 - 1), "float": st.floats(allow_nan=False, allow_infinity=False),
           "str": WORDS, "bool": st.booleans()}
_WRONG = {  # values of the wrong type for a key of each type
    "int": ["float", "str", "bool"], "float": ["str", "bool"], "str": ["int", "float", "bool"],
    "bool": ["int", "float", "str"], "ints": ["int", "str", "float", "bool"], "floats": ["float", "str", "bool"],
    "strs": ["int", "str", "float", "bool"], "pairs": ["int", "float", "bool"]}


def wrong_value(kind: str) -> st.SearchStrategy:
    scalars = [SCALARS[k] for k in _WRONG[kind]]
    if kind == "int":
        scalars[0] = scalars[0].filter(lambda v: not v.is_integer())
    options = [st.one_of(scalars), st.dictionaries(WORDS, SCALARS["int"], min_size=1, max_size=2)]
    if kind in ("ints", "floats", "strs", "pairs"):  # a list of the wrong items, or one bare value
        item = {"ints": "int", "floats": "float", "strs": "str", "pairs": "str"}[kind]
        options.append(st.lists(st.one_of([SCALARS[k] for k in _WRONG[item]]).filter(
            lambda v: not (kind == "ints" and isinstance(v, float) and v.is_integer())), min_size=1, max_size=3))
    else:
        options.append(st.lists(st.one_of(list(SCALARS.values())), max_size=3))
    return st.one_of(options)


PROBLEM_KINDS = {"data": "str", "data_path": "str", "label_column": "str", "scaling": "str", "test_fraction": "float",
                 "split_seed": "int", "limit": "int", "arch": "str", "hidden": "ints", "channels": "ints",
                 "activation": "str", "sharpness": "float", "bias": "bool", "lam": "float",
                 "sensitivity_weight": "float", "sensitivity_eps": "float", "sensitivity_method": "str",
                 "sensitivity_space": "str"}
SAMPLE_KINDS = {"steps": "int", "minutes": "float", "seed": "int", "threads": "int", "processes": "int",
                **{f.name: {int: "int", float: "float", bool: "bool", str: "str"}[type(f.default)]
                   for f in __import__("dataclasses").fields(landscape.Settings)}}
SCORE_KINDS = {"eps": "floats", "quantities": "strs", "aggregation": "strs", "method": "str", "space": "str",
               "verify_method": "str", "split": "str", "pgd_steps": "int", "pgd_restarts": "int", "full_max": "int",
               "probes": "int", "lanczos_steps": "int", "seed": "int", "data_path": "str"}
CONNECT_KINDS = {"pairs": "pairs", "lowest": "int", "every": "bool", "seed": "int", "max_attempts": "int",
                 "minutes": "float", "data_path": "str"}
ANALYZE_KINDS = {"out": "str", "levels": "int", "resamples": "int", "seed": "int"}
OUT_OF_RANGE = {  # (table, key): values of the right type that are refused
    ("problem", "hidden"): [[0], [-3], [2**40]], ("problem", "lam"): [0.0, -1.0, math.inf, math.nan],
    ("problem", "test_fraction"): [1.0, -0.1], ("problem", "limit"): [1, 0], ("problem", "data"): ["cifar"],
    ("problem", "activation"): ["swish"], ("problem", "split_seed"): [-1, 2**32],
    ("sample", "walkers"): [0, -4], ("sample", "steps"): [0, -1], ("sample", "seed"): [-1],
    ("sample", "temperature"): [-1.0, 0.0], ("sample", "threads"): [0, 4096], ("sample", "maxiter"): [0],
    ("score", "eps"): [[-0.1], [math.nan], []], ("score", "quantities"): [["robustness"], []],
    ("score", "method"): ["exact"], ("score", "probes"): [1], ("connect", "lowest"): [0, -2],
    ("connect", "pairs"): [["0,0"], ["0,7"], ["x"]], ("connect", "max_attempts"): [0],
    ("analyze", "levels"): [1, 0], ("analyze", "resamples"): [0], ("analyze", "seed"): [-1],
}


CONFIG_COMMANDS = {  # argv, a sound config, the tables of that command and their keys' types
    "sample": (["sample", "{d}/new.h5", "--config", "{d}/c.toml", "--quiet"], {"sample": {"steps": 1, "walkers": 2}},
               {"problem": PROBLEM_KINDS, "sample": SAMPLE_KINDS}),
    "score": (["score", "{d}/" + DB, "--config", "{d}/c.toml", "--quiet"], {"score": {"eps": [0.1]}},
              {"score": SCORE_KINDS}),
    "connect": (["connect", "{d}/" + DB, "--config", "{d}/c.toml", "--quiet"], {"connect": {}},
                {"connect": CONNECT_KINDS}),
    "analyze": (["analyze", "{d}/" + DB, "--config", "{d}/c.toml"], {"analyze": {"out": "{d}/report"}},
                {"analyze": ANALYZE_KINDS})}


@st.composite
def _config_case(draw, command: str, how: str, table: str | None = None, key: str | None = None) -> Case:
    argv, good, kinds = CONFIG_COMMANDS[command]
    config = {t: dict(v) for t, v in good.items()}
    text: str | bytes | None = None
    if how == "binary":
        text = draw(st.binary(max_size=64)) + b"\xff\xfe" + draw(st.binary(max_size=16))
    elif how == "syntax":
        text = toml(config) + draw(st.sampled_from(["x = ", "[sample", "a = [1,", 'b = "open', "c = 1..2",
                                                    "= 3", "d = {e =", "f = tru", "[[", "g = 1 2"]))
    elif how == "unknown table":
        config[draw(not_in(("problem", "sample", "score", "connect", "analyze", "train")))] = {"k": 1}
    elif how == "unknown key":
        table = draw(st.sampled_from(sorted(kinds)))
        config.setdefault(table, {})[draw(not_in(set(kinds[table])).filter(str.isidentifier))] = 1
    elif how == "not a table":
        config[draw(st.sampled_from(sorted(kinds)))] = draw(st.one_of(list(SCALARS.values())))
    elif how == "wrong type":
        value = draw(wrong_value(kinds[table][key]))
        if key == "temperature" and value == "auto" or key == "out" and isinstance(value, str):
            value = 1.5
        config.setdefault(table, {})[key] = value
    elif how == "out of range":
        config.setdefault(table, {})[key] = draw(st.sampled_from(OUT_OF_RANGE[table, key]))
    if text is None:
        text = toml(config)

    def prepare(folder: Path) -> None:
        if how == "folder":
            (folder / "c.toml").mkdir()
        elif how != "missing":
            data = text if isinstance(text, bytes) else text.replace("{d}", str(folder)).encode()
            (folder / "c.toml").write_bytes(data)

    what = f"{command}: {how}{f' {table}.{key}' if key else ''}: {text if how not in ('folder', 'missing') else ''}"
    return Case("configs", what[:300], argv, prepare)


def config_cases() -> list[Sub]:
    """A --config file that is malformed: not text, not TOML, a folder, missing, an unknown table
    or key, a table that is not one; every key of every table with a value of the wrong type, and
    some out of range."""
    subs = []
    for command, (_, _, kinds) in CONFIG_COMMANDS.items():
        for how, n in (("binary", 2), ("syntax", 3), ("folder", 1), ("missing", 1), ("unknown table", 1),
                       ("unknown key", 1), ("not a table", 1)):
            subs.append((f"{command}: {how}", _config_case(command, how), n))
        for table, keys in kinds.items():
            subs += [(f"{command}: [{table}] {key} of a wrong type", _config_case(command, "wrong type", table, key),
                      1) for key in sorted(keys)]
            subs += [(f"{command}: [{t}] {key} out of range", _config_case(command, "out of range", t, key),
                      len(values)) for (t, key), values in OUT_OF_RANGE.items() if t == table]
    return subs


# -- data files
def _npz(**arrays) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
    return write


DATA_KINDS = {
    "npz": ["nan labels", "inf labels", "complex features", "complex labels", "text features", "object arrays",
            "1-D features", "2-D labels", "length mismatch", "one class", "no X", "no y", "NaN features",
            "inf features", "no features", "no samples", "not a zip", "damaged zip"],
    "csv": ["not text", "no label column", "ragged row", "text feature", "empty", "header only", "NaN feature",
            "one class", "label only"],
    "mnist": ["empty folder", "bad magic", "header mismatch", "one IDX file", "pixels out of range",
              "labels mismatch", "2-D images"]}


def data_cases() -> list[Sub]:
    """A data file (npz, csv, an MNIST folder) that is malformed, each kind of each format."""

    @st.composite
    def case(draw, fmt: str, kind: str) -> Case:
        n = draw(st.integers(6, 40))
        d = draw(st.integers(1, 5))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        X = rng.normal(size=(n, d))
        y = np.arange(n) % 3
        some = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3, unique=True))
        argv = SAMPLE_NEW + ["--data-path", "{d}/data." + fmt if fmt != "mnist" else "{d}/mnist"]
        if fmt == "npz":
            yf = y.astype(float)
            yf[some] = np.nan if kind == "nan labels" else np.inf
            arrays = {"nan labels": dict(X=X, y=yf), "inf labels": dict(X=X, y=yf),
                      "complex features": dict(X=X + 1j * (1 + X), y=y), "complex labels": dict(X=X, y=y + 1j),
                      "text features": dict(X=X.astype(str), y=y),
                      "object arrays": dict(X=np.array([list(r) for r in X] , dtype=object), y=y),
                      "1-D features": dict(X=X[:, 0], y=y), "2-D labels": dict(X=X, y=np.stack([y, y], 1)),
                      "length mismatch": dict(X=X, y=y[:-1]), "one class": dict(X=X, y=np.zeros(n, int)),
                      "no X": dict(x=X, y=y), "no y": dict(X=X, labels=y), "no features": dict(X=X[:, :0], y=y),
                      "no samples": dict(X=X[:0], y=y[:0])}.get(kind, dict(X=X, y=y))
            if kind == "NaN features" or kind == "inf features":
                arrays["X"][some[0], 0] = np.nan if kind == "NaN features" else -np.inf
            flip = draw(st.integers(0, 10**9))

            def prepare(folder: Path) -> None:
                path = folder / "data.npz"
                if kind == "not a zip":
                    path.write_bytes(b"PK" + rng.bytes(int(rng.integers(0, 200))))
                    return
                _npz(**arrays)(path)
                if kind == "damaged zip":  # a flipped bit inside a member's stored bytes: its CRC fails
                    with zipfile.ZipFile(path) as z:
                        spans = [(i.header_offset + 30 + len(i.filename.encode()) + len(i.extra), i.compress_size)
                                 for i in z.infolist()]
                    raw = bytearray(path.read_bytes())
                    start, size = spans[flip % len(spans)]
                    raw[start + 64 + flip % (size - 64)] ^= 1 << (flip % 8)  # past the .npy header
                    path.write_bytes(bytes(raw))
        elif fmt == "csv":
            header = [f"f{j}" for j in range(d)] + ["label"]
            rows = [[repr(float(v)) for v in X[i]] + [str(y[i])] for i in range(n)]
            if kind == "ragged row":
                rows[some[0]] = rows[some[0]][:-2] or ["1"]
            elif kind == "text feature":
                rows[some[0]][0] = draw(not_in(()).filter(lambda w: _not_float(w)))
            elif kind == "NaN feature":
                rows[some[0]][0] = draw(st.sampled_from(["nan", "inf", "-inf", "NaN"]))
            elif kind == "one class":
                rows = [r[:-1] + ["a"] for r in rows]
            elif kind == "label only":
                header, rows = ["label"], [[str(v)] for v in y]
            body = "\n".join(",".join(r) for r in [header, *rows]) + "\n"
            text = {"empty": b"", "header only": (",".join(header) + "\n").encode(),
                    "not text": b"f0,label\n" + rng.bytes(40) + b"\xff\xfe\n"}.get(kind, body.encode())
            argv += ["--label-column", "label" if kind != "no label column" else "class"]

            def prepare(folder: Path) -> None:
                (folder / "data.csv").write_bytes(text)
        else:
            images = rng.integers(0, 256, size=(n, 4, 4), dtype=np.uint8)

            def idx(a: np.ndarray) -> bytes:
                return bytes([0, 0, 8, a.ndim]) + b"".join(s.to_bytes(4, "big") for s in a.shape) + a.tobytes()

            def prepare(folder: Path) -> None:
                m = folder / "mnist"
                m.mkdir()
                if kind == "empty folder":
                    return
                im, lab = idx(images), idx(y.astype(np.uint8))
                if kind == "bad magic":
                    im = b"\x01" + im[1:]
                elif kind == "header mismatch":
                    im = im[:-1]
                elif kind == "labels mismatch":
                    lab = idx(y[:-1].astype(np.uint8))
                elif kind == "2-D images":
                    im = idx(images.reshape(n, -1))
                if kind == "pixels out of range":
                    with open(m / "mnist.npz", "wb") as fh:
                        np.savez(fh, x_train=images.astype(float) * 2 - 100, y_train=y)
                    return
                (m / "train-images-idx3-ubyte").write_bytes(im)
                (m / "train-labels-idx1-ubyte").write_bytes(lab)

            if kind == "one IDX file":
                argv = SAMPLE_NEW + ["--data-path", "{d}/mnist/train-images-idx3-ubyte"]
            elif kind == "pixels out of range":
                argv = SAMPLE_NEW + ["--data", "mnist", "--data-path", "{d}/mnist/mnist.npz"]
        return Case("data files", f"{fmt}: {kind} (n={n}, d={d})", argv, prepare)

    return [(f"{fmt}: {kind}", case(fmt, kind), 2) for fmt, kinds in DATA_KINDS.items() for kind in kinds]


def _not_float(w: str) -> bool:
    try:
        float(w)
    except ValueError:
        return "," not in w and "\n" not in w and "\r" not in w and '"' not in w
    return False


# -- damaged databases
def _flip(offset: int, bit: int) -> Callable[[Path], None]:
    def prepare(folder: Path) -> None:
        path = folder / DB
        raw = bytearray(path.read_bytes())
        raw[offset] ^= 1 << bit
        path.write_bytes(bytes(raw))
    return prepare


def flip_cases(base: Base, region: str, n: int) -> list[Sub]:
    """One flipped bit in the database: in a raw data chunk, in attribute text, or elsewhere
    (metadata and free space); then a command that reads or writes it."""
    spans = {"data chunks": base.chunks, "attribute text": base.texts, "object headers": base.headers,
             "other metadata": base.other}[region]
    total = sum(b - a for a, b in spans)

    def at(i: int) -> int:
        for a, b in spans:
            if i < b - a:
                return a + i
            i -= b - a
        raise AssertionError

    def case(k: int, salt: int, argv: list[str]) -> Case:
        offset = at((k * 2654435761 + salt * 40503) % total)  # spread over the region, apart for each command
        return Case(f"flipped bit: {region}", f"byte {offset} bit {k % 8}: {argv[0]}", argv,
                    _flip(offset, k % 8), may_succeed=True)

    return [(" ".join(argv[:1] + argv[2:3]), st.integers(0, 2**32 - 1).map(
        lambda k, i=i, argv=argv: case(k, i, argv)), n) for i, argv in enumerate(READ_AND_WRITE)]


def truncation_cases(base: Base) -> list[Sub]:
    """The database cut short, at the start or anywhere."""

    def case(size: int, argv: list[str]) -> Case:
        def prepare(folder: Path) -> None:
            os.truncate(folder / DB, size)
        return Case("truncated", f"{size} of {base.size} bytes: {argv[0]}", argv, prepare)

    return [(argv[0], st.one_of(st.integers(0, 64), st.integers(0, base.size - 1)).map(
        lambda size, argv=argv: case(size, argv)), 3) for argv in READ_AND_WRITE[:3] + [CONNECT, ANALYZE]]


RESUME = ["sample", "{d}/" + DB, "--resume", "--steps", "1", "--quiet"]


def _edit(change: Callable[[h5py.File], None]) -> Callable[[Path], None]:
    def prepare(folder: Path) -> None:
        with h5py.File(folder / DB, "a", libver=("v110", "v110")) as f:
            change(f)
    return prepare


def _needed(name: str) -> bool:
    """Whether deleting the object or attribute ``name`` must be refused: the tables and their
    columns, the problem's description and data, the runs' group and the root's format and schema
    version. (Descriptions, the attributes that only repeat the problem description, a run's
    record and walkers, and what other parts of landscape keep there may go.)"""
    obj, _, attr = name.partition("@")
    top = obj.partition("/")[0]
    if attr:
        return (obj, attr) in (("", "format"), ("", "schema_version"), ("problem", "problem"))
    return top in ("minima", "transition_states", "attempts", "networks", "scores", "runs") and (
        top != "runs" or obj == "runs") or obj in ("problem", "problem/shift", "problem/scale",
                                                    "problem/train_index", "problem/test_index")


def deletion_cases(base: Base) -> list[Sub]:
    """Datasets, groups or attributes deleted with h5py."""
    targets = [o for o in base.objects] + [f"{o if o != '/' else ''}@{a}" for o, a in base.attributes]

    def case(names: list[str], argv: list[str]) -> Case:
        def change(f: h5py.File) -> None:
            for name in names:
                obj, _, attr = name.partition("@")
                if attr:
                    if (not obj or obj in f) and attr in f[obj or "/"].attrs:
                        del f[obj or "/"].attrs[attr]
                elif obj in f:
                    del f[obj]

        return Case("deleted datasets, groups, attributes", f"{names}: {argv[0]}", argv, _edit(change),
                    may_succeed=argv[0] == "inspect" or not any(_needed(n) for n in names))  # (inspect reads
        # only some tables: it may pass over a missing one; a command that writes checks every one)

    groups = sorted({t.partition("/")[0].partition("@")[0] for t in targets})  # '' the root's attributes
    return [(f"under /{g}", st.tuples(
        st.lists(st.sampled_from([t for t in targets if t.partition("/")[0].partition("@")[0] == g]),
                 min_size=1, max_size=2, unique=True),
        st.sampled_from(READ_AND_WRITE[:3] + [RESUME])).map(lambda t: case(*t)), 6) for g in groups]


TABLE_COLUMNS = [f"{g}/{n}" for g, (cols, _) in landscape.database._GROUPS.items() for n in cols]


def wrong_cases(base: Base) -> list[Sub]:
    """Wrong dtypes, shapes and values written with h5py, each of which must be refused."""
    P = base.n_params

    def replace(name: str, make: Callable[[h5py.Dataset], np.ndarray | dict]):
        def change(f: h5py.File) -> None:
            old = f[name]
            new = make(old)
            del f[name]
            if isinstance(new, dict):
                f.create_dataset(name, **new)
            else:
                f.create_dataset(name, data=new)
        return change

    def set_attr(obj: str, attr: str, value):
        def change(f: h5py.File) -> None:
            f[obj].attrs[attr] = value
        return change

    def problem_json(edit: Callable[[dict], None], consistent: bool):
        """/problem's description edited; with ``consistent``, the attributes repeating it too."""
        def change(f: h5py.File) -> None:
            g = f["problem"]
            d = json.loads(g.attrs["problem"])
            edit(d)
            g.attrs["problem"] = json.dumps(d)
            if consistent:
                p = landscape.Problem.from_dict(d)
                g.attrs["n_params"] = p.model.n_params
                g.attrs["layout"] = json.dumps([{"name": b.name, "shape": list(b.shape), "offset": b.offset}
                                                for b in p.model.blocks()])
                g.attrs["loss"] = json.dumps(p.to_dict()["loss"])
        return change

    dtypes = st.sampled_from(["i8", "f8", "S8", "f4-as-int"])

    def other_dtype(name: str, dt: str):
        def make(old: h5py.Dataset):
            kind = np.dtype(dt if dt != "f4-as-int" else "u1").kind
            if kind == old.dtype.kind:
                dt2 = "S8" if kind != "S" else "f8"
            else:
                dt2 = dt if dt != "f4-as-int" else "u1"
            return dict(shape=old.shape, maxshape=(None, *old.shape[1:]), dtype=dt2, chunks=True)
        return replace(name, make)

    def other_rows(name: str, extra: int):
        def make(old: h5py.Dataset):
            shape = (old.shape[0], *(max(1, s + extra) for s in old.shape[1:])) if old.ndim > 1 else (
                old.shape[0], 1 + abs(extra))
            return dict(shape=shape, maxshape=(None, *shape[1:]), dtype=old.dtype, chunks=True)
        return replace(name, make)

    def fixed(name: str):
        return replace(name, lambda old: old[()])  # the same values, not resizable

    strategies = [
        st.tuples(st.sampled_from(TABLE_COLUMNS), dtypes).map(lambda t: (f"{t[0]} as {t[1]}", other_dtype(*t))),
        st.tuples(st.sampled_from(TABLE_COLUMNS), st.sampled_from([-1, 1, 2, 5])).map(
            lambda t: (f"{t[0]} rows of another shape ({t[1]:+d})", other_rows(*t))),
        st.sampled_from(TABLE_COLUMNS).map(lambda n: (f"{n} not resizable", fixed(n))),
        st.sampled_from(["problem/shift", "problem/scale"]).map(
            lambda n: (f"{n} of another length", replace(n, lambda old: np.ones(len(old) + 1)))),
        st.sampled_from(["problem/train_index", "problem/test_index"]).map(
            lambda n: (f"{n} as text", replace(n, lambda old: np.array([b"a", b"b"])))),
        st.sampled_from(["minima", "runs/0", "problem", "scores", "runs"]).map(
            lambda n: (f"{n} a dataset", lambda f, n=n: (f.__delitem__(n), f.create_dataset(n, data=np.zeros(3))))),
        st.one_of(st.integers(1, 12).filter(lambda h: h != 3).map(lambda h: [h]),
                  st.lists(st.integers(1, 6), min_size=2, max_size=3)).map(
            lambda h: (f"/problem widths {h} disagree with the coordinates",
                       problem_json(lambda d, h=h: d["model"].__setitem__("widths", [4, *h, 3]), True))),
        st.floats(1e-6, 1.0).filter(lambda v: v != 1e-4).map(lambda lam: (
            f"/problem lam {lam} disagrees with /problem attribute loss",
            problem_json(lambda d, lam=lam: d["loss"][1].__setitem__("lam", lam), False))),
        st.integers(1, 12).filter(lambda h: h != 3).map(lambda h: (
            f"/problem widths [4, {h}, 3] disagree with its layout",
            problem_json(lambda d, h=h: d["model"].__setitem__("widths", [4, h, 3]), False))),
        st.one_of(INT64, WORDS, st.sampled_from(["{}", "[]", "null", '{"data": 1}', '{"model": {}}'])).map(
            lambda v: (f"/problem attribute 'problem' = {v!r}", set_attr("problem", "problem", v))),
        st.one_of(INT64.filter(lambda v: v != P), WORDS).map(
            lambda v: (f"/problem attribute 'n_params' = {v!r}", set_attr("problem", "n_params", v))),
        st.one_of(WORDS, st.sampled_from(["[]", '[{"name": "W0"}]'])).map(
            lambda v: (f"/problem attribute 'layout' = {v!r}", set_attr("problem", "layout", v))),
        st.one_of(WORDS, st.sampled_from(["[]", "{}", '{"spec": {"name": "digits"}}'])).map(
            lambda v: (f"/problem attribute 'dataset' = {v!r}", set_attr("problem", "dataset", v))),
        st.tuples(st.sampled_from(["seed", "parameters", "kind", "ended", "status"]),
                  st.one_of(WORDS.filter(lambda w: not w.lstrip("-").isdigit()), st.sampled_from(["[1]", "7"]),
                            st.floats(allow_nan=False), st.lists(st.integers(0, 9), min_size=2, max_size=3))).filter(
            lambda t: not (t[0] in ("kind", "ended", "status") and isinstance(t[1], str))
            and not (t[0] == "parameters" and isinstance(t[1], str) and _is_json_object(t[1]))).map(
            lambda t: (f"/runs/0 attribute {t[0]!r} = {t[1]!r}", set_attr("runs/0", *t))),
        st.one_of(WORDS, st.sampled_from(["[]", '["steps"]', "{}", "[1, 2]"])).map(
            lambda v: (f"/runs/0/counters names = {v!r}", set_attr("runs/0/counters", "names", v))),
        st.one_of(st.integers(3, 10**6), st.integers(-2**63, 0), WORDS.filter(lambda w: not w.isdigit())).map(
            lambda v: (f"schema_version = {v!r}", set_attr("/", "schema_version", v))),
        st.one_of(WORDS.filter(lambda w: w != "landscape"), INT64).map(
            lambda v: (f"format = {v!r}", set_attr("/", "format", v))),
        st.one_of(WORDS.filter(lambda w: not _is_json_object(w)), st.sampled_from(["[1]", "3"])).map(
            lambda v: (f"writer = {v!r}", set_attr("/", "writer", v))),
        st.sampled_from(["scores/kinds"]).map(
            lambda n: (f"{n} of another record", replace(n, lambda old: dict(shape=(0,), maxshape=(None,),
                                                                              dtype="f8", chunks=True)))),
    ]

    def case(t) -> Case:
        (what, change), argv = t
        return Case("wrong dtypes, shapes, values", f"{what}: {argv[0]}", argv, _edit(change),
                    may_succeed=argv[0] == "inspect")  # inspect may pass over a table it does not read

    return [(f"mutation {i}", st.tuples(s, st.sampled_from(READ_AND_WRITE[:3])).map(case), 3)
            for i, s in enumerate(strategies)]


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def odd_file_cases() -> list[Sub]:
    """A database path that is not a landscape database: too short for a superblock, empty,
    other bytes, a folder, another HDF5 file, a newer schema, a missing folder or file."""

    def write(data: bytes):
        return lambda folder: (folder / "x.h5").write_bytes(data)

    def hdf5(attrs: dict, problem: bool = False):
        def prepare(folder: Path) -> None:
            with h5py.File(folder / "x.h5", "w", libver=("v110", "v110")) as f:
                f.attrs.update(attrs)
                f.create_dataset("data", data=np.arange(4))
                if problem:
                    f.create_group("problem")
        return prepare

    signature = b"\x89HDF\r\n\x1a\n"
    kinds = [
        st.binary(max_size=40).map(lambda b: (f"{len(b) + 8} bytes from the HDF5 signature", write(signature + b))),
        st.binary(min_size=0, max_size=200).filter(lambda b: not b.startswith(signature[:4])).map(
            lambda b: (f"{len(b)} other bytes", write(b))),
        st.just(("a folder", lambda folder: (folder / "x.h5").mkdir())),
        st.just(("an HDF5 file of something else", hdf5({}))),
        st.just(("an HDF5 file saying landscape, no problem", hdf5({"format": "landscape", "schema_version": 2}))),
        st.just(("a landscape file of a newer schema",
                 _copy_with(lambda f: f.attrs.__setitem__("schema_version", 99)))),
        st.just(("no such file", None)),
    ]
    commands = st.sampled_from([["inspect", "{d}/x.h5"], ["sample", "{d}/x.h5", "--steps", "1", "--quiet"],
                                ["score", "{d}/x.h5", "--eps", "0.1", "--quiet"], ["connect", "{d}/x.h5", "--quiet"],
                                ["analyze", "{d}/x.h5", "--out", "{d}/report"]])
    folder_missing = st.sampled_from([["sample", "{d}/no/such/folder.h5", "--steps", "1", "--quiet"],
                                      ["inspect", "{d}/no/such/folder.h5"]]).map(
        lambda argv: Case("odd files", "a missing folder", argv))
    with_file = [st.tuples(k, commands).filter(lambda t: not (t[0][1] is None and t[1][0] == "sample")).map(
        lambda t: Case("odd files", f"{t[0][0]}: {t[1][0]}", t[1], t[0][1])) for k in kinds]
    return [(f"kind {i}", s, 4) for i, s in enumerate(with_file)] + [("a missing folder", folder_missing, 2)]


def _copy_with(change: Callable[[h5py.File], None]) -> Callable[[Path], None]:
    def prepare(folder: Path) -> None:
        shutil.copyfile(folder / DB, folder / "x.h5")
        with h5py.File(folder / "x.h5", "a", libver=("v110", "v110")) as f:
            change(f)
    return prepare


def categories(base: Base) -> dict[str, list[Sub]]:
    """Every category: its parts, each a strategy of cases and how many of them the test runs."""
    return {
        "options: sample": sample_options(),
        "options: score, connect, analyze, inspect": other_options(),
        "configs": config_cases(),
        "data files": data_cases(),
        "flipped bit: object headers": flip_cases(base, "object headers", 8),
        "flipped bit: other metadata": flip_cases(base, "other metadata", 6),
        "flipped bit: data chunks": flip_cases(base, "data chunks", 5),
        "flipped bit: attribute text": flip_cases(base, "attribute text", 6),
        "truncated": truncation_cases(base),
        "deleted datasets, groups, attributes": deletion_cases(base),
        "wrong dtypes, shapes, values": wrong_cases(base),
        "odd files": odd_file_cases(),
    }


CATEGORIES = ["options: sample", "options: score, connect, analyze, inspect", "configs", "data files",
              "flipped bit: object headers", "flipped bit: other metadata", "flipped bit: data chunks", "flipped bit: attribute text", "truncated",
              "deleted datasets, groups, attributes", "wrong dtypes, shapes, values", "odd files"]


def run_category(base: Base, category: str, n: int | None, scratch: Path,
                 assert_ok: bool) -> list[tuple[Case, Outcome]]:
    """Run the generated cases of ``category`` in folders under ``scratch``: as many as the test
    runs, or about ``n`` spread over its parts. Hypothesis stops a part early where it has no
    more distinct cases."""
    subs = categories(base)[category]
    outcomes: list[tuple[Case, Outcome]] = []
    for _, strategy, examples in subs:
        @settings(max_examples=examples if n is None else max(1, math.ceil(n / len(subs))), **HYPOTHESIS)
        @given(case=strategy)
        def run(case: Case) -> None:
            folder = Path(tempfile.mkdtemp(dir=scratch))
            try:
                out = check(case, base, folder)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            if assert_ok and not out.ok:  # shrinking runs it again: count the case it settles on
                raise AssertionError(f"{case.category}: {case.what}: {case.argv}: {out.why}")
            record(case, out)
            outcomes.append((case, out))

        run()
    return outcomes


@pytest.mark.parametrize("category", CATEGORIES)
def test_bad_input_is_one_line_and_exit_2(category, base, tmp_path):
    run_category(base, category, None, tmp_path, assert_ok=True)


def test_the_table_has_300_cases():
    fake = Base(Path(), 100, [(0, 10)], [(10, 20)], [(20, 50)], [(50, 100)], ["minima", "runs"], [("/", "format")],
                27)
    assert sum(n for subs in categories(fake).values() for _, _, n in subs) >= 300


# -- the cases of the issue, by name ------------------------------------------------------------------
def _nan_labels(folder: Path) -> None:
    _npz(X=np.random.default_rng(0).normal(size=(20, 3)), y=np.array([0.0, 1.0] * 9 + [np.nan, np.nan]))(
        folder / "d.npz")


def _complex(folder: Path) -> None:
    _npz(X=np.random.default_rng(0).normal(size=(20, 3)) + 1j, y=np.arange(20) % 2)(folder / "d.npz")


ISSUE = [
    Case("issue", "minima/energy deleted", INSPECT, _edit(lambda f: f.__delitem__("minima/energy"))),
    Case("issue", "/problem attributes deleted", SAMPLE_APPEND,
         _edit(lambda f: [f["problem"].attrs.__delitem__(a) for a in list(f["problem"].attrs)])),
    Case("issue", "widths disagree with coordinates", SAMPLE_APPEND, _edit(
        lambda f: f["problem"].attrs.__setitem__("problem", f["problem"].attrs["problem"].replace(
            '"widths": [4, 3, 3]', '"widths": [4, 5, 3]')))),
    Case("issue", "an 8-byte file", INSPECT, lambda d: (d / DB).write_bytes(b"\x89HDF\r\n\x1a\n")),
    Case("issue", "--hidden 100000000", SAMPLE_NEW + ["--hidden", "100000000000"]),
    Case("issue", "a binary config", SAMPLE_NEW + ["--config", "{d}/c.toml"],
         lambda d: (d / "c.toml").write_bytes(bytes(range(256)))),
    Case("issue", "a config that is a folder", SCORE + ["--config", "{d}/c.toml"], lambda d: (d / "c.toml").mkdir()),
    Case("issue", "--channels 0", SAMPLE_NEW + ["--data", "digits", "--arch", "cnn", "--channels", "0"]),
    Case("issue", "NaN labels", SAMPLE_NEW + ["--data-path", "{d}/d.npz"], _nan_labels),
    Case("issue", "complex features", SAMPLE_NEW + ["--data-path", "{d}/d.npz"], _complex),
    Case("issue", "a damaged group header", SAMPLE_APPEND, None),  # filled in below: bits flipped in /runs' header
]


@pytest.mark.parametrize("case", ISSUE, ids=[c.what for c in ISSUE])
def test_the_issues_cases(case, base, tmp_path):
    if case.prepare is None:  # a metadata checksum that fails where only listing the runs reads it
        case.prepare = _flip(_header_of(base.path, "runs/0"), 0)
    out = check(case, base, tmp_path)
    assert out.ok and out.one_line, out.why


def _header_of(path: Path, name: str) -> int:
    """An offset inside the object header of ``name`` (its address plus a few bytes)."""
    with h5py.File(path, "r") as f:
        return h5py.h5o.get_info(f[name].id).addr + 8


# -- what must stay readable ----------------------------------------------------------------------------
def test_a_run_group_without_counters_is_read_as_killed(base, tmp_path):
    """A run group left without counters (a seed of 2**64 did that before it was validated) is a
    run killed before it began: inspect lists it, a new run appends, --resume says what to do."""
    db = tmp_path / DB
    shutil.copyfile(base.path, db)
    with h5py.File(db, "a", libver=("v110", "v110")) as f:
        g = f["runs"].create_group("1")
        g.attrs.update(kind="sample", command="landscape sample x.h5 --seed 18446744073709551616")
    code, out, err = run_cli(["inspect", str(db)])
    assert code == 0 and "run 1 (sample): killed (never ended)" in out and "no counters" in out, err
    code, out, err = run_cli(["inspect", str(db), "--json"])
    assert code == 0 and json.loads(out)["runs"][1]["counters"] == {}
    code, out, err = run_cli(["sample", str(db), "--resume", "--steps", "1", "--quiet"])
    assert code == 2 and len(err.splitlines()) == 1 and "run 1 has no walkers to resume" in err
    code, out, err = run_cli(["sample", str(db), "--steps", "1", "--walkers", "2", "--quiet"])
    assert code == 0, err
    with landscape.Database(db) as d:
        runs = d.runs()
    assert [r["status"] for r in runs] == ["completed", "killed (never ended)", "completed"]


def test_a_sound_database_passes_every_check(base, tmp_path):
    """The checks refuse nothing sound: the base database, a schema-1 file, and each after a write."""
    for name, src in ((DB, base.path), ("v1.h5", Path(__file__).parent / "data" / "v1_iris.h5")):
        db = tmp_path / name
        shutil.copyfile(src, db)
        for argv in (["inspect", str(db)], ["sample", str(db), "--steps", "1", "--walkers", "2", "--quiet"],
                     ["score", str(db), "--eps", "0.1", "--quiet", "--split", "train"], ["inspect", str(db)]):
            code, _, err = run_cli(argv)
            assert code == 0, (argv, err)


# -- as a user runs it: a real process ------------------------------------------------------------------
@pytest.mark.parametrize("argv,prepare", [
    (INSPECT, lambda d: (d / DB).write_bytes(b"\x89HDF\r\n\x1a\n")),
    (SAMPLE_NEW + ["--hidden", "100000000000"], None),
    (SAMPLE_APPEND + ["--config", "{d}/c.toml"], lambda d: (d / "c.toml").write_bytes(b"\x00\xff" * 40)),
], ids=["8-byte file", "--hidden 1e11", "binary config"])
def test_in_a_real_process(argv, prepare, base, tmp_path):
    shutil.copyfile(base.path, tmp_path / DB)
    if prepare is not None:
        prepare(tmp_path)
    before = snapshot(tmp_path)
    p = subprocess.run([sys.executable, "-m", "landscape.cli", *[a.replace("{d}", str(tmp_path)) for a in argv]],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1 and p.stderr.startswith("landscape: "), p.stderr
    assert snapshot(tmp_path) == before
