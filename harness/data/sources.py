"""Image sources: every source returns an :class:`ImageSet`.

An ImageSet holds float32 images (N, 1, n, n) in [0, 1], int64 labels and class names.  The row
index of an image in its set is its *input id*; it is stable for a given source, size and
``limit``.

Sources
-------
``fashion-mnist``
    Train (60 000) then test (10 000) rows; where the files come from: :mod:`harness.data.fashion`.
``digits``
    scikit-learn's bundled ``load_digits`` (1 797 images of 8x8), upsampled.
``folder:PATH``
    A torchvision ``ImageFolder`` tree (``PATH/<class>/<image>``), converted to grayscale.

Resized tensors are cached (:mod:`harness.data.cache`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from harness.data.cache import fingerprint, load_tensors, resolve_data_root, store_tensors
from harness.data.fashion import (
    FASHION_CLASSES,
    FASHION_HOWTO,
    fashion_info,
    locate_fashion,
    read_fashion,
    train_rows,
)
from harness.data.splits import split_indices
from harness.errors import SimgapError
from harness.plugins import call_plugin, find_plugin, known_names

SOURCES = ("fashion-mnist", "digits", "folder:PATH")
DEFAULT_SIZE = 32
_GRAY16_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass
class ImageSet:
    """Images (N, 1, n, n) float32 in [0, 1], labels int64 (N,), class names and provenance.

    ``source_index`` maps each row to its row in the full source (differs from ``arange`` only
    when a ``limit`` was applied); ``meta`` holds source facts such as the official train/test
    row counts.
    """

    images: Tensor
    labels: Tensor
    classes: list[str]
    source: str
    origin: str
    source_index: Tensor | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1] != 1:
            raise ValueError(f"images must be (N, 1, n, n), got {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must be (N,) matching images")
        if self.source_index is None:
            self.source_index = torch.arange(len(self.labels))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def size(self) -> int:
        """Image side length n."""
        return int(self.images.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: Tensor | Sequence[int]) -> ImageSet:
        """Rows ``indices`` as a new ImageSet (``source_index`` keeps the original ids)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageSet(
            self.images[idx], self.labels[idx], list(self.classes), self.source, self.origin,
            self.source_index[idx], dict(self.meta),
        )  # fmt: skip


