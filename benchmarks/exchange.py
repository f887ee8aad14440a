"""Overhead of the exchange round trip (run by hand; prints numbers).

    SIMGAP_THREADS=1 python benchmarks/exchange.py [--repeats 2] [--poll 0.2]

Times one small study (digits at 8 x 8: two policies, one seed, 0 % and 100 % fine-tuning, so
two sim models and two capture sets) on an ``emulated`` bench, then the same study on an
``exchange`` bench polling every ``--poll`` seconds while a separate lab process
(``tests/studies/lab_script.py``) answers each capture request as soon as it appears, with an
emulated bench of a seed only it knows.  The two runs alternate ``--repeats`` times; each gets a
fresh study folder, so every run trains its sim models.  Prints both wall times and
their difference: the cost of writing the requests, the lab's captures in another process, the
answer checks and the polling.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from studies.config import parse_config
from studies.worker import run_study

ROOT = Path(__file__).resolve().parents[1]
STUDY = {
    "name": "roundtrip",
    "data": {"source": "digits", "size": 8, "sim": {"train": 300, "val": 60, "test": 60},
             "real": {"pool": 150, "val": 40, "test": 80}},
    "model": {"channels": 2, "mask_init": "edge"},
    "training": {"epochs": 2, "batch_size": 16, "lr": 0.003},
    "adapt": {"steps": 6, "evals": 2, "batch_size": 16, "lr": 0.003},
    "policies": ["none", "physics"], "methods": ["finetune-head"], "fractions": [0, 1.0],
    "seeds": [0], "report": {"tsne_points": 40, "feature_points": 40},
}  # fmt: skip


def emulated(folder: Path) -> float:
    config = parse_config({**STUDY, "bench": {"seeds": [1234], "preset": "typical"}})
    t0 = time.perf_counter()
    summary = run_study(config, folder / "study")
    assert summary["complete"] == summary["cells"], summary
    return time.perf_counter() - t0


def exchange(folder: Path, poll: float) -> float:
    config = parse_config({**STUDY, "bench": {"kind": "exchange", "seeds": [0], "poll_s": poll}})
    lab = subprocess.Popen([sys.executable, "-m", "tests.studies.lab_script",
                            str(folder / "study" / "exchange"), "1234", "--expect", "2",
                            "--timeout", "600"], cwd=ROOT, stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        t0 = time.perf_counter()
        summary = run_study(config, folder / "study")
        elapsed = time.perf_counter() - t0
    finally:
        lab.wait(timeout=60)
    assert summary["complete"] == summary["cells"], summary
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--poll", type=float, default=0.2, help="bench.poll_s of the exchange")
    args = parser.parse_args()
    os.environ.setdefault("SIMGAP_THREADS", "1")
    times: dict[str, list[float]] = {"emulated": [], "exchange": []}
    for _ in range(args.repeats):
        for kind, runs in times.items():
            with tempfile.TemporaryDirectory() as tmp:
                run = emulated(Path(tmp)) if kind == "emulated" else exchange(Path(tmp),
                                                                              args.poll)
                runs.append(run)
                print(f"{kind:9s} {run:6.1f} s", flush=True)
    e, x = median(times["emulated"]), median(times["exchange"])
    print(f"median: emulated {e:.1f} s, exchange {x:.1f} s, round-trip overhead {x - e:+.1f} s "
          f"({(x / e - 1) * 100:+.0f} %)")


if __name__ == "__main__":
    main()
