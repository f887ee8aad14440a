"""The ``exchange`` bench: capture requests and answers through a folder shared with a lab.

    FOLDER/requests/<id>/   written by simgap: mask_c{i}.png (8-bit gray levels), mask.npz,
                            optics.json, inputs.csv + inputs/<input_id>.png, README.txt,
                            request.json (what an answer must hold)
    FOLDER/answers/<id>/    written by the lab: a capture set (:mod:`harness.lab.captures`) of
                            every input of the request, one frame per mask, 16-bit (or float32
                            TIFF) frames, plus the dark and flat-field calibration frames

An answer is taken only when it passes :func:`check_answer`: every ``simgap captures check``
rule, then the request's own (the same inputs, splits and labels, the request's mask, the frame
size, frames of at least 10 bits, the calibration frames asked for).  A rejected answer is
recorded in the request folder (``rejected.json``: its reason and a signature of the answer's
files) and looked at again only when its files change.  :func:`answer_request` is the lab side
for a bench object (an emulated bench, a driver): it answers a request folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import torch
from PIL import Image
from pydantic import ValidationError

from harness.errors import SimgapError, one_line
from harness.files import read_json_object, staged_dir, write_json, write_text
from harness.lab.bench import DISPLAY_BITS
from harness.lab.benches import CaptureRequest, record
from harness.lab.calibration import calibration_files
from harness.lab.captures import CALIBRATION, MANIFEST, MASK_NPZ, SPLITS
from harness.lab.plans import write_inputs
from harness.lab.validate import check_capture_set
from harness.optics import OpticsConfig
from harness.optics.masks import export_mask, load_mask

REQUESTS, ANSWERS = "requests", "answers"
REQUEST_JSON, REJECTED_JSON = "request.json", "rejected.json"
MIN_BITS = 10  # frames of fewer bits (8-bit PNGs) are refused
REQUEST_VERSION = 1
#: what a request.json must hold, and the JSON type of each field
_REQUEST_FIELDS = {"id": str, "frame_size": list, "classes": list, "calibration": dict,
                   "optics": dict, "answer": str}  # fmt: skip
_JSON_TYPES = {str: "string", list: "list", dict: "object"}
_PLAN_COLUMNS = ("capture_index", "input_id", "split", "label")


class CapturesPending(Exception):
    """A cell needs the answer to a capture request that is not there (or was rejected)."""

    def __init__(self, request_id: str, request_dir: Path, reason: str | None = None):
        self.request_id, self.request_dir, self.reason = request_id, Path(request_dir), reason
        super().__init__(f"waiting for captures {request_id} ({request_dir})"
                         + (f": answer rejected: {reason}" if reason else ""))  # fmt: skip


def request_id(label: str, seed: int, bench: int, key_hash: str) -> str:
    """A folder name for the request of (sim model, bench): ``physics-s0-b1-1a2b3c4d``."""
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', label)}-s{seed}-b{bench}-{key_hash[:8]}"


def request_dir(folder: str | Path, rid: str) -> Path:
    return Path(folder) / REQUESTS / rid


def answer_dir(folder: str | Path, rid: str) -> Path:
    return Path(folder) / ANSWERS / rid


# ---------------------------------------------------------------------------------- requests
def write_request(folder: str | Path, rid: str, request: CaptureRequest) -> Path:
    """Write the request folder once (atomically); an existing one is left as it is."""
    out = request_dir(folder, rid)
    if (out / REQUEST_JSON).is_file():
        return out
    answer = answer_dir(folder, rid)
    answer.parent.mkdir(parents=True, exist_ok=True)
    k, H, M = request.channels, request.frame_size, len(request.plan)
    with staged_dir(out) as tmp:
        export_mask(request.masks, request.optics, tmp)
        write_inputs(tmp, request.images, request.plan)
        (tmp / "README.txt").write_text(_readme(rid, request, answer))
        write_json(tmp / REQUEST_JSON, {
            "id": rid, "version": REQUEST_VERSION, "channels": k, "frame_size": [H, H],
            "n_inputs": M, "classes": list(request.classes), "calibration": request.calibration,
            "min_bits": MIN_BITS, "optics": request.optics.model_dump(mode="json"),
            "answer": str(answer), "info": request.info,
        }, default=str)  # fmt: skip
    return out


def _readme(rid: str, request: CaptureRequest, answer: Path) -> str:
    k, H, M = request.channels, request.frame_size, len(request.plan)
    dark, flat = request.calibration.get("dark", 0), request.calibration.get("flat", 0)
    return f"""simgap capture request {rid}

Show every input of inputs.csv (in capture_index order; 8-bit images in inputs/) through each of
the {k} mask(s) mask_c0.png .. mask_c{k - 1}.png (8-bit phase gray levels g = round(phase / 2pi
* 256) mod 256; float phases in radians in mask.npz; optics in optics.json), and record one
camera frame per input and mask: {M} inputs x {k} channel(s) = {M * k} frames.

