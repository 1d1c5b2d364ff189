"""Benchmark: dmdcore.pairing.pairing_inefficiency against a naive baseline, same process.

Naive baseline (what one writes without thinking about it): ``C = ot.dist(s, t)`` (float64,
squared Euclidean, broadcasting), ``E_OT = ot.emd2(uniform, uniform, C)``, ``E_pair`` the mean of
the diagonal and ``E_ind = C.mean()`` (an n² mean), no confidence interval.
Project: ``pairing_inefficiency(s, t, bootstrap=200)`` — i.e. *with* a 200-resample bootstrap CI.
Both must give the same ΔE (checked, rtol 1e-9) before any time is printed.

Data: a teacher drawn from an 8-component Gaussian mixture in R^d and a student that keeps the
noise→sample pairing for two thirds of the noises (with a 5 % scale change, a small shift and
Gaussian jitter) and remaps the rest at random — a mid-distillation student.
Times are the best of ``--repeats`` runs (the machine is shared; best-of reduces load noise).

Copy report (``--copy``): the full ``copy_report`` (student ΔE with a 200-resample CI, twin and
cross ΔE, noisy-copy / within-mode / permutation references and the 4-rung ladder) at n=1024,
d=64 and n=2048, d=2 (target ≤ 1.0 s each on 2 cores), beside the paired ΔE with CI alone and the
naive baseline, and split into the teacher-side controls (computed once per run) and the
per-evaluation part.
Block bias (``--block-bias``): ΔE of the block approximation minus exact ΔE on remapped students
(a third of the pairs shuffled, noisy) across d, with max_exact=512 (2 and 4 blocks).

Usage: python benchmarks/pairing.py [--repeats 3] [--quick] [--data paired|independent] [--copy] [--block-bias]
Prints one machine-readable line per case:
    RESULT n=<int> d=<int> project_s=<float> naive_s=<float>
    COPY n=<int> d=<int> report_s=<float> controls_s=<float> per_eval_s=<float> paired_ci_s=<float> naive_s=<float>
    BLOCK d=<int> n=<int> blocks=<int> exact=<float> approx=<float> bias=<float>
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import ot

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dmdcore.pairing import pairing_inefficiency  # noqa: E402

CASES = [  # (n, d, target seconds for the project path)
    (2048, 64, 0.5),
    (1024, 12288, 3.0),
    (4096, 2, 4.0),
]
LIVE_CASES = [(1000, 2), (1000, 64), (1000, 256)]  # live-training evaluation, target < 0.2 s


def make_pair(n: int, d: int, seed: int = 0, kind: str = "paired") -> tuple[np.ndarray, np.ndarray]:
    """(student, teacher) float64 (n, d).  kind "paired": a mid-distillation student of a
    mixture teacher; "independent": student N(0.2, 1.3^2 I) drawn independently of a N(0, I)
    teacher (a chance-level student — the hardest case for the OT solvers)."""
    rng = np.random.default_rng(seed)
    if kind == "independent":
        return 1.3 * rng.standard_normal((n, d)) + 0.2, rng.standard_normal((n, d))
    means = rng.standard_normal((8, d)) * 2.0
    teacher = means[rng.integers(0, 8, n)] + rng.standard_normal((n, d))
    student = teacher.copy()
    k = n // 3
    idx = rng.permutation(n)[:k]
    student[idx] = student[idx[rng.permutation(k)]]
    student = 1.05 * student + 0.3 * rng.standard_normal((n, d)) + 0.1
    return student, teacher


def naive_delta_e(s: np.ndarray, t: np.ndarray) -> float:
    """ΔE the straightforward way: ot.dist + ot.emd2 + an n² mean for E_ind."""
    n = s.shape[0]
    c = ot.dist(s, t)  # squared Euclidean, float64
    w = np.full(n, 1.0 / n)
    e_ot = float(ot.emd2(w, w, c, numItermax=10**9))
    e_pair = float(np.mean(np.diag(c)))
    e_ind = float(c.mean())
    return (e_pair - e_ot) / (e_ind - e_ot)


def best_time(fn, repeats: int) -> tuple[float, object, float]:
    """Best wall time over repeats, the last result, and the best process CPU time."""
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best, out, best_cpu


def copy_cases(repeats: int) -> None:
    """Time the full copy report against the paired ΔE with CI and the naive baseline."""
    from dmdcore.verdict import copy_controls, copy_report

    for n, d in ((1024, 64), (2048, 2)):
        s, t = make_pair(n, d, seed=2)
        rng = np.random.default_rng(3)
        twin = t + 0.3 * rng.standard_normal(t.shape)
        centers = np.stack([t[i::8].mean(axis=0) for i in range(8)])
        naive_s, _, _ = best_time(lambda: naive_delta_e(s, t), repeats)
        paired_s, _, _ = best_time(lambda: pairing_inefficiency(s, t, bootstrap=200, seed=0), repeats)
        report_s, rep, _ = best_time(lambda: copy_report(s, t, twin=twin, seed=0, centers=centers), repeats)
        ctrl_s, ctrl, _ = best_time(lambda: copy_controls(t, twin=twin, seed=0, centers=centers), repeats)
        per_s, _, _ = best_time(lambda: copy_report(s, t, seed=0, controls=ctrl), repeats)
        print(f"# copy report n={n} d={d}: verdict {rep.verdict}, ΔE {rep.delta_e:.4f}, twin {rep.delta_e_twin:.4f}, "
              f"resolution {rep.resolution}; full report {report_s:.3f} s (target 1.0 s: {'met' if report_s <= 1.0 else 'MISSED'}), "
              f"= controls {ctrl_s:.3f} s once per run + {per_s:.3f} s per evaluation; paired ΔE with CI {paired_s:.3f} s, "
              f"naive ΔE without CI {naive_s:.3f} s; load {os.getloadavg()[0]:.2f}")
        print(f"COPY n={n} d={d} report_s={report_s:.4f} controls_s={ctrl_s:.4f} per_eval_s={per_s:.4f} "
              f"paired_ci_s={paired_s:.4f} naive_s={naive_s:.4f}")


def block_bias() -> None:
    """Bias of the block approximation on remapped students across d (max_exact=512)."""
    for d in (2, 16, 64, 256):
        for n in (1024, 2048):
            s, t = make_pair(n, d, seed=4)
            exact = pairing_inefficiency(s, t, seed=0).delta_e
            approx = pairing_inefficiency(s, t, seed=0, max_exact=512)
            print(f"BLOCK d={d} n={n} blocks={approx.n_blocks} exact={exact:.4f} approx={approx.delta_e:.4f} "
                  f"bias={approx.delta_e - exact:+.4f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="only the live-training cases")
    ap.add_argument("--data", choices=("paired", "independent"), default="paired", help="benchmark data (see make_pair)")
    ap.add_argument("--copy", action="store_true", help="only the copy-report timings")
    ap.add_argument("--block-bias", action="store_true", help="only the block-approximation bias on remapped students")
    args = ap.parse_args()
    if args.copy or args.block_bias:
        print(f"load {os.getloadavg()[0]:.2f}")
        if args.copy:
            copy_cases(args.repeats)
        if args.block_bias:
            block_bias()
        return

    print(f"numpy {np.__version__}, POT {ot.__version__}, cpu_count {os.cpu_count()}, load {os.getloadavg()[0]:.2f}, data {args.data}")
    for n, d in LIVE_CASES:
        s, t = make_pair(n, d, seed=1, kind=args.data)
        sec, res, cpu = best_time(lambda: pairing_inefficiency(s, t, bootstrap=200, seed=0), args.repeats)
        print(f"LIVE n={n} d={d} project_s={sec:.4f} cpu_s={cpu:.4f} (target < 0.2 s) delta_e={res.delta_e:.4f} ci=[{res.ci_low:.4f}, {res.ci_high:.4f}]")
    if args.quick:
        return
    for n, d, target in CASES:
        s, t = make_pair(n, d, seed=0, kind=args.data)
        naive_s, naive, naive_cpu = best_time(lambda: naive_delta_e(s, t), args.repeats)
        project_s, res, project_cpu = best_time(lambda: pairing_inefficiency(s, t, bootstrap=200, seed=0), args.repeats)
        if not np.isclose(res.delta_e, naive, rtol=1e-9, atol=1e-12):
            raise SystemExit(f"mismatch n={n} d={d}: project ΔE={res.delta_e!r} naive ΔE={naive!r}")
        print(
            f"# n={n} d={d}: ΔE={res.delta_e:.6f} (naive {naive:.6f}), CI=[{res.ci_low:.4f}, {res.ci_high:.4f}], "
            f"speed-up naive/project = {naive_s / project_s:.2f}x (CPU s: project {project_cpu:.3f}, naive {naive_cpu:.3f}), "
            f"target {target} s: {'met' if project_s <= target else 'MISSED'}"
        )
        print(f"RESULT n={n} d={d} project_s={project_s:.4f} naive_s={naive_s:.4f}")


if __name__ == "__main__":
    main()
