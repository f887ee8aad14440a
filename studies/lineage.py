"""What makes a run reproducible in MLflow: the standard tags of every run (user, source, git
commit, simgap version), and for each cell its inputs (the study's splits and the capture set
it adapts on and is scored on, as MLflow datasets) and its final model as an artifact
(``model/model.pt``, read back with :func:`harness.models.load_model`).
"""

from __future__ import annotations

import getpass
import os
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from harness.models import save_model

DIGEST_CHARS = 16  # MLflow keeps at most 36


@lru_cache(maxsize=1)
def _git_commit() -> str | None:
    """The commit of the git checkout simgap runs from (None when installed, or no git)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if len(commit) == 40 else None


def _simgap_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("simgap")
    except PackageNotFoundError:
        return "unknown"


def standard_tags(source: str) -> dict[str, str]:
    """MLflow's standard run tags (user, source name and type, git commit) and the version."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (e.g. a bare container)
        user = str(os.getuid())
    tags = {"mlflow.user": user, "mlflow.source.name": source, "mlflow.source.type": "LOCAL",
            "simgap.version": _simgap_version()}
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _where(path: Path, folder: Path | None) -> str:
    """``path`` relative to the study folder when inside it (the folder may move)."""
    path = Path(path).resolve()
    if folder is not None and path.is_relative_to(Path(folder).resolve()):
        return path.relative_to(Path(folder).resolve()).as_posix()
    return str(path)


def cell_inputs(handle, cell, data, capture_dir: Path, capture_digest: str) -> list[dict]:
    """The datasets a cell reads: the study's splits of its image source, and the capture set
    of its sim model on its bench (the real pool its fraction comes from, real val, real test)."""
    config = handle.config
    counts = {name: len(ids) for name, ids in data.splits.items()}
    real = {name: counts[name] for name in ("pool", "val", "test") if name in counts}
    return [
        {"name": f"{config.data.source} n={config.data.size} splits",
         "digest": data.splits_hash[:DIGEST_CHARS], "context": "splits",
         "source": {"source": config.data.source, "size": config.data.size,
                    "data_root": config.data.data_root, "split_seed": config.data.split_seed},
         "profile": counts},
        {"name": f"captures {cell.policy} s{cell.seed} bench {cell.bench}",
         "digest": capture_digest[:DIGEST_CHARS], "context": "captures",
         "source": {"uri": _where(capture_dir, handle.study_dir or handle.home),
                    "bench_seed": cell.bench, "bench_preset": config.bench.of(cell.bench).preset},
         "profile": {**real, "real_fraction": cell.fraction}},
    ]  # fmt: skip


def log_cell_lineage(run, handle, cell, data, capture_dir: Path, capture_digest: str,
                     model) -> None:
    """The cell's inputs and its final model (``model/model.pt``) into its run."""
    run.log_inputs(cell_inputs(handle, cell, data, capture_dir, capture_digest))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        save_model(model, path)
        run.log_artifact(path, "model")
