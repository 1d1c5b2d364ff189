"""Sweeps: grids of experiments run by an executor, shipped presets, the results table.

The package is split by concept; every public name is importable from ``dmdcore.sweep``:

- ``spec``: the sweep spec (JSON/YAML/preset/dict), its validation and expansion into cells;
- ``run``: ``run_sweep`` (what is left to do, progress, manifest, results.csv), SweepProgress/Result;
- ``executor``: the executor interface (``SweepContext``, ``Executor``) and ``SerialExecutor``;
- ``pool``: ``LocalPoolExecutor``, the process pool that survives dying workers;
- ``ray_backend``: ``RayExecutor``, teachers and cells as Ray tasks (optional ``ray`` package);
- ``backends``: ``make_executor(backend, …)`` for ``local`` / ``ray``;
- ``workers``: worker-process setup (thread limits, orphan watchdog, the spawn pool);
- ``jobs``: what a worker runs for one teacher or one cell (the same for every executor);
- ``results``: results table, training curves, replicate statistics, the list of sweeps;
- ``summary``: the written summary of a results table;
- ``job``: ``SweepJob``, a sweep on a background thread for the Experiments page;
- ``cli``: ``python -m dmdcore sweep``.

See ``dmdcore.sweep.spec`` for the spec format and ``dmdcore.sweep.run`` for the directory layout.
"""

from dmdcore.sweep.backends import BACKENDS, available_backends, check_backend, make_executor
from dmdcore.sweep.cli import cli_main, register_cli
from dmdcore.sweep.executor import Executor, SerialExecutor, SweepContext
from dmdcore.sweep.job import SweepJob, SweepSnapshot
from dmdcore.sweep.jobs import (
    FINISHED,
    _call_safely,
    _drive,
    _resolve_device,
    _run_cell,
    _teacher_failed,
    _train_teacher,
    read_status,
)
from dmdcore.sweep.pool import RUNNING_DIR, WORKER_DIED, LocalPoolExecutor
from dmdcore.sweep.ray_backend import RayExecutor, ray_available
from dmdcore.sweep.results import (
    METRIC_COLUMNS,
    VERDICT_TEXT_COLUMNS,
    aggregate,
    list_sweeps,
    mean_ci,
    results_table,
    training_curves,
)
from dmdcore.sweep.run import SweepProgress, SweepResult, run_sweep, sweep_id_of
from dmdcore.sweep.spec import (
    PRESETS_DIR,
    RESOURCE_KEYS,
    SEED_AXIS,
    SEED_FIELDS,
    SPEC_FORMAT,
    SPEC_KEYS,
    Cell,
    SweepSpec,
    SweepSpecError,
    cell_config_dict,
    config_fields,
    expand,
    is_replicate_axis,
    list_presets,
    load_preset,
    load_spec,
    teacher_key,
)
from dmdcore.sweep.summary import summarize
from dmdcore.sweep.workers import THREAD_ENV, _make_pool, _start_orphan_watchdog, _threads_limited, _worker_init

__all__ = [
    "BACKENDS", "RESOURCE_KEYS", "RayExecutor", "available_backends", "check_backend", "make_executor",
    "ray_available",
    "FINISHED", "METRIC_COLUMNS", "VERDICT_TEXT_COLUMNS", "PRESETS_DIR", "RUNNING_DIR", "SEED_AXIS", "SEED_FIELDS",
    "SPEC_FORMAT",
    "SPEC_KEYS", "THREAD_ENV", "WORKER_DIED", "Cell", "Executor", "LocalPoolExecutor", "SerialExecutor",
    "SweepContext", "SweepJob", "SweepProgress", "SweepResult", "SweepSnapshot", "SweepSpec", "SweepSpecError",
    "aggregate", "cell_config_dict", "cli_main", "config_fields", "expand", "is_replicate_axis", "list_presets",
    "list_sweeps", "load_preset", "load_spec", "mean_ci", "read_status", "register_cli", "results_table",
    "run_sweep", "summarize", "sweep_id_of", "teacher_key", "training_curves",
]
# Private helpers kept importable from the package (tests replace the job functions here):
_PRIVATE = (_call_safely, _drive, _resolve_device, _run_cell, _teacher_failed, _train_teacher, _make_pool,
            _start_orphan_watchdog, _threads_limited, _worker_init)
