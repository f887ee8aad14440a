"""Calibration frames of a capture set: camera dark frames and a flat field.

A capture set may hold unlabelled frames next to its manifest (:mod:`harness.lab.captures`):
``dark`` (no light on the camera: offset, read noise, hot pixels) and ``flat`` (a uniform white
input through a zero-phase mask: vignetting, pixel gain, illumination).  bench.json's capture
block lists their files (``capture.calibration = {"dark": [paths], "flat": [paths]}``); they
follow the frame rules (single-channel 16-bit PNG / TIFF or float32 TIFF, the capture's bit depth
and frame size, paths inside the folder).  They are real data without labels: a policy or a
method may use them, no score is ever computed on them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from harness.errors import SimgapError
from harness.lab.captures import BENCH_JSON, CALIBRATION
from harness.lab.frames import load_frames


def calibration_files(root: Path, bench_info: dict) -> dict[str, list[Path]]:
    """{name: [files]} that bench.json lists (checked: known names, paths inside ``root``)."""
    listed = (bench_info.get("capture") or {}).get("calibration") or {}
    where = root / BENCH_JSON
    if not isinstance(listed, dict):
        raise SimgapError(f"{where}: capture.calibration must map dark / flat to file lists")
    real_root = os.path.realpath(root)
    out = {}
    for name, paths in listed.items():
        if name not in CALIBRATION:
            raise SimgapError(
                f"{where}: capture.calibration.{name} is not one of {', '.join(CALIBRATION)}"
            )
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise SimgapError(f"{where}: capture.calibration.{name} must be a list of paths")
        files = []
        for rel in paths:
            parts = rel.replace("\\", "/").split("/")
            full = root.joinpath(*parts)
            if os.path.isabs(rel) or ".." in parts or not os.path.realpath(full).startswith(
                real_root + os.sep
            ):
                raise SimgapError(
                    f"{where}: capture.calibration.{name}: path '{rel}' leaves the folder"
                )
            files.append(full)
        out[name] = files
    return out


def read_calibration(root: str | Path, bench_info: dict) -> dict[str, torch.Tensor]:
    """{name: (D, H, W) float32 in [0, 1]} of the calibration frames bench.json lists, each
    name's frames checked and scaled like data frames (:func:`harness.lab.frames.load_frames`)."""
    root = Path(root)
    capture = bench_info.get("capture") or {}
    out = {}
    for name, files in calibration_files(root, bench_info).items():
        if not files:
            continue
        slots = np.arange(len(files))
        rows = pd.DataFrame({"file": [str(f) for f in files], "input_id": slots, "channel": 0})
        frames, *_ = load_frames(root, rows, pd.DataFrame({"input_id": slots}), 1, capture)
        out[name] = torch.from_numpy(frames[:, 0])
    return out
