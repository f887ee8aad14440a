"""Image sources, stratified splits and nested fractions.

Every source returns an :class:`ImageSet`: float32 images (N, 1, n, n) in [0, 1], int64 labels and
class names.  The row index of an image in its set is its *input id*; it is stable for a given
source, size and ``limit``.

Sources
-------
``fashion-mnist``
    Train (60 000) then test (10 000) rows.  Looked up in ``data_root`` / ``$SIMGAP_DATA``, then in
    Debian's ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``, unpacked
    once into the cache), then in the cache, then downloaded with torchvision.
``digits``
    scikit-learn's bundled ``load_digits`` (1 797 images of 8x8), upsampled.
``folder:PATH``
    A torchvision ``ImageFolder`` tree (``PATH/<class>/<image>``), converted to grayscale.

Resized tensors are cached as ``.pt`` files under the cache folder (``$SIMGAP_CACHE`` or
``~/.cache/simgap``) and read back with ``weights_only=True``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import math
import numbers
import os
import pickle
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from harness.errors import SimgapError

SOURCES = ("fashion-mnist", "digits", "folder:PATH")
DEFAULT_SIZE = 32
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
_CACHE_VERSION = 1  # bump when the cached tensors would change


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


# --------------------------------------------------------------------------------------------
# paths and caching


def cache_dir() -> Path:
    """Folder for unpacked raw files and tensor caches: ``$SIMGAP_CACHE`` or ~/.cache/simgap."""
    env = os.environ.get("SIMGAP_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "simgap"


def _data_root(data_root: str | Path | None) -> Path | None:
    if data_root is not None:
        return Path(data_root).expanduser()
    env = os.environ.get("SIMGAP_DATA")
    return Path(env).expanduser() if env else None


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then move the file into place (no half-written files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; caches may be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fingerprint(files: Sequence[Path], extra: object) -> str:
    h = hashlib.sha256(json.dumps([_CACHE_VERSION, str(extra)]).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _cache_load(slug: str, size: int, key: str) -> tuple[Tensor, Tensor] | None:
    path = cache_dir() / "tensors" / f"{slug}-{size}-{key}.pt"
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, weights_only=True)
        return blob["images"], blob["labels"]
    except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError):  # a miss
        return None


def _cache_store(slug: str, size: int, key: str, images: Tensor, labels: Tensor) -> None:
    folder = cache_dir() / "tensors"
    path = folder / f"{slug}-{size}-{key}.pt"
    try:
        _atomic_write(path, lambda p: torch.save({"images": images, "labels": labels}, p))
        for old in folder.glob(f"{slug}-{size}-*.pt"):  # drop stale versions
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:
        pass  # read-only cache: recompute next time


def _resize(images: Tensor, size: int) -> Tensor:
    """Bilinear, antialiased resize of (N, 1, h, w) float images to (N, 1, size, size) in [0, 1]."""
    if images.shape[-2:] == (size, size):
        return images.contiguous()
    out = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                        align_corners=False)  # fmt: skip
    return out.clamp_(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# fashion-mnist


def _read_idx(path: Path, header_only: bool = False) -> tuple[tuple[int, ...], np.ndarray | None]:
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


def _find_fashion(folder: Path) -> dict[str, Path] | None:
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
    """Gunzip Debian's files into <cache>/FashionMNIST/raw (torchvision's layout); None if no luck."""
    raw = cache_dir() / "FashionMNIST" / "raw"
    out = {}
    try:
        for key, src in files.items():
            dst = raw / FASHION_FILES[key]
            if not (dst.is_file() and dst.stat().st_mtime_ns >= src.stat().st_mtime_ns):

                def unzip(tmp: Path, src: Path = src) -> None:
                    with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
                        shutil.copyfileobj(fin, fout, 1 << 20)

                _atomic_write(dst, unzip)
            out[key] = dst
    except (OSError, EOFError):
        return None
    return out


def _locate_fashion(data_root: Path | None, download: bool) -> tuple[dict[str, Path], str]:
    """Find (or fetch) Fashion-MNIST; returns the files and a description of their origin."""
    if data_root is not None:
        found = _find_fashion(data_root)
        if found:
            return found, str(found["train_images"].parent)
    debian = _find_fashion(DEBIAN_FASHION_DIR)
    if debian:
        unpacked = (
            _unpack_debian(debian) if any(p.suffix == ".gz" for p in debian.values()) else None
        )
        origin = str(DEBIAN_FASHION_DIR)
        if unpacked:
            return unpacked, f"{origin} (unpacked in {unpacked['train_images'].parent})"
        return debian, origin
    cached = _find_fashion(cache_dir())
    if cached:
        return cached, str(cached["train_images"].parent)
    tried = ", ".join(str(p) for p in (data_root, DEBIAN_FASHION_DIR, cache_dir()) if p)
    if not download or os.environ.get("SIMGAP_OFFLINE"):
        raise SimgapError(f"fashion-mnist: not found in {tried}; {FASHION_HOWTO}")
    root = data_root or cache_dir()
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
    found = _find_fashion(root)
    if not found:
        raise SimgapError(f"fashion-mnist: download into {root} left no files; {FASHION_HOWTO}")
    return found, f"{found['train_images'].parent} (downloaded by torchvision)"


def _load_fashion(size: int, data_root: Path | None, download: bool) -> ImageSet:
    files, origin = _locate_fashion(data_root, download)
    key = _fingerprint(sorted(files.values()), ("fashion-mnist", size))
    hit = _cache_load("fashion-mnist", size, key)
    if hit is not None:
        images, labels = hit
    else:
        parts_x, parts_y = [], []
        for split in ("train", "test"):
            _, x = _read_idx(files[f"{split}_images"])
            _, y = _read_idx(files[f"{split}_labels"])
            if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
                raise SimgapError(f"{files[f'{split}_images']}: images and labels do not match")
            parts_x.append(torch.from_numpy(x))
            parts_y.append(torch.from_numpy(y))
        images = _resize(torch.cat(parts_x).unsqueeze(1).float().div_(255.0), size)
        labels = torch.cat(parts_y).long()
        if size != 28:  # the raw files are the cache at native size
            _cache_store("fashion-mnist", size, key, images, labels)
    n_train = _read_idx(files["train_labels"], header_only=True)[0][0]
    meta = {"train": int(n_train), "test": int(len(labels) - n_train)}
    return ImageSet(images, labels, list(FASHION_CLASSES), "fashion-mnist", origin, meta=meta)


# --------------------------------------------------------------------------------------------
# digits


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


# --------------------------------------------------------------------------------------------
# folder:PATH


def _read_gray(path: str) -> np.ndarray:
    """One image file as float32 (h, w) in [0, 1]; 16-bit images are scaled by 65535."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
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


