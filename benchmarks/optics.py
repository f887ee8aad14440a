"""Throughput of the 4F model, forward + backward, against the FFTs it needs.

    python benchmarks/optics.py [--batch 32] [--device cpu|cuda] [--repeats 20]

For each n in (32, 64, 128) and k in (1, 4) it prints images/s of FourF forward+backward (ideal
system, loss on the frames, gradient to the mask) and the ratio of that time to the time of the
FFTs alone (fft2 of the real (B, 1, N, N) input amplitude, ifft2 of the (B, k, N, N) product and the FFT
of its gradient in the backward pass), measured in the same run, back to back with each model
step.  The reference transforms run on the same batch chunks as the model (harness.optics
CPU_CHUNK_BYTES), so neither side pays page faults for fields of tens of MB.  Target: ratio <= 1.5.
On a shared CPU set OMP_NUM_THREADS=1: oversubscribed OpenMP threads make every op erratic.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from harness.optics import FourF, Imperfections, OpticsConfig, batch_chunks
from harness.runtime import tune_cpu_allocator


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_pair(model_fn, fft_fn, repeats: int, device: str) -> tuple[float, float]:
    """Median wall time (s) of ``model_fn`` and median of the per-repeat ratio model/FFT.

    The two are timed back to back in each repeat (after two warm-up calls), so a shared
    machine's slow phases hit both sides of a ratio alike.
    """
    for _ in range(2):
        model_fn()
        fft_fn()
    times, ratios = [], []
    for _ in range(repeats):
        spans = []
        for fn in (model_fn, fft_fn):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            spans.append(time.perf_counter() - start)
        times.append(spans[0])
        ratios.append(spans[0] / spans[1])
    return statistics.median(times), statistics.median(ratios)


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
    field = torch.rand(batch, 1, N, N, device=device)  # the real, zero-padded input amplitude
    spectra = torch.randn(batch, k, N, N, dtype=torch.complex64, device=device)

    chunks = batch_chunks(spectra.shape, spectra.device)

    def fft_step():  # forward: FFT of the input, IFFT of the k products; backward: one FFT
        torch.fft.fft2(field)
        for rows in chunks:  # the batch chunks the model transforms (cache-sized on CPU)
            torch.fft.ifft2(spectra[rows])
            torch.fft.fft2(spectra[rows])

    model, ratio = timed_pair(model_step, fft_step, repeats, device)
    return batch / model, ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--imperfect", action="store_true",
                        help="also sample per-sample defocus, mask shift and camera shift")
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="keep glibc's default mmap threshold (see harness.runtime)")
    args = parser.parse_args()
    tuned = False if args.no_malloc_tuning else tune_cpu_allocator()
    print(f"device={args.device} batch={args.batch} threads={torch.get_num_threads()} "
          f"torch={torch.__version__} imperfect={args.imperfect} malloc_tuned={tuned}")
    print(f"{'n':>4} {'k':>2} {'N':>4} {'images/s':>10} {'model/FFT':>10}")
    for n in (32, 64, 128):
        for k in (1, 4):
            rate, ratio = bench_case(n, k, args.batch, args.device, args.repeats, args.imperfect)
            print(f"{n:>4} {k:>2} {2 * n:>4} {rate:>10.0f} {ratio:>10.2f}")


if __name__ == "__main__":
    main()
