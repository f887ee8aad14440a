"""A study's capture sets, taken on the bench of its config (:mod:`studies.benches`).

For each (sim model, bench) its cells need, :func:`capture_set` returns the folder of the cached
capture set.  ``emulated`` and ``driver`` benches capture at once, in the worker that needs the
set, through the bench interface (:mod:`harness.lab.benches`).  ``exchange`` writes a capture
request (:mod:`harness.lab.exchange`) and raises
:class:`~harness.lab.exchange.CapturesPending` until the lab's answer is there and passes the
checks; then the answer is copied into the cache and used like any capture set.  The cells that
wait are queued again as *waiting for captures* (:func:`studies.queue.await_captures`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from filelock import FileLock

from harness.errors import SimgapError
from harness.lab.benches import CaptureRequest, Emulated, make_driver, record
from harness.lab.exchange import (
    REQUEST_JSON,
    CapturesPending,
    accept,
    answer_dir,
    answer_ready,
    rejection,
    request_dir,
    request_id,
    write_request,
)
from harness.lab.plans import capture_plan
from studies.benches import BenchConfig
from studies.cache import KEY_FILE, ArtifactCache
from studies.config import StudyConfig, config_hash

CAPTURE_VERSION = 1


def capture_key(config: StudyConfig, sim_hash: str, bench: int) -> dict:
    """The cache key of the capture set of the sim model ``sim_hash`` on ``bench`` (emulated
    keys are those of the first version, so their cached sets stay valid)."""
    key = {"kind": "captures", "v": CAPTURE_VERSION, "sim": sim_hash, "bench": bench}
    b = config.bench.of(bench)
    if b.kind == "emulated":
        return {**key, "preset": b.preset}
    return {**key, "bench_kind": b.kind, "driver": b.driver, "options": b.options,
            "calibration": b.calibration}  # fmt: skip


def capture_request(config: StudyConfig, data, masks: torch.Tensor, info: dict,
                    bench: BenchConfig | None = None,
                    only: tuple[str, ...] = ("pool", "val", "test")) -> CaptureRequest:  # fmt: skip
    """The real pool / val / test inputs of the study in capture order, shown with ``masks``,
    with the calibration frames of ``bench`` (default: the first bench block).  ``only``
    keeps the rows of those splits, at their capture indices of the full plan (an input's
    frames are those of the full set)."""
    bench = bench or config.bench
    splits = {s: data.splits[s] for s in ("pool", "val", "test")}
    plan = capture_plan(data.images, splits)
    plan = plan[plan["split"].isin(only)].reset_index(drop=True)
    ids = torch.as_tensor(plan["input_id"].to_numpy(copy=True), dtype=torch.long)
    info = {"source": data.images.source, "size": data.images.size, **info}
    return CaptureRequest(masks.detach().cpu().float(), config.optics, data.images.images[ids],
                          plan, list(data.images.classes), dict(bench.calibration),
                          info)  # fmt: skip


def exchange_folder(config: StudyConfig, study_dir: Path | None) -> Path:
    """Where requests and answers live: ``bench.folder`` (relative to the study folder)."""
    given = [b.folder for b in config.bench.blocks if b.kind == "exchange" and b.folder]
    folder = Path(given[0] if given else "exchange").expanduser()
    if folder.is_absolute():
        return folder
    if study_dir is None:
        raise SimgapError("bench.folder: a worker joining by storage URL needs an absolute "
                          "bench.folder (the exchange folder of the study)")  # fmt: skip
    return Path(study_dir) / folder


def bench_device(config: StudyConfig, bench: int):
    """The bench (:mod:`harness.lab.benches`) of bench id ``bench`` of an emulated or driver
    block."""
    b = config.bench.of(bench)
    if b.kind == "emulated":
        return Emulated(config.optics, bench, b.preset, b.calibration)
    return make_driver(b.driver, config.optics, bench, b.options)


def capture_set(config: StudyConfig, cache: ArtifactCache, key: dict, label: str, seed: int,
                request: Callable[[], CaptureRequest], study_dir: Path | None) -> Path:
    """The folder of the cached capture set ``key`` (sim model of ``label`` and ``seed``);
    ``request()`` builds the capture request (it may train the sim model first)."""
    bench = key["bench"]
    b = config.bench.of(bench)
    if b.kind == "exchange":
        return _answered(config, cache, key, request_id(label, seed, bench, config_hash(key)),
                         request, study_dir)  # fmt: skip

    def build(tmp: Path) -> None:
        asked = request()
        record(bench_device(config, bench), asked, tmp / "set")

    path, _ = cache.get_or_build("captures", key, build)
    return path / "set"


def _answered(config, cache: ArtifactCache, key: dict, rid: str, request, study_dir) -> Path:
    """The cached answer of request ``rid``; writes the request, or raises CapturesPending."""
    path = cache.path("captures", key)
    if (path / KEY_FILE).is_file():
        return path / "set"
    folder = exchange_folder(config, study_dir)
    if not (request_dir(folder, rid) / REQUEST_JSON).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / f".{rid}.lock")):  # one worker writes it, the others wait
            if not (request_dir(folder, rid) / REQUEST_JSON).is_file():
                write_request(folder, rid, request())
    if not answer_ready(folder, rid):
        raise CapturesPending(rid, request_dir(folder, rid),
                              (rejection(folder, rid) or {}).get("reason"))  # fmt: skip
    path, _ = cache.get_or_build("captures", key, lambda tmp: accept(folder, rid, tmp / "set"))
    return path / "set"


def ready_check(config: StudyConfig, study_dir: Path | None) -> Callable[[str], bool] | None:
    """For the queue: is there an answer (not yet rejected) to request ``rid``?  None when the
    bench is not an exchange (no cell ever waits)."""
    if all(b.kind != "exchange" for b in config.bench.blocks):
        return None
    folder = exchange_folder(config, study_dir)
    seen: dict[str, bool] = {}

    def ready(rid: str) -> bool:
        if rid not in seen:
            seen[rid] = answer_ready(folder, rid)
        return seen[rid]

    return ready


def waiting_requests(config: StudyConfig, study_dir: Path | None, rids) -> list[dict]:
    """Request folder, answer folder and last rejection of each request id in ``rids``."""
    folder = exchange_folder(config, study_dir)
    return [{"id": rid, "request": str(request_dir(folder, rid)),
             "answer": str(answer_dir(folder, rid)),
             "rejected": (rejection(folder, rid) or {}).get("reason")}
            for rid in sorted(set(rids))]  # fmt: skip