Frames: single-channel, {H} x {H} pixels, 16-bit PNG or TIFF (10..16 significant bits, declared
as capture.bit_depth in bench.json) or float32 TIFF in [0, 1]. 8-bit frames are refused.
Calibration: {dark} dark frame(s) (light blocked) and {flat} flat-field frame(s) (a
uniform white input, every mask pixel at gray level 0), same size and format, listed in
bench.json as capture.calibration = {{"dark": [paths], "flat": [paths]}}.

Answer: a capture set (see README "Running a study on your bench") in
  {answer}
manifest.csv (capture_id, input_id, split, label, channel, path; split and label as in
inputs.csv), frames/<split>/<input_id:06d>_c<channel>.png, calibration/dark_000.png ...,
bench.json with a "capture" block (frame_size, channels, bit_depth, calibration and classes
{json.dumps(list(request.classes))}) and a copy of this folder's mask.npz. Check it with
  simgap captures check ANSWER --inputs inputs.csv
then write it under another name and rename it to the answer folder when complete.
"""


def read_request(folder: str | Path) -> tuple[dict, CaptureRequest]:
    """(request.json, the CaptureRequest) of a request folder: what a lab script reads."""
    folder = Path(folder)
    meta = _request_json(folder)
    try:
        optics = OpticsConfig(**meta["optics"])
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        where = folder / REQUEST_JSON
        raise SimgapError(f"{where}: field 'optics.{field}': {err['msg']}") from None
    masks, _ = load_mask(folder)
    plan, images = _read_inputs(folder, optics.n)
    images = torch.from_numpy(images.astype(np.float32) / (2**DISPLAY_BITS - 1))[:, None]
    request = CaptureRequest(
        masks, optics, images, plan.drop(columns="image"),
        meta["classes"], dict(meta["calibration"]), {"request": meta["id"]},
    )  # fmt: skip
    return meta, request


def _read_inputs(folder: Path, n: int) -> tuple[pd.DataFrame, np.ndarray]:
    """(inputs.csv, its (M, n, n) uint8 images) of a request folder, checked."""
    path = folder / "inputs.csv"
    if not path.is_file():
        raise SimgapError(f"{path}: not found (the inputs of the request)")
    try:
        plan = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise SimgapError(f"{path}: not a readable CSV ({type(exc).__name__})") from None
    missing = [c for c in (*_PLAN_COLUMNS, "image") if c not in plan.columns]
    if missing:
        raise SimgapError(f"{path}: no column {', '.join(missing)}")
    for col in ("capture_index", "input_id", "label"):
        if not pd.api.types.is_integer_dtype(plan[col]):
            raise SimgapError(f"{path}: column {col}: every value must be an integer")
    bad = ~plan["split"].isin(SPLITS)
    if bad.any():
        raise SimgapError(f"{path}: split '{plan['split'][bad].iloc[0]}' is not pool/val/test")
    images = np.empty((len(plan), n, n), np.uint8)
    for m, rel in enumerate(plan["image"]):
        f = folder / str(rel)
        try:
            with Image.open(f) as im:
                if im.mode != "L" or im.size != (n, n):
                    raise SimgapError(f"{f}: {im.mode} image of {im.size[0]}x{im.size[1]}; "
                                      f"expected an 8-bit gray (L) {n}x{n} image")  # fmt: skip
                images[m] = np.asarray(im)
        except SimgapError:
            raise
        except Exception as exc:  # noqa: BLE001 - Pillow raises assorted errors on garbage
            raise SimgapError(f"{f}: not a readable image ({one_line(exc, f)})") from None
    return plan, images


def _request_json(folder: Path) -> dict:
    path = folder / REQUEST_JSON
    meta = read_json_object(path)
    for key, kind in _REQUEST_FIELDS.items():
        if key not in meta:
            raise SimgapError(f"{path}: no field '{key}' (written by simgap; write it again?)")
        if not isinstance(meta[key], kind):
            raise SimgapError(f"{path}: field '{key}' must be a JSON {_JSON_TYPES[kind]}")
    counts = meta["calibration"]
    if not set(counts) <= set(CALIBRATION) or not all(
            type(c) is int and c >= 0 for c in counts.values()):  # fmt: skip
        raise SimgapError(f"{path}: field 'calibration' must map dark / flat to frame counts")
    size = meta["frame_size"]
    if len(size) != 2 or not all(type(x) is int and x > 0 for x in size):
        raise SimgapError(f"{path}: field 'frame_size' must be [height, width] in pixels")
    return meta


def answer_request(folder: str | Path, bench, out: str | Path | None = None) -> Path:
    """The lab side: capture the request in ``folder`` on ``bench`` and write the answer (a
    capture set, built aside and renamed into place; default: the answer folder it names)."""
    meta, request = read_request(folder)
    return record(bench, request, Path(out or meta["answer"]))  # written aside, then renamed


# ---------------------------------------------------------------------------------- answers
def signature(folder: Path) -> str:
    """A hash of the names, sizes and modification times of every file under ``folder``."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            st = os.stat(os.path.join(root, name))
            rel = os.path.relpath(os.path.join(root, name), folder)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def rejection(folder: str | Path, rid: str) -> dict | None:
    """The recorded rejection of the request's answer (reason, signature), if any."""
    path = request_dir(folder, rid) / REJECTED_JSON
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def answer_ready(folder: str | Path, rid: str) -> bool:
    """True when an answer folder is there and is not the one already rejected."""
    answer = answer_dir(folder, rid)
    if not answer.is_dir():
        return False
    rejected = rejection(folder, rid)
    return rejected is None or rejected.get("signature") != signature(answer)


