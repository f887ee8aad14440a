"""What a lab shows: the capture order of the inputs, the mask to show, the exported inputs, and
capturing them through an emulated bench into a capture set.

Which inputs are captured is not decided here: every caller takes the real ``pool`` / ``val`` /
``test`` parts of :func:`harness.data.splits.split_source`, the one split rule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from pydantic import ValidationError

from harness.errors import SimgapError
from harness.lab.bench import DISPLAY_BITS, MASK_INITS, EmulatedBench, _splitmix64
from harness.lab.captures import SPLITS, write_capture_set
from harness.optics import FourF, OpticsConfig
from harness.optics.masks import initial_phase, load_mask, optics_config_from_meta


def capture_plan(image_set, splits: dict[str, torch.Tensor], seed: int = 0) -> pd.DataFrame:
    """The order in which inputs are shown: ``capture_index, input_id, split, label`` rows.

    Splits are interleaved in a random order (seeded), so the bench drift does not line up
    with the split of an input.
    """
    parts = [(s, torch.as_tensor(ids, dtype=torch.long).reshape(-1)) for s, ids in splits.items()]
    for s, _ in parts:
        if s not in SPLITS:
            raise SimgapError(f"splits: '{s}' is not one of {', '.join(SPLITS)}")
    ids = torch.cat([ids for _, ids in parts]) if parts else torch.empty(0, dtype=torch.long)
    names = np.concatenate([[s] * len(i) for s, i in parts]) if parts else np.array([], str)
    if len(ids) and (ids.min() < 0 or ids.max() >= len(image_set)):
        raise SimgapError(f"splits: input ids must be in 0..{len(image_set) - 1}")
    if len(torch.unique(ids)) != len(ids):
        raise SimgapError("splits: an input id appears twice (in one split or in two)")
    gen = torch.Generator().manual_seed(_splitmix64(int(seed) ^ 0x0DE5))
    order = torch.randperm(len(ids), generator=gen)
    ids = ids[order]
    return pd.DataFrame(
        {
            "capture_index": np.arange(len(ids)),
            "input_id": ids.numpy(),
            "split": names[order.numpy()],
            "label": image_set.labels[ids].numpy(),
        }
    )


def capture_dataset(
    bench: EmulatedBench,
    encoder_or_mask: FourF | torch.Tensor,
    image_set,
    splits: dict[str, torch.Tensor],
    out_dir: str | Path,
    fmt: str = "png",
    batch_size: int = 256,
    progress: bool = True,
    order_seed: int = 0,
    overwrite: bool = False,
    info: dict | None = None,
    plan: pd.DataFrame | None = None,
) -> Path:
    """Capture the inputs of ``splits`` through ``bench`` and write a capture set to ``out_dir``.

    Inputs are shown in :func:`capture_plan` order; capture index = position in that order,
    capture id of a frame = capture_index · k + channel.  ``info`` is added to bench.json.
    ``plan`` (e.g. :func:`exported_plan` of an ``inputs.csv``) replaces ``splits`` and that order.
    """
    if image_set.size != bench.config.n:
        raise SimgapError(
            f"images: size {image_set.size} does not match the optics n={bench.config.n}"
        )
    plan = capture_plan(image_set, splits, order_seed) if plan is None else plan
    optics = bench.optics(encoder_or_mask)
    index = torch.tensor(plan["capture_index"].to_numpy())
    frames = bench.capture_batched(optics, image_set.images, index,
                                   torch.tensor(plan["input_id"].to_numpy()), batch_size, progress)
    k = optics.channels
    capture_ids = index[:, None] * k + torch.arange(k)[None, :]
    return write_capture_set(
        out_dir,
        frames,
        plan["input_id"].to_numpy(),
        plan["split"].tolist(),
        plan["label"].to_numpy(),
        image_set.classes,
        _bench_info(bench, image_set, plan, order_seed, info),
        optics.phase.detach(),
        fmt=fmt,
        bit_depth=int(bench.fixed["bit_depth"]),
        progress=progress,
        overwrite=overwrite,
        capture_ids=capture_ids.numpy(),
    )


def _bench_info(bench: EmulatedBench, image_set, plan: pd.DataFrame, order_seed: int,
                info: dict | None) -> dict:  # fmt: skip
    """bench.json of an emulated capture: the bench drawn, the source and the capture order."""
    return {
        "bench": bench.parameters(),
        "seed": bench.seed,
        "preset": bench.preset,
        "source": image_set.source,
        "origin": image_set.origin,
        "size": image_set.size,
        "classes": list(image_set.classes),
        "inputs": {
            "per_split": {s: int((plan["split"] == s).sum()) for s in SPLITS},
            "order_seed": int(order_seed),
            "capture_index": "position in the capture order (bench drift clock)",
        },
        **(info or {}),
    }


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


def export_inputs(image_set, plan: pd.DataFrame, out_dir: Path) -> None:
    """Write ``inputs.csv`` (capture_index, input_id, split, label, image) and the 8-bit PNGs
    into ``out_dir`` (a folder being built: ``simgap export-mask`` swaps it in whole)."""
    write_inputs(out_dir, image_set.images[torch.tensor(plan["input_id"].to_numpy())], plan)


def write_inputs(out_dir: Path, images: torch.Tensor, plan: pd.DataFrame) -> None:
    """``inputs.csv`` of ``plan`` (capture order) and ``inputs/<input_id>.png``: ``images``
    (M, 1, n, n) in [0, 1], plan order, as the 8-bit levels the display shows."""
    (out_dir / "inputs").mkdir(parents=True, exist_ok=True)
    levels = 2**DISPLAY_BITS - 1
    pixels = torch.round(images.clamp(0, 1) * levels).to(torch.uint8)[:, 0].numpy()
    names = [f"inputs/{int(i):06d}.png" for i in plan["input_id"]]
    for rel, arr in zip(names, pixels):
        Image.fromarray(arr, mode="L").save(out_dir / rel)
    columns = ["capture_index", "input_id", "split", "label"]
    plan[columns].assign(image=names).to_csv(out_dir / "inputs.csv", index=False)


def exported_plan(path: str | Path, image_set) -> pd.DataFrame:
    """The capture plan an ``inputs.csv`` of :func:`export_inputs` lists (its inverse): those
    inputs, in those splits, at those capture indices.  Its labels must be ``image_set``'s."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise SimgapError(f"{path}: not a readable CSV ({type(exc).__name__})") from None
    missing = [c for c in ("capture_index", "input_id", "split") if c not in df.columns]
    if missing:
        raise SimgapError(f"{path}: no column {', '.join(missing)} (an inputs.csv of export-mask)")
    index, ids = _id_column(df, "capture_index", path), _id_column(df, "input_id", path)
    if len(ids) and ids.max() >= len(image_set):
        raise SimgapError(f"{path}: input_id {ids.max()} is not in {image_set.source} "
                          f"({len(image_set)} images; the --source and --limit of the export?)")
    bad = ~df["split"].isin(SPLITS)
    if bad.any():
        raise SimgapError(f"{path}: split '{df['split'][bad].iloc[0]}' is not pool/val/test")
    labels = image_set.labels[torch.from_numpy(ids.copy())].numpy()
    if "label" in df.columns and not np.array_equal(_id_column(df, "label", path, False), labels):
        raise SimgapError(f"{path}: its labels are not those of {image_set.source} "
                          "(exported from another source or --limit?)")
    plan = pd.DataFrame({"capture_index": index, "input_id": ids, "split": df["split"].to_numpy(),
                         "label": labels})  # fmt: skip
    return plan.sort_values("capture_index", kind="stable").reset_index(drop=True)


def _id_column(df: pd.DataFrame, column: str, path: Path, unique: bool = True) -> np.ndarray:
    values = pd.to_numeric(df[column].str.strip(), errors="coerce")
    if values.isna().any() or (values < 0).any() or (values != values.round()).any():
        raise SimgapError(f"{path}: {column}: every value must be a non-negative integer")
    if unique and values.duplicated().any():
        raise SimgapError(f"{path}: {column} {int(values[values.duplicated()].iloc[0])} repeats")
    return values.to_numpy(dtype=np.int64)