def _resize(images: Tensor, size: int) -> Tensor:
    """Bilinear, antialiased resize of (N, 1, h, w) float images to (N, 1, size, size) in [0, 1]."""
    if images.shape[-2:] == (size, size):
        return images.contiguous()
    out = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                        align_corners=False)  # fmt: skip
    return out.clamp_(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# the three sources


def _load_fashion(size: int, data_root: Path | None, download: bool) -> ImageSet:
    files, origin = locate_fashion(data_root, download)
    key = fingerprint(sorted(files.values()), ("fashion-mnist", size))
    hit = load_tensors("fashion-mnist", size, key)
    if hit is not None:
        images, labels = hit
    else:
        raw, labels = read_fashion(files)
        images = _resize(raw, size)
        if size != 28:  # the raw files are the cache at native size
            store_tensors("fashion-mnist", size, key, images, labels)
    n_train = train_rows(files)
    meta = {"train": int(n_train), "test": int(len(labels) - n_train)}
    return ImageSet(images, labels, list(FASHION_CLASSES), "fashion-mnist", origin, meta=meta)


def _digits_file() -> Path | None:
    """scikit-learn's bundled digits.csv.gz, located without importing sklearn (slow import)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


def _load_digits(size: int) -> ImageSet:
    path = _digits_file()
    if path is not None:  # same file and parsing as sklearn.datasets.load_digits
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
        pixels, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
        origin = f"{path} (scikit-learn load_digits)"
    else:
        from sklearn import datasets

        bunch = datasets.load_digits()
        pixels, target = bunch.images.astype(np.float32), bunch.target.astype(np.int64)
        origin = "scikit-learn load_digits"
    x = torch.from_numpy(pixels).unsqueeze(1) / 16.0
    images = _resize(x.clamp_(0.0, 1.0), size)
    labels = torch.from_numpy(target)
    return ImageSet(images, labels, [str(c) for c in range(10)], "digits", origin)


def _read_gray(path: str) -> np.ndarray:
    """One image file as float32 (h, w) in [0, 1]; 16-bit images are scaled by 65535."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in _GRAY16_MODES:
                arr = np.asarray(img, dtype=np.float32) / 65535.0
            elif img.mode == "F":
                arr = np.asarray(img, dtype=np.float32)
            else:
                arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise SimgapError(f"{path}: unreadable image ({exc})") from exc
    if arr.ndim != 2 or arr.size == 0:
        raise SimgapError(f"{path}: unreadable image (unexpected shape {arr.shape})")
    return np.clip(arr, 0.0, 1.0)


def _folder_tree(spec: str):
    """(root, torchvision ImageFolder listing) of ``folder:PATH``."""
    from torchvision.datasets import ImageFolder

    path_text = spec.split(":", 1)[1]
    if not path_text:
        raise SimgapError("folder:PATH: no path given (use folder:/path/to/images)")
    root = Path(path_text).expanduser()
    if not root.is_dir():
        raise SimgapError(f"{root}: image folder not found")
    try:
        return root, ImageFolder(str(root), loader=lambda p: p)  # listing only; decoded below
    except (FileNotFoundError, OSError) as exc:
        raise SimgapError(
            f"{root}: no images ({exc}); expected ImageFolder layout PATH/<class>/<image>"
        ) from exc


def _decode_folder(files: list[Path], size: int) -> Tensor:
    arrays = [_read_gray(str(p)) for p in files]  # decoding is per file by nature
    images = torch.empty(len(arrays), 1, size, size)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, a in enumerate(arrays):
        by_shape.setdefault(a.shape, []).append(i)
    for idx in by_shape.values():  # resize each group of equal shape in one batch
        batch = torch.from_numpy(np.stack([arrays[i] for i in idx])).unsqueeze(1)
        images[torch.tensor(idx)] = _resize(batch, size)
    return images


def _load_folder(spec: str, size: int) -> ImageSet:
    root, tree = _folder_tree(spec)
    files = [Path(p) for p, _ in tree.samples]
    key = fingerprint(files, ("folder", size))
    slug = "folder-" + hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    hit = load_tensors(slug, size, key)
    if hit is not None:
        images, labels = hit
    else:
        images = _decode_folder(files, size)
        labels = torch.tensor(tree.targets, dtype=torch.long)
        store_tensors(slug, size, key, images, labels)
    return ImageSet(images, labels, list(tree.classes), f"folder:{root}", str(root.resolve()))


# --------------------------------------------------------------------------------------------
# public loading API


def load_source(
    name: str,
    size: int = DEFAULT_SIZE,
    data_root: str | Path | None = None,
    limit: int | None = None,
    download: bool = True,
) -> ImageSet:
    """Load image source ``name`` (``fashion-mnist``, ``digits`` or ``folder:PATH``) at n = size.

    ``limit`` keeps a deterministic, class-stratified subset of that many rows (in source order).
    ``download=False`` (or ``$SIMGAP_OFFLINE``) never fetches Fashion-MNIST from the internet.
    """
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise SimgapError(f"size: must be a positive integer, got {size!r}")
    size = int(size)
    if name == "fashion-mnist":
        data = _load_fashion(size, resolve_data_root(data_root), download)
    elif name == "digits":
        data = _load_digits(size)
    elif name.startswith("folder:"):
        data = _load_folder(name, size)
    else:
        data = _load_plugin(name, size, resolve_data_root(data_root), download)
    if limit is not None:
        data = _limit(data, limit)
    return data


def _load_plugin(name: str, size: int, data_root: Path | None, download: bool) -> ImageSet:
    """A plug-in source (:mod:`harness.plugins`, group ``simgap.sources``): a callable
    ``(size, data_root, download) -> ImageSet`` with images at ``size``."""
    factory = find_plugin("sources", name)
    if factory is None:
        raise SimgapError(
            f"source: unknown image source {name!r} (choose from "
            f"{known_names('sources', SOURCES)})"
        )
    data = call_plugin("sources", name, factory, size=size, data_root=data_root,
                       download=download)
    if not isinstance(data, ImageSet) or data.size != size:
        raise SimgapError(f"source: {name!r} did not return an ImageSet of {size}x{size} images")
    return data


def _limit(data: ImageSet, limit: int) -> ImageSet:
    if isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1:
        raise SimgapError(f"limit: must be a positive integer, got {limit!r}")
    if limit >= len(data):
        return data
    picked = split_indices(data.labels, {"keep": int(limit)}, seed=0)["keep"]
    out = data.subset(picked)
    out.origin = f"{data.origin} [limit {limit} of {len(data)}]"
    if "train" in data.meta:
        out.meta = {"train": int((picked < data.meta["train"]).sum()),
                    "test": int((picked >= data.meta["train"]).sum())}  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------
# what is available


def _info_row(
    source: str, images: int, native: str, classes: int, origin: str,
    train: int | None = None, test: int | None = None,
) -> dict:  # fmt: skip
    return {
        "source": source, "available": images > 0, "images": int(images),
        "train": None if train is None else int(train), "test": None if test is None else int(test),
        "native_size": native, "classes": classes, "origin": origin,
    }  # fmt: skip


def source_info(data_root: str | Path | None = None, extra: Sequence[str] = ()) -> list[dict]:
    """What each source holds and where it comes from, without downloading anything.

    ``extra`` adds sources such as ``folder:PATH`` (those are loaded to be counted).
    """
    fashion = fashion_info(resolve_data_root(data_root))
    if fashion:
        n_train, n_test = fashion["train"], fashion["test"]
        rows = [_info_row("fashion-mnist", n_train + n_test, fashion["native_size"], 10,
                          fashion["origin"], n_train, n_test)]  # fmt: skip
    else:
        rows = [_info_row("fashion-mnist", 0, "28x28", 10, f"not found: {FASHION_HOWTO}")]
    for name in ("digits", *extra):
        try:
            data = load_source(name, size=DEFAULT_SIZE, data_root=data_root, download=False)
        except SimgapError as exc:
            rows.append(_info_row(name, 0, "", 0, str(exc)))
            continue
        native = "8x8" if name == "digits" else "varies"
        rows.append(_info_row(name, len(data), native, data.num_classes, data.origin))
    return rows
