"""Bad input, the table of issue 19: N generated cases per category (the generators of
tests/test_bad_input.py: malformed options, configs and data files, databases with flipped bits,
truncated, with datasets and attributes deleted or rewritten with wrong dtypes, shapes and
values, odd files), each run in-process as ``landscape.cli.main(argv)``; per category: cases,
how many ended with one stderr line and exit status 2, how many left every file byte-identical
(and nothing added), and how many succeeded harmlessly (flipped bits that change nothing the
command reads; the file it leaves is one ``inspect`` accepts). Cases are drawn by hypothesis,
derandomised: the same N gives the same cases.

    .venv/bin/python benchmarks/bad_input.py [--cases N] [--category NAME ...] [--show]

``--show`` prints every case and the line it got. Exit status 1 if any case failed the rule.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path


def _generators():
    """tests/test_bad_input.py as a module (not through sys.path: tests/ holds a 'robustness' of its own)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "test_bad_input.py")
    spec = importlib.util.spec_from_file_location("test_bad_input", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


t = _generators()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=None,
                   help="cases per category (default: as many as the test runs)")
    p.add_argument("--category", nargs="+", choices=t.CATEGORIES, default=t.CATEGORIES)
    p.add_argument("--show", action="store_true", help="print every case and what it got")
    args = p.parse_args()
    failed = []
    with tempfile.TemporaryDirectory() as scratch:
        base = t.make_base(Path(scratch))
        start = time.perf_counter()
        for category in args.category:
            shown = len(failed)
            outcomes = t.run_category(base, category, args.cases, Path(scratch), assert_ok=False)
            failed += [(c, o) for c, o in outcomes if not o.ok]
            if args.show:
                for c, o in outcomes:
                    print(f"{category}: {c.what}: exit {o.code}: "
                          f"{o.err.strip().splitlines()[-1] if o.err.strip() else ''}"[:300])
            for c, o in failed[shown:]:
                print(f"FAILED {c.category}: {c.what}: {c.argv}: {o.why}"[:600], file=sys.stderr)
        seconds = time.perf_counter() - start
    print(t.table_text(t.TABLE))
    print(f"{sum(c['cases'] for c in t.TABLE.values())} cases in {seconds:.1f} s; {len(failed)} broke the rule "
          "(one line and exit 2 with every file unchanged, or a harmless success)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
