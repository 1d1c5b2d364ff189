"""Choosing a sweep's executor by backend name: ``local`` (default) or ``ray``.

``local``: the process pool on this machine (``dmdcore.sweep.pool``; ``workers=0`` runs serially
in-process). ``ray``: Ray tasks on a local or remote cluster (``dmdcore.sweep.ray_backend``).
Per-task resources come from the arguments when given, else from the spec's ``resources``.
"""

from __future__ import annotations

import os

from dmdcore.sweep.executor import Executor, SerialExecutor
from dmdcore.sweep.pool import LocalPoolExecutor
from dmdcore.sweep.ray_backend import DEFAULT_MAX_RETRIES, RayExecutor, ray_available

BACKENDS = ("local", "ray")


def available_backends() -> list[str]:
    """The backends that can run here: ``local`` always, ``ray`` when the package is installed."""
    return [b for b in BACKENDS if b != "ray" or ray_available()]


def check_backend(backend: str, address: str | None = None) -> None:
    """ValueError naming the problem for an unknown backend, or an address without ``ray``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: {backend!r} not in {list(BACKENDS)}")
    if address and backend != "ray":
        raise ValueError(f"address: {address!r} is only used by backend 'ray' (got backend {backend!r})")
    if backend == "ray" and not ray_available():
        raise ValueError("backend: 'ray' needs the ray package (pip install ray); or use backend 'local'")


def make_executor(backend: str = "local", *, workers: int | None = None, threads_per_process: int | None = None,
                  n_jobs: int = 1, address: str | None = None, cpus_per_cell: float | None = None,
                  gpus_per_cell: float | None = None, max_retries: int | None = None,
                  resources: dict | None = None) -> Executor:
    """The executor of ``backend``. ``workers``: local pool size (0 = serial in this process), or
    for ``ray`` without ``address`` the CPUs of the local cluster it starts (default: all cores).
    ``resources``: the spec's defaults for ``cpus_per_cell``, ``gpus_per_cell``, ``max_retries``."""
    check_backend(backend, address)
    if backend == "local":
        if cpus_per_cell not in (None, 1) or gpus_per_cell:
            raise ValueError("cpus_per_cell / gpus_per_cell: only backend 'ray' takes per-task resources "
                             "(local workers use one core each)")
        if workers == 0:
            return SerialExecutor(threads_per_process)
        return LocalPoolExecutor(min(workers or (os.cpu_count() or 1), max(1, n_jobs)))
    res = resources or {}
    return RayExecutor(
        address=address or None,
        cpus_per_cell=cpus_per_cell if cpus_per_cell is not None else res.get("cpus_per_cell", 1),
        gpus_per_cell=gpus_per_cell if gpus_per_cell is not None else res.get("gpus_per_cell", 0),
        max_retries=max_retries if max_retries is not None else res.get("max_retries", DEFAULT_MAX_RETRIES),
        num_cpus=workers or None)
