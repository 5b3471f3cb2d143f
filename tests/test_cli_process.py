"""The landscape command as real processes: start-up without torch, Ctrl-C at any moment, one-line
warnings, and sample and score with the compiled kernel switched off (as CI must run them)."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from landscape.database import Database

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
COMMAND = [sys.executable, "-m", "landscape.cli"]


def _python(code: str, env: dict | None = None) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env or ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_version_and_import_do_not_import_torch():
    out = _python("import sys\n"
                  "from landscape.cli import main\n"
                  "try:\n"
                  "    main(['--version'])\n"
                  "except SystemExit as e:\n"
                  "    print(e.code)\n"
                  "print('torch' in sys.modules)\n")
    assert out.split("\n")[1:3] == ["0", "False"]
    out = _python("import sys, landscape\n"
                  "print('torch' in sys.modules)\n"
                  "print(landscape.Problem.__name__, landscape.Settings.__name__, landscape.sample.__name__,\n"
                  "      landscape.Database.__name__, landscape.score.__module__, landscape.__version__)\n"
                  "print('torch' in sys.modules)\n")
    assert out.split("\n")[:3] == ["False", "Problem Settings sample Database landscape.scoring 0.1.0", "True"]


@pytest.mark.parametrize("delay", [0.3, 1.0])
def test_ctrl_c_while_torch_is_imported_is_one_line_and_130(tmp_path, delay):
    """SIGINT while `landscape sample` imports torch (it takes about 1.5 s): one line, no traceback."""
    proc = subprocess.Popen([*COMMAND, "sample", str(tmp_path / "i.h5"), "--hidden", "3", "--steps", "100000",
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    # 130, or death by SIGINT after the message: CPython ends a process that way when a Ctrl-C
    # raised inside Python code that a compiled module runs during its import (a shell reports 130)
    assert proc.returncode in (130, -signal.SIGINT) and "Traceback" not in err
    assert err == "landscape: interrupted; what was written is kept\n"


def test_ctrl_c_inside_a_compiled_modules_import_is_an_interrupt(monkeypatch, capsys):
    """A Ctrl-C that lands in a compiled module's initialisation comes out of the import as
    ImportError("initialization failed") (seen with scipy's HiGHS module in CI): it is the
    interrupt, one line and 130; an ImportError with no Ctrl-C is a broken install and is raised."""
    from landscape import cli

    def interrupted_import(args, command):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            raise ImportError("initialization failed") from None

    monkeypatch.setattr(cli, "_command", interrupted_import)
    assert cli.main(["inspect", "x.h5"]) == 130
    assert capsys.readouterr().err == "landscape: interrupted; what was written is kept\n"

    def broken(args, command):
        raise ImportError("no module named scipy")

    monkeypatch.setattr(cli, "_command", broken)
    with pytest.raises(ImportError, match="no module named scipy"):
        cli.main(["inspect", "x.h5"])


def test_a_sampler_warning_is_one_line(tmp_path):
    """The default temperature on minima 1e-4 apart: one line on stderr, the run goes on."""
    r = subprocess.run([*COMMAND, "sample", str(tmp_path / "w.h5"), "--hidden", "8", "--lam", "1e-2",
                        "--test-fraction", "0", "--walkers", "16", "--steps", "40", "--seed", "0", "--quiet"],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0 and "(completed)" in r.stdout
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("landscape: warning: ")
    assert "--temperature auto" in r.stderr


def test_sample_and_score_with_the_kernel_switched_off(tmp_path):
    """LANDSCAPE_KERNEL=off: both commands run on torch autograd, and the run records it."""
    env = {**ENV, "LANDSCAPE_KERNEL": "off"}
    db = str(tmp_path / "k.h5")
    for argv in (["sample", db, "--hidden", "3", "--test-fraction", "0.2", "--walkers", "4", "--steps", "2",
                  "--quiet"], ["score", db, "--eps", "0.1", "--quiet"]):
        r = subprocess.run([*COMMAND, *argv], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0 and r.stderr == "", r.stderr
    with Database(db) as d:
        (run,) = d.runs(kind="sample")
        n, scores = len(d), d.scores()
    assert run["parameters"]["energy_backend"] == "autograd" and n >= 1
    ((values, _),) = scores.values()
    assert values.shape == (n,) and np.isfinite(values).all()  # every minimum scored
