"""A content-addressed cache of study artifacts shared by the cells (and workers) of a study.

Sim-trained models are keyed by everything that determines them (data split, optics, model,
training budget, policy, seed); capture sets by the model key plus the bench seed and preset.  An
entry is a folder ``<root>/<kind>/<hash>/`` built in a temporary folder and renamed into place
(atomic), under a file lock, so two workers never build the same entry and nobody ever reads a
half-written one.  A worker killed while building leaves only a temporary folder, removed by the
next build.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock

from harness.files import staged_dir
from studies.config import config_hash

KEY_FILE = "key.json"


class ArtifactCache:
    """Entries ``<root>/<kind>/<hash of key>/``, each built once by whoever asks first."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, kind: str, key: Mapping[str, Any]) -> Path:
        return self.root / kind / config_hash(dict(key))

    def get_or_build(
        self, kind: str, key: Mapping[str, Any], build: Callable[[Path], Any]
    ) -> tuple[Path, bool]:
        """The folder of entry ``key``, building it with ``build(tmp_dir)`` if missing.

        Returns (folder, built_here).  ``build`` writes its files into the temporary folder it
        gets; the key is written last as ``key.json`` and the folder renamed into place.
        """
        dest = self.path(kind, key)
        if (dest / KEY_FILE).is_file():
            return dest, False
        dest.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(dest.parent / f".{dest.name}.lock")):
            if (dest / KEY_FILE).is_file():
                return dest, False
            for stale in dest.parent.glob(f".{dest.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            if dest.exists():  # an entry without its key file is incomplete
                shutil.rmtree(dest)
            with staged_dir(dest) as tmp:  # .NAME.tmp-*, removed if build fails
                build(tmp)
                (tmp / KEY_FILE).write_text(json.dumps(dict(key), indent=1, sort_keys=True))
        return dest, True
