"""Throughput of the 4F model, forward + backward, against the FFTs it needs.

    python benchmarks/optics.py [--batch 32] [--device cpu|cuda] [--repeats 20] [--sizes 32 64 128]

For each n in ``--sizes`` (32, 64, 128) and k in (1, 4) it prints images/s of FourF
forward+backward (ideal system, 8-bit LUT, loss on the frames, gradient to the mask) and the
ratio of that time to the time of the FFTs alone: fft2 of the (B, 1, N, N) complex input grid
(torch transforms a real input as a complex one too, so the model writes the amplitude straight
into a complex grid), ifft2 of the (B, k, N, N) product, and the ifft2 of the backward pass (see
harness.optics.fused.CroppedIntensity).  They are measured in the same run, back to back with
each model step, on the same batch chunks as the model (harness.optics.fused.CPU_CHUNK_BYTES),
so neither side pays page faults for fields of tens of MB.  Target: ratio <= 1.5.

"rot img/s" is the same step with a per-sample SLM rotation, U(−2°, 2°) (the misalignment
policy at strength 1), which evaluates the spectrum and the camera field as non-uniform DFTs
(harness.optics.nufft) instead of FFTs; "rot cost" is its time over the unrotated step's.

Two statistics: "model/FFT" is the median of the per-repeat ratios, "best" the ratio of the
fastest model step to the fastest FFT step (a shared machine only ever adds time, so the minima
are its least disturbed runs).  On a shared CPU set OMP_NUM_THREADS=1 (oversubscribed OpenMP
threads make every op erratic); ``taskset -c 1`` steadies it further.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from harness.optics import FourF, Imperfections, OpticsConfig
from harness.optics.fused import batch_chunks
from harness.runtime import tune_cpu_allocator


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_pair(model_fn, fft_fn, repeats: int, device: str) -> tuple[float, float, float]:
    """Median wall time (s) of ``model_fn``, median of the per-repeat ratio model/FFT, and the
    ratio of the two minimum times.

    The two are timed back to back in each repeat (after two warm-up calls), so a shared
    machine's slow phases hit both sides of a ratio alike.
    """
    for _ in range(2):
        model_fn()
        fft_fn()
    model_times, fft_times = [], []
    for _ in range(repeats):
        for fn, times in ((model_fn, model_times), (fft_fn, fft_times)):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - start)
    ratios = [m / f for m, f in zip(model_times, fft_times)]
    best = min(model_times) / min(fft_times)
    return statistics.median(model_times), statistics.median(ratios), best


def bench_case(n: int, k: int, batch: int, device: str, repeats: int, imperfect: bool):
    cfg = OpticsConfig(n=n)
    enc = FourF(cfg, channels=k, init="random").to(device)
    images = torch.rand(batch, 1, n, n, device=device)
    imp = None
    if imperfect:
        gen = torch.Generator(device=device).manual_seed(0)
        imp = Imperfections(
            defocus_dz=(torch.rand(batch, generator=gen, device=device) - 0.5) * 0.2,
            mask_shift=torch.rand(batch, 2, generator=gen, device=device) - 0.5,
            camera_shift=torch.rand(batch, 2, generator=gen, device=device) - 0.5,
        )

    def model_step():
        enc.zero_grad(set_to_none=True)
        enc(images, imp).sum().backward()

    N = cfg.N
    grid = torch.rand(batch, 1, N, N, device=device).to(torch.complex64)  # the input grid
    spectra = torch.randn(batch, k, N, N, dtype=torch.complex64, device=device)

    chunks = batch_chunks(spectra.shape, spectra.device)

    def fft_step():  # forward: FFT of the input, IFFT of the k products; backward: one IFFT
        torch.fft.fft2(grid)
        for rows in chunks:  # the batch chunks the model transforms (cache-sized on CPU)
            torch.fft.ifft2(spectra[rows])
            torch.fft.ifft2(spectra[rows])  # conj(∂L/∂(S M)) / 2 = IFFT(conj(w) g)

    model, ratio, best = timed_pair(model_step, fft_step, repeats, device)
    rot_gen = torch.Generator(device=device).manual_seed(1)
    angles = (torch.rand(batch, generator=rot_gen, device=device) * 2 - 1) * (2 * torch.pi / 180)
    rotated = (imp or Imperfections()).merge(Imperfections(mask_rotation=angles))

    def rotated_step():
        enc.zero_grad(set_to_none=True)
        enc(images, rotated).sum().backward()

    rot, _, _ = timed_pair(rotated_step, model_step, max(3, repeats // 4), device)
    return batch / model, ratio, best, batch / rot, rot / model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128],
                        help="image sizes n (grid N = 2n)")
    parser.add_argument("--imperfect", action="store_true",
                        help="also sample per-sample defocus, mask shift and camera shift")
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="keep glibc's default mmap threshold (see harness.runtime)")
    args = parser.parse_args()
    tuned = False if args.no_malloc_tuning else tune_cpu_allocator()
    print(f"device={args.device} batch={args.batch} threads={torch.get_num_threads()} "
          f"torch={torch.__version__} imperfect={args.imperfect} malloc_tuned={tuned}")
    print(f"{'n':>4} {'k':>2} {'N':>4} {'images/s':>10} {'model/FFT':>10} {'best':>6} "
          f"{'rot img/s':>10} {'rot cost':>9}")
    for n in args.sizes:
        for k in (1, 4):
            rate, ratio, best, rot_rate, rot_cost = bench_case(
                n, k, args.batch, args.device, args.repeats, args.imperfect
            )
            print(f"{n:>4} {k:>2} {2 * n:>4} {rate:>10.0f} {ratio:>10.2f} {best:>6.2f} "
                  f"{rot_rate:>10.0f} {rot_cost:>8.1f}x")


if __name__ == "__main__":
    main()
