"""Reading and validating capture sets (:mod:`harness.lab.captures` describes the format).

Every rule breaks with a one-line :class:`~harness.errors.SimgapError` that names the file (and
the manifest line): missing files, bad JSON, unknown splits, an input in two splits, missing or
extra channels, paths leaving the folder, frames of the wrong size, bit depth or type, NaN.
Also: pairing a capture set with the ``inputs.csv`` of ``simgap export-mask``.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd
import torch

from harness.errors import SimgapError, one_line
from harness.files import read_json_object
from harness.lab.calibration import read_calibration
from harness.lab.captures import BENCH_JSON, COLUMNS, MANIFEST, MASK_NPZ, SPLITS, CaptureSet
from harness.lab.frames import load_frames

_INT_COLUMNS = ("input_id", "label", "channel")


def validate_capture_set(root: str | Path) -> dict:
    """Check every file of a capture set (all frames decoded); return a summary dict."""
    summary, _ = check_capture_set(Path(root))
    return summary


def read_capture_set(root: str | Path, splits=None) -> CaptureSet:
    """Validate a capture set and load its frames (only those of ``splits`` if given).

    The manifest, bench.json and mask.npz are always checked as a whole (cross-split rules
    included); frames are decoded and checked for the requested splits.
    """
    root = Path(root)
    if isinstance(splits, str):
        splits = [splits]
    if splits is not None:
        bad = [s for s in splits if s not in SPLITS]
        if bad:
            raise SimgapError(f"splits: '{bad[0]}' is not one of {', '.join(SPLITS)}")
    _, (frames, inputs, meta) = check_capture_set(root, splits)
    return CaptureSet(
        frames=torch.from_numpy(frames),
        input_ids=torch.tensor(inputs["input_id"].to_numpy(), dtype=torch.int64),
        labels=torch.tensor(inputs["label"].to_numpy(), dtype=torch.int64),
        splits=inputs["split"].to_numpy(dtype=object).astype(str),
        classes=meta["classes"],
        bench_info=meta["bench"],
        mask_phase=torch.from_numpy(meta["phase"]),
        root=root,
        manifest=meta["manifest"],
        calibration=meta["calibration"],
    )


def check_capture_set(root: Path, splits=None):
    """Validate everything, decoding the frames of ``splits`` (all if None).

    Returns (summary, (frames, inputs table of those splits, meta)).
    """
    if not root.is_dir():
        raise SimgapError(f"{root}: capture-set folder not found")
    bench, capture = _read_bench(root)
    classes = capture["classes"]
    df = _read_manifest(root)
    k = _check_rows(root, df, classes, capture)
    phase = _read_mask(root, k)
    inputs = _inputs_table(df)
    calibration = read_calibration(root, bench)
    wanted = inputs if splits is None else inputs[inputs["split"].isin(list(splits))]
    wanted = wanted.reset_index(drop=True)
    rows = df[df["input_id"].isin(set(wanted["input_id"]))]
    size = tuple(capture["frame_size"]) if capture.get("frame_size") is not None else None
    bit_depth = capture.get("bit_depth")
    kind = None
    if len(rows):
        frames, size, kind, bit_depth = load_frames(root, rows, wanted, k, capture)
    else:
        h, w = size or (0, 0)
        frames = np.zeros((0, k, h, w), dtype=np.float32)
    summary = {
        "root": str(root),
        "n_frames": len(df),
        "n_inputs": len(inputs),
        "channels": k,
        "frames_per_input": k,
        "frame_size": list(size) if size else None,
        "bit_depth": ("float32" if kind == "float" else bit_depth),
        "frame_format": capture.get("frame_format"),
        "classes": classes,
        "inputs_per_split": {s: int((inputs["split"] == s).sum()) for s in SPLITS},
        "inputs_per_split_and_class": _per_split_and_class(inputs, classes),
        "mask_shape": list(phase.shape),
        "calibration": {name: len(frames) for name, frames in calibration.items()},
        "frames_checked": True,
    }
    meta = {
        "classes": classes,
        "bench": bench,
        "phase": phase,
        "manifest": rows.reset_index(drop=True),
        "calibration": calibration,
    }
    return summary, (frames, wanted, meta)


def _inputs_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per input (input_id, split, label), ordered by split then input id."""
    order = {s: i for i, s in enumerate(SPLITS)}
    inputs = (
        df.groupby("input_id", sort=True)
        .agg(split=("split", "first"), label=("label", "first"))
        .reset_index()
    )
    inputs["_order"] = inputs["split"].map(order)
    inputs = inputs.sort_values(["_order", "input_id"], kind="stable").drop(columns="_order")
    return inputs.reset_index(drop=True)


