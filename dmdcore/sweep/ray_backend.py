"""The ``ray`` executor: a sweep's teachers and cells as Ray tasks, on a local or a remote cluster.

Every teacher still to train is one task; every cell is one task whose argument is its teacher's
task (Ray starts the cell only once that teacher has finished, and a teacher shared by many cells
trains once). Tasks ask for ``cpus_per_cell`` CPUs and ``gpus_per_cell`` GPUs; a task whose worker
process dies (killed, out of memory, node lost) is re-run by Ray up to ``max_retries`` times
(the job starts its run directory afresh). A stop request writes ``DIR/STOP`` (running jobs stop
at their next step and save their status) and cancels the tasks that have not started.

Results: the jobs write their run directories themselves, exactly as on the local pool, so
``DIR`` must be one file system that every Ray node sees at the same path (shared storage: NFS,
a cluster file system, or one machine). Why not return artifacts through the object store and
write them on the driver: a cell's files are written while it trains (metrics.csv rows and
status.json as it goes, read live by the Experiments page and by a resumed sweep), checkpoints
can be large, and the run files stay byte-identical to the local backend's because the very same
job code writes them.

Ray is optional: this module imports ``ray`` only when a RayExecutor runs; ``ray_available()``
says whether it is installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from typing import Any

from dmdcore.sweep.executor import Executor, SweepContext
from dmdcore.sweep.jobs import FINISHED, _call_safely
from dmdcore.sweep.pool import WORKER_DIED

DEFAULT_MAX_RETRIES = 2


def ray_available() -> bool:
    """True when the ``ray`` package is installed (the ``ray`` backend can run)."""
    return importlib.util.find_spec("ray") is not None


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ValueError("backend: 'ray' needs the ray package (pip install ray); "
                         "or use backend 'local'") from exc
    return ray


def _last_line(exc: Exception) -> str:
    """The last line of a Ray error (its cause, after the remote traceback), without colour codes."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _ray_job(fn, kw: dict, marker: str, cpus: float) -> dict:
    """Body of every Ray task: the job with torch and the BLAS/OpenMP pools at ``cpus`` threads
    (as the local pool's workers at 1), between the same running-marker writes."""
    from dmdcore.sweep.workers import _threads_limited

    if os.path.exists(kw["stop_file"]):
        return {"status": "stopped", "message": "stopped by the sweep before it started", "wall_s": 0.0}
    with _threads_limited(max(1, int(cpus))):
        return _call_safely(fn, kw, marker)


def _ray_cell(teacher_outcome: dict, fn, kw: dict, marker: str, cpus: float) -> dict:
    """A cell task: Ray passes the finished teacher task's outcome as ``teacher_outcome``."""
    if teacher_outcome is not None and teacher_outcome.get("status") != FINISHED:
        return {"status": "teacher-failed", "message": "", "wall_s": 0.0}   # the driver fails it
    return _ray_job(fn, kw, marker, cpus)


@dataclass
class RayExecutor(Executor):
    """Teachers and cells as Ray tasks (see the module docstring).

    address: ``None`` starts a local cluster of ``num_cpus`` CPUs (default: this machine's) that
    is shut down afterwards; ``"auto"`` or ``"host:port"`` / ``"ray://host:port"`` joins an
    existing cluster. When Ray is already initialised in this process (``ray.init`` called
    before), that cluster is used and left running.
    """

    address: str | None = None
    cpus_per_cell: float = 1
    gpus_per_cell: float = 0
    max_retries: int = DEFAULT_MAX_RETRIES
    num_cpus: int | None = None
    name: str = field(default="ray", init=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.cpus_per_cell, (int, float)) and 0 < self.cpus_per_cell <= 1024):
            raise ValueError(f"cpus_per_cell: {self.cpus_per_cell!r} not in (0, 1024]")
        if not (isinstance(self.gpus_per_cell, (int, float)) and 0 <= self.gpus_per_cell <= 64):
            raise ValueError(f"gpus_per_cell: {self.gpus_per_cell!r} not in [0, 64]")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or not 0 <= self.max_retries <= 100:
            raise ValueError(f"max_retries: {self.max_retries!r} not in integers [0, 100]")
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise ValueError(f"address: {self.address!r} must be 'auto', 'host:port' or 'ray://host:port'")

    def connect(self):
        """``ray`` connected to the cluster; True as second value when this call started it."""
        ray = _import_ray()
        if ray.is_initialized():
            return ray, False
        kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if self.address:
            ray.init(address=self.address, **kw)
        else:
            # a new local cluster on loopback, sized to this machine (or num_cpus); "local": never
            # join another Ray instance found running on this machine (ray.init's default would)
            ray.init(address="local", num_cpus=self.num_cpus or os.cpu_count() or 1,
                     _node_ip_address="127.0.0.1", **kw)
        return ray, True

    def check_fits(self, ray) -> None:
        """ValueError when a task asks for more CPUs/GPUs than the whole cluster has (Ray would
        wait for them forever)."""
        have = ray.cluster_resources()
        for what, need in (("CPU", self.cpus_per_cell), ("GPU", self.gpus_per_cell)):
            if need and have.get(what, 0) < need:
                raise ValueError(f"{what.lower()}s_per_cell: {need:g} but the Ray cluster has "
                                 f"{have.get(what, 0):g} {what}s in all")

    def run(self, ctx: SweepContext) -> bool:
        ray, started = self.connect()
        try:
            self.check_fits(ray)
            return _RayRun(ray, ctx, self).run()
        finally:
            if started:
                ray.shutdown()


