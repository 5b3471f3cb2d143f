import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from landscape import __version__, allocator, database, identify
from landscape.cli import main
from landscape.database import Database

FAST = ["--hidden", "3", "--test-fraction", "0", "--walkers", "4", "--quiet"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_sample_and_inspect_end_to_end(tmp_path, capsys):
    db = str(tmp_path / "iris.h5")
    code, out, err = run(capsys, "sample", db, *FAST, "--steps", "5", "--seed", "2")
    assert code == 0 and "new minima" in out
    code, out, _ = run(capsys, "inspect", db, "--json")
    s = json.loads(out)
    assert code == 0 and s["n_minima"] >= 1 and s["n_params"] == 4 * 3 + 3 + 3 * 3 + 3
    assert s["runs"][0]["status"] == "completed" and s["runs"][0]["seed"] == 2
    assert s["runs"][0]["software"] == f"landscape {__version__}"
    assert s["lowest"][0]["energy"] == min(r["energy"] for r in s["lowest"])
    assert s["chao1_minima"] >= s["n_minima"] >= s["found_once"] + s["found_twice"]
    code, out, _ = run(capsys, "inspect", db)
    assert code == 0 and "MLP 4-3-3" in out and f"Chao1 estimate of all minima: {s['chao1_minima']:.1f}" in out
    # appending needs no problem options: the file's own problem is used
    code, out, _ = run(capsys, "sample", db, "--steps", "2", "--walkers", "2", "--quiet")
    assert code == 0
    # and from several processes
    code, out, _ = run(capsys, "sample", db, "--steps", "2", "--processes", "2", "--quiet")
    assert code == 0 and "run 2 (completed): 64 steps" in out  # 32 walkers, the default
    with Database(db) as d:
        assert [r["parameters"]["processes"] for r in d.runs()] == [1, 1, 2]


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"landscape {__version__}"


def test_resume_keeps_the_last_runs_settings_unless_given(tmp_path, capsys):
    db = str(tmp_path / "r.h5")
    assert main(["sample", db, *FAST, "--steps", "1", "--temperature", "0.02", "--visit-bias", "2",
                 "--fixed-step"]) == 0
    assert main(["sample", db, "--resume", "--steps", "1", "--quiet"]) == 0
    assert main(["sample", db, "--resume", "--steps", "1", "--temperature", "0.05", "--quiet"]) == 0
    assert main(["sample", db, "--resume", "--steps", "1", "--walkers", "4", "--quiet"]) == 0  # the same count
    with Database(db) as d:
        used = [r["parameters"] for r in d.runs()]
    assert [(u["temperature"], u["visit_bias"], u["adaptive"]) for u in used] == [(0.02, 2.0, False)] * 2 + [
        (0.05, 2.0, False)] * 2


def test_progress_in_a_log_is_rate_limited(tmp_path, capsys):
    """Off a terminal (a log file, a pipe) the progress bar is redrawn at most every 10 s, not
    on every finished batch: a run of a few hundred quenches writes the first and last bar."""
    with_bar = [a for a in FAST if a != "--quiet"]
    code, out, err = run(capsys, "sample", str(tmp_path / "p.h5"), *with_bar, "--steps", "60")
    assert code == 0 and "new minima" in out
    assert "240/240" in err  # the last bar
    assert err.count("\r") <= 4


def test_config_file(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[problem]\ndata = "iris"\nhidden = [2]\nlam = 1e-3\n[sample]\nwalkers = 2\nsteps = 2\nseed = 4\n')
    db = str(tmp_path / "c.h5")
    code, _, _ = run(capsys, "sample", db, "--config", str(cfg), "--quiet")
    assert code == 0
    with Database(db) as d:
        assert d.problem.model.widths == (4, 2, 3) and d.problem.lam == 1e-3
        assert d.runs()[0]["parameters"]["walkers"] == 2


@pytest.mark.parametrize("name", ["iris", "iris_discovery", "digits"])
def test_shipped_configs_run(tmp_path, capsys, name):
    """Every file in runs/ is accepted and its settings reach the run (one step per walker here)."""
    import tomllib
    path = os.path.join(os.path.dirname(__file__), os.pardir, "runs", f"{name}.toml")
    with open(path, "rb") as f:
        wanted = tomllib.load(f)["sample"]
    db = str(tmp_path / f"{name}.h5")
    code, out, _ = run(capsys, "sample", db, "--config", path, "--steps", "1", "--walkers", "4", "--quiet")
    assert code == 0 and "new minima" in out
    with Database(db) as d:
        used = d.runs()[0]["parameters"]
    assert used["walkers"] == 4 and used["steps"] == 1
    assert all(used[k] == v for k, v in wanted.items() if k not in ("walkers", "steps", "seed"))


@pytest.mark.parametrize("case", ["unknown option", "config typo", "not hdf5", "other problem", "missing db",
                                  "bad value", "no budget", "config type", "negative visit bias",
                                  "processes", "more processes than walkers", "resume with other walkers",
                                  "resume with a seed", "negative lowest", "seed 2**64", "connect seed 2**64",
                                  "maxiter 2**63"])
def test_bad_input_is_one_line_exit_2_and_file_unchanged(tmp_path, capsys, case):
    db = tmp_path / "x.h5"
    assert main(["sample", str(db), *FAST, "--steps", "1"]) == 0
    capsys.readouterr()
    target = db
    if case == "unknown option":
        argv = ["sample", str(db), "--walkres", "3", "--steps", "1"]
    elif case == "config typo":
        cfg = tmp_path / "t.toml"
        cfg.write_text("[sample]\nwalkrs = 3\n")
        argv = ["sample", str(db), "--config", str(cfg), "--steps", "1"]
    elif case == "not hdf5":
        target = tmp_path / "notes.txt"
        target.write_text("not a database\n")
        argv = ["sample", str(target), "--steps", "1"]
    elif case == "other problem":
        argv = ["sample", str(db), "--hidden", "4", "--steps", "1", "--quiet"]
    elif case == "missing db":
        argv = ["inspect", str(tmp_path / "nope.h5")]
    elif case == "config type":
        cfg = tmp_path / "t.toml"
        cfg.write_text('[sample]\nwalkers = "3"\n')
        argv = ["sample", str(db), "--config", str(cfg), "--steps", "1"]
    elif case == "bad value":
        argv = ["sample", str(db), "--lam", "0", "--steps", "1"]
    elif case == "negative visit bias":
        argv = ["sample", str(db), "--visit-bias", "-1", "--steps", "1"]
    elif case == "processes":
        argv = ["sample", str(db), "--processes", "0", "--steps", "1"]
    elif case == "more processes than walkers":
        argv = ["sample", str(db), "--walkers", "2", "--processes", "3", "--steps", "1"]
    elif case == "resume with other walkers":  # it would continue the file's 4 walkers, not 9
        argv = ["sample", str(db), "--resume", "--walkers", "9", "--steps", "1"]
    elif case == "resume with a seed":  # the walkers' random streams come from the file
        argv = ["sample", str(db), "--resume", "--seed", "3", "--steps", "1"]
    elif case == "negative lowest":
        argv = ["inspect", str(db), "--lowest", "-1"]
    elif case == "seed 2**64":  # the file stores a run's seed as int64: refused before the run group is made
        argv = ["sample", str(db), "--seed", str(2**64), "--steps", "1", "--quiet"]
    elif case == "connect seed 2**64":
        argv = ["connect", str(db), "--seed", str(2**64), "--quiet"]
    elif case == "maxiter 2**63":
        argv = ["sample", str(db), "--maxiter", str(2**63), "--steps", "1", "--quiet"]
    else:
        argv = ["sample", str(db), "--quiet"]
    before = target.read_bytes()
    with pytest.raises(SystemExit) if case == "unknown option" else _nothing() as exc:
        code = main(argv)
    if case == "unknown option":
        code = exc.value.code
    _, err = capsys.readouterr()
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("landscape: error:")
    assert target.read_bytes() == before


@pytest.mark.parametrize("argv", [
    ["sample", "{db}", "--step", "inf", "--steps", "1"],
    ["sample", "{db}", "--temperature", "nan", "--steps", "1"],
    ["sample", "{db}", "--lam", "-1", "--steps", "1"],
    ["sample", "{db}", "--seed", "-5", "--steps", "1"],
    ["sample", "{db}", "--walkers", "2", "--processes", "3", "--steps", "1"],
    ["sample", "{db}", "--resume", "--steps", "1"],
    ["sample", "{db}", "--start", "uniform", "--steps", "1"],
    pytest.param(["sample", "{db}", "--walkers", "100000000", "--steps", "1"],
                 marks=pytest.mark.skipif(allocator.available_bytes() is None, reason="free memory unknown here")),
    ["score", "{db}", "--eps", "0.1"],
    ["sample", "{db}", "--seed", str(2**64), "--steps", "1"],
    ["sample", "{db}", "--seed", str(2**63), "--steps", "1"],
    ["sample", "{db}", "--steps", str(2**63)],
    ["sample", "{db}", "--maxiter", str(2**63), "--steps", "1"],
    ["sample", "{db}", "--threads", str(2**32), "--steps", "1"],
], ids=["infinite step", "NaN temperature", "negative lam", "negative seed", "processes", "resume",
        "uniform start, adaptive step", "walkers beyond memory", "score", "seed 2**64", "seed 2**63", "steps 2**63",
        "maxiter 2**63", "threads 2**32"])
def test_bad_input_for_a_new_path_creates_no_file(tmp_path, capsys, argv):
    """Refused before anything is written: no (empty) database is left behind."""
    db = tmp_path / "new.h5"
    code, _, err = run(capsys, *[a.format(db=db) for a in argv], *FAST[-1:])
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("landscape: error:")
    assert not db.exists()


def test_a_missing_config_or_folder_is_named(tmp_path, capsys):
    db = tmp_path / "new.h5"
    code, _, err = run(capsys, "sample", str(db), "--config", str(tmp_path / "nope.toml"), "--steps", "1")
    assert code == 2 and f"config file {tmp_path / 'nope.toml'} does not exist" in err
    code, _, err = run(capsys, "sample", str(tmp_path / "no" / "x.h5"), *FAST, "--steps", "1")
    assert code == 2 and f"folder {tmp_path / 'no'} does not exist" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text, message", [
    ("[sample\nsteps = 1\n", "t.toml: not valid TOML"),
    ('[problem]\nlam = "x"\n', "lam must be a number, got 'x'"),
    ('[problem]\nbias = "yes"\n', "bias must be true or false, got 'yes'"),
    ("[problem]\nhidden = 5\n", "hidden must be a list of widths, e.g. [5], got 5"),
    ('[problem]\ntest_fraction = "x"\n', "test_fraction must be a number, got 'x'"),
], ids=["not TOML", "lam as text", "bias as text", "hidden as a number", "test fraction as text"])
def test_a_bad_config_is_named_in_one_line(tmp_path, capsys, text, message):
    cfg = tmp_path / "t.toml"
    cfg.write_text(text)
    db = tmp_path / "new.h5"
    code, _, err = run(capsys, "sample", str(db), "--config", str(cfg), "--steps", "1", "--quiet")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not db.exists()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _sampling(db, processes: int) -> subprocess.Popen:
    """A `landscape sample` subprocess (5-minute budget) once it has written its first minima."""
    cmd = [sys.executable, "-m", "landscape.cli", "sample", str(db), *FAST, "--minutes", "5",
           "--processes", str(processes)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 60
    while time.time() < deadline and (not db.exists() or db.stat().st_size < 20000):
        time.sleep(0.5)
    time.sleep(1.0)
    return proc


@pytest.mark.parametrize("processes", [1, 2])
def test_killed_run_leaves_a_readable_file_with_what_it_reported(tmp_path, processes):
    """SIGKILL of the writer: the file holds what was reported and can be resumed; worker
    processes notice and exit at once (they hold no ends of each other's pipes)."""
    db = tmp_path / "k.h5"
    proc = _sampling(db, processes)
    time.sleep(0.5)
    children = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    workers = [pid for pid in children if (_proc_stat(pid) or ["", "0"])[1] == str(proc.pid)]
    assert len(workers) == (processes if processes > 1 else 0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(2.0 if workers else 0.0)
    assert all((_proc_stat(pid) or ["Z"])[0] == "Z" for pid in workers)  # exited (a zombie if nobody reaps it)
    assert proc.stderr.read() == b""  # and quietly
    with Database(db) as d:  # opens, and holds what was reported
        m = d.minima()
        runs = d.runs()
        E = d.problem.energy(backend="autograd")
        lam = d.problem.lam
    assert len(m) >= 1 and runs[0]["ended"] is None and runs[0]["status"] == "killed (never ended)"
    np.testing.assert_allclose(E(m.coords), m.energy, rtol=1e-9)
    with h5py.File(db, "r", swmr=True) as f:
        assert f["minima/coords"].shape[0] in (len(m), len(m) + 1)  # + 1: a row torn by the kill
        assert f["minima/coords"].shape[1] == 27
    # the killed run's file is recovered for appending: resume it
    assert main(["sample", str(db), "--resume", "--steps", "2", "--quiet"]) == 0
    with Database(db) as d:
        assert len(d.runs()) == 2 and len(d) >= len(m)
        after = d.minima()
    # every reported minimum is still there with its provenance; a better-converged copy found by the
    # resumed run may have replaced its point in place, within the identity tolerances
    np.testing.assert_array_equal(after.first_found[: len(m)], m.first_found)
    np.testing.assert_allclose(after.energy[: len(m)], m.energy, rtol=1e-12)
    for i in range(len(m)):
        a, b = identify.stored_point(after, i), identify.stored_point(m, i)
        assert np.linalg.norm(a.x - b.x) <= identify.tolerances(a, b, 2 * lam)[1]


@pytest.mark.parametrize("processes", [1, 2])
def test_ctrl_c_keeps_the_run_and_exits_130(tmp_path, processes):
    """SIGINT to a running sample: it stops, saves its walkers, prints its summary and exits with
    130 (so `landscape sample ... && next-step` does not go on); the run can be resumed."""
    db = tmp_path / "i.h5"
    proc = _sampling(db, processes)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert err == b"" and b"(interrupted by user)" in out
    with Database(db) as d:
        (run,) = d.runs()
        n = len(d)
    assert run["status"] == "interrupted by user" and run["ended"] is not None and run["counters"]["steps"] > 0
    assert main(["sample", str(db), "--resume", "--steps", "2", "--quiet"]) == 0
    with Database(db) as d:
        assert [r["status"] for r in d.runs()] == ["interrupted by user", "completed"] and len(d) >= n


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_is_handled_as_ctrl_c_and_exits_143(tmp_path, processes):
    """SIGTERM (kill, a batch system's end of a job) to a running sample: as Ctrl-C, its walkers are
    saved and its summary printed, with exit status 143; the run can be resumed."""
    db = tmp_path / "t.h5"
    proc = _sampling(db, processes)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()
    assert err == b"" and out.count(b"\n") == 1 and b"(interrupted by user)" in out
    with Database(db) as d:
        (run,) = d.runs()
        n = len(d)
    assert run["status"] == "interrupted by user" and run["counters"]["steps"] > 0 and n >= 1
    assert main(["sample", str(db), "--resume", "--steps", "2", "--quiet"]) == 0
    with Database(db) as d:
        assert [r["status"] for r in d.runs()] == ["interrupted by user", "completed"] and len(d) >= n
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the command's handler is gone after it


def test_resume_of_a_run_killed_before_it_saved_its_walkers_starts_new_walkers(tmp_path, capsys):
    """SIGKILL as soon as the run group exists, before the first save: its walker state is the
    zeros it was allocated with. --resume says so in one line and starts new walkers from the
    run's seed (before, it resumed walkers at w = 0 with an all-zero random stream)."""
    db = tmp_path / "z.h5"
    proc = subprocess.Popen([sys.executable, "-m", "landscape.cli", "sample", str(db), *FAST, "--seed", "7",
                             "--minutes", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _wait_for_run_group(db, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with Database(db) as d:
        assert not d.walker_state(0)["rng"].any()  # killed before the first save
    code, out, err = run(capsys, "sample", str(db), "--resume", "--steps", "3", "--quiet")
    assert code == 0 and "(completed)" in out
    assert err == "landscape: warning: run 0 ended before it saved its walkers: starting 4 new walkers from its " \
                  "seed 7\n"
    with Database(db) as d:
        runs = d.runs()
        # the new walkers quench and find minima (new ones, or those the killed run stored before its first save)
        assert len(d) >= 1 and runs[1]["counters"]["converged"] >= 1 and runs[1]["seed"] == 7
        state = d.walker_state(1)
        assert state["rng"][:, 3].all() and (state["minimum"] >= 0).all()  # every walker at a stored minimum
        assert len({row.tobytes() for row in state["x"]}) > 1 and not (state["x"] == 0).all(1).any()  # not at w = 0


def test_inspect_and_score_while_a_sample_runs(tmp_path, capsys):
    """While a sample writes: inspect reads it (exit 0, the minima so far, growing); score, a second
    writer, is refused in one line naming the running process, without disturbing the run; once the
    run ends (Ctrl-C), score scores every minimum."""
    db = tmp_path / "live.h5"
    proc = _sampling(db, 1)
    try:
        counts = []
        for _ in range(3):
            code, out, err = run(capsys, "inspect", str(db), "--json")
            assert code == 0 and err == "", err
            counts.append(json.loads(out)["n_minima"])
            time.sleep(0.5)
        code, _, err = run(capsys, "score", str(db), "--eps", "0.1", "--quiet")
        assert code == 2 and err.count("\n") == 1 and f"being written by process {proc.pid}" in err
        assert proc.poll() is None  # the run goes on
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and counts == sorted(counts) and counts[0] >= 1
    code, out, _ = run(capsys, "score", str(db), "--eps", "0.1", "--quiet")
    with Database(db) as d:
        values, n = d.scores()["sensitivity_logits_ibp_eps0.1_train"][0], len(d)
    assert code == 0 and len(values) == n >= counts[-1] and np.isfinite(values).all()


def _wait_for_run_group(db, proc: subprocess.Popen) -> None:
    """Return once the sampling process ``proc`` has made its first run group in ``db`` (SWMR mode)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            with Database(db) as d:
                if d.f.swmr_mode and "0" in d.f["runs"]:
                    return
        except (database.DatabaseError, OSError):
            pass
        time.sleep(0.02)
    raise AssertionError("the run never started writing")


def test_ctrl_c_outside_sampling_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    """Ctrl-C in any command (here while scoring) gives one line, not a traceback, and 130."""
    db = str(tmp_path / "s.h5")
    assert run(capsys, "sample", db, *FAST, "--steps", "2")[0] == 0

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("landscape.scoring.score", interrupted)
    code, out, err = run(capsys, "score", db, "--eps", "0.1")
    assert code == 130 and err.count("\n") == 1 and "interrupted" in err


def test_output_into_a_closed_pipe_ends_quietly_with_141(tmp_path, capsys):
    """`landscape inspect DB | head -1`: the reader stops early; no 'Broken pipe' error line."""
    db = str(tmp_path / "s.h5")
    assert run(capsys, "sample", db, *FAST, "--steps", "2")[0] == 0
    read, write = os.pipe()
    os.close(read)  # a reader that is already gone: the first write fails
    try:
        proc = subprocess.run([sys.executable, "-m", "landscape.cli", "inspect", db], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == ""


def test_a_second_writer_is_refused_while_a_run_writes(tmp_path, capsys):
    """HDF5 lifts its file lock once SWMR writing starts; the file's 'writer' record keeps a second
    `landscape sample` from taking over a live run's file (it used to clear the run's write flags
    and write beside it, and the first run then crashed on the damaged file)."""
    db = tmp_path / "w.h5"
    proc = _sampling(db, 1)
    code, _, err = run(capsys, "sample", str(db), "--steps", "1", "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"being written by process {proc.pid}" in err
    with Database(db) as d:
        assert [r["status"] for r in d.runs()] == ["running"]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == b""
    with Database(db) as d:
        assert [r["status"] for r in d.runs()] == ["interrupted by user"]


@pytest.mark.parametrize("damage", ["truncated", "damaged"])
def test_a_truncated_or_damaged_file_is_refused_at_once(tmp_path, capsys, damage):
    """A file cut short (an incomplete copy) or with zeroed metadata: one line and exit 2, at once.
    HDF5's SWMR reader skips its own length check and retries reads whose checksum fails (a writer
    may be mid-write): it hung on both files, hence the subprocess with a time limit."""
    db = tmp_path / "t.h5"
    assert run(capsys, "sample", str(db), *FAST, "--steps", "2")[0] == 0
    data = db.read_bytes()
    bad = tmp_path / "bad.h5"
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else data[:100] + bytes(2000) + data[2100:])
    before = bad.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "landscape.cli", "inspect", str(bad)], capture_output=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stderr.decode().count("\n") == 1 and damage.encode() in proc.stderr
    code, _, err = run(capsys, "sample", str(bad), "--steps", "1", "--quiet")
    assert code == 2 and damage in err and bad.read_bytes() == before


SAMPLE, SCORE, INSPECT = ["sample", "--steps", "1"], ["score", "--eps", "0.1", "0.2"], ["inspect"]


@pytest.mark.parametrize("name, readers", [
    ("minima/coords", [SAMPLE, SCORE]), ("minima/hits", [INSPECT, SAMPLE]), ("runs/0/counters", [INSPECT, SAMPLE]),
    ("scores/value", [INSPECT, SCORE])])
def test_damaged_data_is_refused_not_read(tmp_path, capsys, name, readers):
    """A flipped byte in a dataset's raw data (no metadata touched) fails its Fletcher-32 checksum:
    each command that reads the dataset gives one line naming it and exit 2, and the file is left
    as it was. Before, the damaged values were read as if they were sound."""
    db = tmp_path / "d.h5"
    assert run(capsys, "sample", str(db), *FAST, "--test-fraction", "0.2", "--steps", "2")[0] == 0
    assert run(capsys, "score", str(db), "--eps", "0.1", "--quiet")[0] == 0
    with h5py.File(db, "r") as f:
        offset = f[name].id.get_chunk_info(0).byte_offset
    data = bytearray(db.read_bytes())
    data[offset + 3] ^= 0xFF
    db.write_bytes(bytes(data))
    for command, *options in readers:
        code, _, err = run(capsys, command, str(db), *options, *(["--quiet"] if command != "inspect" else []))
        assert code == 2 and err.count("\n") == 1 and f"damaged (the checksum of data in /{name} fails)" in err
    assert db.read_bytes() == bytes(data)


def test_a_reader_of_a_live_file_reads_a_chunk_again_before_calling_it_damaged(tmp_path):
    """While a run writes, a chunk being rewritten can fail its checksum for a moment: the reader
    tries again (twice, 0.1 s apart) and reads it; a chunk that keeps failing is damage."""
    db = tmp_path / "l.h5"
    proc = _sampling(db, 1)

    class Rewritten:  # fails its checksum on the first `failures` reads
        name = "/minima/energy"

        def __init__(self, failures):
            self.failures = failures

        def refresh(self):
            pass

        def __getitem__(self, selection):
            self.failures -= 1
            if self.failures >= 0:
                raise OSError("Can't synchronously read data (filter returned failure during read)")
            return np.zeros(3)

    try:
        with Database(db) as d:
            assert d.f.swmr_mode and len(d.minima()) > 0
            assert d._read(Rewritten(2)).shape == (3,)
            with pytest.raises(database.DatabaseError, match="damaged"):
                d._read(Rewritten(3))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def test_a_killed_runs_damaged_file_is_refused_at_once(tmp_path, capsys):
    """A file left marked open for writing by a run that no longer runs, with zeroed metadata: read
    as SWMR with HDF5's default of 100 attempts per damaged read, `inspect` hung for over an hour;
    now one line and exit 2 within seconds, and the file is left as it was."""
    db = tmp_path / "k.h5"
    assert run(capsys, "sample", str(db), *FAST, "--steps", "2")[0] == 0
    with h5py.File(db, "a") as f:
        f.attrs["writer"] = json.dumps({"host": "elsewhere", "pid": 1})  # a writer that no longer runs here
    data = bytearray(db.read_bytes())
    data[11] = 5  # write and SWMR-write access, as a killed run leaves the superblock
    data[44:48] = database._lookup3(bytes(data[:44])).to_bytes(4, "little")
    data[100:2100] = bytes(2000)
    db.write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "-m", "landscape.cli", "inspect", str(db)], capture_output=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stderr.decode().count("\n") == 1 and b"damaged" in proc.stderr
    code, _, err = run(capsys, "sample", str(db), "--steps", "1", "--quiet")
    assert code == 2 and "damaged" in err and db.read_bytes() == bytes(data)


def test_a_file_open_in_another_process_is_named_as_such(tmp_path, capsys):
    """HDF5 locks a file for every reader too: appending while another process reads it says so."""
    db = tmp_path / "r.h5"
    assert run(capsys, "sample", str(db), *FAST, "--steps", "1")[0] == 0
    reader = subprocess.Popen([sys.executable, "-c", "import sys, landscape.database as d; db = d.Database(sys.argv[1]); "
                               "print('open', flush=True); sys.stdin.read()", str(db)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert reader.stdout.readline() == b"open\n"
        code, _, err = run(capsys, "sample", str(db), "--steps", "1", "--quiet")
    finally:
        reader.communicate(b"", timeout=60)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "another process has it open" in err
    assert run(capsys, "sample", str(db), "--steps", "1", "--quiet")[0] == 0  # and once it is closed, it works


def test_a_reader_that_closes_within_a_moment_does_not_refuse_a_writer(tmp_path, capsys):
    """A reader holding the lock for less than database.BUSY_WAIT (inspect's open, a notebook's
    glance) makes a writing command wait, not fail; the old code refused at once."""
    db = tmp_path / "r.h5"
    assert run(capsys, "sample", str(db), *FAST, "--steps", "1")[0] == 0
    reader = subprocess.Popen([sys.executable, "-c", "import sys, time, landscape.database as d; "
                               "db = d.Database(sys.argv[1]); print('open', flush=True); time.sleep(1.0); db.close()",
                               str(db)], stdout=subprocess.PIPE)
    try:
        assert reader.stdout.readline() == b"open\n"
        code, out, err = run(capsys, "sample", str(db), "--steps", "1", "--quiet")
    finally:
        reader.communicate(timeout=60)
    assert code == 0 and err == "" and "(completed)" in out
