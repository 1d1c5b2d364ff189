"""Benchmark: a sweep preset on the process pool vs. the same cells one after another in one process.

    python benchmarks/sweep.py                      # dimension preset, default size (minutes)
    python benchmarks/sweep.py --quick              # the preset's --quick variant (smoke run)
    python benchmarks/sweep.py --preset freedom --workers 2
    python benchmarks/sweep.py --quick --backend ray             # + Ray tasks on a local cluster
    python benchmarks/sweep.py --quick --backend ray --nodes 2   # + 2 Ray nodes on this machine

Both runs start from empty directories (teachers included) and must finish every cell. The
serial baseline is ``run_sweep(..., workers=0)``: every teacher and cell in this process, in grid
order. Its torch thread count is ``--serial-threads`` (default 1, the same per-process setting as the
pool's workers), applied to torch and to every BLAS/OpenMP pool (numpy, POT, scikit-learn) while
its cells run, so both sides do the same per-process work and the ratio measures the process
pool. ``--also-free-serial`` additionally times the serial run with the library pools left at
their defaults (they may then use the second core between torch steps). Last line:
``RESULT cells=<int> wall_s=<float> serial_s=<float> speedup=<float>``.

``--backend ray`` also runs the sweep as Ray tasks (``--workers`` CPUs, one per task) after the
local pool (and before the serial run, which needs only one core and so is the least disturbed
by other work on the machine), on a cluster started here (timed apart: the cluster start is paid once, not per
sweep), and prints its ratio to the local pool (Ray's overhead per cell) and to serial:
``RESULT_RAY cells=<int> ray_s=<float> local_s=<float> serial_s=<float> ray_vs_local=<float>
ray_vs_serial=<float> init_s=<float>``. ``--nodes N`` starts N Ray nodes on this machine (each
its own raylet and object store, ``--workers / N`` CPUs each; ``ray.cluster_utils.Cluster``), the
one-machine stand-in for a multi-node cluster.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dmdcore.sweep import expand, load_preset, run_sweep, summarize  # noqa: E402


def _cpu_s(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _start_ray(workers: int, nodes: int):
    """A local Ray cluster (loopback, no dashboard) of ``workers`` CPUs on ``nodes`` nodes of this
    machine; returns a function that shuts it down."""
    import ray

    if nodes <= 1:
        ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")
        return ray.shutdown
    from ray.cluster_utils import Cluster

    per_node = max(1, workers // nodes)
    # (the nodes use this machine's own address: with node_ip_address 127.0.0.1 the second node's
    # GCS client could not reach the head here)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": per_node, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=per_node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)

    def stop() -> None:
        ray.shutdown()
        cluster.shutdown()
    return stop


def _ray_run(args, spec, tmp: Path, par):
    """The same sweep as Ray tasks; checks its metrics equal the pool's; returns a function of
    (local_s, serial_s) that prints the ratios and returns the RESULT_RAY line."""
    import ray

    t0 = time.perf_counter()
    stop = _start_ray(args.workers, args.nodes)
    init_s = time.perf_counter() - t0
    try:
        nodes = len([n for n in ray.nodes() if n["Alive"]])
        t0 = time.perf_counter()
        res = run_sweep(spec, tmp / "ray", quick=args.quick, backend="ray")
        ray_s = time.perf_counter() - t0
    finally:
        stop()
    if res.failures:
        raise SystemExit(f"failures: ray {res.failures}")
    same = all((tmp / "ray" / p.relative_to(Path(par.out_dir))).read_bytes() == p.read_bytes()
               for p in Path(par.out_dir).glob("*/*/metrics.csv"))
    print(f"ray ({nodes} node(s), {args.workers} CPUs, 1 per task): {ray_s:.1f} s (+ {init_s:.1f} s to start "
          f"the cluster); metrics.csv identical to the pool's: {same}; load average {os.getloadavg()[0]:.2f}", flush=True)

    def ratios(local_s: float, serial_s: float) -> str:
        print(f"ray vs local pool {local_s / ray_s:.2f}x, ray vs serial {serial_s / ray_s:.2f}x "
              f"(with the cluster start: {serial_s / (ray_s + init_s):.2f}x)")
        return (f"RESULT_RAY cells={res.n_cells} ray_s={ray_s:.1f} local_s={local_s:.1f} serial_s={serial_s:.1f} "
                f"ray_vs_local={local_s / ray_s:.2f} ray_vs_serial={serial_s / ray_s:.2f} init_s={init_s:.1f} "
                f"nodes={nodes} identical={same}")
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="dimension")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--serial-threads", type=int, default=1,
                    help="threads of torch and of every BLAS/OpenMP pool in the serial baseline (workers use 1)")
    ap.add_argument("--also-free-serial", action="store_true",
                    help="also time the serial run with the library thread pools unrestricted (reference)")
    ap.add_argument("--keep", default=None, help="directory to keep the parallel sweep in (default: temporary)")
    ap.add_argument("--backend", choices=("local", "ray"), default="local",
                    help="ray: also run the sweep as Ray tasks and report its ratios to the pool and to serial")
    ap.add_argument("--nodes", type=int, default=1, help="with --backend ray: Ray nodes started on this machine")
    args = ap.parse_args()
    spec = load_preset(args.preset)
    cells = expand(spec, quick=args.quick)
    n_teachers = len({c.teacher_key for c in cells})
    print(f"preset {spec.name}{' --quick' if args.quick else ''}: {len(cells)} cells, {n_teachers} teachers; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; serial torch threads {args.serial_threads}")
    with tempfile.TemporaryDirectory() as tmp:
        c0 = _cpu_s(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        par_dir = Path(args.keep) if args.keep else Path(tmp) / "parallel"
        if args.keep and par_dir.exists() and any(par_dir.iterdir()):
            raise SystemExit(f"--keep: {par_dir} is not empty (the parallel run must start from scratch)")
        par = run_sweep(spec, par_dir, workers=args.workers, quick=args.quick)
        wall = time.perf_counter() - t0
        par_cpu = _cpu_s(resource.RUSAGE_CHILDREN) - c0  # the pool's workers, reaped at shutdown
        print(f"parallel ({args.workers} workers): {wall:.1f} s, {len(par.failures)} failures", flush=True)
        # Ray right after the pool (both use every core; the serial run uses one, so it is the
        # least disturbed by anything else running on the machine); ratios computed after serial.
        ray = _ray_run(args, spec, Path(tmp), par) if args.backend == "ray" else None
        # Serial baseline with the workers' per-process setting: torch and every BLAS/OpenMP pool
        # (numpy, POT, scikit-learn) limited to --serial-threads while its cells run.
        c0 = _cpu_s(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        ser = run_sweep(spec, Path(tmp) / "serial", workers=0, quick=args.quick,
                        threads_per_process=args.serial_threads)
        serial = time.perf_counter() - t0
        ser_cpu = _cpu_s(resource.RUSAGE_SELF) - c0
        print(f"serial (one process, {args.serial_threads} thread(s) in every pool): {serial:.1f} s, "
              f"{len(ser.failures)} failures")
        if args.also_free_serial:
            # for reference: the same serial run with the library thread pools left at their
            # defaults (numpy/POT/scikit-learn may then use the second core between torch steps)
            threads = torch.get_num_threads()
            torch.set_num_threads(args.serial_threads)
            try:
                t1 = time.perf_counter()
                run_sweep(spec, Path(tmp) / "serial-free", workers=0, quick=args.quick)
                free = time.perf_counter() - t1
            finally:
                torch.set_num_threads(threads)
            print(f"serial, library pools unrestricted (torch {args.serial_threads} thread): {free:.1f} s "
                  f"→ parallel speed-up over it {free / wall:.2f}x")
        ray_line = ray(wall, serial) if ray else None
        if par.failures or ser.failures:
            raise SystemExit(f"failures: parallel {par.failures} serial {ser.failures}")
        d = np.abs(par.table["delta_e"].to_numpy() - ser.table["delta_e"].to_numpy())
        print(f"max |ΔE(parallel) − ΔE(serial)| over cells = {np.nanmax(d):.2e} (thread-count rounding only)")
        print(f"mean cell wall time: parallel {par.table['wall_s'].mean():.1f} s, serial {ser.table['wall_s'].mean():.1f} s")
        print(f"CPU seconds: parallel workers {par_cpu:.0f}, serial {ser_cpu:.0f}; on an otherwise idle machine "
              f"the parallel run would need about {par_cpu / max(1, min(args.workers, os.cpu_count())):.0f} s")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        print("summary of the parallel run:\n" + summarize(par.table, list(spec.grid)))
    print(f"RESULT cells={len(cells)} wall_s={wall:.1f} serial_s={serial:.1f} speedup={serial / wall:.2f}")
    if ray_line:
        print(ray_line)


if __name__ == "__main__":
    main()
