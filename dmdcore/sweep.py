"""Sweeps: grids of experiments run on a process pool, shipped presets, the results table.

A *sweep spec* is a dict (JSON / YAML file, shipped preset, or built in Python)::

    {"name": "dimension", "description": "...", "claim": "...",
     "base":  {<partial ExperimentConfig dict, nested or dotted keys>},
     "grid":  {"data.dim": [2, 4, 8], "distill.gan": [false, true], "seed": [0, 1, 2]},
     "quick": {<dotted overrides applied with --quick, e.g. shorter training>},
     "full":  {"grid": {...}, "base": {...}}}  # optional larger variant ("name:full"); null drops an axis

Dotted keys address nested config fields (``data.dim``, ``distill.gan``); the special axis
``seed`` sets ``data.seed``, ``teacher.seed`` and ``distill.seed`` together (a replicate of the
whole pipeline). An axis given as a mapping instead of a list is a *named-level* axis: its key is
a free label and each level names a set of dotted overrides, e.g.
``"loss": {"dmd": {}, "dmd+gan": {"distill.gan": true}, "dmd+reg": {"distill.regression": true}}``. Every cell of the grid is validated (``ExperimentConfig.validate``) before
anything runs.

On disk a sweep is a directory ``DIR``::

    DIR/sweep.json                 spec, sweep id, cell list (written by the parent process)
    DIR/index.sqlite               the RunIndex of this sweep (root = DIR)
    DIR/teachers/<teacher-key>/    one teacher run per distinct (data, teacher) config
    DIR/cells/<cell-key>/          one normal experiment run per cell (+ cell.json)
    DIR/results.csv                the results table (one row per cell)

Cells run in ``spawn``-ed worker processes (one thread in every torch/BLAS/OpenMP pool each);
teachers are trained once per distinct (data, teacher) config, in parallel, and every cell needing
a teacher starts as soon as that teacher is saved; a worker that dies costs only the job it was
running. Re-running the same spec into the same ``DIR`` skips finished cells and re-runs
failed/interrupted ones. A stop request (``stop_event``) is passed to the workers through
the file ``DIR/STOP`` and takes effect at their next training step.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import copy
import dataclasses
import hashlib
import itertools
import json
import math
import multiprocessing as mp
import os
import re
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
SPEC_FORMAT = "dmdcore.sweep.v1"
SPEC_KEYS = ("name", "description", "claim", "base", "grid", "quick", "full", "plot")
SEED_AXIS = "seed"
SEED_FIELDS = ("data.seed", "teacher.seed", "distill.seed")
# Columns of the results table taken from the last student evaluation row of metrics.csv.
METRIC_COLUMNS = ("delta_e", "delta_e_lo", "delta_e_hi", "e_pair", "e_ot", "e_ind", "w2", "w2_data",
                  "eta_teacher", "eta_student", "copy_rate", "retrieval")
FINISHED = "finished"
# DIR/.running/<kind>-<key>: written by a worker when it starts a job, removed when the job returns;
# one left behind after the pool broke names a job that was running when its worker died.
RUNNING_DIR = ".running"
WORKER_DIED = "worker process died"
# Library thread pools the worker initializer pins to one thread before they load.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def is_replicate_axis(axis: str) -> bool:
    """True for axes whose values are replicates, not conditions: ``seed`` and any ``*.seed``."""
    return axis == SEED_AXIS or axis.endswith(".seed")


class SweepSpecError(ValueError):
    """A sweep spec that cannot run: unknown key, bad value, empty axis, unknown preset."""


# ----------------------------------------------------------------------------------------------
# Spec parsing and validation
# ----------------------------------------------------------------------------------------------

def _experiment_config_cls():
    from dmdcore.config import ExperimentConfig

    return ExperimentConfig


def config_fields() -> list[str]:
    """All dotted field names of ExperimentConfig (``data.dim``, ``distill.gan``, ``name`` …)."""
    cfg = _experiment_config_cls()()
    names: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            names.extend(f"{f.name}.{g.name}" for g in dataclasses.fields(value))
        else:
            names.append(f.name)
    return names


def _sections() -> set[str]:
    return {k.split(".")[0] for k in config_fields() if "." in k}


def _flatten(d: dict, where: str) -> dict[str, Any]:
    """Nested or dotted partial config dict → flat {dotted key: value}; keys checked."""
    if not isinstance(d, dict):
        raise SweepSpecError(f"{where}: must be a mapping of config fields, got {type(d).__name__}")
    sections = _sections()
    flat: dict[str, Any] = {}
    for k, v in d.items():
        if k in sections and isinstance(v, dict):
            for kk, vv in v.items():
                flat[f"{k}.{kk}"] = vv
        else:
            flat[str(k)] = v
    _check_keys(flat, where, allow_seed=False)
    return flat


def _check_keys(keys, where: str, *, allow_seed: bool) -> None:
    valid = config_fields()
    allowed = set(valid) | ({SEED_AXIS} if allow_seed else set())
    for k in keys:
        if k not in allowed:
            listing = ", ".join(([SEED_AXIS] if allow_seed else []) + valid)
            raise SweepSpecError(f"{where}: unknown config key {k!r}; valid keys: {listing}")


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep specification (see module docstring). ``grid`` preserves axis order."""

    name: str
    grid: dict                       # dotted key (or "seed", or a label) -> list of values, in axis order
    levels: dict = field(default_factory=dict)  # named-level axes: label -> {level: {dotted overrides}}
    base: dict = field(default_factory=dict)    # flat dotted overrides shared by all cells
    quick: dict = field(default_factory=dict)   # flat dotted overrides applied with quick=True
    description: str = ""
    claim: str = ""                  # the claim the sweep tests (shown in the page and docs)
    full: dict = field(default_factory=dict)    # {"grid": {...}, "base": {...}} larger variant
    plot: dict = field(default_factory=dict)    # optional hints: {"x": axis, "log_x": bool}

    @classmethod
    def from_dict(cls, d: dict) -> "SweepSpec":
        """Parse and validate a spec dict; raises SweepSpecError naming the bad key/value."""
        if not isinstance(d, dict):
            raise SweepSpecError(f"spec: must be a mapping, got {type(d).__name__}")
        unknown = [k for k in d if k not in SPEC_KEYS]
        if unknown:
            raise SweepSpecError(f"spec: unknown top-level key(s) {unknown}; allowed: {list(SPEC_KEYS)}")
        name = d.get("name", "")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
            raise SweepSpecError(f"spec.name: {name!r} must be 1-64 characters of letters, digits, _ . - ")
        grid = d.get("grid")
        if not isinstance(grid, dict) or not grid:
            raise SweepSpecError("spec.grid: must be a non-empty mapping {config key: [values, ...]}")
        norm_grid: dict[str, list] = {}
        levels: dict[str, dict] = {}
        for k, vals in grid.items():
            if isinstance(vals, dict):
                # A named-level axis: {"level name": {dotted overrides}, ...} (e.g. loss variants).
                if k == SEED_AXIS or k in config_fields():
                    raise SweepSpecError(f"spec.grid[{k!r}]: a named-level axis needs a free label, not a config key")
                if not vals:
                    raise SweepSpecError(f"spec.grid[{k!r}]: must name at least one level")
                levels[k] = {str(name): _flatten(ov or {}, f"spec.grid[{k!r}][{name!r}]") for name, ov in vals.items()}
                norm_grid[k] = list(levels[k])
                continue
            _check_keys([k], "spec.grid", allow_seed=True)
            if not isinstance(vals, (list, tuple)) or len(vals) == 0:
                raise SweepSpecError(f"spec.grid[{k!r}]: must be a non-empty list of values, got {vals!r}")
            keys = [json.dumps(v, sort_keys=True) for v in vals]
            if len(set(keys)) != len(keys):
                raise SweepSpecError(f"spec.grid[{k!r}]: repeated values in {list(vals)}")
            norm_grid[k] = list(vals)
        if SEED_AXIS in norm_grid and any(f in norm_grid for f in SEED_FIELDS):
            raise SweepSpecError(f"spec.grid: axis 'seed' already sets {list(SEED_FIELDS)}; do not sweep them too")
        base = _flatten(d.get("base", {}) or {}, "spec.base")
        quick = _flatten(d.get("quick", {}) or {}, "spec.quick")
        full = d.get("full", {}) or {}
        if not isinstance(full, dict) or any(k not in ("grid", "base") for k in full):
            raise SweepSpecError("spec.full: must be a mapping with optional keys 'grid' and 'base'")
        plot = d.get("plot", {}) or {}
        if not isinstance(plot, dict) or any(k not in ("x", "log_x") for k in plot):
            raise SweepSpecError("spec.plot: must be a mapping with optional keys 'x' and 'log_x'")
        if "x" in plot and plot["x"] not in norm_grid:
            raise SweepSpecError(f"spec.plot.x: {plot['x']!r} is not a grid axis ({list(norm_grid)})")
        for key in ("description", "claim"):
            if not isinstance(d.get(key, ""), str):
                raise SweepSpecError(f"spec.{key}: must be a string")
        spec = cls(name=name, grid=norm_grid, levels=levels, base=base, quick=quick,
                   description=d.get("description", ""), claim=d.get("claim", ""), full=dict(full),
                   plot=dict(plot))
        expand(spec, quick=False)   # validates every cell's config
        if spec.quick:
            expand(spec, quick=True)
        return spec

    def to_dict(self) -> dict:
        """JSON-able dict that ``from_dict`` reads back to an equal spec."""
        d = {"name": self.name, "description": self.description, "claim": self.claim,
             "base": dict(self.base),
             "grid": {k: (copy.deepcopy(self.levels[k]) if k in self.levels else list(v)) for k, v in self.grid.items()},
             "quick": dict(self.quick)}
        if self.full:
            d["full"] = copy.deepcopy(self.full)
        if self.plot:
            d["plot"] = dict(self.plot)
        return d

    def variant(self, name: str) -> "SweepSpec":
        """The named variant: "default" (self) or "full" (grid/base replaced by ``self.full``)."""
        if name in ("", "default"):
            return self
        if name != "full":
            raise SweepSpecError(f"spec variant: {name!r} not in ['default', 'full']")
        if not self.full:
            raise SweepSpecError(f"spec variant: sweep {self.name!r} has no 'full' variant")
        d = self.to_dict()
        d.pop("full")
        d["name"] = f"{self.name}-full"
        # full.grid adds or replaces axes; an axis set to null is removed.
        d["grid"] = {k: v for k, v in {**d["grid"], **self.full.get("grid", {})}.items() if v is not None}
        d["base"] = {**d["base"], **_flatten(self.full.get("base", {}), "spec.full.base")}
        return SweepSpec.from_dict(d)

    @property
    def n_cells(self) -> int:
        return math.prod(len(v) for v in self.grid.values())


