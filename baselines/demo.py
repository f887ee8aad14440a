"""``simgap demo``: the whole loop in one short command.

Trains the hybrid model in simulation under the ``none`` and ``physics`` policies on a small
subset, captures pool / val / test inputs through the default emulated bench (``typical``,
bench seed 0) into a capture set per policy (the same files and reader a physical bench uses;
kept in ``--out``, default ``runs/demo``, next to ``results.json``; ``--out`` is a new or empty
folder or one a previous demo wrote, marked by :data:`MARKER`), and prints
for both policies: accuracy on the ideal simulation of the test inputs, on their bench captures,
and on the captures after fine-tuning on 1 % and 5 % of the real pool.

The inputs follow the one split rule (:func:`harness.data.splits.split_source`): sim train / val
and the real pool / val / test are disjoint, class-stratified parts drawn from ``--seed``.
The command line is in :mod:`baselines.cli`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from augment.policy import build_policy
from baselines import get_method
from harness.data.sources import ImageSet, load_source
from harness.data.splits import split_source
from harness.datasets import ImageData, RealSplits
from harness.errors import SimgapError
from harness.files import write_text
from harness.lab.bench import EmulatedBench
from harness.lab.captures import SPLITS
from harness.lab.plans import capture_dataset
from harness.lab.validate import read_capture_set
from harness.models import HybridModel
from harness.optics import FourF, OpticsConfig
from harness.train import TrainConfig, evaluate, fit

POLICIES = ("none", "physics")
#: The file a demo writes in its --out folder: a later demo may replace the capture sets there
MARKER = ".simgap-demo"


@dataclass
class _Demo:
    """Everything both policies share: the data, the bench and the training budgets."""

    args: object
    data: ImageSet
    sim_train: ImageData
    sim_val: ImageData
    inputs: dict
    optics: OpticsConfig
    bench: EmulatedBench
    sim_config: TrainConfig
    adapt_config: TrainConfig
    fractions: list[float]
    folder: Path


def run_demo(args) -> dict:
    """Train, capture, adapt and evaluate; returns {"rows": [...], "settings": {...}}.

    ``args`` holds the options of ``simgap demo`` (an argparse namespace)."""
    check_out(Path(args.out))
    data = load_source(args.source, size=args.size, data_root=args.data_root)
    sim = {"train": args.train, "val": args.val, "test": 0}  # sim is scored on the test inputs
    real = {"pool": args.pool, "val": args.real_val, "test": args.test}
    parts = split_source(data, sim, real, args.seed)
    optics = OpticsConfig(n=args.size)
    sim_config, adapt_config = _train_configs(args)
    demo = _Demo(
        args=args,
        data=data,
        sim_train=ImageData(data.images[parts["sim_train"]], data.labels[parts["sim_train"]]),
        sim_val=ImageData(
            data.images[parts["sim_val"]], data.labels[parts["sim_val"]], split="sim-val"
        ),
        inputs={s: parts[s] for s in SPLITS},
        optics=optics,
        bench=EmulatedBench(optics, args.bench_seed, args.preset),
        sim_config=sim_config,
        adapt_config=adapt_config,
        fractions=sorted({0.0, *args.fractions}),
        folder=Path(args.out),
    )
    write_text(demo.folder / MARKER, "simgap demo output: simgap demo may replace this folder\n")
    rows = [_policy_row(demo, name) for name in POLICIES]
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    return {"rows": rows, "settings": {k: _plain(v) for k, v in settings.items()}}


def check_out(folder: Path) -> None:
    """A demo replaces ``<folder>/none`` and ``<folder>/physics``: ``folder`` must be new, empty
    or a previous demo's output (it holds :data:`MARKER`), never an unrelated folder."""
    if folder.exists() and not folder.is_dir():
        raise SimgapError(f"--out: {folder} is a file, not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).is_file():
        raise SimgapError(
            f"--out: {folder} is not empty and not a previous demo output (no {MARKER}); "
            "the demo would replace its none/ and physics/, so name a new or empty folder"
        )


def _train_configs(args) -> tuple[TrainConfig, TrainConfig]:
    """The budgets of the sim training and of the adaptation."""
    common = {"seed": args.seed, "device": args.device, "progress": args.progress}
    sim = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, **common)
    adapt = TrainConfig(
        epochs=args.adapt_epochs,
        steps_per_epoch=args.adapt_steps,
        batch_size=32,
        lr=args.adapt_lr,
        **common,
    )
    return sim, adapt


def _policy_row(demo: _Demo, name: str) -> dict:
    """One policy: train in simulation, capture on the bench, evaluate, adapt per fraction."""
    args, data = demo.args, demo.data
    start = time.time()
    policy = build_policy(name, None, demo.optics)
    encoder = FourF(demo.optics, channels=args.channels, init=args.mask, seed=args.seed)
    model = HybridModel(encoder, args.digital, data.num_classes, seed=args.seed)
    model.to(args.device)
    _say(args, f"[{name}] training in simulation ({len(demo.sim_train)} images)")
    fit(model, demo.sim_train, demo.sim_val, demo.sim_config, policy=policy)
    _say(args, f"[{name}] capturing {sum(map(len, demo.inputs.values()))} inputs on the bench")
    folder = capture_dataset(
        demo.bench, model.encoder.cpu(), data, demo.inputs, demo.folder / name,
        progress=args.progress, overwrite=True,
    )  # fmt: skip
    model.to(args.device)
    real = RealSplits.from_capture_set(read_capture_set(folder), data)
    test = real.for_final_evaluation()
    twins = ImageData(test.images, test.labels, split="sim-twins-of-test")
    row = {
        "policy": name,
        "sim": evaluate(model, twins)["accuracy"],
        "bench 0%": evaluate(model, test)["accuracy"],
    }
    row.update(_adapted(demo, name, model, real, policy))
    row["seconds"] = round(time.time() - start, 1)
    return row


def _adapted(demo: _Demo, name: str, model, real: RealSplits, policy) -> dict:
    """Accuracy on the real test inputs after adapting on each nonzero pool fraction."""
    args = demo.args
    method = get_method(args.method)
    test = real.for_final_evaluation()
    pools = real.pool_fractions(demo.fractions, args.seed)
    out = {}
    for fraction in demo.fractions:
        if fraction == 0:
            continue
        _say(args, f"[{name}] {args.method} on {len(pools[fraction])} real frames")
        result = method(
            model, pools[fraction], real.val, demo.adapt_config, args.seed,
            sim_train=demo.sim_train, policy=policy,
        )  # fmt: skip
        out[f"bench {fraction * 100:g}%"] = evaluate(result.model, test)["accuracy"]
        out[f"n {fraction * 100:g}%"] = len(pools[fraction])
    return out


def _say(args, text: str) -> None:
    if args.progress:
        print(text, flush=True)


def _plain(value):
    return str(value) if isinstance(value, Path) else value
