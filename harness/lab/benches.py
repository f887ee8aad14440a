"""The bench interface: what a study asks of the real domain, and the benches it knows.

A bench is any object with ::

    capture(masks, images, ids) -> frames

``masks``: (k, N, N) float32 SLM phases in radians (what ``mask.npz`` holds; ``mask_c{i}.png``
are their 8-bit gray levels); ``images``: (M, 1, n, n) float32 inputs in [0, 1], in the order
to show them; ``ids``: (M,) int64 input ids.  It returns (M, k, H, W) camera frames in [0, 1]
(a tensor or an array; H = W = n / binning).  Optional members: ``dark()`` -> (D, H, W) frames
with no light, ``flat()`` -> (F, H, W) frames of a uniform white input through a zero-phase
mask, ``describe()`` -> a JSON-able dict for bench.json, ``bit_depth`` (int, default 16: how
frames are stored).

Kinds (a study config's ``bench.kind``):

- ``emulated``: :class:`Emulated`, the seeded :class:`~harness.lab.bench.EmulatedBench` shown
  the inputs at capture indices 0, 1, ... (so its frames are those of ``capture_dataset``);
- ``driver``: a user's class, named ``module:attr`` or as an entry point of the group
  ``simgap.benches``, built as ``cls(optics=OpticsConfig, bench=<bench id>, **options)``;
- ``exchange``: no object; request and answer folders (:mod:`harness.lab.exchange`).

:func:`record` runs a bench on a :class:`CaptureRequest` and writes the capture set (frames,
calibration frames, bench.json, mask.npz).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch

from harness.errors import SimgapError, one_line
from harness.lab.bench import EmulatedBench
from harness.lab.captures import write_capture_set
from harness.optics import OpticsConfig

KINDS = ("emulated", "driver", "exchange")
ENTRY_POINT_GROUP = "simgap.benches"
CALIBRATION_COUNTS = {"dark": 8, "flat": 8}  # frames a request asks for by default
_CHUNK = 256  # inputs per emulated optics batch (the batches of capture_dataset)


@runtime_checkable
class Bench(Protocol):
    """The one method a bench must have (see the module doc for the optional ones)."""

    def capture(self, masks: torch.Tensor, images: torch.Tensor, ids: torch.Tensor): ...


@dataclass(frozen=True)
class CaptureRequest:
    """What a study needs captured: one mask set shown with every input of ``plan``."""

    masks: torch.Tensor  # (k, N, N) radians
    optics: OpticsConfig
    images: torch.Tensor  # (M, 1, n, n) in [0, 1], in plan order
    plan: pd.DataFrame  # capture_index, input_id, split, label (capture order)
    classes: list[str]
    calibration: dict[str, int] = field(default_factory=lambda: dict(CALIBRATION_COUNTS))
    info: dict = field(default_factory=dict)  # added to bench.json

    @property
    def ids(self) -> torch.Tensor:
        return torch.as_tensor(self.plan["input_id"].to_numpy(copy=True), dtype=torch.long)

    @property
    def channels(self) -> int:
        return int(self.masks.shape[0])

    @property
    def frame_size(self) -> int:
        return self.optics.n // self.optics.camera.binning


class Emulated:
    """The emulated bench behind the interface: inputs shown at capture indices 0, 1, ...
    in the order given, calibration frames after them."""

    def __init__(self, optics: OpticsConfig, seed: int, preset: str = "typical",
                 calibration: dict[str, int] | None = None):  # fmt: skip
        self.bench = EmulatedBench(optics, seed, preset)
        self.counts = dict(CALIBRATION_COUNTS if calibration is None else calibration)
        self.bit_depth = int(self.bench.fixed["bit_depth"])
        self.clock = 0  # the next capture index

    def _indices(self, count: int) -> torch.Tensor:
        index = torch.arange(self.clock, self.clock + count)
        self.clock += count
        return index

    @torch.no_grad()
    def capture(self, masks, images, ids) -> torch.Tensor:
        optics = self.bench.optics(torch.as_tensor(masks))
        index = self._indices(len(images))
        H = self.bench.frame_size
        frames = torch.empty(len(images), optics.channels, H, H)
        for chunk in torch.arange(len(images)).split(_CHUNK):
            frames[chunk] = self.bench._capture(optics, images[chunk], index[chunk]).cpu()
        return frames

    @torch.no_grad()
    def dark(self) -> torch.Tensor:
        index = self._indices(self.counts.get("dark", 0))
        n = self.bench.config.n
        dark = torch.zeros(len(index), 1, n, n)
        return self.bench.sense(dark, self.bench.step(index), index)[:, 0]

    @torch.no_grad()
    def flat(self) -> torch.Tensor:
        cfg = self.bench.config
        optics = self.bench.optics(torch.zeros(1, cfg.N, cfg.N))
        index = self._indices(self.counts.get("flat", 0))
        white = torch.ones(len(index), 1, cfg.n, cfg.n)
        return self.bench._capture(optics, white, index)[:, 0]

    def describe(self) -> dict:
        b = self.bench
        return {"kind": "emulated", "bench": b.parameters(), "seed": b.seed, "preset": b.preset}


def load_driver(spec: str, where: str = "bench.driver"):
    """The class (or factory) a driver spec names: ``module:attr`` or an entry point name."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            obj = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - a user's module may raise anything
            raise SimgapError(f"{where}: cannot import {module_name} ({one_line(exc)})") from None
        for part in attr.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                raise SimgapError(f"{where}: {module_name} has no attribute {attr!r}")
        return obj
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
    if not found:
        names = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
        raise SimgapError(
            f"{where}: {spec!r} is neither module:attr nor an entry point of group "
            f"{ENTRY_POINT_GROUP} (installed: {', '.join(names) or 'none'})"
        )
    try:
        return found[0].load()
    except Exception as exc:  # noqa: BLE001
        raise SimgapError(
            f"{where}: entry point {spec!r} does not load ({one_line(exc)})"
        ) from None


