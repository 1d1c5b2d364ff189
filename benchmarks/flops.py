"""Hardware floors behind the performance targets: GEMM throughput of this machine and the FLOP
counts of the reference workloads, so that a target can be compared with what float32 allows.

Prints
- float32 GEMM throughput (GFLOP/s) for the toy MLP's shape (512×256 @ 256×256) and a large
  square product (2048²), on 1 and on all torch threads, and bf16 for the toy shape;
- FLOPs (torch.utils.flop_counter) of one toy teacher training step (MLP 3×256, batch 512), one
  DMD step (batch 256, ratio 5) and one ImageNet-64 EDM network forward pass (batch 1);
- the float32 floors they imply: the toy reference workload (3000 teacher + 1000 DMD steps) and
  one ImageNet-64 image, against the targets of benchmarks/toy_pipeline.py (20 s) and
  benchmarks/image_sampling.py (1.3× over the plain path);
- measured per-step times of the toy trainers (their GEMM share is the floor above);
- with --compile: torch.compile (inductor) of the teacher's loss forward+backward — compile time
  and step time next to eager.

    python benchmarks/flops.py [--compile] [--skip-imagenet]

Last line: RESULT gemm_gflops=<f> toy_floor_s=<f> imagenet_floor_s_per_img=<f>
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dmdcore.config import DataConfig, DistillConfig, TeacherConfig  # noqa: E402
from dmdcore.data import make_dataset  # noqa: E402
from dmdcore.device import tune_allocator  # noqa: E402
from dmdcore.distill import DMDTrainer, TeacherTrainer  # noqa: E402


def gemm_gflops(m: int, k: int, n: int, dtype=torch.float32, reps: int | None = None) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    flop = 2.0 * m * k * n
    reps = reps or max(5, int(2e10 / flop))
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, (time.perf_counter() - t) / reps)
    return flop / best / 1e9


def flops_of(fn) -> float:
    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def step_ms(fn, n: int) -> float:
    for _ in range(max(3, n // 10)):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e3


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the teacher step")
    ap.add_argument("--skip-imagenet", action="store_true", help="skip the 296 M-parameter network")
    args = ap.parse_args(argv)
    tune_allocator()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"load avg {os.getloadavg()[0]:.1f}")

    # ---- GEMM throughput
    torch.set_num_threads(1)
    g1_toy, g1_big = gemm_gflops(512, 256, 256), gemm_gflops(2048, 2048, 2048)
    torch.set_num_threads(threads)
    g_toy, g_big = gemm_gflops(512, 256, 256), gemm_gflops(2048, 2048, 2048)
    g_bf16 = gemm_gflops(512, 256, 256, torch.bfloat16)
    print(f"float32 GEMM 512x256x256: {g_toy:.0f} GFLOP/s ({threads} threads), {g1_toy:.0f} (1 thread)")
    print(f"float32 GEMM 2048^3:      {g_big:.0f} GFLOP/s ({threads} threads), {g1_big:.0f} (1 thread)")
    print(f"bf16 GEMM 512x256x256:    {g_bf16:.0f} GFLOP/s ({threads} threads)")

    # ---- toy reference workload (benchmarks/toy_pipeline.py)
    ds = make_dataset(DataConfig(dataset="8gaussians", n_samples=20000, seed=0))
    tr = TeacherTrainer(TeacherConfig(width=256, depth=3, steps=3000, batch=512, seed=0), ds.x, device="cpu")
    tr.step()
    f_teacher = flops_of(tr.step)
    dmd = DMDTrainer(tr.teacher().denoiser, DistillConfig(steps=1000, batch=256, ratio=5, seed=0),
                     sample_shape=(2,), sigma_data=tr.sigma_data, device="cpu")
    dmd.step()
    f_dmd = flops_of(dmd.step)
    total = 3000 * f_teacher + 1000 * f_dmd
    floor = total / (g_toy * 1e9)
    ms_teacher, ms_dmd = step_ms(tr.step, 200), step_ms(dmd.step, 40)
    print(f"toy teacher step: {f_teacher / 1e6:.0f} MFLOP, measured {ms_teacher:.2f} ms "
          f"(GEMM floor {f_teacher / g_toy / 1e6:.2f} ms)")
    print(f"toy DMD step:     {f_dmd / 1e6:.0f} MFLOP, measured {ms_dmd:.2f} ms (GEMM floor {f_dmd / g_toy / 1e6:.2f} ms)")
    print(f"toy reference workload: {total / 1e12:.2f} TFLOP -> float32 floor {floor:.1f} s at {g_toy:.0f} GFLOP/s; "
          f"the 20 s target needs {100 * floor / 20:.0f}% of peak GEMM throughput over the whole run")

    if args.compile:
        from dmdcore.losses import denoising_loss
        from dmdcore.toy import build_denoiser

        net = build_denoiser(2, 256, 3, 32, 0, 0.5)
        x, s, e = torch.randn(512, 2), torch.rand(512) + 0.1, torch.randn(512, 2)

        def eager():
            denoising_loss(net, x, s, e, 0.5).backward()

        compiled_loss = torch.compile(lambda: denoising_loss(net, x, s, e, 0.5))
        t = time.perf_counter()
        compiled_loss().backward()
        t_compile = time.perf_counter() - t
        print(f"teacher loss forward+backward: eager {step_ms(eager, 200):.2f} ms; torch.compile: "
              f"{t_compile:.1f} s to compile, then {step_ms(lambda: compiled_loss().backward(), 200):.2f} ms")

    img_floor = float("nan")
    if not args.skip_imagenet:
        from dmdcore.networks import IMAGENET64_KWARGS, EDMPrecond

        net = EDMPrecond(**IMAGENET64_KWARGS).eval()
        x = torch.randn(1, 3, 64, 64)
        lab = torch.nn.functional.one_hot(torch.tensor([3]), 1000).float()
        with torch.no_grad():
            f_img = flops_of(lambda: net(x, torch.tensor([80.0]), lab))
        img_floor = f_img / (g_big * 1e9)
        print(f"ImageNet-64 EDM network forward: {f_img / 1e9:.0f} GFLOP per image -> float32 floor "
              f"{img_floor:.2f} s per image at {g_big:.0f} GFLOP/s; a path taking P s per image can gain at most "
              f"P / {img_floor:.2f}")
    print(f"RESULT gemm_gflops={g_big:.1f} toy_floor_s={floor:.2f} imagenet_floor_s_per_img={img_floor:.3f}")


if __name__ == "__main__":
    main()
