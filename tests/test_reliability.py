"""A database no full disk, reader or other host's writer can break: real processes, real limits.

Out of space is made with the process's file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored, so a
write past it fails with EFBIG as a full disk fails one with ENOSPC): the run either stops in the
reserve it keeps (DISK_RESERVE) or, with no reserve, meets the failed write itself.
"""
import json
import os
import resource
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from landscape import database
from landscape.cli import main
from landscape.database import Database

SEED_RUN = ["--walkers", "64", "--step", "3", "--fixed-step", "--start", "uniform", "--quiet"]
COMMANDS = [["sample", "--steps", "1"], ["score", "--eps", "0.1"], ["connect", "--lowest", "1"]]
FAST = ["--hidden", "3", "--test-fraction", "0", "--walkers", "4", "--quiet"]


def _landscape(argv, limit=None, reserve=None, timeout=120):
    """`landscape argv` in a new process, its file-size limit ``limit`` bytes (None: none) and
    database.DISK_RESERVE ``reserve`` (None: the default)."""
    code = "import sys\n"
    if reserve is not None:
        code += f"import landscape.database as d; d.DISK_RESERVE = {reserve}\n"
    code += "from landscape.cli import main\nsys.exit(main(sys.argv[1:]))"

    def limited():
        if limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return subprocess.run([sys.executable, "-c", code, *map(str, argv)], preexec_fn=limited, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A database of Iris 4-5(tanh)-3 minima, from a short discovery run."""
    path = tmp_path_factory.mktemp("seed") / "seed.h5"
    assert main(["sample", str(path), *SEED_RUN, "--steps", "3"]) == 0
    return path


@pytest.fixture(scope="module")
def seeded_wide(tmp_path_factory):
    """A database of Iris 4-40(tanh)-3 minima (2.6 kB of coordinates each: the file grows fast)."""
    path = tmp_path_factory.mktemp("seed") / "wide.h5"
    assert main(["sample", str(path), "--hidden", "40", "--test-fraction", "0", "--walkers", "16", "--step", "3",
                 "--fixed-step", "--start", "uniform", "--steps", "1", "--quiet"]) == 0
    return path


def _all_sound(path, at_least: int) -> int:
    """The number of minima in ``path``, each a real minimum (its stored energy that of its
    coordinates, found at least once), and at least ``at_least``."""
    with Database(path) as db:
        m = db.minima()
        E = db.problem.energy(backend="autograd")
    assert len(m) >= at_least and (m.hits >= 1).all()
    np.testing.assert_allclose(E(m.coords), m.energy, rtol=1e-9)
    return len(m)


@pytest.mark.parametrize("reserve", ["kept", "none"])
def test_out_of_space_ends_sample_in_one_line_and_keeps_every_minimum(seeded_wide, tmp_path, reserve):
    """A full disk during sample: one line, exit 2, no crash; every minimum stored before is read
    by inspect and the run is resumed once there is room. With the reserve the run ends in it,
    walkers saved and status 'failed'; without, the failed write ends it at once and the file is
    left as a killed run's, shorter than its superblock says, and recovered. (Before: exit 139,
    hundreds of tracebacks, a file inspect misread or refused.)"""
    db = tmp_path / "full.h5"
    db.write_bytes(seeded_wide.read_bytes())
    n0 = _all_sound(db, 1)
    size = db.stat().st_size
    if reserve == "kept":
        with Database(db) as d:  # room for the run's group and walkers (start_run checks it), and 70 kB more
            start = 2**14 + sum(a.nbytes for a in d.walker_state(0).values())
        p = _landscape(["sample", db, "--resume", "--steps", "200", "--quiet"],
                       limit=size + database.DISK_RESERVE + start + 70000)
    else:
        p = _landscape(["sample", db, "--resume", "--steps", "200", "--quiet"], limit=size + 70000, reserve=0)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("landscape: error: ") and "out of space" in p.stderr
    assert p.stdout == ""
    inspect = _landscape(["inspect", db, "--lowest", "0"])
    assert inspect.returncode == 0, inspect.stderr
    n1 = _all_sound(db, n0)
    with Database(db) as d:
        status = d.runs()[-1]["status"]
    assert status == ("failed" if reserve == "kept" else "killed (never ended)")
    resumed = _landscape(["sample", db, "--resume", "--steps", "2", "--quiet"])
    assert resumed.returncode == 0 and "(completed)" in resumed.stdout, resumed.stderr
    _all_sound(db, n1)


def test_out_of_space_in_two_processes_saves_the_walkers_of_the_run(seeded_wide, tmp_path):
    """With --processes 2 the writer merges the workers' reports; out of space there ends the run
    in its reserve as in one process: one line, exit 2, status 'failed', every minimum sound, and
    the walkers saved, so --resume continues them rather than starting new ones."""
    db = tmp_path / "full2.h5"
    db.write_bytes(seeded_wide.read_bytes())
    n0 = _all_sound(db, 1)
    with Database(db) as d:
        start = 2**14 + sum(a.nbytes for a in d.walker_state(0).values())
    p = _landscape(["sample", db, "--resume", "--steps", "200", "--processes", "2", "--quiet"],
                   limit=db.stat().st_size + database.DISK_RESERVE + start + 70000)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "out of space" in p.stderr, p.stderr
    n1 = _all_sound(db, n0)
    with Database(db) as d:
        run = d.runs()[-1]
        rng = d.walker_state(len(d.runs()) - 1)["rng"]
    assert run["status"] == "failed" and rng[:, 3].all()  # the walkers' streams were saved
    resumed = _landscape(["sample", db, "--resume", "--steps", "2", "--quiet"])
    assert resumed.returncode == 0 and resumed.stderr == "" and "(completed)" in resumed.stdout
    _all_sound(db, n1)


@pytest.mark.parametrize("reserve", ["kept", "none"])
def test_out_of_space_ends_score_in_one_line(seeded, tmp_path, reserve):
    """score on a full disk: one line, exit 2; the file is read by inspect and scored once there
    is room."""
    db = tmp_path / "full.h5"
    db.write_bytes(seeded.read_bytes())
    size = db.stat().st_size
    argv = ["score", db, "--quantity", "accuracy", "loss", "--quiet"]
    if reserve == "kept":
        p = _landscape(argv, limit=size + database.DISK_RESERVE - 1)
    else:
        p = _landscape(argv, limit=size + 10, reserve=0)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "out of space" in p.stderr
    assert _landscape(["inspect", db, "--lowest", "0"]).returncode == 0
    n = _all_sound(db, 1)
    again = _landscape(argv)
    assert again.returncode == 0, again.stderr
    with Database(db) as d:
        assert all(np.isfinite(v).sum() == n for v, _ in d.scores().values())


_HOLD = """
import sys, time, h5py
while True:  # open once the run writes (SWMR), then hold the file until told
    try:
        with h5py.File(sys.argv[1], 'r'):
            pass
    except OSError as e:
        if 'already open for write' in str(e):
            break
    time.sleep(0.005)