def _per_split_and_class(inputs: pd.DataFrame, classes: list[str]) -> dict:
    counts = pd.crosstab(inputs["split"], inputs["label"])
    return {
        s: {classes[int(lab)]: int(n) for lab, n in counts.loc[s].items() if n}
        for s in SPLITS
        if s in counts.index
    }


def _read_bench(root: Path) -> tuple[dict, dict]:
    path = root / BENCH_JSON
    if not path.is_file():
        raise SimgapError(f"{path}: not found")
    bench = read_json_object(path)
    capture = bench.get("capture")
    if not isinstance(capture, dict):
        raise SimgapError(f"{path}: missing the 'capture' object (with 'classes')")
    classes = capture.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise SimgapError(f"{path}: capture.classes must be a non-empty list of class names")
    size = capture.get("frame_size")
    if size is not None and not (
        isinstance(size, list) and len(size) == 2 and all(_is_pos_int(v) for v in size)
    ):
        raise SimgapError(f"{path}: capture.frame_size must be [height, width], got {size!r}")
    channels = capture.get("channels")
    if channels is not None and not _is_pos_int(channels):
        raise SimgapError(f"{path}: capture.channels must be a positive integer, got {channels!r}")
    bits = capture.get("bit_depth")
    if bits is not None and not (_is_pos_int(bits) and (bits <= 16 or bits == 32)):
        raise SimgapError(f"{path}: capture.bit_depth must be 1..16 or 32, got {bits!r}")
    return bench, capture


