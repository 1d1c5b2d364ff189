"""Running a sweep: what is left to do, progress reporting, the manifest, and ``run_sweep``.

On disk a sweep is a directory ``DIR``::

    DIR/sweep.json                 spec, sweep id, cell list (written by the parent process)
    DIR/index.sqlite               the RunIndex of this sweep (root = DIR)
    DIR/teachers/<teacher-key>/    one teacher run per distinct (data, teacher) config
    DIR/cells/<cell-key>/          one normal experiment run per cell (+ cell.json)
    DIR/results.csv                the results table (one row per cell)

``run_sweep`` works out which teachers and cells still have to run (re-running the same spec into
the same ``DIR`` skips finished cells and re-runs failed/interrupted ones), hands them to an
executor (``dmdcore.sweep.executor``) and writes results.csv whatever happens. A stop request
(``stop_event``) reaches running jobs through the file ``DIR/STOP``.
"""

from __future__ import annotations

import copy
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from dmdcore.sweep.backends import make_executor
from dmdcore.sweep.executor import Executor, SweepContext
from dmdcore.sweep.jobs import FINISHED, _resolve_device, read_status
from dmdcore.sweep.pool import RUNNING_DIR
from dmdcore.sweep.results import _manifest, results_table
from dmdcore.sweep.spec import SPEC_FORMAT, Cell, SweepSpec, expand, load_spec


@dataclass
class SweepProgress:
    """What a sweep is doing; passed to ``callback`` after every event (copies, safe to keep)."""

    sweep_id: str
    out_dir: str
    total_cells: int
    done_cells: int = 0          # finished (run now or skipped as already finished)
    failed_cells: int = 0        # failed / diverged / stopped this time
    skipped_cells: int = 0       # finished in an earlier run of this sweep (resumed)
    running_cells: int = 0
    total_teachers: int = 0      # distinct teachers the remaining cells need
    done_teachers: int = 0
    elapsed_s: float = 0.0
    eta_s: float | None = None   # None until a cell has finished in this session
    failures: list = field(default_factory=list)   # [(cell key or "teacher:<key>", reason)]
    last: str = ""               # the latest event, one line
    finished: bool = False
    stopped: bool = False


@dataclass
class SweepResult:
    """Outcome of ``run_sweep``: the results table (one row per cell) and the failures."""

    out_dir: str
    sweep_id: str
    table: pd.DataFrame
    failures: list               # [(cell key, reason)]
    n_cells: int
    n_run: int                   # cells attempted in this call
    n_skipped: int               # cells already finished before this call
    wall_s: float
    stopped: bool = False


def _cell_finished(cell_dir: Path) -> bool:
    st = read_status(cell_dir) if cell_dir.is_dir() else None
    return bool(st) and st.get("status") == FINISHED and (cell_dir / "cell.json").is_file()


def _teacher_ready(teacher_dir: Path) -> bool:
    st = read_status(teacher_dir) if teacher_dir.is_dir() else None
    return bool(st) and st.get("status") == FINISHED and (teacher_dir / "teacher.pt").is_file()


def _new_sweep_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"


def sweep_id_of(out_dir: str | os.PathLike) -> str | None:
    """The sweep id stored in ``out_dir/sweep.json`` (None when it is not a sweep directory).
    Raises ValueError naming the file when sweep.json is not a sweep manifest."""
    p = Path(out_dir) / "sweep.json"
    if not p.is_file():
        return None
    sid = _manifest(Path(out_dir)).get("id")
    return str(sid) if sid else None


def _write_manifest(out: Path, sweep_id: str, spec: SweepSpec, cells: list[Cell], quick: bool,
                    state: str, extra: dict | None = None) -> None:
    from dmdcore.runs import atomic_write_json

    p = out / "sweep.json"
    old = _manifest(out) if p.is_file() else {}
    data = {
        "format": SPEC_FORMAT,
        "id": sweep_id,
        "spec": spec.to_dict(),
        "quick": quick,
        "state": state,
        "created": old.get("created", time.time()),
        "updated": time.time(),
        "cells": [{"key": c.key, "index": c.index, "overrides": c.overrides, "teacher_key": c.teacher_key}
                  for c in cells],
    }
    if extra:
        data.update(extra)
    atomic_write_json(p, data)


