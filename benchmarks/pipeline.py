"""Benchmark: what the experiment pipeline and the job wrapper add to bare DMD training.

Same process, same shipped teacher (``manifest:8gaussians`` unless --teacher), default
DistillConfig (batch 256, TTUR 1:5), one torch thread, CPU unless --device:

  baseline   ``DMDTrainer.step()`` on its own (the engine, nothing around it)
  wrapped    ``Experiment.step()`` between evaluations (bookkeeping only: loss accumulation,
             publishing the job view)
  eval       one evaluation at n = --eval-n fixed noises (S(z), ΔE with a 200-resample bootstrap,
             W₂² to data, η(S), copy rate, retrieval, checkpoints + samples.npz + metrics row on disk)
  snapshot   ``TrainingJob.snapshot()`` of a job that has run a few evaluations

Prints the ratios that matter: wrapped/baseline per step (target ≤ 1.05) and the evaluation
cost as a fraction of the ``eval.every`` = 100 training steps it follows. On toy MLPs a DMD step
is cheap, so an evaluation at n = 1000 costs about half of those 100 steps; it is dominated by
three exact OT solves in dmdcore.pairing (ΔE's E_OT, which also gives W₂²(S, T); W₂² to data;
η(S)). Raise ``eval.every`` or lower ``eval.n`` to trade resolution for speed.
Times are CPU seconds (one torch thread), medians of --repeats; bare and wrapped blocks are
measured alternately so that load changes hit both.

    python benchmarks/pipeline.py [--repeats 5] [--steps 10] [--eval-n 1000] [--device cpu]

Machine-readable lines:
    RESULT step baseline_s=<f> wrapped_s=<f> ratio=<f>
    RESULT eval n=<int> eval_s=<f> per_100_steps_s=<f> overhead=<f>
    RESULT snapshot snapshot_s=<f> step_s=<f> ratio=<f>
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="manifest:8gaussians")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="training steps per timed block")
    ap.add_argument("--eval-n", type=int, default=1000)
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

    with tempfile.TemporaryDirectory() as tmp:
        exp = Experiment(cfg, run_dir=Path(tmp) / "bench", teacher=teacher, device=args.device)
        exp.step()  # student step 0 evaluation + first step (warm-up)
        base, wrapped = _interleaved(lambda: [bare.step() for _ in range(args.steps)],
                                     lambda: [exp.step() for _ in range(args.steps)], args.repeats)
        base, wrapped = base / args.steps, wrapped / args.steps
        ev = _median_time(exp._evaluate, args.repeats)

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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
