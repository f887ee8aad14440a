"""Capture sets: the on-disk format of real (or emulated-bench) camera frames, and its writer.

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
k, ``bit_depth``, ``frame_format`` ("png" / "tiff") and ``calibration`` ({"dark": [paths],
"flat": [paths]}: unlabelled camera dark frames and a flat field, a uniform white input through
a zero-phase mask; frames like the others, never test data).  Everything else in bench.json is free
(bench seed, preset, parameters, source name, ...) and is never read by training code.

Frames are single-channel 8/16-bit integer PNG or TIFF, or float32 TIFF with values in [0, 1].
An integer frame with value v is read as v / (2**bit_depth - 1), with ``bit_depth`` from the
capture block (default: the container's bits, 8 or 16); values above full scale are an error.

Reading and validation: :mod:`harness.lab.validate`.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import torch
from PIL import Image
from tqdm.auto import tqdm

from harness.errors import SimgapError
from harness.files import staged_dir

SPLITS = ("pool", "val", "test")
COLUMNS = ("capture_id", "input_id", "split", "label", "channel", "path")
MANIFEST = "manifest.csv"
BENCH_JSON = "bench.json"
MASK_NPZ = "mask.npz"
FORMAT_VERSION = 1
FRAME_SUFFIXES = {".png": "png", ".tif": "tiff", ".tiff": "tiff"}
#: Unlabelled calibration frames a capture set may hold: camera dark frames (no light) and a
#: flat field (a uniform white input through a zero-phase mask).
CALIBRATION = ("dark", "flat")
IO_THREADS = max(1, min(8, (os.cpu_count() or 1) * 2))  # frame files are encoded in parallel


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
    #: unlabelled calibration frames {"dark": (D, H, W), "flat": (F, H, W)} (may be empty)
    calibration: dict = field(default_factory=dict, repr=False)

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


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


@dataclass
class _Rows:
    """The validated per-input columns of a capture set about to be written."""

    ids: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    classes: list[str]


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
    calibration: dict | None = None,
) -> Path:
    """Write a capture set atomically (temp folder next to ``out_dir``, then rename).

    ``frames`` (M, k, H, W) in [0, 1]; ``input_ids``, ``splits``, ``labels`` length M, one entry
    per input.  Integer formats store round(x · (2**bit_depth − 1)) in a 16-bit container
    (``bit_depth`` 1..16); ``fmt="tiff", bit_depth=32`` stores float32 exactly.  ``capture_ids``
    (M, k) defaults to the running index m·k + c.  Refuses a non-empty ``out_dir`` unless
    ``overwrite``.  Every argument is checked before anything is written, so the set written
    passes :func:`harness.lab.validate.validate_capture_set`.  ``calibration``: unlabelled
    frames {"dark": (D, H, W), "flat": (F, H, W)} in [0, 1].  Returns the folder.
    """
    out_dir = Path(out_dir)
    arr = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if arr.ndim != 4:
        raise ValueError(f"frames: expected (M, k, H, W), got shape {arr.shape}")
    M, k, H, W = arr.shape
    if M == 0 or k == 0 or H == 0 or W == 0:
        raise ValueError(f"frames: nothing to write (shape {arr.shape})")
    rows = _checked_rows(M, input_ids, splits, labels, classes)
    _check_format(fmt, bit_depth)
    if not np.isfinite(arr).all() or (arr.size and (arr.min() < 0 or arr.max() > 1)):
        raise ValueError("frames: values must be finite and in [0, 1]")
    phase = _checked_phase(mask_phase, k)
    cids = _checked_capture_ids(capture_ids, M, k)
    info = dict(bench_info)
    if "capture" in info:
        raise ValueError("bench_info: key 'capture' is reserved for the capture-set block")
    info["capture"] = capture_info(rows.classes, (H, W), k, bit_depth, fmt)
    info["capture"].update(n_inputs=M, n_frames=M * k)
    calib = _checked_calibration(calibration, (H, W), fmt, info["capture"])
    try:
        bench_text = json.dumps(info, indent=2, sort_keys=False, default=_json_default)
    except TypeError as exc:
        raise ValueError(f"bench_info: not JSON-serialisable ({exc})") from None

    _check_target(out_dir, overwrite)
    with staged_dir(out_dir) as tmp:
        manifest = _write_frames(tmp, arr, rows, cids, fmt, bit_depth, progress)
        _write_calibration(tmp, calib, fmt, bit_depth)
        manifest.to_csv(tmp / MANIFEST, index=False)
        (tmp / BENCH_JSON).write_text(bench_text + "\n")
        np.savez(tmp / MASK_NPZ, phase=phase)
    return out_dir


def _checked_rows(M: int, input_ids, splits, labels, classes) -> _Rows:
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
    if not classes:
        raise ValueError("classes: at least one class name is needed")
    if labs.size and (labs.min() < 0 or labs.max() >= len(classes)):
        raise ValueError(f"labels: must be in 0..{len(classes) - 1}")
    return _Rows(ids, labs, spl, classes)


def _check_format(fmt: str, bit_depth: int) -> None:
    if fmt not in ("png", "tiff"):
        raise ValueError(f"fmt: '{fmt}' is not png or tiff")
    if bit_depth == 32 and fmt != "tiff":
        raise ValueError("bit_depth=32 (float32) needs fmt='tiff'")
    if bit_depth != 32 and not 1 <= bit_depth <= 16:
        raise ValueError(f"bit_depth: {bit_depth} not in 1..16 (or 32 for float TIFF)")


def _checked_phase(mask_phase, k: int) -> np.ndarray:
    phase = (
        mask_phase.detach().cpu().numpy() if isinstance(mask_phase, torch.Tensor) else mask_phase
    )
    phase = np.asarray(phase, dtype=np.float32)
    if phase.ndim == 2:
        phase = phase[None]
    if phase.ndim != 3 or phase.shape[0] != k or phase.shape[1] != phase.shape[2]:
        raise ValueError(f"mask_phase: expected ({k}, N, N), got shape {phase.shape}")
    if not np.isfinite(phase).all():
        raise ValueError("mask_phase: values must be finite")
    return phase


def _checked_capture_ids(capture_ids, M: int, k: int) -> np.ndarray:
    if capture_ids is None:
        return np.arange(M * k).reshape(M, k)
    cids = np.asarray(capture_ids)
    # the reader strips the text of each id and needs it non-empty and unique
    texts = np.char.strip(cids.astype(str))
    if cids.shape != (M, k) or len(np.unique(texts)) != M * k or (texts == "").any():
        raise ValueError(f"capture_ids: expected ({M}, {k}) unique, non-empty values")
    return cids


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise SimgapError(f"{out_dir}: exists and is not a folder")
    if any(out_dir.iterdir()):
        if not overwrite:
            raise SimgapError(f"{out_dir}: folder exists and is not empty (use overwrite)")
        if not (out_dir / MANIFEST).is_file():
            raise SimgapError(
                f"{out_dir}: not a capture set (no {MANIFEST}); refusing to overwrite it"
            )


def _write_frames(
    tmp: Path, arr: np.ndarray, rows: _Rows, cids: np.ndarray, fmt: str, bit_depth: int,
    progress: bool,
) -> pd.DataFrame:  # fmt: skip
    """Write every frame file under ``tmp``; returns the manifest rows."""
    M, k = arr.shape[:2]
    for s in sorted(set(rows.splits)):
        (tmp / "frames" / s).mkdir(parents=True)
    manifest, jobs = [], []
    for m in range(M):
        for c in range(k):
            rel = frame_name(rows.splits[m], rows.ids[m], c, fmt)
            manifest.append(
                (cids[m, c], int(rows.ids[m]), rows.splits[m], int(rows.labels[m]), c, rel)
            )
            jobs.append((tmp / rel, m, c))

    def write(job) -> None:
        path, m, c = job
        _save_frame(path, _encoded(arr[m, c], bit_depth))

    with (
        ThreadPoolExecutor(IO_THREADS) as pool,
        tqdm(total=len(jobs), desc="writing frames", unit="frame", disable=not progress) as bar,
    ):
        for _ in pool.map(write, jobs):
            bar.update()
    return pd.DataFrame(manifest, columns=list(COLUMNS))


def _encoded(x: np.ndarray, bit_depth: int) -> np.ndarray:
    """A frame in [0, 1] as stored: float32 (bit depth 32) or round(x (2**bits - 1)) uint16."""
    if bit_depth == 32:
        return x.astype(np.float32)
    return np.rint(x.astype(np.float64) * float(2**bit_depth - 1)).astype(np.uint16)


def calibration_name(name: str, index: int, fmt: str = "png") -> str:
    """Relative path of one calibration frame, e.g. ``calibration/dark_000.png``."""
    suffix = {"png": "png", "tiff": "tif"}[fmt]
    return f"calibration/{name}_{int(index):03d}.{suffix}"


def _checked_calibration(calibration: dict | None, size: tuple[int, int], fmt: str,
                         block: dict) -> dict:  # fmt: skip
    """{name: (D, H, W) float array} of the calibration frames (names in CALIBRATION); lists
    their files in the capture ``block``."""
    out = {}
    for name, frames in (calibration or {}).items():
        if name not in CALIBRATION:
            raise ValueError(f"calibration: '{name}' is not one of {', '.join(CALIBRATION)}")
        a = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else frames
        a = np.asarray(a, dtype=np.float32)
        a = a[None] if a.ndim == 2 else a
        if a.ndim != 3 or a.shape[1:] != tuple(size) or not len(a):
            raise ValueError(f"calibration.{name}: expected (D, {size[0]}, {size[1]}) frames, "
                             f"got shape {a.shape}")
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise ValueError(f"calibration.{name}: values must be finite and in [0, 1]")
        out[name] = a
    if out:
        block["calibration"] = {
            name: [calibration_name(name, j, fmt) for j in range(len(a))] for name, a in out.items()
        }
    return out


def _write_calibration(tmp: Path, calib: dict, fmt: str, bit_depth: int) -> None:
    for name, frames in calib.items():
        (tmp / "calibration").mkdir(exist_ok=True)
        for j, x in enumerate(frames):
            _save_frame(tmp / calibration_name(name, j, fmt), _encoded(x, bit_depth))


def _save_frame(path: Path, x: np.ndarray) -> None:
    if path.suffix == ".png":
        Image.fromarray(x).save(path, compress_level=1)
    else:
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
