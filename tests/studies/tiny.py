"""A study small enough for tests: digits at 8 x 8, two policies, two seeds."""

from __future__ import annotations

from studies.config import parse_config
from studies.worker import prepare_study

TINY = {
    "name": "tiny",
    "data": {"source": "digits", "size": 8, "sim": {"train": 300, "val": 60, "test": 60},
             "real": {"pool": 150, "val": 40, "test": 80}},
    "model": {"channels": 2, "mask_init": "edge"},
    "training": {"epochs": 6, "batch_size": 16, "lr": 0.003},
    "adapt": {"steps": 6, "evals": 2, "batch_size": 16, "lr": 0.003},
    "policies": ["none", "physics"],
    "methods": ["finetune-head", "real-only"],
    "fractions": [0, 0.1, 1.0],
    "seeds": [0, 1],
    "bench": {"seeds": [0], "preset": "typical"},
    "report": {"tsne_points": 40, "feature_points": 40},
}


def study_of(tmp_path, **changes):
    """The TINY study (with ``changes``) created and queued in ``tmp_path / "study"``."""
    return prepare_study(parse_config({**TINY, **changes}), tmp_path / "study")
