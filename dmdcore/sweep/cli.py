"""The ``sweep`` command of ``python -m dmdcore``: tqdm progress on stderr, summary on stdout."""

from __future__ import annotations

import os
from pathlib import Path

from dmdcore.sweep.backends import BACKENDS, make_executor
from dmdcore.sweep.jobs import _resolve_device
from dmdcore.sweep.run import SweepProgress, run_sweep
from dmdcore.sweep.spec import SweepSpecError, expand, list_presets, load_spec
from dmdcore.sweep.summary import summarize


def register_cli(subparsers) -> None:
    """Add ``sweep SPEC --out DIR [--quick] [--workers N] [--device D] [--backend {local,ray}]
    [--address ADDR] [--cpus-per-cell N] [--gpus-per-cell N] [--max-retries N]`` to an argparse CLI."""
    p = subparsers.add_parser(
        "sweep",
        help="run a grid of experiments (a preset name or a JSON/YAML spec) on a process pool or a Ray cluster",
        description="Run every cell of a sweep spec into DIR (resumable: finished cells are skipped). "
                    f"Presets: {', '.join(list_presets())} (append ':full' for the larger variant).",
    )
    p.add_argument("spec", help="preset name (e.g. 'dimension', 'dimension:full') or path to a .json/.yaml spec")
    p.add_argument("--out", required=True, help="sweep directory (created; re-running resumes it)")
    p.add_argument("--quick", action="store_true", help="apply the spec's 'quick' overrides (short training)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: number of cores; 0 = serial)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto or cuda")
    p.add_argument("--backend", choices=BACKENDS, default="local",
                   help="local: process pool on this machine (default); ray: Ray tasks on a cluster")
    p.add_argument("--address", default=None,
                   help="ray only: cluster address ('auto' = the running cluster, host:port, ray://host:port); "
                        "default: start a local cluster of --workers CPUs")
    p.add_argument("--cpus-per-cell", type=float, default=None,
                   help="ray only: CPUs per task (default: the spec's resources, else 1)")
    p.add_argument("--gpus-per-cell", type=float, default=None,
                   help="ray only: GPUs per task (default: the spec's resources, else 0)")
    p.add_argument("--max-retries", type=int, default=None,
                   help="ray only: re-runs of a task whose worker process died (default: the spec's, else 2)")
    p.set_defaults(func=cli_main)


def _backend_kw(args) -> dict:
    return dict(workers=args.workers, address=args.address, cpus_per_cell=args.cpus_per_cell,
                gpus_per_cell=args.gpus_per_cell, max_retries=args.max_retries)


def cli_main(args) -> int:
    """Entry point of ``python -m dmdcore sweep``: tqdm progress on stderr, summary on stdout.
    Exits 2 with a one-line reason for a bad spec; returns 1 if any cell failed, else 0."""
    import sys

    from tqdm import tqdm

    try:
        spec = load_spec(args.spec)
        cells = expand(spec, quick=args.quick)
        if args.workers is not None and args.workers < 0:
            raise SweepSpecError(f"--workers: {args.workers} not in integers [0, {os.cpu_count()}]")
        _resolve_device(args.device)
        make_executor(args.backend, **_backend_kw(args), resources=spec.resources)  # validates the options
    except ValueError as exc:
        print(f"sweep: {exc}".splitlines()[0], file=sys.stderr)
        raise SystemExit(2) from None
    # delay: a sweep refused at once (its directory is busy) leaves no empty bar before the error
    bar = tqdm(total=len(cells), desc=f"sweep {spec.name}", unit="cell", file=sys.stderr, delay=1.0)
    seen_failures = 0

    def on_progress(p: SweepProgress) -> None:
        nonlocal seen_failures
        bar.n = p.done_cells + p.failed_cells
        bar.set_postfix_str(f"teachers {p.done_teachers}/{p.total_teachers}, failed {p.failed_cells}", refresh=False)
        bar.refresh()
        for key, reason in p.failures[seen_failures:]:
            bar.write(f"FAILED {key}: {reason}")
        seen_failures = len(p.failures)

    try:
        res = run_sweep(spec, args.out, quick=args.quick, callback=on_progress, device=args.device,
                        backend=args.backend, **_backend_kw(args))
    finally:
        bar.close()
    print(f"results: {Path(res.out_dir) / 'results.csv'} ({res.n_cells} cells, {res.n_skipped} resumed, "
          f"{len(res.failures)} failed, {res.wall_s:.1f} s)")
    print(summarize(res.table, list(spec.grid)))
    return 1 if res.failures else 0
