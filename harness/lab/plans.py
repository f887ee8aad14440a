"""Which inputs a lab shows, in which order, and capturing them through a bench into a capture set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from harness.data import split_indices
from harness.errors import SimgapError
from harness.lab.bench import EmulatedBench, _splitmix64
from harness.lab.captures import write_capture_set
from harness.optics import FourF

SIM_SPLIT = {"train": 0.7, "val": 0.1, "test": 0.2}  # sources without an official test part
OFFICIAL_VAL = 0.1  # share of an official train part kept for sim val
CAPTURE_SIZES = {"pool": 2000, "val": 500, "test": 1000}
_CAPTURE_FROM = {"pool": "train", "val": "val", "test": "test"}


def source_splits(image_set, seed: int = 0) -> dict[str, torch.Tensor]:
    """Simulation splits ``train`` / ``val`` / ``test`` of a source, as input ids.

    A source with an official train/test partition (``meta["train"]`` rows first, then
    ``meta["test"]``; Fashion-MNIST) keeps its test rows as test and splits its train rows
    stratified into train / val (1 − OFFICIAL_VAL, OFFICIAL_VAL); any other source is split
    stratified into SIM_SPLIT.  Deterministic given ``seed`` (harness.data.split_indices).
    """
    n_train = image_set.meta.get("train")
    if n_train is None:
        return split_indices(image_set.labels, SIM_SPLIT, seed)
    rows = torch.arange(int(n_train))
    part = split_indices(
        image_set.labels[rows], {"train": 1 - OFFICIAL_VAL, "val": OFFICIAL_VAL}, seed
    )
    test = torch.arange(int(n_train), len(image_set))
    return {"train": rows[part["train"]], "val": rows[part["val"]], "test": test}


def capture_inputs(image_set, sizes: dict[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Input ids to capture: ``pool`` ⊂ sim train, ``val`` ⊂ sim val, ``test`` ⊂ sim test.

    Each is a class-stratified draw of ``sizes[split]`` inputs from its sim split
    (:func:`source_splits` with the same ``seed``), so a model trained in simulation on the sim
    train split never saw the real val / test inputs.
    """
    sim = source_splits(image_set, seed)
    out = {}
    for split, count in sizes.items():
        if split not in _CAPTURE_FROM:
            raise SimgapError(f"sizes: '{split}' is not one of {', '.join(_CAPTURE_FROM)}")
        ids = sim[_CAPTURE_FROM[split]]
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise SimgapError(f"--{split}: must be a non-negative integer, got {count!r}")
        if count > len(ids):
            raise SimgapError(
                f"--{split}: {count} inputs asked but the {_CAPTURE_FROM[split]} split of "
                f"{image_set.source} holds {len(ids)}"
            )
        pick = split_indices(image_set.labels[ids], {split: int(count)}, seed)[split]
        out[split] = ids[pick]
    return out


def capture_plan(image_set, splits: dict[str, torch.Tensor], seed: int = 0) -> pd.DataFrame:
    """The order in which inputs are shown: ``capture_index, input_id, split, label`` rows.

    Splits are interleaved in a random order (seeded), so the bench drift does not line up
    with the split of an input.
    """
    parts = [(s, torch.as_tensor(ids, dtype=torch.long).reshape(-1)) for s, ids in splits.items()]
    for s, _ in parts:
        if s not in _CAPTURE_FROM:
            raise SimgapError(f"splits: '{s}' is not one of {', '.join(_CAPTURE_FROM)}")
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
) -> Path:
    """Capture the inputs of ``splits`` through ``bench`` and write a capture set to ``out_dir``.

    Inputs are shown in :func:`capture_plan` order; capture index = position in that order,
    capture id of a frame = capture_index · k + channel.  ``info`` is added to bench.json.
    """
    if image_set.size != bench.config.n:
        raise SimgapError(
            f"images: size {image_set.size} does not match the optics n={bench.config.n}"
        )
    plan = capture_plan(image_set, splits, order_seed)
    optics = bench.optics(encoder_or_mask)
    k, H = optics.channels, bench.frame_size
    frames = torch.empty(len(plan), k, H, H)
    ids = torch.tensor(plan["input_id"].to_numpy())
    index = torch.tensor(plan["capture_index"].to_numpy())
    device = optics.phase.device
    with (
        torch.no_grad(),
        tqdm(total=len(plan), desc="capturing", unit="input", disable=not progress) as bar,
    ):
        for chunk in torch.arange(len(plan)).split(max(1, int(batch_size))):
            images = image_set.images[ids[chunk]].to(device)
            frames[chunk] = bench._capture(optics, images, index[chunk]).cpu()
            bar.update(len(chunk))
    bench_info = {
        "bench": bench.parameters(),
        "seed": bench.seed,
        "preset": bench.preset,
        "source": image_set.source,
        "origin": image_set.origin,
        "size": image_set.size,
        "classes": list(image_set.classes),
        "inputs": {
            "per_split": {s: int((plan["split"] == s).sum()) for s in _CAPTURE_FROM},
            "order_seed": int(order_seed),
            "capture_index": "position in the capture order (bench drift clock)",
        },
        **(info or {}),
    }
    capture_ids = index[:, None] * k + torch.arange(k)[None, :]
    return write_capture_set(
        out_dir,
        frames,
        plan["input_id"].to_numpy(),
        plan["split"].tolist(),
        plan["label"].to_numpy(),
        image_set.classes,
        bench_info,
        optics.phase.detach(),
        fmt=fmt,
        bit_depth=int(bench.fixed["bit_depth"]),
        progress=progress,
        overwrite=overwrite,
        capture_ids=capture_ids.numpy(),
    )
