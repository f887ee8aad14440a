"""Fused CPU kernels of the 4F model and camera (``harness/native.c``), built on first use.

The elementwise steps around the FFTs are memory- and dispatch-bound on a CPU, torch has no fused
complex kernels for them, and torch.compile does not generate code for complex tensors.  Here each
is one pass: the input display window, the SLM field of a quantized phase (a table read instead of
a cos and a sin), crop + conj + |w|², the backward's window product and multiply + batch sum, the
phase gradient, and the sensor clip's backward.  The C file is compiled once per machine with the
system C compiler (``$CC``, else ``cc``/``gcc``) into ``<simgap cache>/native/`` and loaded with
ctypes.  Without a compiler, when the build fails, or with ``SIMGAP_NATIVE=0``, :func:`kernels`
returns None and harness.optics / harness.sensor run the same steps as torch ops (the tests
compare both).  Every wrapper checks the dtypes, layout and sizes of what it hands to C.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("native.c")
#: -ffp-contract=off: no fused multiply-add, so the sums round like torch's separate ops;
#: -fno-math-errno: sqrtf and rintf become single (vector) instructions.
FLAGS = ("-O3", "-std=c99", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno")
#: Vector instructions of this CPU (2-3x faster kernels than the x86-64 baseline); the library's
#: cache key includes the CPU's feature flags, and a compiler without the flag gets FLAGS alone.
NATIVE_FLAGS = ("-march=native",)

_DTYPES = (torch.complex64, torch.float32)
log = logging.getLogger(__name__)
_lock = threading.Lock()
_state: dict = {}


class Kernels:
    """ctypes bindings of native.c; arguments are CPU tensors, C-contiguous, complex64/float32."""

    def __init__(self, lib: ctypes.CDLL):
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        self._crop = lib.simgap_crop_intensity
        self._crop.argtypes = (ptr, ptr, ptr, i64, i64, i64, i64)
        self._crop.restype = None
        self._mac = lib.simgap_multiply_accumulate
        self._mac.argtypes = (ptr, ptr, ptr, i64, i64, i64, ctypes.c_int, ctypes.c_int)
        self._mac.restype = None
        self._phase_gradient = lib.simgap_phase_gradient
        self._phase_gradient.argtypes = (ptr, ptr, ptr, i64)
        self._phase_gradient.restype = None
        self._field = lib.simgap_quantized_phase_field
        self._field.argtypes = (ptr, ptr, ptr, ptr, i64, i64, i64)
        self._field.restype = None
        self._display = lib.simgap_display_window
        self._display.argtypes = (ptr, ptr, i64, i64, i64, i64)
        self._display.restype = None
        self._product = lib.simgap_window_product
        self._product.argtypes = (ptr, ptr, ptr, i64, i64, i64, i64)
        self._product.restype = None
        self._clip_backward = lib.simgap_clip_backward
        self._clip_backward.argtypes = (ptr, ptr, ptr, i64, ctypes.c_float, ctypes.c_float)
        self._clip_backward.restype = None
        self._tables: dict[int, torch.Tensor] = {}

    @staticmethod
    def _check(tensors, sizes_ok: bool) -> None:
        """The C code trusts its arguments: refuse anything it would misread or overrun."""
        if not (sizes_ok and Kernels.usable(*tensors)):
            shapes = [(tuple(t.shape), t.dtype, t.is_contiguous()) for t in tensors]
            raise ValueError(f"harness.native: arguments do not fit the kernel: {shapes}")

    @staticmethod
    def usable(*tensors: torch.Tensor) -> bool:
        for t in tensors:  # a plain loop: this runs a few times per 4F step
            if not t.is_cpu or t.dtype not in _DTYPES or not t.is_contiguous():
                return False
            if t.is_conj() or t.is_neg():  # lazy conj/neg views: their memory is not their value
                return False
        return True

    def crop_intensity(self, field, start: int, conj_out, intensity) -> None:
        """conj_out = conj(field) and intensity = |field|² on the window of (..., N, N) field
        that starts at (start, start) and has the size of conj_out (..., n, n)."""
        N, n = field.shape[-1], conj_out.shape[-1]
        planes = field.numel() // (N * N)
        self._check((field, conj_out, intensity), _complex(field, conj_out) and _real(intensity)
                    and conj_out.numel() == intensity.numel() == planes * n * n
                    and 0 <= start and start + n <= N)
        self._crop(field.data_ptr(), conj_out.data_ptr(), intensity.data_ptr(), planes, N, n, start)

    def display_window(self, intensity, start: int, out) -> None:
        """Real part of the window of zero-padded complex grids out (..., N, N) that starts at
        (start, start) = (−1)^(y+x) sqrt(max(intensity, 0)), imaginary part 0; intensity
        (..., n, n) float32."""
        N, n = out.shape[-1], intensity.shape[-1]
        planes = intensity.numel() // (n * n)
        self._check((intensity, out), _real(intensity) and _complex(out)
                    and out.numel() == planes * N * N and 0 <= start and start + n <= N)
        self._display(intensity.data_ptr(), out.data_ptr(), planes, N, n, start)

    def window_product(self, a, g, start: int, out) -> None:
        """out[..., start + y, start + x] = a[..., y, x] · g[..., y, x]: complex a and real g
        (..., n, n), complex out (..., N, N); the rest of out is not touched."""
        N, n = out.shape[-1], a.shape[-1]
        planes = a.numel() // (n * n)
        self._check((a, g, out), _complex(a, out) and _real(g) and g.numel() == a.numel()
                    and out.numel() == planes * N * N and 0 <= start and start + n <= N)
        self._product(a.data_ptr(), g.data_ptr(), out.data_ptr(), planes, N, n, start)

    def quantized_phase_field(self, phase, amplitude, levels: int, out) -> None:
        """out = amplitude · e^{2πi j / levels} with j = round(phase · levels / 2π): phase
        (..., N, N) float32, amplitude (N, N) float32, out complex64 like phase."""
        table = self._tables.get(levels)
        if table is None:
            turns = torch.arange(levels, dtype=torch.float64) * (math.tau / levels)
            table = self._tables[levels] = torch.polar(torch.ones_like(turns), turns).to(
                torch.complex64)
        P = amplitude.numel()
        self._check((phase, amplitude, out), _real(phase, amplitude) and _complex(out)
                    and phase.shape[-2:] == amplitude.shape and out.shape == phase.shape
                    and levels > 0)
        self._field(phase.data_ptr(), amplitude.data_ptr(), table.data_ptr(), out.data_ptr(),
                    phase.numel() // P, P, levels)

    def multiply_accumulate(self, h, s, out, accumulate: bool, finish: bool) -> None:
        """out (K, N, N) (+)= Σ_b h[b] · s[b] for h (B, K, N, N) and s (B, 1, N, N); with
        ``finish`` out becomes 2 conj(out) after the sum."""
        B, K, P = h.shape[0], h.shape[1], h.shape[-1] * h.shape[-2]
        self._check((h, s, out), _complex(h, s, out) and h.dim() == 4
                    and s.numel() == B * P and out.numel() == K * P)
        self._mac(h.data_ptr(), s.data_ptr(), out.data_ptr(), B, K, P, int(accumulate),
                  int(finish))

    def clip_backward(self, y, grad, lo: float, hi: float):
        """grad where lo < y < hi, else 0 (y and grad float32 alike), as a new tensor."""
        self._check((y, grad), _real(y, grad) and y.shape == grad.shape)
        out = torch.empty_like(y)
        self._clip_backward(y.data_ptr(), grad.data_ptr(), out.data_ptr(), y.numel(), lo, hi)
        return out

    def phase_gradient(self, field, grad):
        """Im(conj(field) · grad) as a new float32 tensor (field and grad complex64 alike)."""
        self._check((field, grad), _complex(field, grad) and field.shape == grad.shape)
        out = torch.empty(field.shape, dtype=torch.float32)
        self._phase_gradient(field.data_ptr(), grad.data_ptr(), out.data_ptr(), field.numel())
        return out


def _complex(*tensors: torch.Tensor) -> bool:
    return all(t.dtype == torch.complex64 for t in tensors)


def _real(*tensors: torch.Tensor) -> bool:
    return all(t.dtype == torch.float32 for t in tensors)


def kernels_for(*tensors: torch.Tensor) -> Kernels | None:
    """The kernels when they are built and apply to ``tensors`` (CPU, complex64 or float32,
    contiguous), else None."""
    return kernels() if Kernels.usable(*tensors) else None


def kernels() -> Kernels | None:
    """The compiled kernels, built and loaded once per process; None when unavailable."""
    if "kernels" not in _state:
        with _lock:
            if "kernels" not in _state:
                _state["kernels"] = _load()
    return _state["kernels"]


def _load() -> Kernels | None:
    if os.environ.get("SIMGAP_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.info("no C compiler found: the 4F model uses torch ops for its fused steps")
        return None
    from harness.data import cache_dir

    key = hashlib.sha256(
        SOURCE.read_bytes() + repr((FLAGS, NATIVE_FLAGS, compiler, _cpu())).encode()
    ).hexdigest()[:16]
    path = cache_dir() / "native" / f"optics-{key}.so"
    try:
        if not path.exists():
            _build(compiler, path)
        return Kernels(ctypes.CDLL(str(path)))
    except (OSError, subprocess.SubprocessError) as exc:
        reason = " ".join(str(exc).split())[:300]  # one line, compiler output included
        log.warning("fused 4F kernels unavailable (%s); using torch ops", reason)
        return None


def _cpu() -> str:
    """Machine type and CPU feature flags (what -march=native compiles for)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return f"{platform.machine()} {platform.processor()} {flags.strip()}"


def _build(compiler: str, path: Path) -> None:
    """Compile native.c into ``path`` (a temporary name first, then an atomic rename, so
    concurrent workers never load a half-written library)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        out = Path(tmp) / path.name
        for flags in (FLAGS + NATIVE_FLAGS, FLAGS):
            result = subprocess.run(
                [compiler, *flags, "-o", str(out), str(SOURCE), "-lm"],
                check=False, capture_output=True, text=True, timeout=120,
            )
            if result.returncode == 0:
                os.replace(out, path)
                return
        raise OSError(f"{compiler} failed: {result.stderr}")
