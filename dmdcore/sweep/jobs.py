"""Sweep jobs: what one worker does for one teacher or one cell, whatever backend runs it.

The job functions are top-level (``spawn``-ed pool workers and Ray workers import them by name)
and take plain keyword arguments (JSON-able config dicts, paths as strings). Each returns an
*outcome* dict ``{"status", "message", "wall_s"}`` and writes its run directory itself
(status.json, metrics.csv, checkpoints, ``cell.json``), so the files of a run are the same
whichever backend ran it. A stop request reaches a running job through the file ``DIR/STOP``,
checked before every training step.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

FINISHED = "finished"

_JOB_RUNNING = threading.Event()  # set while a worker runs a job (_drive); see workers._start_orphan_watchdog
# pid of the sweep process, recorded by a pool worker when it starts (workers._worker_init); None
# in the sweep process itself and under other backends. Read at every job start and every step:
# a job taken after the sweep process died must not start (os.getppid() then names init, and a
# parent pid read at job start would look "alive" forever).
_SWEEP_PARENT: int | None = None


def _parent_gone() -> bool:
    return _SWEEP_PARENT is not None and os.getppid() != _SWEEP_PARENT


def _stop_requested(stop_file: str | None) -> bool:
    return bool(stop_file) and os.path.exists(stop_file)


def _resolve_device(device):
    from dmdcore.device import pick_device

    return pick_device(device or "auto")


def read_status(run_dir: str | os.PathLike) -> dict | None:
    """status.json of a run directory, or None when absent."""
    from dmdcore.runs import RunDir

    return RunDir(run_dir).read_status()


def _teacher_failed(cell_dir: Path, key: str, outcome: dict) -> dict:
    """Outcome of a cell whose teacher did not finish; its status.json says why."""
    from dmdcore.runs import RunDir

    msg = f"its teacher {key} did not finish ({outcome.get('status')}: {outcome.get('message', '')})"
    if cell_dir.exists():
        shutil.rmtree(cell_dir)
    cell_dir.mkdir(parents=True)
    RunDir(cell_dir).write_status("failed", msg)
    return {"status": "failed", "message": msg}


def _call_safely(fn, kwargs: dict, marker: str | None = None) -> dict:
    """Run a job; any exception becomes a failure outcome (the sweep must go on).

    ``marker``: a file that exists exactly while the job runs (written first, removed when ``fn``
    returns or raises); one left behind names a job whose process died under it."""
    t0 = time.perf_counter()
    if _parent_gone():  # the sweep was killed: take no more work, touch nothing
        return {"status": "stopped", "message": "sweep process gone; not started", "wall_s": 0.0}
    if marker:
        Path(marker).parent.mkdir(parents=True, exist_ok=True)
        Path(marker).write_text(f"{os.getpid()}\n")
    try:
        return fn(**kwargs)
    except Exception as exc:  # reported, never swallowed: becomes the cell's failure reason
        msg = f"{type(exc).__name__}: {exc}"
        try:
            from dmdcore.runs import RunDir

            run = RunDir(kwargs["run_dir"])
            if run.exists():
                run.write_status("failed", msg)
        except (OSError, ValueError):
            pass  # the outcome below still carries the reason
        return {"status": "failed", "message": msg, "wall_s": time.perf_counter() - t0}
    finally:
        if marker:
            Path(marker).unlink(missing_ok=True)


def _drive(exp, stop_file: str | None) -> tuple[str, str]:
    """Step an Experiment (stepper protocol of dmdcore.jobs) to the end; returns (status, message).

    Stops at the next step when ``stop_file`` exists or the sweep process is gone; a
    DivergenceError ends it as "diverged". The experiment's ``finalize`` writes status.json,
    checkpoints and the index row.
    """
    _JOB_RUNNING.set()  # the orphan watchdog waits for this job to save its status
    try:
        return _drive_steps(exp, stop_file)
    finally:
        _JOB_RUNNING.clear()


def _drive_steps(exp, stop_file: str | None) -> tuple[str, str]:
    from dmdcore.distill import DivergenceError

    steps = 0
    status, message = FINISHED, ""
    parent = _SWEEP_PARENT if _SWEEP_PARENT is not None else os.getppid()
    try:
        while not exp.done:
            if _stop_requested(stop_file):
                status, message = "stopped", f"stopped by the sweep at step {steps}"
                break
            if os.getppid() != parent:
                # The sweep process was killed: stop here so a resumed sweep can redo this cell.
                status, message = "stopped", f"sweep process gone; stopped at step {steps}"
                break
            exp.step()
            steps += 1
        else:
            message = f"finished after {steps} steps"
    except DivergenceError as exc:
        status, message = "diverged", f"diverged: {exc}"
    except Exception as exc:  # recorded as the cell's failure (and re-raised after saving the status)
        exp.finalize("failed", f"{type(exc).__name__}: {exc}")
        raise
    exp.finalize(status, message)
    return status, message


def _train_teacher(*, config: dict, run_dir: str, sweep_id: str, index_root: str, stop_file: str,
                   device: str | None) -> dict:
    """Train the teacher of ``config`` into ``run_dir`` (a normal run of kind "teacher")."""
    from dmdcore.config import ExperimentConfig
    from dmdcore.pipeline import Experiment
    from dmdcore.runs import RunIndex

    t0 = time.perf_counter()
    path = Path(run_dir)
    if path.exists():
        shutil.rmtree(path)  # an unfinished earlier attempt of this sweep's own teacher
    index = RunIndex(index_root)
    cfg = ExperimentConfig.from_dict(config)
    exp = Experiment(cfg, run_dir=path, index=index, device=_resolve_device(device), phases=("teacher",))
    index.register(path, sweep=sweep_id)
    status, message = _drive(exp, stop_file)
    return {"status": status, "message": message, "wall_s": time.perf_counter() - t0}


def _run_cell(*, config: dict, run_dir: str, cell_key: str, overrides: dict, teacher_path: str, sweep_id: str,
              index_root: str, stop_file: str, device: str | None) -> dict:
    """Distil one cell's student from the shared teacher into ``run_dir`` (a normal run)."""
    from dmdcore.config import ExperimentConfig
    from dmdcore.pipeline import Experiment, load_teacher
    from dmdcore.runs import RunIndex, atomic_write_json

    t0 = time.perf_counter()
    path = Path(run_dir)
    if path.exists():
        shutil.rmtree(path)  # a failed/interrupted earlier attempt of this cell: start clean
    index = RunIndex(index_root)
    dev = _resolve_device(device)
    cfg = ExperimentConfig.from_dict(config)
    teacher = load_teacher(teacher_path, device=dev)
    exp = Experiment(cfg, run_dir=path, index=index, teacher=teacher, device=dev)
    index.register(path, sweep=sweep_id)
    status, message = _drive(exp, stop_file)
    wall = time.perf_counter() - t0
    atomic_write_json(path / "cell.json", {"key": cell_key, "sweep": sweep_id, "overrides": overrides,
                                           "teacher": teacher_path, "status": status, "wall_s": wall})
    return {"status": status, "message": message, "wall_s": wall}
