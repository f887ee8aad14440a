"""Checks of a study config and the command line that run before anything is written.

``study check`` and ``study run`` call :func:`check_config_file` (the YAML itself: duplicate
keys, booleans where seeds go), :func:`check_config` (what a cell would otherwise fail on:
device, data sizes against the source, the image folder, the mask file, passwords in URLs),
:func:`check_workers` and :func:`studies.storage.check_study_folder`.  Each problem is one line
naming the file or field (:class:`SimgapError`, exit 2).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import yaml

from harness.data import load_source, split_source
from harness.errors import SimgapError
from harness.lab.bench import MASK_INITS
from harness.optics.masks import initial_phase
from harness.runtime import usable_cores
from studies.config import StudyConfig
from studies.urls import split_password

SEED_FIELDS = (("seeds",), ("bench", "seeds"), ("data", "split_seed"))


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def check_config_file(path: str | Path) -> None:
    """The YAML of a config file: no duplicate keys, no booleans as seeds."""
    path = Path(path)
    if not path.is_file():
        return  # load_config names the missing file
    try:
        data = yaml.load(path.read_text(), Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        raise SimgapError(f"{path}: {exc.problem} at line {mark.line + 1}") from None
    except yaml.YAMLError:
        return  # load_config reports syntax errors
    if not isinstance(data, dict):
        return
    for keys in SEED_FIELDS:
        value = data
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, bool) for v in values):
            raise SimgapError(f"{path}: {'.'.join(keys)}: a seed is an integer, not {value!r}")


def check_device(device: str, where: str = "config") -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:i`` with that GPU present."""
    if device in ("auto", "cpu"):
        return
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if match is None:
        raise SimgapError(f"{where}: device: {device!r} is not auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise SimgapError(f"{where}: device: {device!r} but no CUDA GPU is available here")
    if match[1] is not None and int(match[1]) >= torch.cuda.device_count():
        raise SimgapError(
            f"{where}: device: {device!r} but only {torch.cuda.device_count()} GPU(s) are here")


def check_data(config: StudyConfig, where: str = "config") -> None:
    """The source exists (image folder) and holds the sim + real sizes asked for."""
    data = config.data
    try:
        images = load_source(data.source, data.size, data.data_root, data.limit, download=False)
    except SimgapError as exc:
        if data.source == "fashion-mnist":
            return  # not here yet: the first cell downloads it
        raise SimgapError(f"{where}: data.source: {exc}") from None
    try:
        split_source(images, data.sim.model_dump(), data.real.model_dump(), data.split_seed)
    except SimgapError as exc:
        raise SimgapError(f"{where}: {exc}") from None


def check_mask(config: StudyConfig, where: str = "config") -> None:
    """A mask file given as ``model.mask_init``: real phases of shape (channels, N, N)."""
    init = config.model.mask_init
    if init in MASK_INITS:
        return
    path = Path(init)
    npz = path / "mask.npz" if path.is_dir() else path
    try:
        with np.load(npz, allow_pickle=False) as data:
            kind = data["phase"].dtype.kind if "phase" in data else None
    except (OSError, ValueError) as exc:
        raise SimgapError(f"{where}: model.mask_init: {npz}: not a mask file ({exc})") from None
    if kind == "c":
        raise SimgapError(f"{where}: model.mask_init: {npz}: the phase is complex; "
                          "a phase mask holds real radians")
    try:
        phase = initial_phase(init, config.optics, config.model.channels)
    except SimgapError as exc:
        raise SimgapError(f"{where}: model.mask_init: {exc}") from None
    if phase.shape[0] != config.model.channels:
        raise SimgapError(
            f"{where}: model.mask_init: {npz} holds {phase.shape[0]} masks, "
            f"model.channels is {config.model.channels}")


def check_config(config: StudyConfig, where: str = "config") -> None:
    """Everything a cell would otherwise fail on, checked before anything is written."""
    for name in ("storage", "tracking_uri"):
        url = getattr(config, name)
        if url and split_password(url)[1] is not None:
            raise SimgapError(
                f"{where}: {name}: holds a password; leave it out of the URL and set "
                "PGPASSWORD or ~/.pgpass (PostgreSQL), MLFLOW_TRACKING_PASSWORD (MLflow)")
    check_device(config.device, where)
    check_mask(config, where)
    check_data(config, where)


def check_workers(workers: int) -> None:
    """1 <= workers <= the cores this process may use."""
    cores = usable_cores()
    if workers < 1:
        raise SimgapError(f"--workers: must be at least 1, got {workers}")
    if workers > cores:
        raise SimgapError(
            f"--workers: {workers} workers but only {cores} core(s) are available here; "
            "use more machines with `simgap study worker` instead")