def _is_pos_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _read_csv(path: Path, required) -> pd.DataFrame:
    """A CSV read as strings (headers stripped) that must hold the ``required`` columns."""
    if not path.is_file():
        raise SimgapError(f"{path}: not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SimgapError(f"{path}: not a readable CSV ({one_line(exc)})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise SimgapError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def _read_manifest(root: Path) -> pd.DataFrame:
    path = root / MANIFEST
    df = _read_csv(path, COLUMNS)
    if df.empty:
        raise SimgapError(f"{path}: has no frames")
    df = df[list(COLUMNS)].copy()
    for col in COLUMNS:
        df[col] = df[col].str.strip()
    for col in _INT_COLUMNS:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | (values != values.round()) | (values < 0)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise SimgapError(
                f"{path} line {i + 2}: {col} '{df[col].iloc[i]}' is not a non-negative integer"
            )
        df[col] = values.astype(np.int64)
    return df


def _check_rows(root: Path, df: pd.DataFrame, classes: list[str], capture: dict) -> int:
    """Row-level rules; returns the channel count k and adds the absolute ``file`` column."""
    path = root / MANIFEST

    def line(i) -> str:
        return f"{path} line {int(i) + 2}"

    _check_ids(df, path, line)
    _check_values(df, classes, path, line)
    k = _check_channels(df, capture, path, line)
    _resolve_files(root, df, line)
    return k


def _check_ids(df: pd.DataFrame, path: Path, line) -> None:
    empty = df["capture_id"] == ""
    if empty.any():
        raise SimgapError(f"{line(np.flatnonzero(empty)[0])}: empty capture_id")
    dup = df["capture_id"].duplicated(keep=False)
    if dup.any():
        where = np.flatnonzero(dup)
        cid = df["capture_id"].iloc[where[0]]
        lines = [i + 2 for i in np.flatnonzero(df["capture_id"] == cid)]
        raise SimgapError(f"{path}: duplicate capture_id '{cid}' (lines {lines[0]} and {lines[1]})")


def _check_values(df: pd.DataFrame, classes: list[str], path: Path, line) -> None:
    """Splits and labels: known values, one split and one label per input."""
    bad = ~df["split"].isin(SPLITS)
    if bad.any():
        i = np.flatnonzero(bad)[0]
        raise SimgapError(
            f"{line(i)}: split '{df['split'].iloc[i]}' is not one of {', '.join(SPLITS)}"
        )
    bad = df["label"] >= len(classes)
    if bad.any():
        i = np.flatnonzero(bad)[0]
        raise SimgapError(
            f"{line(i)}: label {df['label'].iloc[i]} is outside the {len(classes)} classes "
            f"of {BENCH_JSON} (0..{len(classes) - 1})"
        )
    nsplit = df.groupby("input_id")["split"].nunique()
    if (nsplit > 1).any():
        iid = int(nsplit.index[np.flatnonzero(nsplit.to_numpy() > 1)[0]])
        names = sorted(set(df.loc[df["input_id"] == iid, "split"]), key=SPLITS.index)
        raise SimgapError(f"{path}: input_id {iid} appears in splits {' and '.join(names)}")
    nlab = df.groupby("input_id")["label"].nunique()
    if (nlab > 1).any():
        iid = int(nlab.index[np.flatnonzero(nlab.to_numpy() > 1)[0]])
        raise SimgapError(f"{path}: input_id {iid} has frames with different labels")


def _check_channels(df: pd.DataFrame, capture: dict, path: Path, line) -> int:
    """Exactly one frame per (input, channel) for channels 0..k-1; returns k."""
    pair_dup = df.duplicated(["input_id", "channel"], keep="first")
    if pair_dup.any():
        i = np.flatnonzero(pair_dup)[0]
        raise SimgapError(
            f"{line(i)}: second frame for input_id {df['input_id'].iloc[i]} "
            f"channel {df['channel'].iloc[i]}"
        )
    k = capture.get("channels")
    source = f"{BENCH_JSON} capture.channels"
    if k is None:
        k = int(df["channel"].max()) + 1
        source = "the largest channel in the manifest"
    bad = df["channel"] >= k
    if bad.any():
        i = np.flatnonzero(bad)[0]
        raise SimgapError(f"{line(i)}: channel {df['channel'].iloc[i]} >= {k} channels ({source})")
    count = df.groupby("input_id")["channel"].count()
    if (count != k).any():
        iid = int(count.index[np.flatnonzero(count.to_numpy() != k)[0]])
        have = sorted(df.loc[df["input_id"] == iid, "channel"].tolist())
        raise SimgapError(
            f"{path}: input_id {iid} has {len(have)} frame(s) (channels {have}); "
            f"expected {k} (channels 0..{k - 1}, {source})"
        )
    return int(k)


def _resolve_files(root: Path, df: pd.DataFrame, line) -> None:
    """Add the ``file`` column: each path inside the folder, each frame its own file."""
    root_s, real_root = str(root), os.path.realpath(root)
    df["file"] = [_safe_path(root_s, real_root, rel, line(i)) for i, rel in enumerate(df["path"])]
    same = df["file"].map(os.path.realpath).duplicated(keep=False)
    if same.any():
        first, second = np.flatnonzero(same)[:2]
        raise SimgapError(
            f"{line(second)}: path '{df['path'].iloc[second]}' is the same file as line "
            f"{first + 2}; each frame needs its own file"
        )


def _safe_path(root: str, real_root: str, rel: str, where: str) -> str:
    """``root/rel`` as a string if ``rel`` is relative and stays inside ``root`` (symlinks too)."""
    if not rel:
        raise SimgapError(f"{where}: empty path")
    if (
        PurePosixPath(rel).is_absolute()
        or PureWindowsPath(rel).is_absolute()
        or PureWindowsPath(rel).drive
    ):
        raise SimgapError(f"{where}: path '{rel}' is absolute; it must be relative to the folder")
    parts = rel.replace("\\", "/").split("/")
    if ".." in parts:
        raise SimgapError(f"{where}: path '{rel}' leaves the capture-set folder")
    full = os.path.join(root, *parts)
    real = os.path.realpath(full)
    if not real.startswith(real_root + os.sep):
        raise SimgapError(
            f"{where}: path '{rel}' leaves the capture-set folder (through a symlink)"
        )
    return full


def _read_mask(root: Path, k: int) -> np.ndarray:
    path = root / MASK_NPZ
    if not path.is_file():
        raise SimgapError(f"{path}: not found")
    if not zipfile.is_zipfile(path):
        raise SimgapError(f"{path}: not a .npz archive (save it with numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "phase" not in npz.files:
                raise SimgapError(f"{path}: no 'phase' array (has {sorted(npz.files)})")
            phase = np.asarray(npz["phase"])
    except SimgapError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise SimgapError(f"{path}: not a readable .npz file ({one_line(exc)})") from None
    if phase.ndim != 3 or phase.shape[1] != phase.shape[2]:
        raise SimgapError(f"{path}: phase must have shape (k, N, N), got {phase.shape}")
    if phase.shape[0] != k:
        raise SimgapError(f"{path}: phase has {phase.shape[0]} masks but frames have {k} channels")
    if not np.issubdtype(phase.dtype, np.floating) or not np.isfinite(phase).all():
        raise SimgapError(f"{path}: phase must be finite floats")
    return phase.astype(np.float32)


def pair_with_inputs(root: str | Path, inputs_csv: str | Path) -> dict:
    """Compare a capture set with an ``inputs.csv`` (input_id, split) from ``export-mask``.

    Returns counts of listed inputs with / without frames (per split), the missing ids and the
    captured inputs not in the list.  A listed input captured under another split is an error.
    """
    root, inputs_csv = Path(root), Path(inputs_csv)
    listed = _read_inputs_csv(inputs_csv)
    df = _read_manifest(root)
    captured = df.groupby("input_id")["split"].first()
    joined = listed.join(captured.rename("captured_split"), on="input_id")
    clash = joined["captured_split"].notna() & (joined["captured_split"] != joined["split"])
    if clash.any():
        r = joined[clash].iloc[0]
        raise SimgapError(
            f"{inputs_csv}: input_id {r['input_id']} is listed in split {r['split']} but "
            f"captured in split {r['captured_split']} ({root / MANIFEST})"
        )
    has = joined["captured_split"].notna()
    extra = sorted(set(captured.index) - set(listed["input_id"]))
    return {
        "listed": len(listed),
        "with_frames": int(has.sum()),
        "without_frames": int((~has).sum()),
        "missing_ids": joined.loc[~has, "input_id"].astype(int).tolist(),
        "per_split": {
            s: {
                "listed": int((listed["split"] == s).sum()),
                "with_frames": int((has & (joined["split"] == s)).sum()),
            }
            for s in SPLITS
        },
        "not_listed_ids": [int(i) for i in extra],
    }


def _read_inputs_csv(path: Path) -> pd.DataFrame:
    df = _read_csv(path, ("input_id", "split"))
    ids = pd.to_numeric(df["input_id"].str.strip(), errors="coerce")
    bad = ids.isna() | (ids != ids.round()) | (ids < 0)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise SimgapError(f"{path} line {i + 2}: input_id '{df['input_id'].iloc[i]}' is not an int")
    split = df["split"].str.strip()
    bad = ~split.isin(SPLITS)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise SimgapError(f"{path} line {i + 2}: split '{split.iloc[i]}' is not pool/val/test")
    out = pd.DataFrame({"input_id": ids.astype(np.int64), "split": split})
    if out["input_id"].duplicated().any():
        iid = int(out.loc[out["input_id"].duplicated(), "input_id"].iloc[0])
        raise SimgapError(f"{path}: input_id {iid} listed twice")
    return out