def make_driver(spec: str, optics: OpticsConfig, bench: int, options: dict | None = None):
    """An instance of the driver ``spec`` for bench id ``bench``; checks it has ``capture``."""
    factory = load_driver(spec)
    try:
        driver = factory(optics=optics, bench=bench, **(options or {}))
    except Exception as exc:  # noqa: BLE001
        raise SimgapError(f"bench.driver: {spec}(optics=..., bench={bench}, **options) failed "
                          f"({one_line(exc)})") from None  # fmt: skip
    if not isinstance(driver, Bench):
        raise SimgapError(f"bench.driver: {spec} has no capture(masks, images, ids) method")
    return driver


def _frames(bench, value, shape: tuple, what: str) -> np.ndarray:
    """A bench's frames as float32 of ``shape`` (any leading count when shape[0] is None)."""
    name = type(bench).__qualname__
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    want = tuple(arr.shape[:1]) + tuple(shape[1:]) if shape[0] is None else tuple(shape)
    if arr.shape != want or (shape[0] is None and not arr.shape[0]):
        raise SimgapError(f"bench {name}: {what} returned frames of shape {arr.shape}; "
                          f"expected {want}")  # fmt: skip
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise SimgapError(f"bench {name}: {what} returned values outside [0, 1] (or NaN)")
    return arr


def record(bench, request: CaptureRequest, out_dir: str | Path, fmt: str = "png") -> Path:
    """Capture ``request`` on ``bench`` (one ``capture`` call, then ``dark`` / ``flat`` when
    it has them and the request asks) and write the capture set to ``out_dir``."""
    k, H, M = request.channels, request.frame_size, len(request.plan)
    masks, images = request.masks.detach().float().cpu(), request.images.float().cpu()
    frames = _frames(bench, bench.capture(masks.clone(), images.clone(), request.ids),
                     (M, k, H, H), "capture")
    calibration = {}
    for name, count in request.calibration.items():
        if count and callable(getattr(bench, name, None)):
            calibration[name] = _frames(bench, getattr(bench, name)(), (None, H, H), f"{name}()")
    describe = getattr(bench, "describe", None)
    info = describe() if callable(describe) else {
        "kind": "driver", "driver": f"{type(bench).__module__}:{type(bench).__qualname__}"}
    index = request.plan["capture_index"].to_numpy()
    return write_capture_set(
        out_dir, frames, request.plan["input_id"].to_numpy(), request.plan["split"].tolist(),
        request.plan["label"].to_numpy(), request.classes, {**info, **request.info}, masks,
        fmt=fmt, bit_depth=int(getattr(bench, "bit_depth", 16)), progress=False,
        capture_ids=index[:, None] * k + np.arange(k)[None, :], calibration=calibration,
    )  # fmt: skip
