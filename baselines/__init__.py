"""Adaptation methods compared against physics-consistent augmentation.

Every method has the signature

    method(model, pool, val, config=None, seed=0, *, sim_train=None, policy=None,
           callback=None, checkpoint_dir=None) -> AdaptResult

with ``model`` the sim-trained :class:`~harness.models.HybridModel` (never modified), ``pool`` the
real pool fraction and ``val`` the real validation captures (:class:`~harness.datasets.FrameData`),
``config`` a :class:`~harness.train.TrainConfig`.  Real test is never passed in; data tagged
``split="test"`` is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from baselines.finetune import AdaptResult, finetune
from baselines.real_only import real_only
from baselines.siamese import SiameseOptions, siamese
from harness.errors import SimgapError
from harness.plugins import find_plugin, known_names

METHODS: dict[str, Callable[..., AdaptResult]] = {
    "finetune-head": partial(finetune, mode="head"),
    "finetune-full": partial(finetune, mode="full"),
    "real-only": real_only,
    "siamese": siamese,
}


def get_method(name: str) -> Callable[..., AdaptResult]:
    """Method ``name``: built in, or a plug-in (:mod:`harness.plugins`, group
    ``simgap.methods``) with the signature above."""
    method = METHODS.get(name) or find_plugin("methods", name)
    if method is None:
        raise SimgapError(f"method: '{name}' is not one of {known_names('methods', METHODS)}")
    return method


__all__ = ["METHODS", "AdaptResult", "SiameseOptions", "get_method"]