def _load_folder(spec: str, size: int) -> ImageSet:
    from torchvision.datasets import ImageFolder

    path_text = spec.split(":", 1)[1]
    if not path_text:
        raise SimgapError("folder:PATH: no path given (use folder:/path/to/images)")
    root = Path(path_text).expanduser()
    if not root.is_dir():
        raise SimgapError(f"{root}: image folder not found")
    try:
        tree = ImageFolder(str(root), loader=lambda p: p)  # listing only; we decode below
    except (FileNotFoundError, OSError) as exc:
        raise SimgapError(
            f"{root}: no images ({exc}); expected ImageFolder layout PATH/<class>/<image>"
        ) from exc
    files = [Path(p) for p, _ in tree.samples]
    key = _fingerprint(files, ("folder", size))
    slug = "folder-" + hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    hit = _cache_load(slug, size, key)
    if hit is not None:
        images, labels = hit
    else:
        arrays = [_read_gray(str(p)) for p in files]  # decoding is per file by nature
        images = torch.empty(len(arrays), 1, size, size)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, a in enumerate(arrays):
            by_shape.setdefault(a.shape, []).append(i)
        for idx in by_shape.values():  # resize each group of equal shape in one batch
            batch = torch.from_numpy(np.stack([arrays[i] for i in idx])).unsqueeze(1)
            images[torch.tensor(idx)] = _resize(batch, size)
        labels = torch.tensor(tree.targets, dtype=torch.long)
        _cache_store(slug, size, key, images, labels)
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
        data = _load_fashion(size, _data_root(data_root), download)
    elif name == "digits":
        data = _load_digits(size)
    elif name.startswith("folder:"):
        data = _load_folder(name, size)
    else:
        raise SimgapError(
            f"source: unknown image source {name!r} (choose from {', '.join(SOURCES)})"
        )
    if limit is not None:
        data = _limit(data, limit)
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
# splits


