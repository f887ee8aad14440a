"""The bench interface: what a study asks of the real domain, and the benches it knows.

A bench is any object with ::

    capture(masks, images, ids) -> frames

``masks``: (k, N, N) float32 SLM phases in radians (what ``mask.npz`` holds; ``mask_c{i}.png``
are their 8-bit gray levels); ``images``: (M, 1, n, n) float32 inputs in [0, 1], in the order
to show them; ``ids``: (M,) int64 input ids.  It returns (M, k, H, W) camera frames in [0, 1]
(a tensor or an array; H = W = n / binning).  Optional members: ``dark()`` -> (D, H, W) frames
with no light, ``flat()`` -> (F, H, W) frames of a uniform white input through a zero-phase
mask, ``describe()`` -> a JSON-able dict for bench.json, ``bit_depth`` (int, default 16: how
frames are stored).  ``capture`` may take a keyword ``capture_index`` ((M,) int64: the plan's
capture indices, which the frames' capture ids are made of; the drift clock of an emulated
bench), ``dark`` / ``flat`` a keyword ``count`` (the frames the request asks for); :func:`record`
passes them when the signature names them, keeps the first ``count`` calibration frames and
refuses fewer.

Kinds (a study config's ``bench.kind``):

- ``emulated``: :class:`Emulated`, the seeded :class:`~harness.lab.bench.EmulatedBench` shown
  the inputs at the plan's capture indices (so its frames are those of ``capture_dataset``);
- ``driver``: a user's class, named ``module:attr`` or as an entry point of the group
  ``simgap.benches``, built as ``cls(optics=OpticsConfig, bench=<bench id>, **options)``;
- ``exchange``: no object; request and answer folders (:mod:`harness.lab.exchange`).

:func:`record` runs a bench on a :class:`CaptureRequest` and writes the capture set (frames,
calibration frames, bench.json, mask.npz).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch

from harness.errors import SimgapError, one_line
from harness.lab.bench import EmulatedBench
from harness.lab.captures import write_capture_set
from harness.optics import OpticsConfig
from harness.plugins import GROUPS, find_plugin, plugin_names

KINDS = ("emulated", "driver", "exchange")
ENTRY_POINT_GROUP = GROUPS["benches"]
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
    """The emulated bench behind the interface: inputs shown at the plan's capture indices (0,
    1, ... in the order given when none), calibration frames after the last of them."""

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
    def capture(self, masks, images, ids, capture_index=None) -> torch.Tensor:
        if capture_index is None:
            index = self._indices(len(images))
        else:
            index = torch.as_tensor(capture_index, dtype=torch.long).reshape(-1)
            self.clock = max([self.clock, *(index + 1).tolist()])
        optics = self.bench.optics(torch.as_tensor(masks))
        return self.bench.capture_batched(optics, torch.as_tensor(images), index,
                                          batch_size=_CHUNK)  # fmt: skip

    @torch.no_grad()
    def dark(self, count: int | None = None) -> torch.Tensor:
        index = self._indices(self.counts.get("dark", 0) if count is None else count)
        n = self.bench.config.n
        dark = torch.zeros(len(index), 1, n, n)
        return self.bench.sense(dark, self.bench.step(index), index)[:, 0]

    @torch.no_grad()
    def flat(self, count: int | None = None) -> torch.Tensor:
        cfg = self.bench.config
        optics = self.bench.optics(torch.zeros(1, cfg.N, cfg.N))
        index = self._indices(self.counts.get("flat", 0) if count is None else count)
        white = torch.ones(len(index), 1, cfg.n, cfg.n)
        return self.bench.capture_batched(optics, white, index, batch_size=len(index) or 1)[:, 0]

    def describe(self) -> dict:
        b = self.bench
        return {"kind": "emulated", "bench": b.parameters(), "seed": b.seed, "preset": b.preset}


def load_driver(spec: str, where: str = "bench.driver"):
    """The class (or factory) a driver spec names: an entry point of the group
    ``simgap.benches`` or ``module:attr`` (:func:`harness.plugins.find_plugin`)."""
    found = find_plugin("benches", spec)
    if found is None:
        raise SimgapError(f"{where}: {spec!r} is neither an importable module:attr nor an entry "
                          f"point of group {ENTRY_POINT_GROUP} (installed: "
                          f"{', '.join(plugin_names('benches')) or 'none'})")  # fmt: skip
    return found


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


def _takes(method, name: str) -> bool:
    """``method`` has a parameter ``name`` (an optional argument of the bench interface)."""
    try:
        return name in inspect.signature(method).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False


def _calibration(bench, request: CaptureRequest, H: int) -> dict[str, np.ndarray]:
    """The calibration frames the request asks for, from the bench's ``dark`` / ``flat``: the
    first ``count`` frames (``count`` passed when the method takes it); fewer is an error."""
    out = {}
    for name, count in request.calibration.items():
        method = getattr(bench, name, None)
        if not count or not callable(method):
            continue
        value = method(count=count) if _takes(method, "count") else method()
        frames = _frames(bench, value, (None, H, H), f"{name}()")
        if len(frames) < count:
            raise SimgapError(f"bench {type(bench).__qualname__}: {name}() returned "
                              f"{len(frames)} frame(s); the request asks for {count}")  # fmt: skip
        out[name] = frames[:count]
    return out


def record(bench, request: CaptureRequest, out_dir: str | Path, fmt: str = "png") -> Path:
    """Capture ``request`` on ``bench`` (one ``capture`` call, then ``dark`` / ``flat`` when
    it has them and the request asks) and write the capture set to ``out_dir``."""
    k, H, M = request.channels, request.frame_size, len(request.plan)
    masks, images = request.masks.detach().float().cpu(), request.images.float().cpu()
    index = request.plan["capture_index"].to_numpy(dtype=np.int64)
    at = {"capture_index": torch.tensor(index)} if _takes(bench.capture, "capture_index") else {}
    frames = _frames(bench, bench.capture(masks.clone(), images.clone(), request.ids, **at),
                     (M, k, H, H), "capture")  # fmt: skip
    calibration = _calibration(bench, request, H)
    describe = getattr(bench, "describe", None)
    info = describe() if callable(describe) else {
        "kind": "driver", "driver": f"{type(bench).__module__}:{type(bench).__qualname__}"}
    return write_capture_set(
        out_dir, frames, request.plan["input_id"].to_numpy(), request.plan["split"].tolist(),
        request.plan["label"].to_numpy(), request.classes, {**info, **request.info}, masks,
        fmt=fmt, bit_depth=int(getattr(bench, "bit_depth", 16)), progress=False,
        capture_ids=index[:, None] * k + np.arange(k)[None, :], calibration=calibration,
    )  # fmt: skip