class _Reporter:
    """Counts outcomes into a SweepProgress and passes copies of it to the callback."""

    def __init__(self, prog: SweepProgress, callback: Callable[[SweepProgress], None] | None, t0: float):
        self.prog, self.callback, self.t0 = prog, callback, t0
        self.failures: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def emit(self, msg: str) -> None:
        prog = self.prog
        prog.elapsed_s = time.perf_counter() - self.t0
        done_now = prog.done_cells - prog.skipped_cells + prog.failed_cells
        remaining = prog.total_cells - prog.done_cells - prog.failed_cells
        prog.eta_s = (prog.elapsed_s / done_now * remaining) if done_now > 0 else None
        prog.last = msg
        if self.callback is not None:
            self.callback(copy.deepcopy(prog))

    def record(self, key: str, outcome: dict, what: str) -> None:
        prog = self.prog
        with self.lock:
            if outcome.get("status") == FINISHED:
                prog.done_cells += what == "cell"
                prog.done_teachers += what == "teacher"
                self.emit(f"{what} {key} finished in {outcome.get('wall_s', float('nan')):.1f} s")
            else:
                reason = f"{outcome.get('status', 'failed')}: {outcome.get('message', '')}".strip()
                self.failures.append((key if what == "cell" else f"teacher:{key}", reason))
                prog.failures = list(self.failures)
                prog.failed_cells += what == "cell"
                self.emit(f"{what} {key} {reason}")


def _check_run_args(workers, threads_per_process, device) -> None:
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ValueError(f"workers: {workers!r} not in integers [0, {os.cpu_count()}] (0 = in this process)")
    if threads_per_process is not None and (isinstance(threads_per_process, bool)
                                            or not isinstance(threads_per_process, int) or threads_per_process < 1):
        raise ValueError(f"threads_per_process: {threads_per_process!r} not None or an integer ≥ 1")
    _resolve_device(device)  # validate early


def _prepare_dir(out: Path, spec: SweepSpec) -> tuple[str, object]:
    """Create and claim the sweep directory (``.lock``, O_EXCL: a second sweep in the same
    directory is refused with RunBusyError naming the first), clear what a killed earlier run
    left; (sweep id, RunIndex). The caller releases the claim (``dmdcore.runs.release_dir``)."""
    from dmdcore.runs import RunIndex, claim_dir, release_dir

    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    claimed = False
    try:
        claim_dir(out, "out_dir")
        claimed = True
        sweep_id_of(out)  # a sweep.json that is not a manifest is refused before anything changes
    except BaseException:
        if claimed:
            release_dir(out)
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise
    (out / "cells").mkdir(exist_ok=True)
    (out / "teachers").mkdir(exist_ok=True)
    sweep_id = sweep_id_of(out) or _new_sweep_id(spec.name)
    if (out / "STOP").exists():
        (out / "STOP").unlink()
    shutil.rmtree(out / RUNNING_DIR, ignore_errors=True)  # markers of an earlier, killed sweep
    index = RunIndex(out)
    index.mark_interrupted()
    return sweep_id, index


def _plan(out: Path, cells: list[Cell]) -> tuple[list[Cell], dict, dict]:
    """(cells still to run, teacher key -> config of every teacher they use, the teachers among
    those that are not on disk yet)."""
    todo = [c for c in cells if not _cell_finished(out / "cells" / c.key)]
    teacher_cfgs: dict[str, dict] = {}
    for c in todo:
        teacher_cfgs.setdefault(c.teacher_key, c.config.to_dict())
    need_teacher = {k: d for k, d in teacher_cfgs.items() if not _teacher_ready(out / "teachers" / k)}
    return todo, teacher_cfgs, need_teacher


def _context(out: Path, todo: list[Cell], need_teacher: dict, common: dict, stop_event, rep: _Reporter,
             index) -> SweepContext:
    by_teacher: dict[str, list[Cell]] = {}
    for c in todo:
        by_teacher.setdefault(c.teacher_key, []).append(c)
    return SweepContext(
        out=out, need_teacher=need_teacher, by_teacher=by_teacher,
        ready_cells=[c for c in todo if c.teacher_key not in need_teacher], common=common,
        stop_event=stop_event, stop_file=out / "STOP", running_dir=out / RUNNING_DIR, progress=rep.prog,
        record=rep.record, emit=rep.emit, index=index)