def list_presets() -> list[str]:
    """Names of the presets shipped in ``dmdcore/presets/*.json`` (sorted)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def load_preset(name: str) -> SweepSpec:
    """A shipped preset by name; ``"name:full"`` selects its larger variant."""
    base_name, _, variant = name.partition(":")
    path = PRESETS_DIR / f"{base_name}.json"
    if not path.is_file():
        raise SweepSpecError(f"preset: {base_name!r} not found; available presets: {list_presets()}")
    return SweepSpec.from_dict(json.loads(path.read_text())).variant(variant or "default")


def load_spec(spec: "str | os.PathLike | dict | SweepSpec") -> SweepSpec:
    """A SweepSpec from a spec object, a dict, a JSON/YAML file path, or a preset name."""
    if isinstance(spec, SweepSpec):
        return spec
    if isinstance(spec, dict):
        return SweepSpec.from_dict(spec)
    if not isinstance(spec, (str, os.PathLike)):
        raise SweepSpecError(f"spec: expected a preset name, a path or a dict, got {type(spec).__name__}")
    path = Path(spec)
    if path.suffix.lower() in (".json", ".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise SweepSpecError(f"spec: file {str(path)!r} does not exist")
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:
                raise SweepSpecError("spec: YAML specs need PyYAML (pip install pyyaml); "
                                     "or write the spec as JSON") from exc
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise SweepSpecError(f"spec: {path.name} is not valid YAML: {exc}") from exc
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise SweepSpecError(f"spec: {path.name} is not valid JSON: {exc}") from exc
        return SweepSpec.from_dict(data)
    return load_preset(str(spec))


# ----------------------------------------------------------------------------------------------
# Grid expansion
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """One grid point: ``overrides`` are the grid values, ``config`` the full validated config."""

    key: str                 # stable directory name: readable values + config hash
    index: int               # position in grid order
    overrides: dict          # axis -> value for this cell
    config: Any              # ExperimentConfig
    teacher_key: str         # hash of the (data, teacher) config: cells sharing it share a teacher


def _set_dotted(d: dict, key: str, value) -> None:
    parts = key.split(".")
    node = d
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = copy.deepcopy(value)


def _get_dotted(d: dict, key: str):
    node = d
    for p in key.split("."):
        node = node[p]
    return node


def _stable_hash(obj, n: int = 10) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def _slug(v) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return re.sub(r"[^A-Za-z0-9.=-]+", "", s)[:24]


def teacher_key(config_dict: dict) -> str:
    """Hash identifying the teacher a config trains: its data and teacher sections only."""
    return _stable_hash({"data": config_dict["data"], "teacher": config_dict["teacher"]}, 12)


def cell_config_dict(spec: SweepSpec, overrides: dict, *, quick: bool = False) -> dict:
    """Default config dict ← spec.base ← spec.quick (if quick) ← this cell's grid values."""
    d = _experiment_config_cls()().to_dict()
    for k, v in spec.base.items():
        _set_dotted(d, k, v)
    if quick:
        for k, v in spec.quick.items():
            _set_dotted(d, k, v)
    for k, v in overrides.items():
        if k == SEED_AXIS:
            for f in SEED_FIELDS:
                _set_dotted(d, f, v)
        elif k in spec.levels:
            for kk, vv in spec.levels[k][v].items():
                _set_dotted(d, kk, vv)
        else:
            _set_dotted(d, k, v)
    d["name"] = f"{spec.name}/" + ",".join(f"{k}={json.dumps(v)}" for k, v in overrides.items())
    return d


