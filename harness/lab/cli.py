"""The lab workflow on the command line: ``simgap capture``, ``simgap export-mask`` and
``simgap captures check``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from harness.data.sources import load_source
from harness.data.splits import REAL_SIZES, SIM_SIZES, split_sizes, split_source
from harness.errors import SimgapError
from harness.files import staged_dir
from harness.lab.bench import PRESETS, EmulatedBench
from harness.lab.captures import SPLITS
from harness.lab.plans import (
    capture_dataset,
    capture_plan,
    export_inputs,
    exported_plan,
    resolve_mask,
)
from harness.lab.validate import pair_with_inputs, validate_capture_set
from harness.optics import OpticsConfig
from harness.optics.masks import export_mask

#: (flag, part of the split, default count) of the six split sizes.
_SIZE_FLAGS = (
    ("sim-train", "sim", "train", SIM_SIZES["train"]),
    ("sim-val", "sim", "val", SIM_SIZES["val"]),
    ("sim-test", "sim", "test", SIM_SIZES["test"]),
    ("pool", "real", "pool", REAL_SIZES["pool"]),
    ("val", "real", "val", REAL_SIZES["val"]),
    ("test", "real", "test", REAL_SIZES["test"]),
)


def _split_args(args) -> dict[str, dict[str, int]]:
    """{"sim": {...}, "real": {...}} counts from the command line, each a non-negative int."""
    sizes: dict[str, dict[str, int]] = {"sim": {}, "real": {}}
    for flag, part, name, _ in _SIZE_FLAGS:
        count = getattr(args, flag.replace("-", "_"))
        if count < 0:
            raise SimgapError(f"--{flag}: must be a non-negative integer, got {count}")
        sizes[part][name] = count
    return sizes


def _load_inputs(args, cfg: OpticsConfig):
    """The source and its real pool / val / test input ids by the one split rule."""
    sizes = _split_args(args)
    data = load_source(args.source, size=cfg.n, data_root=args.data_root, limit=args.limit)
    asked = sum(split_sizes(sizes["sim"], sizes["real"]).values())
    if asked > len(data):
        terms = " + ".join(f"--{flag} {sizes[part][name]}" for flag, part, name, _ in _SIZE_FLAGS)
        raise SimgapError(f"{asked} inputs asked ({terms}) but {data.source} holds {len(data)}")
    parts = split_source(data, sizes["sim"], sizes["real"], args.split_seed)
    return data, {s: parts[s] for s in SPLITS}, sizes


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise SimgapError(f"{out}: exists and is not an empty folder (use --overwrite)")


def _check_format(fmt: str) -> None:
    if fmt not in ("png", "tiff"):
        raise SimgapError(f"--format: '{fmt}' is not png or tiff")


def _counts(splits: dict) -> str:
    return ", ".join(f"{s} {len(ids)}" for s, ids in splits.items())


def _cmd_capture(args) -> int:
    if args.preset not in PRESETS:
        raise SimgapError(f"--preset: '{args.preset}' is not one of {', '.join(PRESETS)}")
    _check_format(args.format)
    _check_out(args.out, args.overwrite)
    phase, cfg = resolve_mask(args.mask, args.channels, args.size, args.mask_seed)
    bench = EmulatedBench(cfg, args.bench_seed, args.preset)
    data, splits, plan, info = _capture_inputs(args, cfg)
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
        plan=plan,
    )
    print(
        f"captured {sum(len(i) for i in splits.values())} inputs x {phase.shape[0]} channel(s) "
        f"({_counts(splits)}) of {data.source} through bench seed {bench.seed} ({bench.preset}) "
        f"-> {out}"
    )
    return 0


def _inputs_csv(args) -> Path | None:
    """``--inputs``, else the inputs.csv of an exported ``--mask`` folder, else None."""
    if args.inputs is not None:
        if not args.inputs.is_file():
            raise SimgapError(f"--inputs: {args.inputs}: file not found")
        return args.inputs
    listed = Path(args.mask) / "inputs.csv"
    return listed if listed.is_file() else None


def _capture_inputs(args, cfg: OpticsConfig):
    """(source, splits, plan or None, bench.json info): an exported inputs.csv when there is
    one (its inputs, splits and order), else the split options."""
    listed = _inputs_csv(args)
    if listed is None:
        data, splits, sizes = _load_inputs(args, cfg)
        info = {"mask": str(args.mask), "split_seed": args.split_seed,
                "split_sizes": sizes, "limit": args.limit}  # fmt: skip
        return data, splits, None, info
    data = load_source(args.source, size=cfg.n, data_root=args.data_root, limit=args.limit)
    plan = exported_plan(listed, data)
    splits = {s: plan.loc[plan["split"] == s, "input_id"].to_numpy() for s in SPLITS}
    return data, splits, plan, {"mask": str(args.mask), "inputs": str(listed), "limit": args.limit}


def _cmd_export(args) -> int:
    _check_out(args.out, args.overwrite)
    phase, cfg = resolve_mask(args.mask, args.channels, args.size, args.mask_seed)
    data, splits, _ = _load_inputs(args, cfg)
    plan = capture_plan(data, splits, args.split_seed)
    with staged_dir(args.out) as tmp:
        export_mask(phase, cfg, tmp)
        export_inputs(data, plan, tmp)
    counts = _counts(splits)
    print(f"exported {phase.shape[0]} mask(s) and {len(plan)} inputs ({counts}) -> {args.out}")
    return 0


def format_summary(summary: dict, pairing: dict | None = None) -> str:
    """Human-readable text of a :func:`~harness.lab.validate.validate_capture_set` summary."""
    size = summary["frame_size"]
    lines = [
        f"capture set {summary['root']}: OK",
        (
            f"  frames: {summary['n_frames']}  inputs: {summary['n_inputs']}  "
            f"frames per input (channels): {summary['frames_per_input']}"
        ),
        (
            f"  frame size: {size[0]}x{size[1]}  bit depth: {summary['bit_depth']}  "
            f"format: {summary['frame_format'] or 'unspecified'}  mask: {summary['mask_shape']}"
        ),
        "  inputs per split: "
        + ", ".join(f"{s} {n}" for s, n in summary["inputs_per_split"].items()),
        "  calibration frames (unlabelled): "
        + (", ".join(f"{k} {n}" for k, n in summary.get("calibration", {}).items()) or "none"),
    ]
    table = pd.DataFrame(summary["inputs_per_split_and_class"]).reindex(summary["classes"])
    table = table.fillna(0).astype(int)
    if not table.empty:
        table.index.name = "class"
        lines.append("  inputs per class:")
        lines += ["    " + t for t in table.to_string().splitlines()]
    if pairing is not None:
        lines += _pairing_lines(pairing)
    return "\n".join(lines)


def _pairing_lines(pairing: dict) -> list[str]:
    lines = [
        (
            f"  inputs.csv: {pairing['listed']} listed, {pairing['with_frames']} with frames, "
            f"{pairing['without_frames']} without"
        )
    ]
    for s, d in pairing["per_split"].items():
        if d["listed"]:
            lines.append(f"    {s}: {d['with_frames']}/{d['listed']} captured")
    if pairing["missing_ids"]:
        lines.append(f"    missing input ids: {_ids_text(pairing['missing_ids'])}")
    if pairing["not_listed_ids"]:
        lines.append(f"    captured but not listed: {_ids_text(pairing['not_listed_ids'])}")
    return lines


def _ids_text(ids: list[int], limit: int = 20) -> str:
    text = ", ".join(str(i) for i in ids[:limit])
    return text + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def _cmd_check(args) -> int:
    """``simgap captures check DIR [--inputs inputs.csv] [--json]``."""
    summary = validate_capture_set(args.dir)
    pairing = pair_with_inputs(args.dir, args.inputs) if args.inputs else None
    if args.json:
        print(json.dumps({**summary, "inputs": pairing}, indent=2))
    else:
        print(format_summary(summary, pairing))
    return 0


# --------------------------------------------------------------------------------------------
# parsers


def _add_input_args(parser) -> None:
    """The source and the split options: the one split rule of harness.data.splits."""
    parser.add_argument(
        "--source",
        default="fashion-mnist",
        help="image source: fashion-mnist, digits or folder:PATH",
    )
    parser.add_argument(
        "--size", type=int, default=None, help="image size n (default: the mask's optics, else 32)"
    )
    parser.add_argument("--data-root", default=None,
                        help="folder with the Fashion-MNIST files (else $SIMGAP_DATA)")
    parser.add_argument(
        "--limit", type=int, default=None, help="stratified subset of the source (as data.limit)"
    )
    for flag, part, name, n in _SIZE_FLAGS:
        what = f"sim {name}" if part == "sim" else f"real {name}"
        parser.add_argument(
            f"--{flag}", type=int, default=n, help=f"{what} inputs of the split (default: {n})"
        )
    parser.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="seed of the split (as data.split_seed) and of the capture order",
    )


def _add_mask_args(parser) -> None:
    parser.add_argument("--mask", required=True, metavar="MASK", help=MASK_HELP)
    parser.add_argument(
        "--channels", type=int, default=None, help="masks k for random/zeros/edge (default: 1)"
    )
    parser.add_argument("--mask-seed", type=int, default=0, help="seed of a random/edge mask")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    _add_input_args(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


#: The one style of the mask option (``capture``, ``export-mask``, ``policies preview``, ``demo``).
MASK_HELP = "random | zeros | edge to make one, or an exported mask folder or mask.npz"

_SPLIT_RULE = (
    "The inputs are the real pool / val / test parts of the study split: the source is split "
    "once (--split-seed) into six disjoint, class-stratified parts, sim train / val / test and "
    "real pool / val / test, with the counts given (defaults: a study's data block), so the same "
    "options give the same input ids as a study with that data block."
)


def _add_captures_check(subparsers) -> None:
    parser = subparsers.add_parser("captures", help="capture sets (real or emulated frames)")
    sub = parser.add_subparsers(dest="captures_command", metavar="ACTION")
    check = sub.add_parser("check", help="validate a capture set and print a summary")
    check.add_argument("dir", type=Path, help="capture-set folder (holds manifest.csv)")
    check.add_argument(
        "--inputs",
        type=Path,
        default=None,
        help="inputs.csv from `simgap export-mask`: report which listed inputs have frames",
    )
    check.add_argument("--json", action="store_true", help="print the summary as JSON")
    check.set_defaults(func=_cmd_check)
    # bare `simgap captures` prints its help; `check` overrides func
    parser.set_defaults(func=lambda _args: parser.print_help() or 0)


def add_cli(subparsers) -> None:
    """Register ``simgap captures check``, ``simgap capture`` and ``simgap export-mask``."""
    _add_captures_check(subparsers)
    cap = subparsers.add_parser(
        "capture",
        help="capture pool/val/test inputs through the emulated bench",
        description="Show a mask and the pool/val/test inputs of a source on an emulated bench "
        "and write a capture set. " + _SPLIT_RULE,
    )
    _add_mask_args(cap)
    cap.add_argument(
        "--inputs", type=Path, default=None, metavar="CSV",
        help="capture the inputs, splits and order of this inputs.csv (default: the one in an "
        "exported --mask folder; the split options are then not used)",
    )  # fmt: skip
    cap.add_argument("--bench-seed", type=int, default=0, help="which emulated bench")
    cap.add_argument("--preset", default="typical", help="mild | typical | harsh")
    cap.add_argument("--format", default="png", help="frame files: png | tiff (16-bit)")
    cap.add_argument("--batch-size", type=int, default=256, help="inputs per optics batch")
    cap.add_argument("--quiet", action="store_true", help="no progress bar")
    cap.set_defaults(func=_cmd_capture)

    exp = subparsers.add_parser(
        "export-mask",
        help="write what a lab loads onto its SLM and the inputs to show",
        description="Write the SLM bitmaps (mask_c{i}.png), mask.npz, optics.json, inputs.csv "
        "(capture_index, input_id, split, label, image: the order to show them in) and the "
        "inputs as 8-bit PNGs. " + _SPLIT_RULE,
    )
    _add_mask_args(exp)
    exp.set_defaults(func=_cmd_export)