def accept(folder: str | Path, rid: str, dest: Path) -> dict:
    """Check the answer of request ``rid`` and copy it to ``dest``; a rejected answer is
    recorded (see :func:`rejection`) and raises :class:`CapturesPending` with its reason."""
    req, answer = request_dir(folder, rid), answer_dir(folder, rid)
    if not answer.is_dir():
        raise CapturesPending(rid, req)
    before = signature(answer)
    try:
        summary = check_answer(req, answer)
        shutil.copytree(answer, dest)
        if signature(answer) != before:
            raise SimgapError(f"{answer}: changed while it was read; it is read again")
    except SimgapError as exc:
        reason = one_line(exc)
        write_json(req / REJECTED_JSON, {"signature": before, "reason": reason,
                                         "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        raise CapturesPending(rid, req, reason) from None
    if (req / REJECTED_JSON).exists():
        write_text(req / REJECTED_JSON, "null\n")
    return summary


def check_answer(request: Path, answer: Path) -> dict:
    """Every capture-set rule, then the request's; a one-line SimgapError naming the file."""
    meta = _request_json(request)
    summary, (_, inputs, found) = check_capture_set(answer)
    listed = calibration_files(answer, found["bench"])
    _check_bits([*found["manifest"]["file"], *(f for files in listed.values() for f in files)])
    H, W = meta["frame_size"]
    if summary["frame_size"] != [H, W]:
        first = found["manifest"]["file"].iloc[0]
        raise SimgapError(f"{first}: frame size {summary['frame_size'][0]}x"
                          f"{summary['frame_size'][1]}; the request asks for {H}x{W}")  # fmt: skip
    masks, _ = load_mask(request)
    phase = torch.from_numpy(found["phase"])
    if phase.shape != masks.shape or torch.angle(torch.polar(
            torch.ones_like(phase), phase - masks)).abs().max() > 1e-3:  # fmt: skip
        raise SimgapError(f"{answer / MASK_NPZ}: not the mask of request {meta['id']} (copy "
                          f"{request / MASK_NPZ})")  # fmt: skip
    if found["classes"] != meta["classes"]:
        raise SimgapError(f"{answer / 'bench.json'}: capture.classes {found['classes']} differ "
                          f"from the request's {meta['classes']}")  # fmt: skip
    _check_inputs(request, answer, inputs)
    for name, count in meta["calibration"].items():
        got = summary["calibration"].get(name, 0)
        if got < count:
            raise SimgapError(f"{answer / 'bench.json'}: capture.calibration.{name} has {got} "
                              f"frame(s); the request asks for {count}")  # fmt: skip
    return summary


def _check_inputs(request: Path, answer: Path, inputs: pd.DataFrame) -> None:
    """The answer's inputs are the request's, each in its split with its label."""
    asked = pd.read_csv(request / "inputs.csv").set_index("input_id")
    got = inputs.set_index("input_id")
    where = answer / MANIFEST
    missing = asked.index.difference(got.index)
    if len(missing):
        i = int(missing[0])
        raise SimgapError(f"{where}: no frames for input_id {i} ({asked.loc[i, 'split']}); "
                          f"{len(missing)} of the {len(asked)} inputs asked for are missing")
    extra = got.index.difference(asked.index)
    if len(extra):
        raise SimgapError(f"{where}: input_id {int(extra[0])} is not in the request")
    for col in ("split", "label"):
        diff = got.loc[asked.index, col].astype(str) != asked[col].astype(str)
        if diff.any():
            i = int(asked.index[diff.to_numpy()][0])
            raise SimgapError(f"{where}: input_id {i} has {col} {got.loc[i, col]}; the request "
                              f"says {asked.loc[i, col]}")  # fmt: skip


def _check_bits(files: list[str]) -> None:
    """Refuse frames stored with fewer than MIN_BITS bits (read from the file headers)."""
    for f in files:
        try:
            with Image.open(f) as im:
                bits = 8 if im.mode in ("1", "L", "P", "LA") else 16
        except Exception:  # noqa: BLE001 - a TIFF Pillow cannot open (tifffile decoded it)
            with tifffile.TiffFile(f) as tif:
                bits = 8 * tif.pages[0].dtype.itemsize
        if bits < MIN_BITS:
            raise SimgapError(f"{f}: 8-bit frame; the request asks for 16-bit PNG / TIFF "
                              f"({MIN_BITS}..16 bits) or float32 TIFF frames")  # fmt: skip
