"""Decoding the frame files of a capture set (PNG / TIFF, 8/16-bit integer or float32).

Every decode problem is a :class:`~harness.errors.SimgapError` naming the frame file.  Frames
are decoded in parallel but checked in manifest order, so the first bad file is the one reported.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from PIL import Image

from harness.errors import SimgapError, one_line
from harness.lab.captures import BENCH_JSON, FRAME_SUFFIXES, IO_THREADS

_GRAY_MODES = ("L", "I;16", "I;16B", "I;16L", "I", "F")


def decode_frame(path: Path) -> np.ndarray:
    """Decode one frame to a 2-D array (uint8 / uint16 / float); raise SimgapError if bad.

    PNG goes through Pillow; TIFF through tifffile, then Pillow if tifffile fails.
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
            raise SimgapError(f"{path}: not a readable image ({one_line(exc, path)})") from None
    return _gray_array(np.asarray(arr), path)


def _gray_array(arr: np.ndarray, path: Path) -> np.ndarray:
    """One 2-D uint8 / uint16 / float array of a decoded frame, in native byte order."""
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
            raise SimgapError(f"{path}: not a readable image ({one_line(first, path)})") from None


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


# --------------------------------------------------------------------------------------------
# a whole capture set


class _Frames:
    """Decoded frames of a capture set being gathered into one (M, k, H, W) array."""

    def __init__(self, root: Path, rows: pd.DataFrame, wanted: pd.DataFrame, k: int,
                 capture: dict):  # fmt: skip
        self.root, self.k, self.n = root, k, len(wanted)
        self.files = rows["file"].tolist()
        slot_of = {int(iid): m for m, iid in enumerate(wanted["input_id"])}
        self.slot_m = rows["input_id"].map(slot_of).to_numpy()
        self.slot_c = rows["channel"].to_numpy()
        self.size = tuple(capture["frame_size"]) if capture.get("frame_size") is not None else None
        self.size_source = f"{BENCH_JSON} capture.frame_size"
        self.bits = capture.get("bit_depth")
        self.raw: np.ndarray | None = None
        self.first: Path | None = None
        self.container = 0  # bits of the widest integer frame seen

    def add(self, i: int, arr: np.ndarray) -> None:
        """Check frame ``i`` (manifest order) against the others and store it."""
        path = Path(self.files[i])
        if self.first is None:
            self.first = path
            if self.size is None:
                self.size = arr.shape
                self.size_source = f"the other frames, e.g. {path.relative_to(self.root)}"
            dtype = np.float32 if arr.dtype.kind == "f" else np.uint16
            self.raw = np.empty((self.n, self.k, *self.size), dtype=dtype)
        if (arr.dtype.kind == "f") != (self.raw.dtype.kind == "f"):
            raise SimgapError(
                f"{path}: {arr.dtype} frame mixed with {self.raw.dtype} frames "
                f"(e.g. {self.first.relative_to(self.root)})"
            )
        if arr.shape != tuple(self.size):
            raise SimgapError(
                f"{path}: frame size {arr.shape[0]}x{arr.shape[1]} (HxW) differs from "
                f"{self.size[0]}x{self.size[1]} ({self.size_source})"
            )
        if arr.dtype.kind != "f":
            self._check_bits(path, arr.dtype)
        self.raw[self.slot_m[i], self.slot_c[i]] = arr

    def _check_bits(self, path: Path, dtype: np.dtype) -> None:
        itembits = 8 * dtype.itemsize
        self.container = max(self.container, itembits)
        if self.bits == 32:
            raise SimgapError(f"{path}: {dtype} frame but {BENCH_JSON} says bit_depth 32 (float32)")
        if self.bits is not None and self.bits > itembits:
            raise SimgapError(
                f"{path}: {itembits}-bit image but {BENCH_JSON} says bit_depth {self.bits}"
            )

    def bad_frame(self, mask: np.ndarray) -> Path:
        """The file of the first (input, channel) flagged in ``mask`` (M, k)."""
        m, c = np.argwhere(mask)[0]
        hit = np.flatnonzero((self.slot_m == m) & (self.slot_c == c))[0]
        return Path(self.files[hit])

    def scaled(self):
        """(frames float32 in [0, 1], (H, W), "int" | "float", bit depth)."""
        raw = self.raw
        if raw.dtype.kind == "f":
            finite = np.isfinite(raw).all(axis=(2, 3))
            if not finite.all():
                raise SimgapError(f"{self.bad_frame(~finite)}: float frame contains NaN or inf")
            lo, hi = raw.min(axis=(2, 3)), raw.max(axis=(2, 3))
            out_of_range = (lo < 0) | (hi > 1)
            if out_of_range.any():
                m, c = np.argwhere(out_of_range)[0]
                raise SimgapError(
                    f"{self.bad_frame(out_of_range)}: float frame values outside [0, 1] "
                    f"(min {lo[m, c]:.4g}, max {hi[m, c]:.4g})"
                )
            return raw, tuple(self.size), "float", "float32"
        depth = self.bits if self.bits is not None else self.container
        full = 2**depth - 1
        hi = raw.max(axis=(2, 3))
        over = hi > full
        if over.any():
            m, c = np.argwhere(over)[0]
            raise SimgapError(
                f"{self.bad_frame(over)}: value {int(hi[m, c])} exceeds full scale {full} "
                f"of bit depth {depth}"
            )
        frames = (raw / np.float64(full)).astype(np.float32)
        return frames, tuple(self.size), "int", depth


def load_frames(root: Path, rows: pd.DataFrame, wanted: pd.DataFrame, k: int, capture: dict):
    """Decode the frames of ``rows`` into (M, k, H, W) float32 in the order of ``wanted``.

    Returns (frames, (H, W), "int" | "float", bit depth).
    """
    gathered = _Frames(root, rows, wanted, k, capture)
    with ThreadPoolExecutor(IO_THREADS) as pool:
        arrays = pool.map(lambda f: decode_frame(Path(f)), gathered.files)
        for i, arr in enumerate(arrays):  # decode errors surface here, in manifest order
            gathered.add(i, arr)
    return gathered.scaled()
