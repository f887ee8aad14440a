"""``simgap demo`` on the command line (the loop itself: :mod:`baselines.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tabulate import tabulate

from baselines import demo
from harness.errors import SimgapError
from harness.files import write_json
from harness.lab.cli import MASK_HELP


def format_table(result: dict) -> str:
    """The demo's results as a GitHub-style table with a two-line caption."""
    rows = result["rows"]
    keys = [k for k in rows[0] if not k.startswith("n ") and k != "seconds"]
    counts = ", ".join(f"{k[2:]} = {rows[0][k]} frames" for k in rows[0] if k.startswith("n "))
    s = result["settings"]
    table = tabulate(
        [[r[k] for k in keys] for r in rows], headers=keys, floatfmt=".3f", tablefmt="github"
    )
    return (
        f"{s['source']} n={s['size']}, k={s['channels']}, {s['digital']}, sim train "
        f"{s['train']}, {s['epochs']} epochs; bench seed {s['bench_seed']} ({s['preset']}); "
        f"test {s['test']} inputs; adaptation {s['method']} ({counts})\n"
        "accuracy on the test inputs: sim = ideal simulation, bench = emulated-bench captures\n"
        + table
    )


def _fraction_list(text: str) -> list[float]:
    """Comma-separated proportions of the real pool in [0, 1], as a study config's
    ``fractions`` (0.01 = 1 %)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of fractions") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"'{text}': fractions are proportions in 0..1")
    return values


def _cmd_demo(args) -> int:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SimgapError(f"--device: {args.device} requested but CUDA is not available")
    result = demo.run_demo(args)
    print(format_table(result))
    write_json(args.out / "results.json", result)
    print(f"captures and results.json: {args.out}")
    if args.json:
        write_json(Path(args.json), result)
    return 0


def _add_sizes(p) -> None:
    """Sizes of the parts of the one split rule (and the sim training budget)."""
    p.add_argument("--train", type=int, default=2000, help="sim training images")
    p.add_argument("--val", type=int, default=300, help="sim validation images")
    p.add_argument("--pool", type=int, default=1000, help="real pool inputs")
    p.add_argument("--real-val", type=int, default=200, help="real val inputs")
    p.add_argument("--test", type=int, default=500, help="real test inputs")
    p.add_argument("--epochs", type=int, default=3, help="sim training epochs")
    p.add_argument("--batch-size", type=int, default=64, help="sim batch size")
    p.add_argument("--lr", type=float, default=3e-3, help="sim learning rate")


def _add_adaptation(p) -> None:
    p.add_argument("--method", default="finetune-full", help="adaptation method")
    p.add_argument(
        "--fractions", type=_fraction_list, default=[0.01, 0.05],
        help="fractions of the real pool to adapt on, comma-separated proportions as in a study "
        "config (default: 0.01,0.05)",
    )  # fmt: skip
    p.add_argument("--adapt-epochs", type=int, default=3, help="adaptation epochs")
    p.add_argument("--adapt-lr", type=float, default=1e-3, help="adaptation lr")
    p.add_argument(
        "--adapt-steps", type=int, default=20,
        help="optimizer steps per adaptation epoch, whatever the fraction",
    )  # fmt: skip


def add_cli(subparsers) -> None:
    """Register ``simgap demo``."""
    p = subparsers.add_parser(
        "demo",
        help="train none vs physics, capture on the default bench, fine-tune",
        description=demo.__doc__.split("\n\n")[1],
    )
    p.add_argument("--source", default="fashion-mnist", help="image source")
    p.add_argument("--data-root", default=None, help="folder holding the source's files")
    p.add_argument("--size", type=int, default=16, help="image size n")
    _add_sizes(p)
    p.add_argument("--channels", type=int, default=4, help="k phase masks")
    p.add_argument("--mask", default="edge", metavar="MASK", help=MASK_HELP)
    p.add_argument("--digital", default="small_cnn", help="small_cnn or resnet18")
    p.add_argument("--preset", default="typical", help="bench preset")
    p.add_argument("--bench-seed", type=int, default=0, help="bench seed")
    _add_adaptation(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the split, init and training")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR",
                   help="folder for the capture sets (one per policy) and results.json: new, "
                   "empty, or a previous demo's (it replaces none/ and physics/ there)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--quiet", dest="progress", action="store_false", help="no progress output")
    p.set_defaults(func=_cmd_demo)