def _check_runnable(cfg) -> None:
    """Cross-field limits that ``pipeline.Experiment`` enforces at construction, checked here so a
    bad spec fails before anything runs (same messages)."""
    if 0 < cfg.eval.bootstrap < 10:
        raise ValueError(f"EvalConfig.bootstrap: {cfg.eval.bootstrap} not in {{0}} ∪ [10, 100000]")
    if cfg.eval.n > cfg.data.n_samples:
        raise ValueError(f"EvalConfig.n: {cfg.eval.n} not in [2, DataConfig.n_samples={cfg.data.n_samples}]")


def expand(spec: SweepSpec, *, quick: bool = False) -> list[Cell]:
    """All cells of the grid (product in axis order), each config validated.

    Raises SweepSpecError naming the cell and the config error when a value is out of range.
    """
    ExperimentConfig = _experiment_config_cls()
    axes = list(spec.grid)
    cells: list[Cell] = []
    for i, values in enumerate(itertools.product(*(spec.grid[a] for a in axes))):
        overrides = dict(zip(axes, values))
        d = cell_config_dict(spec, overrides, quick=quick)
        where = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        try:
            cfg = ExperimentConfig.from_dict(d)
            cfg.validate()
            _check_runnable(cfg)
        except (ValueError, TypeError, KeyError) as exc:
            raise SweepSpecError(f"spec cell [{where}]: {exc}") from exc
        d = cfg.to_dict()
        readable = "_".join(f"{a.split('.')[-1]}={_slug(v)}" for a, v in overrides.items())
        key = f"{readable[:80]}-{_stable_hash(d, 8)}"
        cells.append(Cell(key=key, index=i, overrides=overrides, config=cfg, teacher_key=teacher_key(d)))
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise SweepSpecError("spec.grid: two cells have identical configurations")
    return cells


# ----------------------------------------------------------------------------------------------
# Running: teachers once per distinct config, then cells, on a spawn process pool
# ----------------------------------------------------------------------------------------------

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


def _load_numeric_libraries() -> None:
    """Import the libraries whose thread pools the jobs use (torch, numpy/SciPy BLAS, POT's and
    scikit-learn's OpenMP) so that a thread limit set afterwards covers all of them (threadpoolctl
    only sees libraries that are already loaded)."""
    import torch  # noqa: F401

    import dmdcore.pipeline  # noqa: F401  (numpy, SciPy, POT)

    try:
        import sklearn.cluster  # noqa: F401  (k-means of the copy rate)
    except ImportError:
        pass


@contextlib.contextmanager
def _threads_limited(n: int | None):
    """Within the block, torch and every BLAS/OpenMP pool threadpoolctl finds use ``n`` threads;
    restored afterwards. ``None`` leaves the process as it is. Without threadpoolctl only torch
    is limited."""
    if n is None:
        yield
        return
    _load_numeric_libraries()
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with _library_thread_limit(n):
            yield
    finally:
        torch.set_num_threads(old)


def _library_thread_limit(n: int):
    """threadpoolctl's limit of every loaded BLAS/OpenMP pool to ``n`` threads (a context
    manager; applied at once, restored on exit), or a no-op when threadpoolctl is missing."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n)


def _worker_init() -> None:
    """Pool initializer: every thread pool of a worker process has one thread (workers are the
    parallelism; library pools on top of them would oversubscribe the cores). Sets the
    OMP/BLAS thread variables for libraries loaded later, loads the job libraries, then limits
    torch and (through threadpoolctl, when installed) every loaded BLAS/OpenMP pool to 1."""
    for var in THREAD_ENV:
        os.environ[var] = "1"
    import torch

    torch.set_num_threads(1)
    _start_orphan_watchdog()
    _load_numeric_libraries()
    _library_thread_limit(1)  # applied now, kept for the worker's lifetime (never exited)


_JOB_RUNNING = threading.Event()  # set while a worker runs a job (_drive)


def _start_orphan_watchdog(poll_s: float = 1.0, grace_s: float = 60.0) -> None:
    """Exit the worker when the sweep process is gone (killed: its pool cannot shut us down, and
    an idle worker would otherwise wait for work forever). A job in progress notices first and
    stops at its next step, saving its status; the watchdog waits for it (at most ``grace_s``)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        deadline = time.monotonic() + grace_s
        while _JOB_RUNNING.is_set() and time.monotonic() < deadline:
            time.sleep(poll_s / 4)
        os._exit(0)

    threading.Thread(target=watch, name="sweep-orphan-watchdog", daemon=True).start()


def _make_pool(n_workers: int) -> cf.ProcessPoolExecutor:
    """The sweep's process pool: ``spawn``-ed workers set up by ``_worker_init``."""
    return cf.ProcessPoolExecutor(max_workers=n_workers, mp_context=mp.get_context("spawn"),
                                  initializer=_worker_init)


def _stop_requested(stop_file: str | None) -> bool:
    return bool(stop_file) and os.path.exists(stop_file)


def _resolve_device(device):
    from dmdcore.device import pick_device

    return pick_device(device or "auto")


def read_status(run_dir: str | os.PathLike) -> dict | None:
    """status.json of a run directory, or None when absent."""
    from dmdcore.runs import RunDir

    return RunDir(run_dir).read_status()


def _cell_finished(cell_dir: Path) -> bool:
    st = read_status(cell_dir) if cell_dir.is_dir() else None
    return bool(st) and st.get("status") == FINISHED and (cell_dir / "cell.json").is_file()


def _teacher_ready(teacher_dir: Path) -> bool:
    st = read_status(teacher_dir) if teacher_dir.is_dir() else None
    return bool(st) and st.get("status") == FINISHED and (teacher_dir / "teacher.pt").is_file()


def _new_sweep_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"


def sweep_id_of(out_dir: str | os.PathLike) -> str | None:
    """The sweep id stored in ``out_dir/sweep.json`` (None when it is not a sweep directory)."""
    p = Path(out_dir) / "sweep.json"
    if not p.is_file():
        return None
    return json.loads(p.read_text()).get("id")


