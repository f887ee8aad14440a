"""Capture sets: the on-disk format of real (or emulated-bench) camera frames.

A capture set is a folder::

    manifest.csv    one row per frame: capture_id, input_id, split, label, channel, path
    frames/{split}/{input_id:06d}_c{channel}.png   (or .tif) one single-channel frame per file
    bench.json      what produced the set (free-form) + a ``"capture"`` block (see below)
    mask.npz        ``phase``: float (k, N, N) radians, the phase masks shown on the SLM

Manifest columns: ``capture_id`` unique per frame (string or int); ``input_id`` the index of the
input image in its source; ``split`` one of pool / val / test (an input lives in one split only);
``label`` an int index into ``classes``; ``channel`` 0..k-1 (every input has exactly one frame per
channel); ``path`` relative to the folder and inside it (no ``..`` escapes, no absolute paths,
no symlinks pointing out).

``bench.json`` is a JSON object.  Its ``"capture"`` block describes the frames:
``classes`` (list of class names, required), and optionally ``frame_size`` [H, W], ``channels``
k, ``bit_depth`` and ``frame_format`` ("png" / "tiff").  Everything else in bench.json is free
(bench seed, preset, parameters, source name, ...) and is never read by training code.

Frames are single-channel 8/16-bit integer PNG or TIFF, or float32 TIFF with values in [0, 1].
An integer frame with value v is read as v / (2**bit_depth - 1), with ``bit_depth`` from the
capture block (default: the container's bits, 8 or 16); values above full scale are an error.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from harness.errors import SimgapError
from harness.files import replace_dir

SPLITS = ("pool", "val", "test")
COLUMNS = ("capture_id", "input_id", "split", "label", "channel", "path")
MANIFEST = "manifest.csv"
BENCH_JSON = "bench.json"
MASK_NPZ = "mask.npz"
FORMAT_VERSION = 1
FRAME_SUFFIXES = {".png": "png", ".tif": "tiff", ".tiff": "tiff"}
_INT_COLUMNS = ("input_id", "label", "channel")
_THREADS = max(1, min(8, (os.cpu_count() or 1) * 2))


# --------------------------------------------------------------------------------------------
# Data class
# --------------------------------------------------------------------------------------------


@dataclass
class CaptureSet:
    """Frames of a capture set grouped by input: one row per input id, channels stacked."""

    frames: torch.Tensor  # (M, k, H, W) float32 in [0, 1]
    input_ids: torch.Tensor  # (M,) int64
    labels: torch.Tensor  # (M,) int64
    splits: np.ndarray  # (M,) str, each in SPLITS
    classes: list[str]
    bench_info: dict  # the whole bench.json
    mask_phase: torch.Tensor  # (k, N, N) float32 radians
    root: Path
    manifest: pd.DataFrame = field(repr=False)  # the validated manifest rows of these inputs

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def channels(self) -> int:
        return int(self.frames.shape[1])

    @property
    def frame_size(self) -> tuple[int, int]:
        return int(self.frames.shape[2]), int(self.frames.shape[3])

    def subset(self, split: str) -> CaptureSet:
        """The inputs of one split (pool, val or test), in input-id order."""
        if split not in SPLITS:
            raise SimgapError(f"split: '{split}' is not one of {', '.join(SPLITS)}")
        keep = np.flatnonzero(self.splits == split)
        index = torch.from_numpy(keep)
        ids = set(self.input_ids[index].tolist())
        rows = self.manifest[self.manifest["input_id"].isin(ids)].reset_index(drop=True)
        return replace(
            self,
            frames=self.frames[index],
            input_ids=self.input_ids[index],
            labels=self.labels[index],
            splits=self.splits[keep],
            manifest=rows,
        )

    @property
    def pool(self) -> CaptureSet:
        return self.subset("pool")

    @property
    def val(self) -> CaptureSet:
        return self.subset("val")

    @property
    def test(self) -> CaptureSet:
        return self.subset("test")


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


def frame_name(split: str, input_id: int, channel: int, fmt: str = "png") -> str:
    """Relative path of one frame, e.g. ``frames/test/000042_c1.png``."""
    suffix = {"png": "png", "tiff": "tif"}[fmt]
    return f"frames/{split}/{int(input_id):06d}_c{int(channel)}.{suffix}"


def capture_info(
    classes: list[str],
    frame_size: tuple[int, int] | None = None,
    channels: int | None = None,
    bit_depth: int | None = None,
    frame_format: str | None = None,
) -> dict:
    """The ``"capture"`` block of bench.json (also what ``export-mask`` can pre-fill for a lab)."""
    block = {"format_version": FORMAT_VERSION, "classes": [str(c) for c in classes]}
    if frame_size is not None:
        block["frame_size"] = [int(v) for v in frame_size]
    if channels is not None:
        block["channels"] = int(channels)
    if bit_depth is not None:
        block["bit_depth"] = int(bit_depth)
        block["dtype"] = "float32" if bit_depth == 32 else "uint16"
    if frame_format is not None:
        block["frame_format"] = frame_format
    return block


def write_capture_set(
    out_dir: str | Path,
    frames: torch.Tensor | np.ndarray,
    input_ids,
    splits,
    labels,
    classes: list[str],
    bench_info: dict,
    mask_phase: torch.Tensor | np.ndarray,
    fmt: str = "png",
    bit_depth: int = 16,
    progress: bool = True,
    overwrite: bool = False,
    capture_ids=None,
) -> Path:
    """Write a capture set atomically (temp folder next to ``out_dir``, then rename).

    ``frames`` (M, k, H, W) in [0, 1]; ``input_ids``, ``splits``, ``labels`` length M, one entry
    per input.  Integer formats store round(x · (2**bit_depth − 1)) in a 16-bit container
    (``bit_depth`` 1..16); ``fmt="tiff", bit_depth=32`` stores float32 exactly.  ``capture_ids``
    (M, k) defaults to the running index m·k + c.  Refuses a non-empty ``out_dir`` unless
    ``overwrite``.  Returns the folder.
    """
    out_dir = Path(out_dir)
    arr = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if arr.ndim != 4:
        raise ValueError(f"frames: expected (M, k, H, W), got shape {arr.shape}")
    M, k, H, W = arr.shape
    if M == 0 or k == 0:
        raise ValueError(f"frames: nothing to write (shape {arr.shape})")
    ids = _as_int_array(input_ids, "input_ids", M)
    labs = _as_int_array(labels, "labels", M)
    spl = np.asarray([str(s) for s in _to_list(splits)], dtype=object)
    if spl.shape != (M,):
        raise ValueError(f"splits: expected {M} entries, got {spl.shape[0]}")
    bad = sorted(set(spl) - set(SPLITS))
    if bad:
        raise ValueError(f"splits: {bad} not in {SPLITS}")
    if len(np.unique(ids)) != M:
        raise ValueError("input_ids: must be unique (one row per input)")
    if (ids < 0).any():
        raise ValueError("input_ids: must be >= 0")
    classes = [str(c) for c in classes]
    if labs.size and (labs.min() < 0 or labs.max() >= len(classes)):
        raise ValueError(f"labels: must be in 0..{len(classes) - 1}")
    if fmt not in ("png", "tiff"):
        raise ValueError(f"fmt: '{fmt}' is not png or tiff")
    is_float = bit_depth == 32
    if is_float and fmt != "tiff":
        raise ValueError("bit_depth=32 (float32) needs fmt='tiff'")
    if not is_float and not 1 <= bit_depth <= 16:
        raise ValueError(f"bit_depth: {bit_depth} not in 1..16 (or 32 for float TIFF)")
    if not np.isfinite(arr).all() or (arr.size and (arr.min() < 0 or arr.max() > 1)):
        raise ValueError("frames: values must be finite and in [0, 1]")
    phase = (
        mask_phase.detach().cpu().numpy() if isinstance(mask_phase, torch.Tensor) else mask_phase
    )
    phase = np.asarray(phase, dtype=np.float32)
    if phase.ndim == 2:
        phase = phase[None]
    if phase.ndim != 3 or phase.shape[0] != k:
        raise ValueError(f"mask_phase: expected ({k}, N, N), got shape {phase.shape}")
    if capture_ids is None:
        cids = np.arange(M * k).reshape(M, k)
    else:
        cids = np.asarray(capture_ids)
        if cids.shape != (M, k) or len(np.unique(cids.astype(str))) != M * k:
            raise ValueError(f"capture_ids: expected ({M}, {k}) unique values")
    info = dict(bench_info)
    if "capture" in info:
        raise ValueError("bench_info: key 'capture' is reserved for the capture-set block")
    info["capture"] = capture_info(classes, (H, W), k, bit_depth, fmt)
    info["capture"].update(n_inputs=M, n_frames=M * k)
    try:
        bench_text = json.dumps(info, indent=2, sort_keys=False, default=_json_default)
    except TypeError as exc:
        raise ValueError(f"bench_info: not JSON-serialisable ({exc})") from None

    if out_dir.exists():
        if not out_dir.is_dir():
            raise SimgapError(f"{out_dir}: exists and is not a folder")
        if any(out_dir.iterdir()):
            if not overwrite:
                raise SimgapError(f"{out_dir}: folder exists and is not empty (use overwrite)")
            if not (out_dir / MANIFEST).is_file():
                raise SimgapError(
                    f"{out_dir}: not a capture set (no {MANIFEST}); refusing to overwrite it"
                )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for s in sorted(set(spl)):
            (tmp / "frames" / s).mkdir(parents=True)
        rows = []
        jobs = []
        for m in range(M):
            for c in range(k):
                rel = frame_name(spl[m], ids[m], c, fmt)
                rows.append((cids[m, c], int(ids[m]), spl[m], int(labs[m]), c, rel))
                jobs.append((tmp / rel, m, c))
        scale = float(2**bit_depth - 1)

        def _write(job):
            path, m, c = job
            x = arr[m, c]
            if is_float:
                _save_frame(path, x.astype(np.float32))
            else:
                _save_frame(path, np.rint(x.astype(np.float64) * scale).astype(np.uint16))

        with (
            ThreadPoolExecutor(_THREADS) as pool,
            tqdm(total=len(jobs), desc="writing frames", unit="frame", disable=not progress) as bar,
        ):
            for _ in pool.map(_write, jobs):
                bar.update()
        pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(tmp / MANIFEST, index=False)
        (tmp / BENCH_JSON).write_text(bench_text + "\n")
        np.savez(tmp / MASK_NPZ, phase=phase)
        _check(tmp, None, load=False)  # manifest / json / mask consistency, no frame decoding
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _save_frame(path: Path, x: np.ndarray) -> None:
    if path.suffix == ".png":
        Image.fromarray(x).save(path, compress_level=1)
    else:
        import tifffile

        tifffile.imwrite(path, x, metadata=None)


def _to_list(values) -> list:
    if isinstance(values, torch.Tensor):
        return values.tolist()
    return list(values)


def _as_int_array(values, name: str, n: int) -> np.ndarray:
    out = np.asarray(_to_list(values))
    if out.shape != (n,):
        raise ValueError(f"{name}: expected {n} entries, got shape {out.shape}")
    if out.size and not np.issubdtype(out.dtype, np.integer):
        raise ValueError(f"{name}: must be integers")
    return out.astype(np.int64)


def _json_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# --------------------------------------------------------------------------------------------
# Reader and validation
# --------------------------------------------------------------------------------------------


def validate_capture_set(root: str | Path) -> dict:
    """Check every file of a capture set (all frames decoded); return a summary dict."""
    summary, _ = _check(Path(root), None, load=True)
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
    _, (frames, inputs, meta) = _check(root, splits, load=True)
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
    )


def _check(root: Path, splits, load: bool):
    """Validate; returns (summary, (frames, inputs table, meta)) with frames None if not load."""
    if not root.is_dir():
        raise SimgapError(f"{root}: capture-set folder not found")
    bench, capture = _read_bench(root)
    classes = capture["classes"]
    df = _read_manifest(root)
    k = _check_rows(root, df, classes, capture)
    phase = _read_mask(root, k)

    # One row per input, ordered by split then input id.
    order = {s: i for i, s in enumerate(SPLITS)}
    inputs = (
        df.groupby("input_id", sort=True)
        .agg(split=("split", "first"), label=("label", "first"))
        .reset_index()
    )
    inputs["_order"] = inputs["split"].map(order)
    inputs = inputs.sort_values(["_order", "input_id"], kind="stable").drop(columns="_order")
    inputs = inputs.reset_index(drop=True)

    wanted = inputs if splits is None else inputs[inputs["split"].isin(list(splits))]
    wanted = wanted.reset_index(drop=True)
    rows = df[df["input_id"].isin(set(wanted["input_id"]))]
    frames = None
    size = tuple(capture["frame_size"]) if capture.get("frame_size") is not None else None
    bit_depth = capture.get("bit_depth")
    kind = None
    if load and len(rows):
        frames, size, kind, bit_depth = _load_frames(root, rows, wanted, k, capture)
    elif load:
        h, w = size or (0, 0)
        frames = np.zeros((0, k, h, w), dtype=np.float32)

    counts = pd.crosstab(inputs["split"], inputs["label"])
    per_class = {
        s: {classes[int(lab)]: int(n) for lab, n in counts.loc[s].items() if n}
        for s in SPLITS
        if s in counts.index
    }
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
        "inputs_per_split_and_class": per_class,
        "mask_shape": list(phase.shape),
        "frames_checked": bool(load),
    }
    meta = {
        "classes": classes,
        "bench": bench,
        "phase": phase,
        "manifest": rows.reset_index(drop=True),
    }
    return summary, (frames, wanted, meta)


def _read_bench(root: Path) -> tuple[dict, dict]:
    path = root / BENCH_JSON
    if not path.is_file():
        raise SimgapError(f"{path}: not found")
    try:
        bench = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SimgapError(f"{path}: not valid JSON ({_one_line(exc)})") from None
    if not isinstance(bench, dict):
        raise SimgapError(f"{path}: must hold a JSON object")
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
        raise SimgapError(f"{path}: not a readable CSV ({_one_line(exc)})") from None
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
    """Row-level rules; returns the channel count k."""
    path = root / MANIFEST

    def line(i) -> str:
        return f"{path} line {int(i) + 2}"

    empty = df["capture_id"] == ""
    if empty.any():
        raise SimgapError(f"{line(np.flatnonzero(empty)[0])}: empty capture_id")
    dup = df["capture_id"].duplicated(keep=False)
    if dup.any():
        where = np.flatnonzero(dup)
        cid = df["capture_id"].iloc[where[0]]
        lines = [i + 2 for i in np.flatnonzero(df["capture_id"] == cid)]
        raise SimgapError(f"{path}: duplicate capture_id '{cid}' (lines {lines[0]} and {lines[1]})")
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
    root_s, real_root = str(root), os.path.realpath(root)
    df["file"] = [_safe_path(root_s, real_root, rel, line(i)) for i, rel in enumerate(df["path"])]
    same = df["file"].map(os.path.realpath).duplicated(keep=False)
    if same.any():
        first, second = np.flatnonzero(same)[:2]
        raise SimgapError(
            f"{line(second)}: path '{df['path'].iloc[second]}' is the same file as line "
            f"{first + 2}; each frame needs its own file"
        )
    return int(k)


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
        raise SimgapError(f"{path}: not a readable .npz file ({_one_line(exc)})") from None
    if phase.ndim != 3 or phase.shape[1] != phase.shape[2]:
        raise SimgapError(f"{path}: phase must have shape (k, N, N), got {phase.shape}")
    if phase.shape[0] != k:
        raise SimgapError(f"{path}: phase has {phase.shape[0]} masks but frames have {k} channels")
    if not np.issubdtype(phase.dtype, np.floating) or not np.isfinite(phase).all():
        raise SimgapError(f"{path}: phase must be finite floats")
    return phase.astype(np.float32)


_GRAY_MODES = ("L", "I;16", "I;16B", "I;16L", "I", "F")


def _decode(path: Path) -> np.ndarray:
    """Decode one frame to a 2-D array (uint8 / uint16 / float); raise SimgapError if bad.

    PNG goes through Pillow; TIFF through tifffile (faster), then Pillow if tifffile fails.
    """
    kind = FRAME_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise SimgapError(f"{path}: unsupported frame type '{path.suffix}' (use .png, .tif, .tiff)")
    if not path.is_file():
        raise SimgapError(f"{path}: frame file not found")
    if kind == "tiff":
        arr = _decode_tiff(path)
    else:
        try:
            arr = _decode_pillow(path)
        except _NotGray as exc:
            raise SimgapError(f"{path}: image mode '{exc}' is not single-channel gray") from None
        except SimgapError:
            raise
        except Exception as exc:  # noqa: BLE001 - decoders raise assorted errors on garbage
            raise SimgapError(f"{path}: not a readable image ({_one_line(exc, path)})") from None
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise SimgapError(
            f"{path}: frame has shape {arr.shape}; expected one single-channel 2-D image"
        )
    if arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype == np.int32:  # Pillow mode 'I' (16-bit PNG on some versions)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise SimgapError(f"{path}: integer values outside 0..65535")
        arr = arr.astype(np.uint16)
    if arr.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        raise SimgapError(f"{path}: pixel type {arr.dtype} is not uint8, uint16 or float32")
    return arr


def _decode_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        return tifffile.imread(path)
    except Exception as first:  # noqa: BLE001 - decoders raise assorted errors on garbage
        try:
            return _decode_pillow(path)
        except SimgapError:
            raise
        except _NotGray as exc:
            raise SimgapError(f"{path}: image mode '{exc}' is not single-channel gray") from None
        except Exception:  # noqa: BLE001
            raise SimgapError(f"{path}: not a readable image ({_one_line(first, path)})") from None


class _NotGray(Exception):
    """Pillow opened the file but its mode is not a gray mode we read."""


def _decode_pillow(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        if getattr(im, "n_frames", 1) > 1:
            raise SimgapError(f"{path}: has {im.n_frames} pages; expected one frame per file")
        mode = im.mode
        if mode not in _GRAY_MODES:
            raise _NotGray(mode)
        im.load()
        return np.asarray(im)


def _load_frames(root: Path, rows: pd.DataFrame, wanted: pd.DataFrame, k: int, capture: dict):
    """Decode the frames of ``rows`` into (M, k, H, W) float32 in the order of ``wanted``.

    Returns (frames, (H, W), "int" | "float", bit depth).
    """
    files = rows["file"].tolist()
    slot_of = {int(iid): m for m, iid in enumerate(wanted["input_id"])}
    slot_m = rows["input_id"].map(slot_of).to_numpy()
    slot_c = rows["channel"].to_numpy()
    size = tuple(capture["frame_size"]) if capture.get("frame_size") is not None else None
    source = f"{BENCH_JSON} capture.frame_size"
    bits = capture.get("bit_depth")
    with ThreadPoolExecutor(_THREADS) as pool:
        arrays = pool.map(lambda f: _decode(Path(f)), files)
        raw = None
        first = None
        container = 0
        for i, arr in enumerate(arrays):  # decode errors surface here, in manifest order
            path = Path(files[i])
            if first is None:
                first = path
                if size is None:
                    size, source = arr.shape, f"the other frames, e.g. {path.relative_to(root)}"
                dtype = np.float32 if arr.dtype.kind == "f" else np.uint16
                raw = np.empty((len(wanted), k, *size), dtype=dtype)
            if (arr.dtype.kind == "f") != (raw.dtype.kind == "f"):
                raise SimgapError(
                    f"{path}: {arr.dtype} frame mixed with {raw.dtype} frames "
                    f"(e.g. {first.relative_to(root)})"
                )
            if arr.shape != tuple(size):
                raise SimgapError(
                    f"{path}: frame size {arr.shape[0]}x{arr.shape[1]} (HxW) differs from "
                    f"{size[0]}x{size[1]} ({source})"
                )
            if arr.dtype.kind != "f":
                itembits = 8 * arr.dtype.itemsize
                container = max(container, itembits)
                if bits == 32:
                    raise SimgapError(
                        f"{path}: {arr.dtype} frame but {BENCH_JSON} says bit_depth 32 (float32)"
                    )
                if bits is not None and bits > itembits:
                    raise SimgapError(
                        f"{path}: {itembits}-bit image but {BENCH_JSON} says bit_depth {bits}"
                    )
            raw[slot_m[i], slot_c[i]] = arr

    def bad_frame(mask: np.ndarray) -> Path:
        m, c = np.argwhere(mask)[0]
        hit = np.flatnonzero((slot_m == m) & (slot_c == c))[0]
        return Path(files[hit])

    if raw.dtype.kind == "f":
        finite = np.isfinite(raw).all(axis=(2, 3))
        if not finite.all():
            raise SimgapError(f"{bad_frame(~finite)}: float frame contains NaN or inf")
        lo, hi = raw.min(axis=(2, 3)), raw.max(axis=(2, 3))
        out_of_range = (lo < 0) | (hi > 1)
        if out_of_range.any():
            m, c = np.argwhere(out_of_range)[0]
            raise SimgapError(
                f"{bad_frame(out_of_range)}: float frame values outside [0, 1] "
                f"(min {lo[m, c]:.4g}, max {hi[m, c]:.4g})"
            )
        return raw, tuple(size), "float", "float32"
    depth = bits if bits is not None else container
    full = 2**depth - 1
    hi = raw.max(axis=(2, 3))
    over = hi > full
    if over.any():
        m, c = np.argwhere(over)[0]
        raise SimgapError(
            f"{bad_frame(over)}: value {int(hi[m, c])} exceeds full scale {full} "
            f"of bit depth {depth}"
        )
    frames = (raw / np.float64(full)).astype(np.float32)
    return frames, tuple(size), "int", depth


def _one_line(exc: BaseException, path: Path | None = None) -> str:
    text = " ".join(str(exc).split())
    if path is not None:
        text = text.replace(f" '{path}'", "").replace(f" {path}", "")
    return (text[:160] + "...") if len(text) > 160 else (text or type(exc).__name__)


# --------------------------------------------------------------------------------------------
# Inputs pairing and CLI
# --------------------------------------------------------------------------------------------


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


def format_summary(summary: dict, pairing: dict | None = None) -> str:
    """Human-readable text of a :func:`validate_capture_set` summary."""
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
    ]
    table = pd.DataFrame(summary["inputs_per_split_and_class"]).reindex(summary["classes"])
    table = table.fillna(0).astype(int)
    if not table.empty:
        table.index.name = "class"
        lines.append("  inputs per class:")
        lines += ["    " + t for t in table.to_string().splitlines()]
    if pairing is not None:
        lines.append(
            f"  inputs.csv: {pairing['listed']} listed, {pairing['with_frames']} with frames, "
            f"{pairing['without_frames']} without"
        )
        for s, d in pairing["per_split"].items():
            if d["listed"]:
                lines.append(f"    {s}: {d['with_frames']}/{d['listed']} captured")
        if pairing["missing_ids"]:
            lines.append(f"    missing input ids: {_ids_text(pairing['missing_ids'])}")
        if pairing["not_listed_ids"]:
            lines.append(f"    captured but not listed: {_ids_text(pairing['not_listed_ids'])}")
    return "\n".join(lines)


def _ids_text(ids: list[int], limit: int = 20) -> str:
    text = ", ".join(str(i) for i in ids[:limit])
    return text + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def check_command(args) -> int:
    """``simgap captures check DIR [--inputs inputs.csv] [--json]``."""
    summary = validate_capture_set(args.dir)
    pairing = pair_with_inputs(args.dir, args.inputs) if args.inputs else None
    if args.json:
        print(json.dumps({**summary, "inputs": pairing}, indent=2))
    else:
        print(format_summary(summary, pairing))
    return 0


def add_cli(subparsers) -> None:
    """Register ``simgap captures check``."""
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
    check.set_defaults(func=check_command)

    def usage(args) -> int:
        parser.print_help()
        return 0

    parser.set_defaults(func=usage)  # bare `simgap captures`; `check` overrides func


__all__ = [
    "COLUMNS",
    "SPLITS",
    "CaptureSet",
    "add_cli",
    "capture_info",
    "format_summary",
    "frame_name",
    "pair_with_inputs",
    "read_capture_set",
    "validate_capture_set",
    "write_capture_set",
]
