"""The one atomic writer: readers see the old file (or folder) or the new one, never half of one.
(Plus :func:`read_json_object`, the one reader of the JSON files simgap writes.)

Every writer in simgap goes through these functions: a file is written to a temporary name in
its own folder and renamed over the target (``os.replace`` is atomic within a file system); a
folder is built under a temporary name and swapped in by renames (:func:`replace_dir`).  A failed
write removes its temporary file or folder, so nothing half-written is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness.errors import SimgapError, one_line


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None], mode: int | None = None) -> Path:
    """Call ``write(tmp)`` on a temporary path next to ``path``, then rename it to ``path``.

    The file gets ``mode`` (default: 0o666 less the umask, what ``open`` would give; mkstemp alone
    makes it private).  Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, (0o666 & ~_umask()) if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str, mode: int | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), mode)


def write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), mode)


def write_json(path: str | Path, obj: Any, indent: int | None = 2, **dumps) -> Path:
    """Write ``obj`` as JSON (with a final newline) to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=indent, **dumps) + "\n")


def save_torch(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically (read back with ``torch.load(weights_only=True)``)."""
    import torch  # torch is heavy; this leaf module is imported by light CLI paths too

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished folder ``tmp`` at ``out`` by renames only: an existing ``out`` is moved
    aside, ``tmp`` takes its place, then the old folder is removed.  Readers see either the old
    or the new folder, never a half-written one."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def temporary_dir_for(out: str | Path) -> Path:
    """A new empty folder next to ``out`` (same file system) to build ``out`` in."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


@contextlib.contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """Build a folder atomically: ``with staged_dir(out) as tmp:`` fill ``tmp``; on success it
    replaces ``out`` (:func:`replace_dir`), on any error it is removed and ``out`` is untouched."""
    out = Path(out)
    tmp = temporary_dir_for(out)
    try:
        yield tmp
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json_object(path: str | Path) -> dict:
    """The JSON object in ``path``; a one-line :class:`SimgapError` naming the file when it
    cannot be read, is not JSON, or holds something other than an object."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SimgapError(f"{path}: not readable JSON ({one_line(exc, path)})") from None
    if not isinstance(obj, dict):
        raise SimgapError(f"{path}: must hold a JSON object")
    return obj