def _seeded(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator for ``seed``, salted per purpose so different helpers draw independently."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise SimgapError(f"seed: must be an integer, got {seed!r}")
    digest = hashlib.sha256(f"simgap:{purpose}:{int(seed)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _class_groups(labels: Tensor, generator: torch.Generator) -> list[Tensor]:
    """Positions of each class (ascending label), each in a random order drawn from generator."""
    labels = torch.as_tensor(labels).reshape(-1).long()
    order = torch.argsort(labels, stable=True)
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    groups = torch.split(order, counts.tolist())
    return [g[torch.randperm(len(g), generator=generator)] for g in groups]


def _allocate(total: int, weights: Tensor, capacity: Tensor) -> Tensor:
    """Split ``total`` over classes proportionally to ``weights`` (largest remainder), ≤ capacity."""
    ideal = total * weights.double() / weights.double().sum()
    take = torch.minimum(ideal.floor().long(), capacity)
    left = total - int(take.sum())
    while left > 0:
        spare = (capacity - take) > 0
        if not bool(spare.any()):
            raise ValueError(f"cannot place {total} rows in classes of sizes {capacity.tolist()}")
        remainder = torch.where(
            spare, ideal - take.double(), torch.tensor(-math.inf, dtype=torch.double)
        )
        order = torch.argsort(-remainder, stable=True)[: min(left, int(spare.sum()))]
        take[order] += 1
        left -= len(order)
    return take


def _size_totals(sizes: Mapping[str, float | int], n: int) -> list[int]:
    totals, fractional, frac_sum = [], [], 0.0
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise SimgapError(f"sizes.{name}: must be a fraction or a count, got {value!r}")
        if isinstance(value, numbers.Integral):
            if value < 0 or value > n:
                raise SimgapError(f"sizes.{name}: count {value} is outside [0, {n}]")
            totals.append(int(value))
        else:
            if not 0.0 <= value <= 1.0:
                raise SimgapError(f"sizes.{name}: fraction {value} is outside [0, 1]")
            totals.append(math.floor(value * n + 0.5))
            fractional.append(len(totals) - 1)
            frac_sum += value
    if sum(totals) > n and fractional and frac_sum <= 1.0 + 1e-9:
        for i in reversed(fractional):  # rounding overshoot: trim the last fractional splits
            cut = min(totals[i], sum(totals) - n)
            totals[i] -= cut
    elif fractional and len(fractional) == len(totals) and abs(frac_sum - 1.0) <= 1e-9:
        totals[0] += n - sum(totals)  # fractions cover everything: rounding leftovers go first
    if sum(totals) > n:
        raise SimgapError(f"sizes: {dict(sizes)} ask for {sum(totals)} rows but only {n} exist")
    return totals


def split_indices(
    labels: Tensor | Sequence[int], sizes: Mapping[str, float | int], seed: int
) -> dict[str, Tensor]:
    """Disjoint, class-stratified, deterministic splits of ``range(len(labels))``.

    ``sizes`` maps split names to fractions (float in [0, 1]) or counts (int); fractions that
    sum to 1 partition all rows.  Returns sorted LongTensors of row indices, in ``sizes`` order.
    """
    labels = torch.as_tensor(labels).reshape(-1).long()
    totals = _size_totals(sizes, len(labels))
    groups = _class_groups(labels, _seeded(seed, "split"))
    if not groups:
        return {name: torch.empty(0, dtype=torch.long) for name in sizes}
    class_n = torch.tensor([len(g) for g in groups])
    used = torch.zeros_like(class_n)
    out = {}
    for name, total in zip(sizes, totals):
        take = _allocate(total, class_n, class_n - used)
        parts = [g[u:u + t] for g, u, t in zip(groups, used.tolist(), take.tolist())]  # fmt: skip
        out[name] = torch.sort(torch.cat(parts)).values
        used += take
    return out


def nested_fractions(
    pool: Tensor | Sequence[int],
    labels: Tensor | Sequence[int],
    fractions: Sequence[float],
    seed: int,
) -> dict[float, Tensor]:
    """Nested, class-stratified subsets of ``pool`` for each fraction (0.01 = 1 %).

    ``labels[i]`` is the class of ``pool[i]``.  Each class contributes round(f * n_class) ids, at
    least one when f > 0; f = 0 gives an empty set and f = 1 the whole pool.  For one seed the
    subsets are prefixes of one random order per class, so a smaller fraction's subset is always
    inside a larger one's, whatever fraction list is asked for.  Values are sorted pool ids.
    """
    pool = torch.as_tensor(pool).reshape(-1).long()
    labels = torch.as_tensor(labels).reshape(-1).long()
    if pool.shape != labels.shape:
        raise SimgapError(f"labels: {len(labels)} labels for a pool of {len(pool)} ids")
    groups = _class_groups(labels, _seeded(seed, "nested"))
    out: dict[float, Tensor] = {}
    for f in fractions:
        if isinstance(f, bool) or not isinstance(f, numbers.Real) or not 0.0 <= f <= 1.0:
            raise SimgapError(f"fractions: {f!r} is not in [0, 1] (give proportions: 0.05 = 5 %)")
        parts = []
        for g in groups:
            k = len(g) if f >= 1.0 else (max(1, math.floor(f * len(g) + 0.5)) if f > 0 else 0)
            parts.append(g[: min(k, len(g))])
        picked = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
        out[f] = torch.sort(pool[picked]).values
    return out


# --------------------------------------------------------------------------------------------
# info and CLI


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
    rows = []
    root = _data_root(data_root)
    files = None
    for folder in (root, DEBIAN_FASHION_DIR, cache_dir()):
        if folder is not None and (files := _find_fashion(folder)):
            break
    if files:
        n_train = _read_idx(files["train_labels"], header_only=True)[0][0]
        n_test = _read_idx(files["test_labels"], header_only=True)[0][0]
        dims = _read_idx(files["train_images"], header_only=True)[0]
        where = str(files["train_images"].parent)
        native = f"{dims[1]}x{dims[2]}"
        rows.append(
            _info_row("fashion-mnist", n_train + n_test, native, 10, where, n_train, n_test)
        )
    else:
        rows.append(_info_row("fashion-mnist", 0, "28x28", 10, f"not found: {FASHION_HOWTO}"))
    for name in ("digits", *extra):
        try:
            data = load_source(name, size=DEFAULT_SIZE, data_root=data_root, download=False)
        except SimgapError as exc:
            rows.append(_info_row(name, 0, "", 0, str(exc)))
            continue
        native = "8x8" if name == "digits" else "varies"
        rows.append(_info_row(name, len(data), native, data.num_classes, data.origin))
    return rows


def _cmd_info(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    rows = source_info(args.data_root, extra=args.source or ())
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    heads = ["source", "available", "images", "train", "test", "native size", "classes", "origin"]
    table = [
        [r["source"], "yes" if r["available"] else "no", r["images"],
         "-" if r["train"] is None else r["train"], "-" if r["test"] is None else r["test"],
         r["native_size"], r["classes"], r["origin"]]
        for r in rows
    ]  # fmt: skip
    print(tabulate(table, headers=heads, disable_numparse=True))
    print(f"\nimages are loaded at {DEFAULT_SIZE}x{DEFAULT_SIZE} by default; cache: {cache_dir()}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    data = load_source("fashion-mnist", size=args.size, data_root=args.data_root)
    print(f"fashion-mnist: {len(data)} images at {data.size}x{data.size} from {data.origin}")
    print(f"cache: {cache_dir()}")
    return 0


def add_cli(subparsers) -> None:
    """Register ``simgap data info`` and ``simgap data prepare``."""
    data = subparsers.add_parser("data", help="image sources: list them, prepare caches")
    data.set_defaults(func=lambda _args: data.print_help() or 0)
    sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    info = sub.add_parser("info", help="list the image sources found, their sizes and origins")
    info.add_argument("--data-root", help="folder with Fashion-MNIST files (else $SIMGAP_DATA)")
    info.add_argument("--source", action="append", metavar="NAME",
                      help="also describe this source, e.g. folder:PATH (repeatable)")  # fmt: skip
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=_cmd_info)
    prep = sub.add_parser("prepare", help="unpack Fashion-MNIST and cache resized tensors")
    prep.add_argument("--data-root", help="folder with Fashion-MNIST files (else $SIMGAP_DATA)")
    prep.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image size n (default 32)")
    prep.set_defaults(func=_cmd_prepare)
