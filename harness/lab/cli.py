"""``simgap capture`` and ``simgap export-mask``: the lab workflow on the command line."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from pydantic import ValidationError

from harness.data import load_source
from harness.errors import SimgapError
from harness.files import replace_dir
from harness.lab.bench import DISPLAY_BITS, MASK_INITS, PRESETS, EmulatedBench
from harness.lab.plans import (
    _CAPTURE_FROM,
    CAPTURE_SIZES,
    capture_dataset,
    capture_inputs,
    capture_plan,
)
from harness.masks import export_mask, initial_phase, load_mask, optics_config_from_meta
from harness.optics import OpticsConfig


def resolve_mask(spec: str, channels: int | None = None, size: int | None = None, seed: int = 0):
    """(phase (k, N, N), OpticsConfig) of ``spec``: random / zeros / edge, or a saved mask.

    A saved mask is an exported folder or a mask.npz; its optics.json (next to the npz) gives
    the OpticsConfig, else the default optics with n = N / 2.
    """
    if channels is not None and channels < 1:
        raise SimgapError(f"--channels: must be at least 1, got {channels}")
    if size is not None and size < 4:
        raise SimgapError(f"--size: must be at least 4, got {size}")
    if spec in MASK_INITS:
        cfg = OpticsConfig(n=size or 32)
        return initial_phase(spec, cfg, channels or 1, seed), cfg
    phase, meta = load_mask(spec)
    N = phase.shape[-1]
    if meta is not None:
        try:
            cfg = optics_config_from_meta(meta)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise SimgapError(f"{spec}: optics.json field '{field}': {err['msg']}") from None
    else:
        cfg = OpticsConfig(n=max(4, N // 2))
    if cfg.N != N:
        raise SimgapError(f"{spec}: mask grid {N}x{N} does not match the optics grid N={cfg.N}")
    if size is not None and size != cfg.n:
        raise SimgapError(f"--size: {size} does not match the mask's optics n={cfg.n} ({spec})")
    if channels is not None and channels != phase.shape[0]:
        raise SimgapError(f"--channels: {channels} but {spec} holds {phase.shape[0]} mask(s)")
    return phase, cfg


def _load_inputs(args, cfg: OpticsConfig):
    data = load_source(args.source, size=cfg.n, data_root=args.data_root)
    sizes = {"pool": args.pool, "val": args.val, "test": args.test}
    return data, capture_inputs(data, sizes, args.split_seed)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise SimgapError(f"{out}: exists and is not an empty folder (use --overwrite)")


def _check_format(fmt: str) -> None:
    if fmt not in ("png", "tiff"):
        raise SimgapError(f"--format: '{fmt}' is not png or tiff")


def _cmd_capture(args) -> int:
    if args.preset not in PRESETS:
        raise SimgapError(f"--preset: '{args.preset}' is not one of {', '.join(PRESETS)}")
    _check_format(args.format)
    _check_out(args.out, args.overwrite)
    phase, cfg = resolve_mask(args.mask, args.channels, args.size, args.mask_seed)
    bench = EmulatedBench(cfg, args.bench_seed, args.preset)
    data, splits = _load_inputs(args, cfg)
    info = {"mask": str(args.mask), "split_seed": args.split_seed}
    out = capture_dataset(
        bench,
        phase,
        data,
        splits,
        args.out,
        fmt=args.format,
        batch_size=args.batch_size,
        progress=not args.quiet,
        order_seed=args.split_seed,
        overwrite=args.overwrite,
        info=info,
    )
    counts = ", ".join(f"{s} {len(ids)}" for s, ids in splits.items())
    print(
        f"captured {sum(len(i) for i in splits.values())} inputs x {phase.shape[0]} channel(s) "
        f"({counts}) of {data.source} through bench seed {bench.seed} ({bench.preset}) -> {out}"
    )
    return 0


def export_inputs(image_set, plan: pd.DataFrame, out_dir: Path) -> None:
    """Write ``inputs.csv`` (capture_index, input_id, split, label, image) and the 8-bit PNGs."""
    folder = out_dir / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    levels = 2**DISPLAY_BITS - 1
    pixels = torch.round(image_set.images[torch.tensor(plan["input_id"].to_numpy())] * levels)
    pixels = pixels.clamp(0, levels).to(torch.uint8)[:, 0].numpy()
    images = [f"inputs/{int(i):06d}.png" for i in plan["input_id"]]
    for rel, arr in zip(images, pixels):
        Image.fromarray(arr, mode="L").save(out_dir / rel)
    plan.assign(image=images).to_csv(out_dir / "inputs.csv", index=False)


def _cmd_export(args) -> int:
    _check_out(args.out, args.overwrite)
    phase, cfg = resolve_mask(args.mask, args.channels, args.size, args.mask_seed)
    data, splits = _load_inputs(args, cfg)
    plan = capture_plan(data, splits, args.split_seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        export_mask(phase, cfg, tmp)
        export_inputs(data, plan, tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    counts = ", ".join(f"{s} {len(ids)}" for s, ids in splits.items())
    print(f"exported {phase.shape[0]} mask(s) and {len(plan)} inputs ({counts}) -> {out}")
    return 0


def _add_mask_args(parser, positional: bool) -> None:
    help_mask = "exported mask folder or mask.npz, or random | zeros | edge to make one"
    if positional:
        parser.add_argument("mask", metavar="MASK", help=help_mask)
    else:
        parser.add_argument("--mask", required=True, metavar="MASK", help=help_mask)
    parser.add_argument(
        "--channels", type=int, default=None, help="masks k for random/zeros/edge (default 1)"
    )
    parser.add_argument("--mask-seed", type=int, default=0, help="seed of a random/edge mask")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--source",
        default="fashion-mnist",
        help="image source: fashion-mnist, digits or folder:PATH",
    )
    parser.add_argument(
        "--size", type=int, default=None, help="image size n (default: the mask's optics, else 32)"
    )
    parser.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST files")
    for split, n in CAPTURE_SIZES.items():
        parser.add_argument(
            f"--{split}",
            type=int,
            default=n,
            help=f"{split} inputs, from the sim {_CAPTURE_FROM[split]} split (default {n})",
        )
    parser.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="seed of the sim splits, the input choice and the capture order",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def add_cli(subparsers) -> None:
    """Register ``simgap capture`` and ``simgap export-mask``."""
    cap = subparsers.add_parser(
        "capture",
        help="capture pool/val/test inputs through the emulated bench",
        description="Show a mask and the pool/val/test inputs of a source on an emulated bench "
        "and write a capture set. Pool comes from the sim train split, val from sim val, test "
        "from sim test (harness.bench.source_splits with --split-seed).",
    )
    _add_mask_args(cap, positional=False)
    cap.add_argument("--bench-seed", type=int, default=0, help="which emulated bench (default 0)")
    cap.add_argument("--preset", default="typical", help="mild | typical | harsh (default typical)")
    cap.add_argument("--format", default="png", help="frame files: png | tiff (16-bit)")
    cap.add_argument("--batch-size", type=int, default=256, help="inputs per optics batch")
    cap.add_argument("--quiet", action="store_true", help="no progress bar")
    cap.set_defaults(func=_cmd_capture)

    exp = subparsers.add_parser(
        "export-mask",
        help="write what a lab loads onto its SLM and the inputs to show",
        description="Write the SLM bitmaps (mask_c{i}.png), mask.npz, optics.json, inputs.csv "
        "(capture_index, input_id, split, label, image: the order to show them in) and the "
        "inputs as 8-bit PNGs. Same input rule and options as `simgap capture`.",
    )
    _add_mask_args(exp, positional=True)
    exp.set_defaults(func=_cmd_export)