def _write_manifest(out: Path, sweep_id: str, spec: SweepSpec, cells: list[Cell], quick: bool,
                    state: str, extra: dict | None = None) -> None:
    from dmdcore.runs import atomic_write_json

    p = out / "sweep.json"
    old = json.loads(p.read_text()) if p.is_file() else {}
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
) -> SweepResult:
    """Run every cell of ``spec`` into ``out_dir`` and return the results table.

    workers: worker processes (default ``min(os.cpu_count(), number of jobs)``); ``0`` runs
    everything in this process, one cell after another (the serial baseline of the benchmark).
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

    Re-running into the same ``out_dir`` skips finished cells. A failing cell (exception,
    divergence, dead worker) is listed in ``failures`` and never stops the others. When a worker
    process dies (segfault, OOM kill, ``os._exit``) the pool is rebuilt: jobs not yet started
    are queued again; a job that was running alone is failed ("worker process died"); jobs that
    were running beside others (the pool kills them all) are re-run once, one at a time, and
    failed if their worker dies again. results.csv is written in every case.
    Raises SweepSpecError for a bad spec before anything runs.
    """
    t0 = time.perf_counter()
    spec = load_spec(spec)
    cells = expand(spec, quick=quick)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ValueError(f"workers: {workers!r} not in integers [0, {os.cpu_count()}] (0 = in this process)")
    if threads_per_process is not None and (isinstance(threads_per_process, bool)
                                            or not isinstance(threads_per_process, int) or threads_per_process < 1):
        raise ValueError(f"threads_per_process: {threads_per_process!r} not None or an integer ≥ 1")
    _resolve_device(device)  # validate early
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cells").mkdir(exist_ok=True)
    (out / "teachers").mkdir(exist_ok=True)
    sweep_id = sweep_id_of(out) or _new_sweep_id(spec.name)
    stop_file = out / "STOP"
    if stop_file.exists():
        stop_file.unlink()
    running_dir = out / RUNNING_DIR
    shutil.rmtree(running_dir, ignore_errors=True)  # markers of an earlier, killed sweep
    from dmdcore.runs import RunIndex

    index = RunIndex(out)
    index.mark_interrupted()
    _write_manifest(out, sweep_id, spec, cells, quick, "running")

    todo = [c for c in cells if not _cell_finished(out / "cells" / c.key)]
    skipped = len(cells) - len(todo)
    teacher_cfgs: dict[str, dict] = {}
    for c in todo:
        teacher_cfgs.setdefault(c.teacher_key, c.config.to_dict())
    need_teacher = {k: d for k, d in teacher_cfgs.items() if not _teacher_ready(out / "teachers" / k)}
    prog = SweepProgress(sweep_id=sweep_id, out_dir=str(out), total_cells=len(cells), done_cells=skipped,
                         skipped_cells=skipped, total_teachers=len(teacher_cfgs),
                         done_teachers=len(teacher_cfgs) - len(need_teacher))
    lock = threading.Lock()

    def emit(msg: str) -> None:
        prog.elapsed_s = time.perf_counter() - t0
        done_now = prog.done_cells - prog.skipped_cells + prog.failed_cells
        remaining = prog.total_cells - prog.done_cells - prog.failed_cells
        prog.eta_s = (prog.elapsed_s / done_now * remaining) if done_now > 0 else None
        prog.last = msg
        if callback is not None:
            callback(copy.deepcopy(prog))

    emit(f"{len(cells)} cells ({skipped} already finished), {len(need_teacher)} teachers to train")
    failures: list[tuple[str, str]] = []

    def record(key: str, outcome: dict, what: str) -> None:
        with lock:
            if outcome.get("status") == FINISHED:
                prog.done_cells += what == "cell"
                prog.done_teachers += what == "teacher"
                emit(f"{what} {key} finished in {outcome.get('wall_s', float('nan')):.1f} s")
            else:
                reason = f"{outcome.get('status', 'failed')}: {outcome.get('message', '')}".strip()
                failures.append((key if what == "cell" else f"teacher:{key}", reason))
                prog.failures = list(failures)
                prog.failed_cells += what == "cell"
                emit(f"{what} {key} {reason}")

    common = dict(sweep_id=sweep_id, index_root=str(out), stop_file=str(stop_file), device=device)
    by_teacher: dict[str, list[Cell]] = {}
    for c in todo:
        by_teacher.setdefault(c.teacher_key, []).append(c)

    def teacher_job(k: str):
        return _train_teacher, dict(config=teacher_cfgs[k], run_dir=str(out / "teachers" / k), **common)

    def cell_job(c: Cell):
        return _run_cell, dict(config=c.config.to_dict(), run_dir=str(out / "cells" / c.key), cell_key=c.key,
                               overrides=c.overrides, teacher_path=str(out / "teachers" / c.teacher_key / "teacher.pt"),
                               **common)

    ready_cells = [c for c in todo if c.teacher_key not in need_teacher]

    def _run_serial() -> bool:
        """Serial baseline: everything in this process, one job after another."""
        stopped = False
        for k in need_teacher:
            if stop_event is not None and stop_event.is_set():
                return True
            fn, kw = teacher_job(k)
            res = _call_safely(fn, kw)
            record(k, res, "teacher")
            if res.get("status") == FINISHED:
                ready_cells.extend(by_teacher[k])
            else:
                for c in by_teacher[k]:
                    record(c.key, _teacher_failed(out / "cells" / c.key, k, res), "cell")
        for c in ready_cells:
            if stop_event is not None and stop_event.is_set():
                stopped = True
                break
            prog.running_cells = 1
            fn, kw = cell_job(c)
            record(c.key, _call_safely(fn, kw), "cell")
            prog.running_cells = 0
        return stopped

    def _run_pool(n_workers: int) -> bool:
        """Teachers, then each teacher's cells, on a process pool that survives dying workers."""
        pool: cf.ProcessPoolExecutor | None = None
        pending: dict[cf.Future, tuple[str, Any]] = {}
        held: list[tuple[str, Any]] = []        # waiting while a suspect re-runs alone
        suspects: deque = deque()               # were running when another worker died: re-run alone
        retried: set[tuple[str, str]] = set()
        state = {"broken": False, "alone": False, "stopped": False, "idle_breaks": 0}

        def key_of(kind: str, obj) -> str:
            return obj if kind == "teacher" else obj.key

        def marker(kind: str, obj) -> Path:
            return running_dir / f"{kind}-{key_of(kind, obj)}"

        def submit_now(kind: str, obj) -> None:
            nonlocal pool
            if pool is None:
                pool = _make_pool(n_workers)
            fn, kw = teacher_job(obj) if kind == "teacher" else cell_job(obj)
            try:
                pending[pool.submit(_call_safely, fn, kw, str(marker(kind, obj)))] = (kind, obj)
            except cf.process.BrokenProcessPool:
                state["broken"] = True
                held.append((kind, obj))

        def submit(kind: str, obj) -> None:
            if state["broken"] or state["alone"] or suspects:
                held.append((kind, obj))
            else:
                submit_now(kind, obj)

        def handle(kind: str, obj, res: dict) -> None:
            record(key_of(kind, obj), res, kind)
            if res.get("status") == FINISHED:
                state["idle_breaks"] = 0  # progress since the last break: breaks are not "in a row"
            if kind == "teacher":
                for c in by_teacher[obj]:
                    if res.get("status") == FINISHED and not state["stopped"]:
                        submit("cell", c)
                    elif res.get("status") != FINISHED:
                        record(c.key, _teacher_failed(out / "cells" / c.key, obj, res), "cell")

        def died(kind: str, obj, status: str, message: str) -> None:
            """Outcome of a job whose worker process died: its run's status.json says so."""
            from dmdcore.runs import RunDir

            run_dir = (out / "teachers" / obj) if kind == "teacher" else (out / "cells" / obj.key)
            run_dir.mkdir(parents=True, exist_ok=True)
            RunDir(run_dir).write_status(status, message)
            handle(kind, obj, {"status": status, "message": message})

        def on_break() -> None:
            """The pool broke: classify its jobs by their markers, then start a fresh pool."""
            nonlocal pool
            cf.wait(list(pending), timeout=60)  # a broken pool fails all its futures at once
            running, not_started = [], []
            for f, (kind, obj) in list(pending.items()):
                pending.pop(f)
                if f.cancelled():
                    continue
                if f.done() and f.exception() is None:
                    handle(kind, obj, f.result())     # finished just before the break
                elif marker(kind, obj).exists():
                    running.append((kind, obj))
                else:
                    not_started.append((kind, obj))
            pool.shutdown(wait=True, cancel_futures=True)
            pool = None
            state["broken"] = state["alone"] = False
            for kind, obj in running:
                marker(kind, obj).unlink(missing_ok=True)
                ident = (kind, key_of(kind, obj))
                if state["stopped"]:
                    died(kind, obj, "stopped", f"{WORKER_DIED} while the sweep was stopping")
                elif len(running) == 1 or ident in retried:
                    died(kind, obj, "failed", f"{WORKER_DIED} while running it (segfault, out of memory "
                                              "or exit in the worker)")
                else:
                    retried.add(ident)
                    suspects.append((kind, obj))
            if not state["stopped"]:
                held[:0] = not_started
            state["idle_breaks"] = 0 if running else state["idle_breaks"] + 1
            if state["idle_breaks"] >= 3:
                # Workers die before running anything (e.g. in their initializer): give up.
                for kind, obj in [*suspects, *held]:
                    died(kind, obj, "failed", f"{WORKER_DIED}: the process pool broke 3 times in a row "
                                              "before running a job")
                suspects.clear()
                held.clear()
            index.mark_interrupted()  # index rows follow the status.json files just written
            emit(f"a worker process died: {len(running)} job(s) were running, {len(suspects)} to re-run "
                 f"alone, {len(held)} queued again on a new pool")

        def schedule() -> None:
            """With nothing in flight: start the next suspect alone, else everything held."""
            if pending or state["broken"] or state["stopped"]:
                return
            if suspects:
                state["alone"] = True
                submit_now(*suspects.popleft())
            elif held:
                state["alone"] = False
                jobs = held[:]
                held.clear()
                for kind, obj in jobs:
                    submit_now(kind, obj)

        for k in need_teacher:
            submit("teacher", k)
        for c in ready_cells:
            submit("cell", c)
        try:
            while True:
                if state["broken"]:
                    on_break()
                    continue
                schedule()
                if state["broken"]:
                    continue
                if not pending:
                    break
                prog.running_cells = sum(1 for f, (kind, _) in pending.items() if kind == "cell" and f.running())
                done, _ = cf.wait(list(pending), timeout=0.5, return_when=cf.FIRST_COMPLETED)
                if stop_event is not None and stop_event.is_set() and not state["stopped"]:
                    state["stopped"] = True
                    stop_file.write_text("stop requested\n")
                    for f in list(pending):
                        if f.cancel():
                            pending.pop(f)
                    held.clear()
                    for kind, obj in list(suspects):
                        died(kind, obj, "stopped", f"stopped by the sweep after its {WORKER_DIED}")
                    suspects.clear()
                    emit("stop requested: cancelled pending cells, waiting for running ones")
                for f in done:
                    if f not in pending:
                        continue
                    try:
                        res = f.result()
                    except cf.CancelledError:
                        pending.pop(f)
                        continue
                    except cf.process.BrokenProcessPool:
                        state["broken"] = True      # on_break sorts out every future of this pool
                        break
                    except Exception as exc:  # e.g. an outcome that could not be sent back: the job's failure
                        res = {"status": "failed", "message": f"{type(exc).__name__}: {exc}"}
                    handle(*pending.pop(f), res)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        return state["stopped"]

    try:
        if workers == 0:
            with _threads_limited(threads_per_process):
                stopped = _run_serial()
        else:
            n_jobs = max(1, len(need_teacher) + len(todo))
            stopped = _run_pool(min(workers or (os.cpu_count() or 1), n_jobs))
    finally:
        # Whatever happened above, the table on disk matches the runs on disk.
        if stop_file.exists():
            stop_file.unlink()
        shutil.rmtree(running_dir, ignore_errors=True)
        table = results_table(out)
        table.to_csv(out / "results.csv", index=False)
    prog.finished = True
    prog.stopped = stopped
    prog.running_cells = 0
    _write_manifest(out, sweep_id, spec, cells, quick, "stopped" if stopped else "done")
    emit("stopped" if stopped else f"done: {prog.done_cells} finished, {prog.failed_cells} failed")
    return SweepResult(out_dir=str(out), sweep_id=sweep_id, table=table, failures=failures, n_cells=len(cells),
                       n_run=len(todo), n_skipped=skipped, wall_s=time.perf_counter() - t0, stopped=stopped)


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


