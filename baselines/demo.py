"""``simgap demo``: the whole loop in one short command.

Trains the hybrid model in simulation under the ``none`` and ``physics`` policies on a small
subset, captures pool / val / test inputs through the default emulated bench (``typical``,
bench seed 0) into a capture set (the same files and reader a physical bench uses), and prints
for both policies: accuracy on the ideal simulation of the test inputs, on their bench captures,
and on the captures after fine-tuning on 1 % and 5 % of the real pool.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from harness.errors import SimgapError

POLICIES = ("none", "physics")


def run_demo(args) -> dict:
    """Train, capture, adapt and evaluate; returns {"rows": [...], "settings": {...}}."""
    from augment.policy import build_policy
    from baselines import get_method
    from harness.lab.bench import EmulatedBench
    from harness.lab.plans import capture_dataset, capture_inputs, source_splits
    from harness.lab.captures import read_capture_set
    from harness.data import load_source, split_indices
    from harness.models import HybridModel
    from harness.optics import FourF, OpticsConfig
    from harness.train import ImageData, RealSplits, TrainConfig, evaluate, fit

    fractions = sorted({0.0, *args.fractions})
    data = load_source(args.source, size=args.size, data_root=args.data_root)
    sim = source_splits(data, args.seed)
    picks = {
        name: sim[name][split_indices(data.labels[sim[name]], {name: count}, args.seed)[name]]
        for name, count in (("train", args.train), ("val", args.val))
    }
    sim_train = ImageData(data.images[picks["train"]], data.labels[picks["train"]])
    sim_val = ImageData(data.images[picks["val"]], data.labels[picks["val"]], split="sim-val")
    inputs = capture_inputs(
        data, {"pool": args.pool, "val": args.real_val, "test": args.test}, args.seed
    )
    optics = OpticsConfig(n=args.size)
    bench = EmulatedBench(optics, args.bench_seed, args.preset)
    common = {"seed": args.seed, "device": args.device, "progress": args.progress}
    sim_config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, **common)
    adapt_config = TrainConfig(
        epochs=args.adapt_epochs,
        steps_per_epoch=args.adapt_steps,
        batch_size=32,
        lr=args.adapt_lr,
        **common,
    )
    method = get_method(args.method)

    rows = []
    with tempfile.TemporaryDirectory(prefix="simgap-demo-") as tmp:
        for name in POLICIES:
            start = time.time()
            policy = build_policy(name, None, optics)
            encoder = FourF(optics, channels=args.channels, init=args.mask_init, seed=args.seed)
            model = HybridModel(encoder, args.digital, data.num_classes, seed=args.seed)
            model.to(args.device)
            _say(args, f"[{name}] training in simulation ({len(sim_train)} images)")
            fit(model, sim_train, sim_val, sim_config, policy=policy)
            _say(args, f"[{name}] capturing {sum(map(len, inputs.values()))} inputs on the bench")
            folder = capture_dataset(
                bench, model.encoder.cpu(), data, inputs, Path(tmp) / name, progress=args.progress
            )
            model.to(args.device)
            real = RealSplits.from_capture_set(read_capture_set(folder), data)
            test = real.for_final_evaluation()
            twins = ImageData(test.images, test.labels, split="sim-twins-of-test")
            row = {
                "policy": name,
                "sim": evaluate(model, twins)["accuracy"],
                "bench 0%": evaluate(model, test)["accuracy"],
            }
            pools = real.pool_fractions(fractions, args.seed)
            for fraction in fractions:
                if fraction == 0:
                    continue
                _say(args, f"[{name}] {args.method} on {len(pools[fraction])} real frames")
                result = method(
                    model, pools[fraction], real.val, adapt_config, args.seed,
                    sim_train=sim_train, policy=policy,
                )  # fmt: skip
                row[f"bench {fraction * 100:g}%"] = evaluate(result.model, test)["accuracy"]
                row[f"n {fraction * 100:g}%"] = len(pools[fraction])
            row["seconds"] = round(time.time() - start, 1)
            rows.append(row)
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    return {"rows": rows, "settings": {k: _plain(v) for k, v in settings.items()}}


def format_table(result: dict) -> str:
    from tabulate import tabulate

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


def _say(args, text: str) -> None:
    if args.progress:
        print(text, flush=True)


def _plain(value):
    return str(value) if isinstance(value, Path) else value


def _fraction_list(text: str) -> list[float]:
    try:
        values = [float(v) / 100 for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of percentages") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"'{text}': percentages must be in 0..100")
    return values


def _cmd_demo(args) -> int:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SimgapError(f"--device: {args.device} requested but CUDA is not available")
    result = run_demo(args)
    print(format_table(result))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump(result, fh, indent=2)
        os.replace(tmp, path)
    return 0


def add_cli(subparsers) -> None:
    """Register ``simgap demo``."""
    p = subparsers.add_parser(
        "demo",
        help="train none vs physics, capture on the default bench, fine-tune at 1 %% and 5 %%",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument("--source", default="fashion-mnist", help="image source (default %(default)s)")
    p.add_argument("--data-root", default=None, help="folder holding the source's files")
    p.add_argument("--size", type=int, default=32, help="image size n (default %(default)s)")
    p.add_argument("--train", type=int, default=3000, help="sim training images (%(default)s)")
    p.add_argument("--val", type=int, default=500, help="sim validation images (%(default)s)")
    p.add_argument("--pool", type=int, default=2000, help="real pool inputs (%(default)s)")
    p.add_argument("--real-val", type=int, default=500, help="real val inputs (%(default)s)")
    p.add_argument("--test", type=int, default=1000, help="real test inputs (%(default)s)")
    p.add_argument("--epochs", type=int, default=3, help="sim training epochs (%(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="sim batch size (%(default)s)")
    p.add_argument("--lr", type=float, default=3e-3, help="sim learning rate (%(default)s)")
    p.add_argument("--channels", type=int, default=4, help="k phase masks (%(default)s)")
    p.add_argument("--mask-init", default="edge", help="random, zeros or edge (%(default)s)")
    p.add_argument("--digital", default="small_cnn", help="small_cnn or resnet18")
    p.add_argument("--preset", default="typical", help="bench preset (%(default)s)")
    p.add_argument("--bench-seed", type=int, default=0, help="bench seed (%(default)s)")
    p.add_argument("--method", default="finetune-full", help="adaptation method (%(default)s)")
    p.add_argument(
        "--fractions", type=_fraction_list, default=[0.01, 0.05],
        help="real pool percentages to adapt on, comma-separated (default 1,5)",
    )  # fmt: skip
    p.add_argument("--adapt-epochs", type=int, default=3, help="adaptation epochs (%(default)s)")
    p.add_argument("--adapt-lr", type=float, default=1e-3, help="adaptation lr (%(default)s)")
    p.add_argument(
        "--adapt-steps", type=int, default=20,
        help="optimizer steps per adaptation epoch, whatever the fraction (%(default)s)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of splits, init and training")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default %(default)s)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--quiet", dest="progress", action="store_false", help="no progress output")
    p.set_defaults(func=_cmd_demo)
