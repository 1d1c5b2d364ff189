"""The executor interface of a sweep, and the serial executor.

``run_sweep`` decides *what* must run (teachers not yet on disk, cells not yet finished) and
builds a ``SweepContext``; an *executor* decides *where and how* the jobs run and reports every
outcome through ``ctx.record``. An executor's contract:

- train every teacher of ``ctx.need_teacher`` (once each), then run each of its cells
  (``ctx.by_teacher[key]``) once that teacher has finished; run ``ctx.ready_cells`` (their teacher
  is already on disk) at any time; a teacher that does not finish fails its cells
  (``ctx.fail_cells_of``);
- build every job with ``ctx.teacher_job`` / ``ctx.cell_job`` (the job function and its keyword
  arguments; the job writes its own run directory, so run files do not depend on the executor);
- call ``ctx.record(key, outcome, "teacher" | "cell")`` exactly once per job it ran or gave up on;
- when ``ctx.stop_requested()`` becomes true: ``ctx.request_stop()`` (running jobs stop at their
  next step), start nothing new, and return True once nothing runs any more;
- return False when every job has been recorded.

Executors: ``SerialExecutor`` (here; everything in this process), ``LocalPoolExecutor``
(``dmdcore.sweep.pool``; a process pool on this machine).
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from dmdcore.sweep.jobs import FINISHED, _call_safely, _teacher_failed
from dmdcore.sweep.workers import _threads_limited

if TYPE_CHECKING:
    from dmdcore.sweep.run import SweepProgress
    from dmdcore.sweep.spec import Cell


def _job_functions() -> tuple[Callable, Callable]:
    """(teacher job, cell job), looked up on the ``dmdcore.sweep`` package at call time, so a
    caller (a test) can replace them there with ``monkeypatch.setattr(sweep, "_run_cell", …)``."""
    import dmdcore.sweep as pkg

    return pkg._train_teacher, pkg._run_cell


@dataclass
class SweepContext:
    """What an executor gets from ``run_sweep``: the jobs still to run and how to report them."""

    out: Path                               # the sweep directory
    need_teacher: dict                      # teacher key -> config dict: teachers to train
    by_teacher: dict                        # teacher key -> [Cell] still to run that use it
    ready_cells: list                       # [Cell] to run whose teacher is already on disk
    common: dict                            # keyword arguments shared by every job
    stop_event: threading.Event | None
    stop_file: Path                         # DIR/STOP: a running job stops when it exists
    running_dir: Path                       # DIR/.running: markers of running jobs (local pool)
    progress: "SweepProgress"               # updated by the executor: running_cells
    record: Callable[[str, dict, str], None]  # (key, outcome, "teacher" | "cell")
    emit: Callable[[str], None]             # a one-line event for the progress callback
    index: Any                              # the sweep's RunIndex

    def teacher_job(self, key: str) -> tuple[Callable, dict]:
        fn, _ = _job_functions()
        return fn, dict(config=self.need_teacher[key], run_dir=str(self.out / "teachers" / key), **self.common)

    def cell_job(self, c: "Cell") -> tuple[Callable, dict]:
        _, fn = _job_functions()
        return fn, dict(config=c.config.to_dict(), run_dir=str(self.out / "cells" / c.key), cell_key=c.key,
                        overrides=c.overrides,
                        teacher_path=str(self.out / "teachers" / c.teacher_key / "teacher.pt"), **self.common)

    def stop_requested(self) -> bool:
        return self.stop_event is not None and self.stop_event.is_set()

    def request_stop(self) -> None:
        """Tell running jobs to stop at their next step (they poll the stop file)."""
        self.stop_file.write_text("stop requested\n")

    def fail_cells_of(self, key: str, outcome: dict) -> None:
        """Record every cell of teacher ``key`` as failed because the teacher did not finish."""
        for c in self.by_teacher.get(key, []):
            self.record(c.key, _teacher_failed(self.out / "cells" / c.key, key, outcome), "cell")

    def n_jobs(self) -> int:
        return len(self.need_teacher) + sum(len(v) for v in self.by_teacher.values())


class Executor(abc.ABC):
    """Base of the sweep executors (see the module docstring for the contract)."""

    name = "base"

    @abc.abstractmethod
    def run(self, ctx: SweepContext) -> bool:
        """Run the jobs of ``ctx``; True when the sweep was stopped."""


class SerialExecutor(Executor):
    """Everything in this process, one job after another (the serial baseline of the benchmark).

    threads_per_process: ``None`` leaves this process's thread pools as they are; ``n`` limits
    torch and the BLAS/OpenMP pools to ``n`` threads while the jobs run, restored afterwards."""

    name = "serial"

    def __init__(self, threads_per_process: int | None = None):
        self.threads_per_process = threads_per_process

    def run(self, ctx: SweepContext) -> bool:
        with _threads_limited(self.threads_per_process):
            return self._run(ctx)

    def _run(self, ctx: SweepContext) -> bool:
        ready = list(ctx.ready_cells)
        for k in ctx.need_teacher:
            if ctx.stop_requested():
                return True
            fn, kw = ctx.teacher_job(k)
            res = _call_safely(fn, kw)
            ctx.record(k, res, "teacher")
            if res.get("status") == FINISHED:
                ready.extend(ctx.by_teacher[k])
            else:
                ctx.fail_cells_of(k, res)
        for c in ready:
            if ctx.stop_requested():
                return True
            ctx.progress.running_cells = 1
            fn, kw = ctx.cell_job(c)
            ctx.record(c.key, _call_safely(fn, kw), "cell")
            ctx.progress.running_cells = 0
        return False
