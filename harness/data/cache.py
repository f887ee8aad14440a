"""Where sources are found and where resized tensors are cached.

Resized tensors are cached as ``.pt`` files under the cache folder (``$SIMGAP_CACHE`` or
``~/.cache/simgap``) and read back with ``weights_only=True``.  A cache entry is keyed by a
fingerprint of the raw files (path, size, mtime) and the loading options, so a changed file or a
new :data:`CACHE_VERSION` never reuses a stale entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from harness.files import atomic_write

CACHE_VERSION = 1  # bump when the cached tensors would change
CACHE_MODE = 0o644  # caches may be shared between users


def cache_dir() -> Path:
    """Folder for unpacked raw files and tensor caches: ``$SIMGAP_CACHE`` or ~/.cache/simgap."""
    env = os.environ.get("SIMGAP_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "simgap"


def resolve_data_root(data_root: str | Path | None) -> Path | None:
    """``data_root`` if given, else ``$SIMGAP_DATA``, else None."""
    if data_root is not None:
        return Path(data_root).expanduser()
    env = os.environ.get("SIMGAP_DATA")
    return Path(env).expanduser() if env else None


def fingerprint(files: Sequence[Path], extra: object) -> str:
    """A key for the cache entry made from ``files`` (path, size, mtime) and ``extra``."""
    h = hashlib.sha256(json.dumps([CACHE_VERSION, str(extra)]).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _tensor_path(slug: str, size: int, key: str) -> Path:
    return cache_dir() / "tensors" / f"{slug}-{size}-{key}.pt"


def load_tensors(slug: str, size: int, key: str) -> tuple[Tensor, Tensor] | None:
    """Cached (images, labels) of a source at ``size``, or None on a miss."""
    path = _tensor_path(slug, size, key)
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, weights_only=True)
        return blob["images"], blob["labels"]
    except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError):  # a miss
        return None


def store_tensors(slug: str, size: int, key: str, images: Tensor, labels: Tensor) -> None:
    """Cache (images, labels) and drop older entries of the same source and size."""
    path = _tensor_path(slug, size, key)
    try:
        atomic_write(
            path, lambda p: torch.save({"images": images, "labels": labels}, p), CACHE_MODE
        )
        for old in path.parent.glob(f"{slug}-{size}-*.pt"):  # drop stale versions
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:
        pass  # read-only cache: recompute next time
