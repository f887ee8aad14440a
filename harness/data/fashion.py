"""Fashion-MNIST's files: IDX reading and where the files come from.

The four ``*-ubyte`` files (gzipped or not) are looked up in ``data_root`` / ``$SIMGAP_DATA``,
then in Debian's ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``, unpacked
once into the cache), then in the cache, then downloaded with torchvision.  Rows are the train
rows (60 000) then the test rows (10 000).
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from harness.data.cache import cache_dir
from harness.errors import SimgapError
from harness.files import atomic_write

DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_HOWTO = (
    "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or pass "
    "--data-root PATH (or set SIMGAP_DATA) to a folder holding the four *-ubyte(.gz) files"
)
_UNPACKED_MODE = 0o644  # the cache may be shared between users


def read_idx(path: Path, header_only: bool = False) -> tuple[tuple[int, ...], np.ndarray | None]:
    """Read an IDX (uint8) file, gzipped or not; returns (dims, array or None)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(4)
            if len(head) != 4 or head[:2] != b"\x00\x00" or head[2] != 0x08:
                raise SimgapError(f"{path}: not a uint8 IDX file")
            ndim = head[3]
            dims = tuple(int(d) for d in np.frombuffer(fh.read(4 * ndim), dtype=">i4"))
            if header_only:
                return dims, None
            data = bytearray(fh.read())  # writable, so torch.from_numpy does not warn
    except (OSError, EOFError, ValueError) as exc:
        raise SimgapError(f"{path}: unreadable IDX file ({exc})") from exc
    count = math.prod(dims)
    if len(data) < count:
        raise SimgapError(f"{path}: truncated IDX file ({len(data)} of {count} bytes)")
    return dims, np.frombuffer(data, dtype=np.uint8, count=count).reshape(dims)


def find_fashion(folder: Path) -> dict[str, Path] | None:
    """The four Fashion-MNIST files in ``folder`` (flat or torchvision layout), else None."""
    layouts = (folder, folder / "FashionMNIST" / "raw", folder / "fashion-mnist")
    for base in layouts:
        found = {}
        for key, name in FASHION_FILES.items():
            for cand in (base / name, base / f"{name}.gz"):
                if cand.is_file():
                    found[key] = cand
                    break
        if len(found) == len(FASHION_FILES):
            return found
    return None


def _unpack_debian(files: dict[str, Path]) -> dict[str, Path] | None:
    """Gunzip Debian's files into <cache>/FashionMNIST/raw (torchvision's layout); None on
    failure (then the gzipped files are read directly)."""
    raw = cache_dir() / "FashionMNIST" / "raw"
    out = {}
    try:
        for key, src in files.items():
            dst = raw / FASHION_FILES[key]
            if not (dst.is_file() and dst.stat().st_mtime_ns >= src.stat().st_mtime_ns):

                def unzip(tmp: Path, src: Path = src) -> None:
                    with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
                        shutil.copyfileobj(fin, fout, 1 << 20)

                atomic_write(dst, unzip, _UNPACKED_MODE)
            out[key] = dst
    except (OSError, EOFError):
        return None
    return out


def _download(root: Path, tried: str) -> dict[str, Path]:
    """Fetch Fashion-MNIST into ``root`` with torchvision; returns its files."""
    try:
        from torchvision.datasets import FashionMNIST

        for train in (True, False):
            FashionMNIST(str(root), train=train, download=True)
    except Exception as exc:  # offline, proxy, disk full, ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SimgapError(
            f"fashion-mnist: not found in {tried} and the download failed ({reason}); "
            f"{FASHION_HOWTO}"
        ) from exc
    found = find_fashion(root)
    if not found:
        raise SimgapError(f"fashion-mnist: download into {root} left no files; {FASHION_HOWTO}")
    return found


def locate_fashion(data_root: Path | None, download: bool) -> tuple[dict[str, Path], str]:
    """Find (or fetch) Fashion-MNIST; returns the files and a description of their origin.

    A ``data_root`` given (``--data-root`` or ``$SIMGAP_DATA``) is the only place looked at: a
    folder that does not exist is an error, one without the files is downloaded into (never a
    silent fallback to another copy)."""
    if data_root is not None:
        return _from_data_root(Path(data_root), download)
    debian = find_fashion(DEBIAN_FASHION_DIR)
    if debian:
        unpacked = (
            _unpack_debian(debian) if any(p.suffix == ".gz" for p in debian.values()) else None
        )
        origin = str(DEBIAN_FASHION_DIR)
        if unpacked:
            return unpacked, f"{origin} (unpacked in {unpacked['train_images'].parent})"
        return debian, origin
    cached = find_fashion(cache_dir())
    if cached:
        return cached, str(cached["train_images"].parent)
    tried = f"{DEBIAN_FASHION_DIR}, {cache_dir()}"
    if not download or os.environ.get("SIMGAP_OFFLINE"):
        raise SimgapError(f"fashion-mnist: not found in {tried}; {FASHION_HOWTO}")
    found = _download(cache_dir(), tried)
    return found, f"{found['train_images'].parent} (downloaded by torchvision)"


def _from_data_root(data_root: Path, download: bool) -> tuple[dict[str, Path], str]:
    if not data_root.is_dir():
        raise SimgapError(
            f"fashion-mnist: data root {data_root} is not a folder (from --data-root or "
            f"$SIMGAP_DATA); {FASHION_HOWTO}"
        )
    found = find_fashion(data_root)
    if found:
        return found, str(found["train_images"].parent)
    if not download or os.environ.get("SIMGAP_OFFLINE"):
        raise SimgapError(f"fashion-mnist: not found in data root {data_root}; {FASHION_HOWTO}")
    found = _download(data_root, str(data_root))
    return found, f"{found['train_images'].parent} (downloaded by torchvision)"


def read_fashion(files: dict[str, Path]) -> tuple[Tensor, Tensor]:
    """All rows (train, then test) as float images (N, 1, 28, 28) in [0, 1] and int64 labels."""
    parts_x, parts_y = [], []
    for split in ("train", "test"):
        _, x = read_idx(files[f"{split}_images"])
        _, y = read_idx(files[f"{split}_labels"])
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise SimgapError(f"{files[f'{split}_images']}: images and labels do not match")
        parts_x.append(torch.from_numpy(x))
        parts_y.append(torch.from_numpy(y))
    return torch.cat(parts_x).unsqueeze(1).float().div_(255.0), torch.cat(parts_y).long()


def train_rows(files: dict[str, Path]) -> int:
    """Rows of the official train part (read from the label file's header)."""
    return read_idx(files["train_labels"], header_only=True)[0][0]


def fashion_info(data_root: Path | None) -> dict | None:
    """Counts and origin of the Fashion-MNIST files found without downloading, else None (a
    ``data_root`` given is the only place looked at, as in :func:`locate_fashion`)."""
    files = None
    folders = (DEBIAN_FASHION_DIR, cache_dir()) if data_root is None else (Path(data_root),)
    for folder in folders:
        if (files := find_fashion(folder)):
            break
    if not files:
        return None
    dims = read_idx(files["train_images"], header_only=True)[0]
    return {
        "train": train_rows(files),
        "test": read_idx(files["test_labels"], header_only=True)[0][0],
        "native_size": f"{dims[1]}x{dims[2]}",
        "origin": str(files["train_images"].parent),
    }
