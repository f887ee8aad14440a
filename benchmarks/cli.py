"""Start-up of the command line and the demo's wall time (run by hand; prints numbers).

    python benchmarks/cli.py [--repeats 5] [--demo]

Targets (issue 17): ``simgap --help`` and ``simgap --version`` under 1 s (they import no
command module, so neither torch nor pandas); ``simgap demo`` with its defaults under a minute
on an idle 2-core CPU (``--demo`` runs it once in a temporary folder).  The load average is
printed next to the numbers: on a busy machine the times are not the idle ones.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from statistics import median


def _time(argv: list[str], cwd: str | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, cwd=cwd)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per command (median)")
    parser.add_argument("--demo", action="store_true", help="also time `simgap demo` once")
    args = parser.parse_args()
    simgap = [sys.executable, "-m", "harness.cli"]
    print(f"load average before: {os.getloadavg()}")
    for flag in ("--help", "--version"):
        times = [_time([*simgap, flag]) for _ in range(args.repeats)]
        print(f"simgap {flag}: median {median(times):.3f} s over {args.repeats} runs")
    if args.demo:
        with tempfile.TemporaryDirectory() as tmp:
            seconds = _time([*simgap, "demo", "--quiet"], cwd=tmp)
        print(f"simgap demo (defaults): {seconds:.1f} s wall")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
