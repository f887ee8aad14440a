"""Atomic file-system helpers shared by the writers (capture sets, exported masks)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


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