f = h5py.File(sys.argv[1], 'r', swmr=True)
print('holding', flush=True)
sys.stdin.readline()
f.close()
"""


def test_a_run_that_ends_while_a_reader_holds_the_file_ends_as_usual(tmp_path, capsys):
    """A reader in another process holds the file (an SWMR reader, which takes HDF5's lock) when a
    sample run ends: the run records its end and prints its summary, exit 0 (before: exit 2, no
    summary, status 'killed (never ended)')."""
    db = tmp_path / "held.h5"
    assert main(["sample", str(db), *FAST, "--steps", "2"]) == 0
    reader = subprocess.Popen([sys.executable, "-c", _HOLD, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        run = subprocess.Popen([sys.executable, "-m", "landscape.cli", "sample", str(db), "--steps", "30", "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert reader.stdout.readline() == "holding\n"
        out, err = run.communicate(timeout=120)
        assert reader.poll() is None  # the reader held the file to the end
        assert run.returncode == 0 and err == "" and "run 1 (completed)" in out, err
    finally:
        reader.communicate("\n", timeout=30)
    capsys.readouterr()
    with Database(db) as d:
        assert [r["status"] for r in d.runs()] == ["completed", "completed"]


def _fake_writer(path, age: float) -> None:
    """Mark ``path`` as being written by a process on another host whose last heartbeat was
    ``age`` seconds ago, as such a run leaves it (open for SWMR writing), from another process."""
    code = f"""
import json, os, time, h5py
f = h5py.File({str(path)!r}, 'a', libver=('v110', 'v110'))
if 'writer_heartbeat' not in f:
    f.create_dataset('writer_heartbeat', (1,), dtype='f8', chunks=(1,), fletcher32=True)
f['writer_heartbeat'][0] = time.time() - {age}
f.attrs['writer'] = json.dumps({{'host': 'node-17.cluster', 'boot': 'x', 'pid': 4242, 'start': 1}})
f.flush()
f.swmr_mode = True
f.flush()
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_live_writer_on_another_host_is_refused_and_the_file_left_as_it_is(seeded, tmp_path, capsys, command):
    db = tmp_path / "other.h5"
    db.write_bytes(seeded.read_bytes())
    _fake_writer(db, age=5)
    before = db.read_bytes()
    code = main([command[0], str(db), *command[1:], "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "process 4242 on host node-17.cluster" in err and "--force" in err and "lease" in err
    assert db.read_bytes() == before
    assert main(["inspect", str(db), "--lowest", "0"]) == 0  # readers read it meanwhile


def test_a_writer_on_another_host_past_its_lease_is_taken_over_with_a_warning(seeded, tmp_path, capsys):
    db = tmp_path / "stale.h5"
    db.write_bytes(seeded.read_bytes())
    _fake_writer(db, age=database.LEASE_SECONDS + 60)
    assert main(["sample", str(db), "--steps", "1", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("landscape: warning: ")
    assert "process 4242 on host node-17.cluster" in err and "lease" in err and "ran out" in err
    with Database(db) as d:
        assert d.runs()[-1]["status"] == "completed"
        assert json.loads(d.f.attrs["writer"])["host"] != "node-17.cluster"


@pytest.mark.parametrize("command", COMMANDS)
def test_force_takes_over_a_writer_on_another_host_within_its_lease(seeded, tmp_path, capsys, command):
    db = tmp_path / "forced.h5"
    db.write_bytes(seeded.read_bytes())
    _fake_writer(db, age=5)
    assert main([command[0], str(db), *command[1:], "--quiet", "--force"]) == 0
    err = capsys.readouterr().err
    assert "taking it over from process 4242 on host node-17.cluster" in err and "--force" in err
    with Database(db) as d:
        assert d.runs()[-1]["status"] == "completed" and d.runs()[-1]["kind"] == command[0]


def test_a_live_writer_on_this_host_is_refused_even_with_force(tmp_path, capsys):
    db = tmp_path / "live.h5"
    proc = subprocess.Popen([sys.executable, "-m", "landscape.cli", "sample", str(db), *FAST, "--minutes", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with Database(db) as d:
                    if d.f.swmr_mode and len(d):
                        break
            except (database.DatabaseError, OSError):
                pass
            time.sleep(0.05)
        code = main(["sample", str(db), "--steps", "1", "--quiet", "--force"])
        err = capsys.readouterr().err
        assert code == 2 and f"being written by process {proc.pid}" in err
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 130


def test_the_writer_refreshes_its_heartbeat_as_it_flushes(problem, tmp_path, monkeypatch):
    with Database(tmp_path / "h.h5", problem, mode="a") as db:
        rid = db.start_run("test", 0, {}, {}, kind="score", counters=("computed",))
        first = db.f["writer_heartbeat"][0]
        assert abs(first - time.time()) < 60
        time.sleep(0.05)
        db.flush()  # within HEARTBEAT_SECONDS: not refreshed
        assert db.f["writer_heartbeat"][0] == first
        monkeypatch.setattr(database, "HEARTBEAT_SECONDS", 0.0)
        db.flush()
        assert db.f["writer_heartbeat"][0] > first
        with h5py.File(db.path, "r", swmr=True) as reader:  # what another host's reader sees
            assert reader["writer_heartbeat"][0] > first
        db.end_run(rid, database.COMPLETED)


def test_a_command_killed_before_it_wrote_in_swmr_mode_leaves_a_file_every_command_takes(seeded, tmp_path, capsys):
    """SIGKILL while a command holds the file open for writing but has not started SWMR writing (a
    score preparing its work; the soak found it): the file is marked open for writing, not for
    SWMR writing, which HDF5's SWMR reader refuses, so every command called it damaged. inspect
    now reads it without changing a byte, and the next command takes it over."""
    db = tmp_path / "plain.h5"
    db.write_bytes(seeded.read_bytes())
    code = f"""
import os, signal
from landscape.database import Database
db = Database({str(db)!r}, mode="a")
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -signal.SIGKILL
    assert db.read_bytes()[11] == 0x01  # open for writing, not SWMR
    before = db.read_bytes()
    assert main(["inspect", str(db), "--lowest", "0"]) == 0
    assert db.read_bytes() == before
    n = _all_sound(db, 1)
    assert main(["score", str(db), "--quantity", "accuracy", "--quiet"]) == 0
    capsys.readouterr()
    with Database(db) as d:
        assert d.runs()[-1]["status"] == "completed" and len(d) == n
