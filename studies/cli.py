"""``simgap study ...`` and ``simgap tune``.

    simgap study run [CONFIG] [--out DIR] [--workers N]     run (or resume) a study, then report
    simgap study worker STUDY_DIR_OR_URL                     join a study from any machine
    simgap study status STUDY_DIR_OR_URL                     cells done / running / waiting / failed
    simgap study report STUDY_DIR                            (re)build the report from the stores
    simgap study check [CONFIG]                              validate a config, print the grid size
    simgap tune [CONFIG] [--trials N] [--method M]           TPE over a policy / method

CONFIG is a YAML file or a preset name (``quick``, the default, or ``paper``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from harness.errors import SimgapError
from studies.captures import ready_check, waiting_requests
from studies.checks import check_config, check_config_file, check_workers
from studies.config import load_config, resolve_config_path, validate_components
from studies.grid import grid_cells
from studies.queue import cell_states, grid_summary, stale_cells, trial_counts
from studies.report import build_report
from studies.storage import check_study_folder, open_study
from studies.tune import run_tuning
from studies.worker import run_study, run_worker

EXIT_WAITING = 3  # `study run`: every cell left waits for captures from the lab


def _setup_logging() -> None:
    logger = logging.getLogger("simgap")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _load(config_arg, overrides=()):
    """Read and check a config (everything a cell would fail on) before anything is written;
    ``overrides``: the ``--set key.sub=value`` options."""
    where = str(resolve_config_path(config_arg))
    check_config_file(resolve_config_path(config_arg))
    config = load_config(config_arg, overrides or ())
    validate_components(config, where)
    check_config(config, where)
    return config


def _cmd_run(args) -> int:
    _setup_logging()
    check_workers(args.workers)
    config = _load(args.config, args.set)
    out = Path(args.out) if args.out else Path("runs") / config.name
    check_study_folder(out)
    n = len(grid_cells(config))
    print(f"study {config.name}: {n} cells, {args.workers} worker(s), folder {out}", flush=True)
    t0 = time.time()
    summary = run_study(config, out, args.workers, args.storage, args.tracking_uri,
                        report=not args.no_report)
    minutes = (time.time() - t0) / 60
    print(f"cells complete: {summary['complete']}/{summary['cells']} in {minutes:.1f} min")
    for cell, error in summary["errors"].items():
        print(f"  failed: {cell}: {error}")
    if "report" in summary:
        print(f"report: {summary['report']}")
    if summary.get("waiting"):
        _print_waiting(summary["states"]["waiting-for-captures"], summary["waiting"])
        print("when the answers are there, run the same `simgap study run` again "
              "(or set bench.poll_s to keep waiting)")
        if not summary["states"]["failed"]:
            return EXIT_WAITING
    return 0 if summary["complete"] == summary["cells"] else 1


def _print_waiting(cells: int, requests: list[dict]) -> None:
    print(f"{cells} cell(s) wait for captures ({len(requests)} capture request(s)):")
    for r in requests:
        print(f"  request {r['request']}\n    answer into {r['answer']}")
        if r["rejected"]:
            print(f"    last answer rejected: {r['rejected']}")


def _cmd_worker(args) -> int:
    _setup_logging()
    done = run_worker(args.target, args.study, args.cache, args.tracking_uri, args.parent_pid,
                      wait=not args.no_wait)
    print(f"worker finished: {done} cell(s) run here")
    return 0


def _cmd_status(args) -> int:
    handle = open_study(args.target, args.study)  # read-only: status writes nothing
    counts = trial_counts(handle)
    summary = grid_summary(handle)
    print(f"study {handle.study_name}: {summary['complete']}/{summary['cells']} cells complete")
    tries = ", ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items()))
    print(f"optuna trials (retries and tries of waiting cells included): {tries}")
    stale = stale_cells(handle)
    if stale:
        print(f"stale (worker gone; the next `study run` or worker re-queues them): "
              f"{', '.join(stale)}")
    try:
        states = cell_states(handle, ready_check(handle.config, handle.study_dir))
        waiting = waiting_requests(handle.config, handle.study_dir, states["needs"])
    except SimgapError:  # joined by URL: the exchange folder (in the study folder) is not here
        states, waiting = cell_states(handle, lambda rid: False), []
    print("cells: " + ", ".join(f"{k} {v}" for k, v in states["counts"].items()))
    if states["needs"]:
        _print_waiting(len(states["needs"]), waiting)
    for cell, error in summary["errors"].items():
        print(f"  failed: {cell}: {error}")
    return 0


def _cmd_report(args) -> int:
    path = build_report(args.study_dir, tracking_uri=args.tracking_uri, progress=True)
    print(f"report: {path}")
    return 0


def _cmd_check(args) -> int:
    config = _load(args.config, args.set)
    cells = grid_cells(config)
    models = {(c.policy, c.seed) for c in cells}
    captures = {(c.policy, c.seed, c.bench) for c in cells}
    print(f"{resolve_config_path(args.config)}: ok ({config.name}): {len(cells)} cells, "
          f"{len(models)} sim trainings, {len(captures)} capture sets")
    return 0


def _cmd_tune(args) -> int:
    _setup_logging()
    config = _load(args.config, args.set)
    out = Path(args.out) if args.out else Path("runs") / f"{config.name}-tune"
    result = run_tuning(config, out, trials=args.trials, policy=args.policy, seed=args.seed,
                        storage=args.storage, tracking_uri=args.tracking_uri,
                        bench_seed=args.bench_seed, method=args.method, fraction=args.fraction)
    print(f"best objective ({result['protocol']}, {result['real_labels']} real labels) "
          f"{result['value']:.4f} (trial {result['trial']})")
    print(f"tuned {'method' if args.method else 'policy'}: {result['path']}")
    return 0


def _add_set(parser) -> None:
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set training.epochs=5 (repeatable; the value is "
        "YAML, checked by the config schema)",
    )  # fmt: skip


def add_cli(subparsers) -> None:
    study = subparsers.add_parser("study", help="run, resume, join and report studies")
    sub = study.add_subparsers(dest="study_command", metavar="ACTION")

    def _usage(args) -> int:
        study.print_help()
        return 0

    study.set_defaults(func=_usage)

    run = sub.add_parser("run", help="run (or resume) a study, then build its report")
    run.add_argument("config", nargs="?", default=None,
                     help="study YAML or preset name (quick [default], paper)")
    run.add_argument("--out", help="study folder (default: runs/<name>)")
    run.add_argument("--workers", type=int, default=1, help="local worker processes (default: 1)")
    run.add_argument("--storage", help="Optuna storage URL (default: sqlite in the study folder)")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite in the folder)")
    run.add_argument("--no-report", action="store_true", help="skip the report at the end")
    _add_set(run)
    run.set_defaults(func=_cmd_run)

    worker = sub.add_parser("worker", help="join a study (its folder or storage URL) and run cells")
    worker.add_argument("target", help="study folder, or a storage URL (postgresql://..., "
                        "journal:/shared/study.log)")
    worker.add_argument("--study", help="study name when the storage holds several")
    worker.add_argument("--cache", help="artifact cache folder (default: the study folder's)")
    worker.add_argument("--tracking-uri", help="override the study's MLflow tracking URI")
    worker.add_argument("--no-wait", action="store_true",
                        help="exit when no cell is waiting (do not wait for running ones)")
    worker.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # internal: exit with it
    worker.set_defaults(func=_cmd_worker)

    status = sub.add_parser("status", help="how many cells are done, running, waiting, failed")
    status.add_argument("target", help="study folder or storage URL")
    status.add_argument("--study", help="study name when the storage holds several")
    status.set_defaults(func=_cmd_status)

    report = sub.add_parser("report", help="build the report from the study's stores")
    report.add_argument("study_dir", help="study folder")
    report.add_argument("--tracking-uri", help="override the study's MLflow tracking URI")
    report.set_defaults(func=_cmd_report)

    check = sub.add_parser("check", help="validate a study config and print the grid size")
    check.add_argument("config", nargs="?", default=None,
                       help="study YAML or preset name (quick [default], paper)")
    _add_set(check)
    check.set_defaults(func=_cmd_check)
    _add_tune(subparsers)


def _add_tune(subparsers) -> None:
    tune = subparsers.add_parser("tune", help="tune a policy or method (TPE)")
    tune.add_argument("config", nargs="?", default=None, help="study YAML or preset name")
    tune.add_argument("--out", help="tuning folder (default: runs/<name>-tune)")
    tune.add_argument("--trials", type=int, default=20, help="TPE trials")
    tune.add_argument("--policy", default="physics", help="registered policy to tune")
    tune.add_argument("--method", help="tune this adaptation method instead of a policy")
    tune.add_argument("--fraction", type=float,
                      help="real fraction a method is tuned at (default: the smallest > 0)")
    tune.add_argument("--seed", type=int, help="training seed (default: the config's first)")
    tune.add_argument("--bench-seed", type=int, help="bench seed (default: the config's first)")
    tune.add_argument("--storage", help="Optuna storage URL (default: sqlite in the folder)")
    tune.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite in the folder)")
    _add_set(tune)
    tune.set_defaults(func=_cmd_tune)
