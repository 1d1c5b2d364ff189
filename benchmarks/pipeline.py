"""Benchmark: what the experiment pipeline and the job wrapper add to bare DMD training.

Same process, same shipped teacher (``manifest:8gaussians`` unless --teacher), default
DistillConfig (batch 256, TTUR 1:5), one torch thread, CPU unless --device:

  baseline   ``DMDTrainer.step()`` on its own (the engine, nothing around it)
  wrapped    ``Experiment.step()`` between evaluations (bookkeeping only: loss accumulation,
             publishing the job view)
  eval       one evaluation at n = --eval-n fixed noises (S(z), ΔE with a 200-resample bootstrap,
             W₂² to data, η(S), copy rate, retrieval, checkpoints + samples.npz + metrics row on disk)
  snapshot   ``TrainingJob.snapshot()`` of a job that has run a few evaluations
  throughput training steps/s (wall clock) of ``Experiment.step()`` with an evaluation every
             100 steps (computed off the training thread, the default) against the same steps
             with no evaluation, and with the evaluation computed inside ``step()``
             (``async_eval=False``); blocks of --block steps, measured alternately; evaluations
             still in flight at the end of a block are waited for outside the timed region
             (steady state: a worker that falls behind makes ``step()`` wait, which is timed)

Prints the ratios that matter: wrapped/baseline per step (target ≤ 1.05), the evaluation
cost as a fraction of the ``eval.every`` = 100 training steps it follows, and the training
throughput with evaluation / without (target ≥ 0.9). On toy MLPs a DMD step
is cheap, so an evaluation at n = 1000 costs about half of those 100 steps; it is dominated by
three exact OT solves in dmdcore.pairing (ΔE's E_OT, which also gives W₂²(S, T); W₂² to data;
η(S)). Raise ``eval.every`` or lower ``eval.n`` to trade resolution for speed.
Times are CPU seconds (one torch thread), medians of --repeats; bare and wrapped blocks are
measured alternately so that load changes hit both.

    python benchmarks/pipeline.py [--repeats 5] [--steps 10] [--eval-n 1000] [--block 400] [--device cpu]

Machine-readable lines:
    RESULT step baseline_s=<f> wrapped_s=<f> ratio=<f>
    RESULT eval n=<int> eval_s=<f> per_100_steps_s=<f> overhead=<f>
    RESULT snapshot snapshot_s=<f> step_s=<f> ratio=<f>
    RESULT throughput every=100 n=<int> no_eval_steps_per_s=<f> async_steps_per_s=<f> ratio=<f> sync_ratio=<f>
           thread_cpu_ratio=<f> thread_cpu_sync_ratio=<f>
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dmdcore.config import DistillConfig, EvalConfig  # noqa: E402
from dmdcore.distill import DMDTrainer  # noqa: E402
from dmdcore.jobs import TrainingJob  # noqa: E402
from dmdcore.pipeline import Experiment, load_teacher, teacher_experiment_config  # noqa: E402


def _median_time(fn, repeats: int) -> float:
    """Median CPU seconds of ``fn()`` (process time: one torch thread, so it is the work done and
    does not grow when other processes load the machine)."""
    ts = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        ts.append(time.process_time() - t0)
    return statistics.median(ts)


def _interleaved(fa, fb, repeats: int) -> tuple[float, float]:
    """Median CPU seconds of fa() and fb(), measured alternately (a, b, a, b, ...)."""
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(_median_time(fa, 1))
        tb.append(_median_time(fb, 1))
    return statistics.median(ta), statistics.median(tb)


def _throughput(cfg, teacher, tmp: Path, args) -> tuple[dict, dict]:
    """Median steps/s of --block Experiment steps for "none" (no evaluation), "async" (evaluation
    every 100 steps off the training thread) and "sync" (evaluation inside step()): by wall
    clock, and by the training thread's own CPU time (``time.thread_time``: what the training
    thread spends, unaffected by other processes on a loaded machine)."""
    cfg = cfg.replace(distill=cfg.distill.replace(steps=10**6))  # no phase end inside the blocks
    every = cfg.eval.replace(every=100)
    exps = {
        "none": Experiment(cfg, run_dir=tmp / "t_none", teacher=teacher, device=args.device),
        "async": Experiment(cfg.replace(eval=every), run_dir=tmp / "t_async", teacher=teacher, device=args.device),
        "sync": Experiment(cfg.replace(eval=every), run_dir=tmp / "t_sync", teacher=teacher, device=args.device,
                           async_eval=False),
    }
    for exp in exps.values():
        exp.step()
        exp.wait_evaluations()
    wall: dict[str, list[float]] = {k: [] for k in exps}
    cpu: dict[str, list[float]] = {k: [] for k in exps}
    for _ in range(args.repeats):
        for name, exp in exps.items():
            n = args.block
            t0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(n):
                exp.step()
            wall[name].append(n / (time.perf_counter() - t0))
            cpu[name].append(n / (time.thread_time() - c0))
            exp.wait_evaluations()  # the block's last evaluation, outside the timed region
    return ({k: statistics.median(v) for k, v in wall.items()}, {k: statistics.median(v) for k, v in cpu.items()})


def _report_throughput(wall: dict, cpu: dict, args) -> None:
    print(f"training throughput, evaluation (n={args.eval_n}) every 100 steps, wall clock: off the training "
          f"thread {wall['async']:.1f} steps/s, inside step() {wall['sync']:.1f}, none {wall['none']:.1f}; "
          f"training-thread CPU: {cpu['async']:.1f} / {cpu['sync']:.1f} / {cpu['none']:.1f} steps/s")
    print(f"RESULT throughput every=100 n={args.eval_n} no_eval_steps_per_s={wall['none']:.2f} "
          f"async_steps_per_s={wall['async']:.2f} ratio={wall['async'] / wall['none']:.3f} "
          f"sync_ratio={wall['sync'] / wall['none']:.3f} thread_cpu_ratio={cpu['async'] / cpu['none']:.3f} "
          f"thread_cpu_sync_ratio={cpu['sync'] / cpu['none']:.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="manifest:8gaussians")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="training steps per timed block")
    ap.add_argument("--eval-n", type=int, default=1000)
    ap.add_argument("--block", type=int, default=400, help="training steps per throughput block")
    ap.add_argument("--throughput-only", action="store_true", help="measure only the training throughput")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # a benchmark process: one thread, comparable numbers on a shared box

    teacher = load_teacher(args.teacher, device=args.device)
    dc = DistillConfig()
    cfg = teacher_experiment_config(teacher, distill=dc, eval=EvalConfig(every=10**6, n=args.eval_n, bootstrap=200))

    # baseline: the bare trainer
    bare = DMDTrainer(teacher.denoiser, dc, sample_shape=(teacher.dim,), sigma_data=teacher.sigma_data,
                      device=args.device)
    bare.step()  # warm-up

    if args.throughput_only:
        with tempfile.TemporaryDirectory() as tmp:
            _report_throughput(*_throughput(cfg, teacher, Path(tmp), args), args)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        exp = Experiment(cfg, run_dir=Path(tmp) / "bench", teacher=teacher, device=args.device)
        exp.step()  # student step 0 evaluation + first step (warm-up)
        base, wrapped = _interleaved(lambda: [bare.step() for _ in range(args.steps)],
                                     lambda: [exp.step() for _ in range(args.steps)], args.repeats)
        base, wrapped = base / args.steps, wrapped / args.steps
        # CPU time of one whole evaluation (process time counts the evaluation worker's thread too)
        ev = _median_time(lambda: (exp._evaluate(), exp.wait_evaluations()), args.repeats)
        rates = _throughput(cfg, teacher, Path(tmp), args)

        exp2 = Experiment(cfg.replace(eval=cfg.eval.replace(every=2)), run_dir=Path(tmp) / "job", teacher=teacher,
                          device=args.device)
        job = TrainingJob(exp2)
        job.step_n(9)
        job.wait_paused(600)
        snap_s = _median_time(job.snapshot, max(args.repeats, 20))
        job.stop()
        job.wait(600)

    print(f"DMD step (batch {dc.batch}, ratio {dc.ratio}): bare {base * 1e3:.2f} ms, in Experiment {wrapped * 1e3:.2f} ms")
    print(f"evaluation at n={args.eval_n}: {ev:.3f} s = {ev / (100 * base):.1%} of the 100 steps between evaluations")
    print(f"snapshot(): {snap_s * 1e3:.3f} ms")
    print(f"RESULT step baseline_s={base:.5f} wrapped_s={wrapped:.5f} ratio={wrapped / base:.3f}")
    print(f"RESULT eval n={args.eval_n} eval_s={ev:.4f} per_100_steps_s={100 * base:.4f} overhead={ev / (100 * base):.3f}")
    print(f"RESULT snapshot snapshot_s={snap_s:.6f} step_s={base:.5f} ratio={snap_s / base:.4f}")
    _report_throughput(*rates, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
