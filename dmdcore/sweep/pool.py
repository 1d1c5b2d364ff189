"""The ``local`` executor: the sweep's jobs on a ``spawn`` process pool that survives dying workers.

Teachers are trained once per distinct (data, teacher) config, in parallel, and every cell needing
a teacher is submitted as soon as that teacher is saved. When a worker process dies (segfault, OOM
kill, ``os._exit``) the pool is rebuilt: jobs not yet started are queued again; a job that was
running alone is failed ("worker process died"); jobs that were running beside others (the pool
kills them all) are re-run once, one at a time, and failed if their worker dies again. A job is
known to have been running by its marker file ``DIR/.running/<kind>-<key>``.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections import deque
from pathlib import Path
from typing import Any

from dmdcore.sweep.executor import Executor, SweepContext
from dmdcore.sweep.jobs import FINISHED, _call_safely
from dmdcore.sweep.workers import _make_pool

# DIR/.running/<kind>-<key>: written by a worker when it starts a job, removed when the job returns;
# one left behind after the pool broke names a job that was running when its worker died.
RUNNING_DIR = ".running"
WORKER_DIED = "worker process died"


class LocalPoolExecutor(Executor):
    """Jobs on ``n_workers`` spawn-ed processes of this machine (see the module docstring)."""

    name = "local"

    def __init__(self, n_workers: int):
        self.n_workers = n_workers

    def run(self, ctx: SweepContext) -> bool:
        return _PoolRun(ctx, self.n_workers).run()


class _PoolRun:
    """One sweep's run on the pool: its futures, held jobs, suspects and the break handling."""

    def __init__(self, ctx: SweepContext, n_workers: int):
        self.ctx = ctx
        self.n_workers = n_workers
        self.pool: cf.ProcessPoolExecutor | None = None
        self.pending: dict[cf.Future, tuple[str, Any]] = {}
        self.held: list[tuple[str, Any]] = []      # waiting while a suspect re-runs alone
        self.suspects: deque = deque()             # were running when another worker died: re-run alone
        self.retried: set[tuple[str, str]] = set()
        self.broken = self.alone = self.stopped = False
        self.idle_breaks = 0

    @staticmethod
    def key_of(kind: str, obj) -> str:
        return obj if kind == "teacher" else obj.key

    def marker(self, kind: str, obj) -> Path:
        return self.ctx.running_dir / f"{kind}-{self.key_of(kind, obj)}"

    def submit_now(self, kind: str, obj) -> None:
        if self.pool is None:
            self.pool = _make_pool(self.n_workers)
        fn, kw = self.ctx.teacher_job(obj) if kind == "teacher" else self.ctx.cell_job(obj)
        try:
            self.pending[self.pool.submit(_call_safely, fn, kw, str(self.marker(kind, obj)))] = (kind, obj)
        except cf.process.BrokenProcessPool:
            self.broken = True
            self.held.append((kind, obj))

    def submit(self, kind: str, obj) -> None:
        if self.broken or self.alone or self.suspects:
            self.held.append((kind, obj))
        else:
            self.submit_now(kind, obj)

    def handle(self, kind: str, obj, res: dict) -> None:
        self.ctx.record(self.key_of(kind, obj), res, kind)
        if res.get("status") == FINISHED:
            self.idle_breaks = 0  # progress since the last break: breaks are not "in a row"
        if kind == "teacher":
            if res.get("status") != FINISHED:
                self.ctx.fail_cells_of(obj, res)
            elif not self.stopped:
                for c in self.ctx.by_teacher[obj]:
                    self.submit("cell", c)

    def died(self, kind: str, obj, status: str, message: str) -> None:
        """Outcome of a job whose worker process died: its run's status.json says so."""
        from dmdcore.runs import RunDir

        out = self.ctx.out
        run_dir = (out / "teachers" / obj) if kind == "teacher" else (out / "cells" / obj.key)
        run_dir.mkdir(parents=True, exist_ok=True)
        RunDir(run_dir).write_status(status, message)
        self.handle(kind, obj, {"status": status, "message": message})

    def _sort_broken(self) -> tuple[list, list]:
        """The jobs of a broken pool: (were running, had not started); finished ones handled."""
        cf.wait(list(self.pending), timeout=60)  # a broken pool fails all its futures at once
        running, not_started = [], []
        for f, (kind, obj) in list(self.pending.items()):
            self.pending.pop(f)
            if f.cancelled():
                continue
            if f.done() and f.exception() is None:
                self.handle(kind, obj, f.result())     # finished just before the break
            elif self.marker(kind, obj).exists():
                running.append((kind, obj))
            else:
                not_started.append((kind, obj))
        return running, not_started

    def on_break(self) -> None:
        """The pool broke: classify its jobs by their markers, then start a fresh pool."""
        running, not_started = self._sort_broken()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pool = None
        self.broken = self.alone = False
        for kind, obj in running:
            self.marker(kind, obj).unlink(missing_ok=True)
            ident = (kind, self.key_of(kind, obj))
            if self.stopped:
                self.died(kind, obj, "stopped", f"{WORKER_DIED} while the sweep was stopping")
            elif len(running) == 1 or ident in self.retried:
                self.died(kind, obj, "failed", f"{WORKER_DIED} while running it (segfault, out of memory "
                                               "or exit in the worker)")
            else:
                self.retried.add(ident)
                self.suspects.append((kind, obj))
        if not self.stopped:
            self.held[:0] = not_started
        self.idle_breaks = 0 if running else self.idle_breaks + 1
        if self.idle_breaks >= 3:
            # Workers die before running anything (e.g. in their initializer): give up.
            for kind, obj in [*self.suspects, *self.held]:
                self.died(kind, obj, "failed", f"{WORKER_DIED}: the process pool broke 3 times in a row "
                                               "before running a job")
            self.suspects.clear()
            self.held.clear()
        self.ctx.index.mark_interrupted()  # index rows follow the status.json files just written
        self.ctx.emit(f"a worker process died: {len(running)} job(s) were running, {len(self.suspects)} to "
                      f"re-run alone, {len(self.held)} queued again on a new pool")

    def schedule(self) -> None:
        """With nothing in flight: start the next suspect alone, else everything held."""
        if self.pending or self.broken or self.stopped:
            return
        if self.suspects:
            self.alone = True
            self.submit_now(*self.suspects.popleft())
        elif self.held:
            self.alone = False
            jobs = self.held[:]
            self.held.clear()
            for kind, obj in jobs:
                self.submit_now(kind, obj)

    def on_stop(self) -> None:
        """Stop requested: running jobs are told through the stop file, pending ones cancelled."""
        self.stopped = True
        self.ctx.request_stop()
        for f in list(self.pending):
            if f.cancel():
                self.pending.pop(f)
        self.held.clear()
        for kind, obj in list(self.suspects):
            self.died(kind, obj, "stopped", f"stopped by the sweep after its {WORKER_DIED}")
        self.suspects.clear()
        self.ctx.emit("stop requested: cancelled pending cells, waiting for running ones")

    def collect(self, done) -> None:
        """Handle the finished futures ``done``; a broken pool sets ``broken``."""
        for f in done:
            if f not in self.pending:
                continue
            try:
                res = f.result()
            except cf.CancelledError:
                self.pending.pop(f)
                continue
            except cf.process.BrokenProcessPool:
                self.broken = True      # on_break sorts out every future of this pool
                break
            except Exception as exc:  # e.g. an outcome that could not be sent back: the job's failure
                res = {"status": "failed", "message": f"{type(exc).__name__}: {exc}"}
            self.handle(*self.pending.pop(f), res)

    def run(self) -> bool:
        """Teachers, then each teacher's cells; True when the sweep was stopped."""
        for k in self.ctx.need_teacher:
            self.submit("teacher", k)
        for c in self.ctx.ready_cells:
            self.submit("cell", c)
        try:
            while True:
                if self.broken:
                    self.on_break()
                    continue
                self.schedule()
                if self.broken:
                    continue
                if not self.pending:
                    break
                self.ctx.progress.running_cells = sum(
                    1 for f, (kind, _) in self.pending.items() if kind == "cell" and f.running())
                done, _ = cf.wait(list(self.pending), timeout=0.5, return_when=cf.FIRST_COMPLETED)
                if self.ctx.stop_requested() and not self.stopped:
                    self.on_stop()
                self.collect(done)
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
        return self.stopped
