"""Cost of augmentation policies in a training step (run by hand; prints numbers).

    python benchmarks/policies.py [--batch 128] [--n 32] [--strength 0.5] [--repeats 10]
                                  [--device cpu|cuda] [--threads T] [--profile]

For k in (1, 4): the median time of one training step (policy frames -> small CNN head ->
cross-entropy -> backward -> AdamW step on mask + head) under ``none``, ``physics`` and ``image``,
the ratio physics / none (target <= 1.3), and images/s of the policies' frame generation alone
(forward, no gradient) and of the whole step.  The policies are timed in alternation, so load
from other processes on a shared machine biases the ratios less than the absolute times; on a
busy CPU, ``--threads 1`` gives steadier numbers.  ``--profile`` prints the ops that dominate
the physics step (torch.profiler, self time).
"""

from __future__ import annotations

import argparse
import time
from statistics import median

import torch

from augment.policy import build_policy
from harness.models import HybridModel
from harness.optics import FourF, OpticsConfig
from harness.runtime import tune_cpu_allocator

POLICIES = ("none", "physics", "image")


def interleaved(fns: dict, repeats: int, device: str) -> dict[str, tuple[float, float]]:
    """Median (wall, process CPU) seconds of each function, measured in alternation (round-robin,
    after two warm-up rounds) so that load from other processes hits all of them alike.  The CPU
    time (all threads of this process) is less sensitive to a shared machine than wall time."""
    times = {name: [] for name in fns}
    for round_ in range(repeats + 2):
        for name, fn in fns.items():
            if device == "cuda":
                torch.cuda.synchronize()
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            if round_ >= 2:
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {name: (median(w for w, _ in t), median(c for _, c in t)) for name, t in times.items()}


def setup(n: int, k: int, batch: int, device: str, name: str, strength: float):
    config = OpticsConfig(n=n)
    model = HybridModel(FourF(config, channels=k, init="random"), "small_cnn").to(device)
    policy = build_policy(name, config=config)
    policy = build_policy(name, {f: strength for f in policy.families}, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.rand(batch, 1, n, n, generator=gen, device=device)
    labels = torch.randint(0, 10, (batch,), generator=gen, device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        frames = model.simulate(images, policy, gen)
        logits = model.forward_frames(frames)["logits"]
        torch.nn.functional.cross_entropy(logits, labels).backward()
        optimizer.step()

    def frames_only():
        with torch.no_grad():
            policy.frames(model.encoder, images, gen)

    return step, frames_only


def profile(step, rows: int = 15) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step()
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with torch_profile(activities=activities) as prof:
        for _ in range(3):
            step()
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    tune_cpu_allocator()  # as the CLI does (harness.runtime)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 gives steadier CPU times on a shared machine)")
    parser.add_argument("--profile", action="store_true", help="profile the physics step")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device={args.device} batch={args.batch} n={args.n} strength={args.strength} "
          f"threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{'k':>2} {'policy':>8} {'step ms':>8} {'/none':>6} {'cpu ms':>8} {'/none':>6} "
          f"{'step img/s':>11} {'frames img/s':>13}")
    for k in (1, 4):
        cases = {name: setup(args.n, k, args.batch, args.device, name, args.strength)
                 for name in POLICIES}
        steps = interleaved({name: c[0] for name, c in cases.items()}, args.repeats, args.device)
        frames = interleaved({name: c[1] for name, c in cases.items()}, args.repeats, args.device)
        (wall0, cpu0) = steps["none"]
        for name in POLICIES:
            wall, cpu = steps[name]
            print(f"{k:>2} {name:>8} {wall * 1e3:>8.1f} {wall / wall0:>6.2f} {cpu * 1e3:>8.1f} "
                  f"{cpu / cpu0:>6.2f} {args.batch / wall:>11.0f} "
                  f"{args.batch / frames[name][0]:>13.0f}")
        if args.profile:
            profile(cases["physics"][0])

if __name__ == "__main__":
    main()