class _RayRun:
    """One sweep's tasks on the cluster: submission, collection, stop and failure handling."""

    def __init__(self, ray, ctx: SweepContext, ex: RayExecutor):
        self.ray, self.ctx, self.ex = ray, ctx, ex
        self.pending: dict[Any, tuple[str, Any]] = {}     # ObjectRef -> (kind, teacher key | Cell)
        self.cells_of: dict[str, list] = {}               # teacher key -> refs of its cell tasks
        self.stopped = False
        self.cancelled = 0
        opts = dict(num_cpus=ex.cpus_per_cell, num_gpus=ex.gpus_per_cell, max_retries=ex.max_retries)
        self.job_task = ray.remote(_ray_job).options(**opts)
        self.cell_task = ray.remote(_ray_cell).options(**opts)

    def marker(self, kind: str, key: str) -> str:
        return str(self.ctx.running_dir / f"{kind}-{key}")

    def submit_all(self) -> None:
        teacher_refs = {}
        for k in self.ctx.need_teacher:
            fn, kw = self.ctx.teacher_job(k)
            ref = self.job_task.remote(fn, kw, self.marker("teacher", k), self.ex.cpus_per_cell)
            self.pending[ref] = ("teacher", k)
            teacher_refs[k] = ref
        for k, cells in self.ctx.by_teacher.items():
            for c in cells:
                fn, kw = self.ctx.cell_job(c)
                dep = teacher_refs.get(k)       # None: the teacher is already on disk
                ref = self.cell_task.remote(dep, fn, kw, self.marker("cell", c.key), self.ex.cpus_per_cell)
                self.pending[ref] = ("cell", c)
                self.cells_of.setdefault(k, []).append(ref)

    def key_of(self, kind: str, obj) -> str:
        return obj if kind == "teacher" else obj.key

    def started(self, kind: str, obj) -> bool:
        return os.path.exists(self.marker(kind, self.key_of(kind, obj)))

    def run_dir(self, kind: str, obj):
        out = self.ctx.out
        return (out / "teachers" / obj) if kind == "teacher" else (out / "cells" / obj.key)

    def fail(self, kind: str, obj, status: str, message: str) -> None:
        """Record a job that ended without an outcome of its own; its status.json says why."""
        from dmdcore.runs import RunDir

        run_dir = self.run_dir(kind, obj)
        run_dir.mkdir(parents=True, exist_ok=True)
        RunDir(run_dir).write_status(status, message)
        self.handle(kind, obj, {"status": status, "message": message})

    def drop_cells_of(self, key: str) -> None:
        """Cancel the cell tasks of a teacher that did not finish; the driver fails those cells."""
        for ref in self.cells_of.get(key, []):
            if self.pending.pop(ref, None) is not None:
                self.ray.cancel(ref)

    def handle(self, kind: str, obj, res: dict) -> None:
        if kind == "cell" and res.get("status") == "teacher-failed":
            return  # recorded with its teacher (drop_cells_of / fail_cells_of)
        self.ctx.record(self.key_of(kind, obj), res, kind)
        if kind == "teacher" and res.get("status") != FINISHED:
            self.drop_cells_of(obj)
            self.ctx.fail_cells_of(obj, res)

    def count_running(self) -> None:
        """progress.running_cells: cell tasks whose job has started (its marker exists)."""
        self.ctx.progress.running_cells = sum(
            self.started(kind, obj) for kind, obj in self.pending.values() if kind == "cell")

    def collect(self, ref) -> None:
        kind, obj = self.pending.pop(ref)
        self.count_running()   # before the outcome is reported with the progress
        ex = self.ray.exceptions
        try:
            res = self.ray.get(ref)
        except ex.TaskCancelledError:
            if self.run_dir(kind, obj).exists():   # cancelled just as it started: it says so
                self.fail(kind, obj, "stopped", "stopped by the sweep (task cancelled)")
            return  # cancelled before it started: left pending on disk, a re-run runs it
        except (ex.WorkerCrashedError, ex.NodeDiedError, ex.OutOfMemoryError) as exc:
            self.fail(kind, obj, "stopped" if self.stopped else "failed",
                      f"{WORKER_DIED} while running it, {self.ex.max_retries} retries used "
                      f"({type(exc).__name__})")
            return
        except ex.RayError as exc:
            self.fail(kind, obj, "failed", f"{type(exc).__name__}: {_last_line(exc)}")
            return
        self.handle(kind, obj, res)

    def on_stop(self) -> None:
        """Running jobs stop at their next step (stop file); tasks not started are cancelled."""
        self.stopped = True
        self.ctx.request_stop()
        for ref, (kind, obj) in list(self.pending.items()):
            if not self.started(kind, obj):
                self.ray.cancel(ref)
                self.cancelled += 1
        self.ctx.emit(f"stop requested: cancelled {self.cancelled} pending task(s), waiting for running ones")

    def run(self) -> bool:
        self.submit_all()
        try:
            return self._loop()
        finally:
            if self.pending:   # left by an exception (e.g. KeyboardInterrupt): stop the cluster's work
                self.ctx.request_stop()
                for ref in self.pending:
                    self.ray.cancel(ref)

    def _loop(self) -> bool:
        while self.pending:
            self.count_running()
            done, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=0.5)
            if self.ctx.stop_requested() and not self.stopped:
                self.on_stop()
            for ref in done:
                if ref in self.pending:
                    self.collect(ref)
        return self.stopped