def run_sweep(
    spec: "str | os.PathLike | dict | SweepSpec",
    out_dir: str | os.PathLike,
    *,
    workers: int | None = None,
    quick: bool = False,
    callback: Callable[[SweepProgress], None] | None = None,
    stop_event: threading.Event | None = None,
    device: str | None = "cpu",
    threads_per_process: int | None = None,
    executor: Executor | None = None,
    backend: str = "local",
    address: str | None = None,
    cpus_per_cell: float | None = None,
    gpus_per_cell: float | None = None,
    max_retries: int | None = None,
) -> SweepResult:
    """Run every cell of ``spec`` into ``out_dir`` and return the results table.

    workers: worker processes of the local pool (default ``min(os.cpu_count(), number of jobs)``);
    ``0`` runs everything in this process, one cell after another (the serial baseline).
    Each worker process runs with one thread in every pool: torch, and numpy/SciPy BLAS, POT's
    and scikit-learn's OpenMP through threadpoolctl (skipped silently if it is not installed).
    threads_per_process: only for ``workers=0``: ``None`` (default) leaves this process's thread
    pools as they are; ``n`` limits torch and the BLAS/OpenMP pools to ``n`` threads while the
    cells run and restores them afterwards (``1`` is the single-core serial baseline). Workers
    always get 1, whatever this says.
    quick: apply the spec's ``quick`` overrides (short training; a separate set of cells).
    callback: called with a SweepProgress after every event (teacher or cell done, failure).
    stop_event: when set, pending cells are cancelled and running ones stop at their next step
    (status "stopped"); re-running the sweep later re-runs them.
    device: "cpu" (default: many small processes), "auto" or "cuda".
    executor: where the jobs run (``dmdcore.sweep.executor``); default from ``backend``:
    ``"local"`` (default; ``SerialExecutor`` for ``workers=0``, else ``LocalPoolExecutor``) or
    ``"ray"`` (``RayExecutor``: Ray tasks on the cluster at ``address``, a local one of ``workers``
    CPUs when None; ``cpus_per_cell`` / ``gpus_per_cell`` / ``max_retries`` per task, defaults
    from the spec's ``resources``). The run files are the same whichever executor runs the jobs.

    Re-running into the same ``out_dir`` skips finished cells. A failing cell (exception,
    divergence, dead worker) is listed in ``failures`` and never stops the others (see
    ``dmdcore.sweep.pool`` for dying workers). results.csv is written in every case.
    Raises SweepSpecError for a bad spec before anything runs.
    """
    t0 = time.perf_counter()
    spec = load_spec(spec)
    cells = expand(spec, quick=quick)
    _check_run_args(workers, threads_per_process, device)
    out = Path(out_dir)
    todo, _, need_teacher = _plan(out, cells)  # sizes the pool; planned again once the directory is claimed
    executor = executor or make_executor(
        backend, workers=workers, threads_per_process=threads_per_process, n_jobs=len(need_teacher) + len(todo),
        address=address, cpus_per_cell=cpus_per_cell, gpus_per_cell=gpus_per_cell, max_retries=max_retries,
        resources=spec.resources)  # options checked before anything is written
    sweep_id, index = _prepare_dir(out, spec)
    try:
        return _run_claimed(out, sweep_id, index, spec, cells, quick, callback, stop_event, device, executor, t0)
    finally:
        from dmdcore.runs import release_dir

        release_dir(out)


def _run_claimed(out, sweep_id, index, spec, cells, quick, callback, stop_event, device, executor: Executor,
                 t0) -> SweepResult:
    """run_sweep's body once the directory is claimed."""
    _write_manifest(out, sweep_id, spec, cells, quick, "running")
    todo, teacher_cfgs, need_teacher = _plan(out, cells)
    skipped = len(cells) - len(todo)
    prog = SweepProgress(sweep_id=sweep_id, out_dir=str(out), total_cells=len(cells), done_cells=skipped,
                         skipped_cells=skipped, total_teachers=len(teacher_cfgs),
                         done_teachers=len(teacher_cfgs) - len(need_teacher))
    rep = _Reporter(prog, callback, t0)
    rep.emit(f"{len(cells)} cells ({skipped} already finished), {len(need_teacher)} teachers to train")
    stop_file = out / "STOP"
    ctx = _context(out, todo, need_teacher, dict(sweep_id=sweep_id, index_root=str(out), stop_file=str(stop_file),
                                                 device=device), stop_event, rep, index)
    try:
        stopped = executor.run(ctx)
    finally:
        # Whatever happened above, the table on disk matches the runs on disk.
        if stop_file.exists():
            stop_file.unlink()
        shutil.rmtree(out / RUNNING_DIR, ignore_errors=True)
        table = results_table(out)
        table.to_csv(out / "results.csv", index=False)
    prog.finished, prog.stopped, prog.running_cells = True, stopped, 0
    _write_manifest(out, sweep_id, spec, cells, quick, "stopped" if stopped else "done")
    rep.emit("stopped" if stopped else f"done: {prog.done_cells} finished, {prog.failed_cells} failed")
    return SweepResult(out_dir=str(out), sweep_id=sweep_id, table=table, failures=rep.failures, n_cells=len(cells),
                       n_run=len(todo), n_skipped=skipped, wall_s=time.perf_counter() - t0, stopped=stopped)
