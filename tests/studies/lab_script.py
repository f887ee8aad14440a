"""A "lab" for the exchange tests and benchmarks: watches an exchange folder and answers every
capture request with an emulated bench whose seed only this process knows.

    python -m tests.studies.lab_script FOLDER SEED [--preset typical] [--expect N] [--timeout S]

Exits 0 once it has answered ``--expect`` requests (1 on timeout).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harness.lab.benches import Emulated
from harness.lab.exchange import REQUEST_JSON, REQUESTS, answer_request, read_request


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("folder", type=Path)
    p.add_argument("seed", type=int)
    p.add_argument("--preset", default="typical")
    p.add_argument("--expect", type=int, default=1)
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    done: set[str] = set()
    deadline = time.time() + args.timeout
    while len(done) < args.expect and time.time() < deadline:
        for path in sorted((args.folder / REQUESTS).glob(f"*/{REQUEST_JSON}")):
            if path.parent.name in done:
                continue
            _, request = read_request(path.parent)
            answer_request(path.parent, Emulated(request.optics, args.seed, args.preset,
                                                 request.calibration))  # fmt: skip
            done.add(path.parent.name)
            print(f"answered {path.parent.name}", flush=True)
        time.sleep(0.1)
    return 0 if len(done) >= args.expect else 1


if __name__ == "__main__":
    sys.exit(main())