# ----------------------------------------------------------------------------------------------
# Results: table, training curves, aggregation with confidence intervals, written summary
# ----------------------------------------------------------------------------------------------

def _manifest(out: Path) -> dict:
    p = out / "sweep.json"
    if not p.is_file():
        raise ValueError(f"out_dir: {str(out)!r} is not a sweep directory (no sweep.json)")
    return json.loads(p.read_text())


def _final_student_row(rows: list[dict]) -> dict:
    student = [r for r in rows if r.get("phase") == "student" and r.get("delta_e") is not None]
    return student[-1] if student else {}


def _last_wall(run) -> float | None:
    rows = run.read_timing()
    return float(rows[-1]["wall_s"]) if rows else None


def results_table(out_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per cell of the sweep in ``out_dir``, in grid order.

    Columns: ``cell``, one column per grid axis (named by its dotted key, or ``seed``),
    ``status``, ``message``, ``step``, ``n_eval`` (noises ΔE is computed on), ``wall_s`` (cell
    wall time in its worker, seconds), then the final student evaluation's METRIC_COLUMNS
    (``delta_e`` with its bootstrap CI ``delta_e_lo``/``delta_e_hi``, ``w2``, ``eta_teacher``,
    ``eta_student``, ``copy_rate`` …; NaN where the cell has not finished an evaluation),
    and ``run_dir``.
    """
    from dmdcore.runs import RunDir

    out = Path(out_dir)
    man = _manifest(out)
    axes = list(man["spec"]["grid"])
    rows = []
    for c in man["cells"]:
        run = RunDir(out / "cells" / c["key"])
        st = run.read_status() if run.path.is_dir() else None
        info = json.loads((run.path / "cell.json").read_text()) if (run.path / "cell.json").is_file() else {}
        final = _final_student_row(run.read_metrics()) if run.path.is_dir() else {}
        n_eval = None
        if run.exists():
            n_eval = run.read_config().get("experiment", {}).get("eval", {}).get("n")
        row = {"cell": c["key"]}
        row.update({a: c["overrides"].get(a) for a in axes})
        row.update({
            "status": (st or {}).get("status", "pending"),
            "message": (st or {}).get("message", ""),
            "step": (st or {}).get("step"),
            "n_eval": n_eval,
            # finished cells: the worker's wall time (cell.json); running ones: the time spent
            # in training steps so far (the last row of the run's timing.csv)
            "wall_s": info["wall_s"] if "wall_s" in info else (_last_wall(run) if run.path.is_dir() else None),
        })
        row.update({m: final.get(m) for m in METRIC_COLUMNS})
        row["run_dir"] = str(run.path)
        rows.append(row)
    df = pd.DataFrame(rows)
    for m in (*METRIC_COLUMNS, "wall_s"):
        df[m] = pd.to_numeric(df[m], errors="coerce")
    return df


def training_curves(out_dir: str | os.PathLike) -> pd.DataFrame:
    """Long table of every cell's student evaluations: ``cell``, grid axes, ``step``,
    ``delta_e``, ``delta_e_lo``, ``delta_e_hi``, ``w2`` (one row per evaluation)."""
    from dmdcore.runs import RunDir

    out = Path(out_dir)
    man = _manifest(out)
    axes = list(man["spec"]["grid"])
    rows = []
    for c in man["cells"]:
        run = RunDir(out / "cells" / c["key"])
        for r in run.read_metrics() if run.path.is_dir() else []:
            if r.get("phase") != "student" or r.get("delta_e") is None:
                continue
            row = {"cell": c["key"], **{a: c["overrides"].get(a) for a in axes}}
            row.update({k: r.get(k) for k in ("step", "delta_e", "delta_e_lo", "delta_e_hi", "w2")})
            rows.append(row)
    cols = ["cell", *axes, "step", "delta_e", "delta_e_lo", "delta_e_hi", "w2"]
    return pd.DataFrame(rows, columns=cols)


def _t_quantile(df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def mean_ci(values, lo=None, hi=None) -> tuple[float, float, float, int]:
    """Mean and 95% CI of replicate values: Student-t interval over replicates when n ≥ 2;
    for a single value, its own bootstrap interval (``lo``, ``hi``) if given. Returns
    (mean, ci_low, ci_high, n)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    n = len(v)
    if n == 0:
        return (math.nan, math.nan, math.nan, 0)
    m = float(v.mean())
    if n == 1:
        lo_v = float(lo[0]) if lo is not None and len(lo) and np.isfinite(lo[0]) else math.nan
        hi_v = float(hi[0]) if hi is not None and len(hi) and np.isfinite(hi[0]) else math.nan
        return (m, lo_v, hi_v, 1)
    half = _t_quantile(n - 1) * float(v.std(ddof=1)) / math.sqrt(n)
    return (m, m - half, m + half, n)


def aggregate(table: pd.DataFrame, x: str, by: list[str] | None = None, metric: str = "delta_e") -> pd.DataFrame:
    """Mean of ``metric`` over replicates for each (``by`` …, ``x``) with a 95% CI (see
    ``mean_ci``). Only finished cells count. Columns: *by, x, mean, ci_low, ci_high, n."""
    by = [b for b in (by or []) if b != x]
    done = table[(table["status"] == FINISHED) & table[metric].notna()]
    out_rows = []
    if done.empty:
        return pd.DataFrame(columns=[*by, x, "mean", "ci_low", "ci_high", "n"])
    keys = [*by, x]
    for key, g in done.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        lo = g[f"{metric}_lo"].to_numpy() if f"{metric}_lo" in g else None
        hi = g[f"{metric}_hi"].to_numpy() if f"{metric}_hi" in g else None
        m, a, b, n = mean_ci(g[metric].to_numpy(), lo, hi)
        out_rows.append({**dict(zip(keys, key)), "mean": m, "ci_low": a, "ci_high": b, "n": n})
    return pd.DataFrame(out_rows)


def _is_numeric_axis(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _fmt(v: float) -> str:
    return "nan" if v is None or not np.isfinite(v) else f"{v:.3f}"


def _fmt_ci(m, lo, hi, n) -> str:
    ci = f"95% CI {_fmt(lo)} to {_fmt(hi)}" if np.isfinite(lo) and np.isfinite(hi) else "no CI"
    return f"{_fmt(m)} ({ci}, n = {n})"


def _verdict(lo: float, hi: float) -> str:
    return ("the interval excludes 0" if (lo > 0 or hi < 0)
            else "the interval contains 0 (no detectable effect at this n)")


def _sign_count(diff: np.ndarray, label: str) -> str:
    """'ΔE lower in k of n pairs (higher in j, equal in e; two-sided sign test p = …)'."""
    lower, higher = int((diff < 0).sum()), int((diff > 0).sum())
    n = len(diff)
    text = f"{label} lower in {lower} of {n} pairs"
    extra = [f"higher in {higher}"] if higher else []
    if n - lower - higher:
        extra.append(f"equal in {n - lower - higher}")
    if lower + higher >= 2:
        from scipy import stats

        p = float(stats.binomtest(lower, lower + higher, 0.5).pvalue)
        extra.append(f"two-sided sign test p = {p:.3f}")
    return text + (f" ({'; '.join(extra)})" if extra else "")


def _ordered_levels(col: pd.Series) -> list:
    """Distinct values of a column: sorted when numeric or boolean, else in order of appearance."""
    vals = list(dict.fromkeys(col.tolist()))
    if all(isinstance(v, (bool, np.bool_)) for v in vals) or _is_numeric_axis(vals):
        return sorted(vals)
    return vals


def summarize(table: pd.DataFrame, axes: list[str] | None = None, metric: str = "delta_e") -> str:
    """A short written summary of what the measured numbers show, computed from ``table``.

    For each swept axis (except replicate axes ``seed`` / ``*.seed``): a numeric axis with ≥ 3
    levels → ΔE at the lowest and highest level (mean, 95% CI, n) per combination of the other
    axes plus the Spearman rank correlation of ΔE with the axis over cells; any other axis → for
    each level, the mean paired difference to the reference level (False for booleans, else the
    first level), matched on all other axes and the replicate axes, with its 95% t-interval, whether it
    excludes 0 and a sign count ("lower in k of n pairs", two-sided sign test); then the same paired
    difference separately at each level of every other non-replicate axis (pooling hides effects
    whose sign or size differs between those levels), and a sentence when the per-level intervals
    exclude 0 on opposite sides.
    Returns markdown-free plain sentences separated by newlines.
    """
    if axes is None:
        fixed = {"cell", "status", "message", "step", "n_eval", "wall_s", "run_dir", *METRIC_COLUMNS}
        axes = [c for c in table.columns if c not in fixed]
    done = table[(table["status"] == FINISHED) & table[metric].notna()] if len(table) else table
    n_total = len(table)
    label = "ΔE" if metric == "delta_e" else metric
    if len(done) == 0:
        return f"No cell has finished yet (0 of {n_total}): nothing to summarise."
    n_eval = done["n_eval"].dropna()
    lines = [
        f"{len(done)} of {n_total} cells finished; ΔE ranges from {_fmt(done[metric].min())} "
        f"to {_fmt(done[metric].max())} (mean {_fmt(done[metric].mean())})"
        + (f", each ΔE computed on n = {int(n_eval.iloc[0])} noise vectors." if len(n_eval) and n_eval.nunique() == 1 else ".")
    ]
    swept = [a for a in axes if not is_replicate_axis(a) and a in done and done[a].astype(str).nunique() > 1]
    replicates = [a for a in axes if is_replicate_axis(a) and a in done]
    for axis in swept:
        others = [a for a in swept if a != axis]
        levels = list(dict.fromkeys(done[axis].tolist()))
        if _is_numeric_axis(levels) and len(levels) >= 3:
            agg = aggregate(done, axis, others, metric)
            groups = agg.groupby(others, sort=True) if others else [((), agg)]
            for gkey, g in list(groups)[:6]:
                g = g.sort_values(axis)
                a, b = g.iloc[0], g.iloc[-1]
                cond = ""
                if others:
                    gkey = gkey if isinstance(gkey, tuple) else (gkey,)
                    cond = " [" + ", ".join(f"{o}={v}" for o, v in zip(others, gkey)) + "]"
                cells = done
                for o, v in zip(others, gkey if others else ()):
                    cells = cells[cells[o] == v]
                rho = _spearman(cells[axis].to_numpy(float), cells[metric].to_numpy(float))
                direction = "rose" if b["mean"] > a["mean"] else "fell"
                hi_row, lo_row = g.loc[g["mean"].idxmax()], g.loc[g["mean"].idxmin()]
                overlap = (np.isfinite([a["ci_low"], a["ci_high"], b["ci_low"], b["ci_high"]]).all()
                           and not (a["ci_high"] < b["ci_low"] or b["ci_high"] < a["ci_low"]))
                lines.append(
                    f"{label} {direction} from {_fmt_ci(a['mean'], a['ci_low'], a['ci_high'], int(a['n']))} at "
                    f"{axis}={a[axis]:g} to {_fmt_ci(b['mean'], b['ci_low'], b['ci_high'], int(b['n']))} at "
                    f"{axis}={b[axis]:g}{cond}; Spearman ρ = {_fmt(rho)} over {len(cells)} cells; the endpoint CIs "
                    + ("overlap" if overlap else "do not overlap")
                    + (f"; highest mean {_fmt(hi_row['mean'])} at {axis}={hi_row[axis]:g}, lowest "
                       f"{_fmt(lo_row['mean'])} at {axis}={lo_row[axis]:g}." if len(g) >= 3 else ".")
                )
        else:
            # Categorical / two-level axis: paired difference of each level to the reference level
            # (False for booleans, else the first level in grid order), matched on all other axes
            # and the seed; pooled over the other axes, then separately at each level of each one
            # (an effect whose sign flips between levels pools to ~0).
            if all(isinstance(v, (bool, np.bool_)) for v in levels):
                levels = sorted(levels)
            ref = levels[0]
            match = [*others, *replicates]
            piv = done.pivot_table(index=match, columns=axis, values=metric, aggfunc="mean") if match else None
            for lv in levels[1:6]:
                m_ref = done[done[axis] == ref][metric].mean()
                m_lv = done[done[axis] == lv][metric].mean()
                if piv is not None:
                    diffs = (piv[lv] - piv[ref]).dropna() if (lv in piv and ref in piv) else pd.Series(dtype=float)
                    diff = diffs.to_numpy(dtype=np.float64)
                else:
                    diffs, diff = None, np.array([m_lv - m_ref])
                if len(diff) >= 2:
                    m, lo, hi, n = mean_ci(diff)
                    lines.append(
                        f"Switching {axis} from {ref} to {lv} changed {label} by {m:+.3f} on average "
                        f"(95% CI {lo:+.3f} to {hi:+.3f}, n = {n} matched pairs; means {_fmt(m_ref)} vs "
                        f"{_fmt(m_lv)}); {_verdict(lo, hi)}; {_sign_count(diff, label)}."
                    )
                else:
                    lines.append(f"{label} was {_fmt(m_ref)} with {axis}={ref} and {_fmt(m_lv)} with {axis}={lv} "
                                 f"({len(diff)} matched pair(s): too few for a CI).")
                if diffs is None or len(diff) == 0:
                    continue
                for o in others:
                    per_level = []
                    for v in _ordered_levels(done[o]):
                        d = diffs[diffs.index.get_level_values(o) == v].to_numpy(dtype=np.float64)
                        if len(d) == 0:
                            continue
                        if len(d) >= 2:
                            m, lo, hi, n = mean_ci(d)
                            per_level.append((v, m, lo, hi))
                            lines.append(
                                f"At {o}={v}: switching {axis} from {ref} to {lv} changed {label} by {m:+.3f} "
                                f"(95% CI {lo:+.3f} to {hi:+.3f}, n = {n} matched pairs); {_verdict(lo, hi)}; "
                                f"{_sign_count(d, label)}.")
                        else:
                            lines.append(
                                f"At {o}={v}: switching {axis} from {ref} to {lv} changed {label} by {d[0]:+.3f} "
                                f"(n = 1 matched pair: too few for a CI).")
                    up = [x for x in per_level if x[2] > 0]
                    down = [x for x in per_level if x[3] < 0]
                    if up and down:
                        lines.append(
                            f"The effect of switching {axis} from {ref} to {lv} reverses sign across {o}: "
                            f"{label} higher at "
                            + ", ".join(f"{o}={x[0]} ({x[1]:+.3f})" for x in up) + " and lower at "
                            + ", ".join(f"{o}={x[0]} ({x[1]:+.3f})" for x in down)
                            + " (95% CIs exclude 0), so the pooled average hides both.")
    failed = table[table["status"].isin(["failed", "diverged", "stopped"])]
    if len(failed):
        lines.append(f"{len(failed)} cell(s) did not finish ({', '.join(sorted(set(failed['status'])))}); "
                     "they are left out of the numbers above.")
    return "\n".join(lines)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return math.nan
    from scipy import stats

    r = stats.spearmanr(x[ok], y[ok]).statistic
    return float(r)


def list_sweeps(root: str | os.PathLike) -> list[dict]:
    """Sweeps stored as sub-directories of ``root`` (each with sweep.json and its run index),
    newest first: ``{"id", "name", "path", "state", "quick", "n_cells", "finished", "failed",
    "updated"}``; counts come from the sweep's RunIndex."""
    from dmdcore.runs import RunIndex

    root = Path(root)
    found = []
    if not root.is_dir():
        return found
    for p in root.glob("*/sweep.json"):
        try:
            man = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue  # a foreign or half-written file: not listed
        recs = RunIndex(p.parent).list(sweep=man.get("id"), kind="experiment")
        keys = {c["key"] for c in man.get("cells", [])}
        recs = [r for r in recs if Path(r.path).name in keys]
        found.append({
            "id": man.get("id"), "name": man.get("spec", {}).get("name", ""), "path": str(p.parent),
            "state": man.get("state", ""), "quick": man.get("quick", False), "n_cells": len(keys),
            "finished": sum(r.status == FINISHED for r in recs),
            "failed": sum(r.status in ("failed", "diverged") for r in recs),
            "updated": man.get("updated", 0.0),
        })
    return sorted(found, key=lambda d: -d["updated"])


# ----------------------------------------------------------------------------------------------
# Background job (for the page) and command line
# ----------------------------------------------------------------------------------------------

@dataclass
class SweepSnapshot:
    """Thread-safe copy of a SweepJob's state."""

    state: str                           # queued | running | finished | stopped | failed
    out_dir: str
    progress: SweepProgress | None
    error: str | None = None             # reason when state == "failed" (the sweep itself failed)
    result: SweepResult | None = None
    message: str = ""                    # e.g. why a started sweep is still queued


class SweepJob:
    """``run_sweep`` on a daemon thread with ``start() / stop() / snapshot() / wait()``.

    The spec is parsed and every cell validated in the constructor (SweepSpecError on a bad
    spec), so a caller can report the error before anything starts.
    """

    def __init__(self, spec, out_dir: str | os.PathLike, *, workers: int | None = None, quick: bool = False,
                 device: str | None = "cpu", slots: threading.Semaphore | None = None):
        """``slots``: an optional semaphore shared by every SweepJob of a server (each sweep's pool
        already uses every core): a started job stays ``queued`` until it holds a slot."""
        self.spec = load_spec(spec)
        self._slots = slots
        self._message = ""
        expand(self.spec, quick=quick)
        self.out_dir = str(out_dir)
        self._kw = dict(workers=workers, quick=quick, device=device)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = "queued"
        self._progress: SweepProgress | None = None
        self._error: str | None = None
        self._result: SweepResult | None = None

    def _on_progress(self, p: SweepProgress) -> None:
        with self._lock:
            self._progress = p

    def _main(self) -> None:
        if self._slots is not None:
            while not self._slots.acquire(timeout=0.2):
                if self._stop.is_set():
                    with self._lock:
                        self._state, self._message = "stopped", "stopped while queued"
                    return
            with self._lock:
                self._state, self._message = "running", ""
        try:
            res = run_sweep(self.spec, self.out_dir, callback=self._on_progress, stop_event=self._stop, **self._kw)
        except Exception as exc:  # reported through snapshot().error, not swallowed
            with self._lock:
                self._state, self._error = "failed", f"{type(exc).__name__}: {exc}"
            return
        finally:
            if self._slots is not None:
                self._slots.release()
        with self._lock:
            self._result = res
            self._state = "stopped" if res.stopped else "finished"

    def start(self) -> "SweepJob":
        with self._lock:
            if self._thread is not None:
                raise ValueError("SweepJob.start: already started")
            if self._slots is None:
                self._state = "running"
            else:
                self._state, self._message = "queued", "waiting for a free sweep slot (another sweep is running)"
            self._thread = threading.Thread(target=self._main, name=f"sweep-{self.spec.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the sweep to stop: pending cells are cancelled, running ones stop at their next step."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the sweep ends (or ``timeout`` s); True if it ended."""
        t = self._thread
        if t is None:
            return False
        t.join(timeout)
        return not t.is_alive()

    def snapshot(self) -> SweepSnapshot:
        with self._lock:
            return SweepSnapshot(state=self._state, out_dir=self.out_dir, progress=copy.deepcopy(self._progress),
                                 error=self._error, result=self._result, message=self._message)


def register_cli(subparsers) -> None:
    """Add ``sweep SPEC --out DIR [--quick] [--workers N] [--device D]`` to an argparse CLI."""
    p = subparsers.add_parser(
        "sweep",
        help="run a grid of experiments (a preset name or a JSON/YAML spec) on a process pool",
        description="Run every cell of a sweep spec into DIR (resumable: finished cells are skipped). "
                    f"Presets: {', '.join(list_presets())} (append ':full' for the larger variant).",
    )
    p.add_argument("spec", help="preset name (e.g. 'dimension', 'dimension:full') or path to a .json/.yaml spec")
    p.add_argument("--out", required=True, help="sweep directory (created; re-running resumes it)")
    p.add_argument("--quick", action="store_true", help="apply the spec's 'quick' overrides (short training)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: number of cores; 0 = serial)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto or cuda")
    p.set_defaults(func=cli_main)


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
    except ValueError as exc:
        print(f"sweep: {exc}".splitlines()[0], file=sys.stderr)
        raise SystemExit(2) from None
    bar = tqdm(total=len(cells), desc=f"sweep {spec.name}", unit="cell", file=sys.stderr)
    seen_failures = 0

    def on_progress(p: SweepProgress) -> None:
        nonlocal seen_failures
        bar.n = p.done_cells + p.failed_cells
        bar.set_postfix_str(f"teachers {p.done_teachers}/{p.total_teachers}, failed {p.failed_cells}", refresh=False)
        bar.refresh()
        for key, reason in p.failures[seen_failures:]:
            bar.write(f"FAILED {key}: {reason}")
        seen_failures = len(p.failures)

    res = run_sweep(spec, args.out, workers=args.workers, quick=args.quick, callback=on_progress, device=args.device)
    bar.close()
    print(f"results: {Path(res.out_dir) / 'results.csv'} ({res.n_cells} cells, {res.n_skipped} resumed, "
          f"{len(res.failures)} failed, {res.wall_s:.1f} s)")
    print(summarize(res.table, list(spec.grid)))
    return 1 if res.failures else 0


# ----------------------------------------------------------------------------------------------
# Worker-side jobs (top-level so that spawn workers can import them)
# ----------------------------------------------------------------------------------------------

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
    parent = os.getppid()
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
