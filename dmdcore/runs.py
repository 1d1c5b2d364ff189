"""Run directories and the SQLite run index.

A run is a directory (see docs/architecture.md, section runs.py)::

    config.json    {"kind", "experiment", "teacher_source", "dmdcore_version"}
    metrics.csv    one row per evaluation, columns METRIC_COLUMNS (empty cell = not applicable);
                   only deterministic numbers, so the same config and seeds give the same bytes
    timing.csv     one row per evaluation, columns TIMING_COLUMNS (step, phase, wall_s)
    teacher.pt / student.pt / fake.pt   toy checkpoints (plain dicts, weights_only=True)
    samples.npz    z, teacher, student, history_steps (K,), history_student (K, n, d)
    status.json    {"status", "message", "pid", "step", "updated", "host", "pid_start"}

Every file except metrics.csv and timing.csv is written atomically (temporary file in the same
directory, fsync, then ``os.replace``), so a process killed at any instant leaves either the old or
the new version. metrics.csv and timing.csv are appended row by row; a row cut short by a kill is
skipped when reading.

``RunIndex(root)`` keeps ``root/index.sqlite`` (WAL journal, busy timeout, one short transaction
per call, one connection per call so it is safe from threads and from several processes).
``mark_interrupted()`` turns runs whose owning process is gone into ``failed``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import socket
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from dmdcore import __version__
from dmdcore.fsutil import (  # noqa: F401  (re-exported: the run store's file helpers)
    LOCK_FILE, DiskFullError, RunBusyError, _atomic_path, _proc_start_token, _proc_state, atomic_torch_save,
    atomic_write_bytes, atomic_write_json, atomic_write_text, claim_dir, disk_full_as_error, is_disk_full,
    lock_owner, pid_alive, release_dir, this_process,
)

STATUSES = ("running", "finished", "stopped", "diverged", "failed", "abandoned", "unreadable")
# abandoned: a Toy Lab job whose browser session went away (dmdcore.jobs); unreadable: a run whose
# status.json / config.json cannot be parsed (listed, never fatal to other commands)
KINDS = ("teacher", "distill", "experiment")
PHASES = ("teacher", "student")

# Columns of metrics.csv, in order (docs/architecture.md). No wall-clock column: metrics.csv of
# two runs of the same config and seeds are byte-identical; timings go to timing.csv.
METRIC_COLUMNS = (
    "step", "phase",
    "loss", "loss_dm", "loss_fake", "loss_reg", "loss_gan_g", "loss_gan_d",
    "delta_e", "delta_e_lo", "delta_e_hi", "e_pair", "e_ot", "e_ind",
    "w2", "w2_data", "eta_teacher", "eta_student", "copy_rate", "retrieval",
    # the copy verdict (dmdcore.verdict.report_row): n and d of ΔE, its controls and validity
    "n_eval", "dim", "delta_e_twin", "delta_e_cross", "resolution", "delta_e_valid", "verdict", "verdict_basis",
    # plateau criterion (dmdcore.convergence) and ablation power (dmdcore.ablations)
    "converged", "gan_dm_ratio", "memorization", "w2_teacher_data",
    # W₂² between two independent data samples of size n: what a perfect model reaches at this n, d
    "w2_data_floor",
    # student rows: max(W₂²(T′,T), W₂²(T(z),T(z′))), the W₂²(S,T) a converged student reaches
    "w2_floor",
    # student rows: K, the number of mode centres the copy rate is scored on (its chance level is 1/K)
    "copy_k",
)
# metrics.csv columns holding text / integers (the rest are floats)
_TEXT_COLUMNS = ("phase", "verdict", "verdict_basis")
_INT_COLUMNS = ("step", "n_eval", "dim", "delta_e_valid", "converged", "copy_k")
# Columns of timing.csv: per evaluation, the cumulative seconds spent inside Experiment.step().
TIMING_COLUMNS = ("step", "phase", "wall_s")

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
TIMING_FILE = "timing.csv"
STATUS_FILE = "status.json"
SAMPLES_FILE = "samples.npz"
CHECKPOINT_ROLES = ("teacher", "student", "fake", "twin")
INDEX_FILE = "index.sqlite"
SCAN_DEPTH = 4  # RunIndex.scan: deepest run directory below the root (root/sweeps/<id>/cells/<key>)


# ----------------------------------------------------------------------------- metrics csv

def _format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))  # shortest exact round-trip representation
    return str(value)


def _parse_cell(column: str, text: str) -> Any:
    if text == "":
        return None
    if column in _TEXT_COLUMNS:
        return text
    if column in _INT_COLUMNS:
        return int(text)
    return float(text)


# ----------------------------------------------------------------------------- run directory

_STATUS_TYPES = {"status": (str,), "message": (str,), "pid": (int, type(None)), "step": (int,),
                 "updated": (int, float), "host": (str, type(None)), "pid_start": (str, type(None))}


def _check_status(data: Any, p: Path) -> dict:
    """A status.json dict with the documented field types; ValueError naming the field."""
    if not isinstance(data, dict):
        raise ValueError(f"status: {str(p)!r} holds a JSON {type(data).__name__}, not an object")
    for key, types in _STATUS_TYPES.items():
        if key in data and (isinstance(data[key], bool) or not isinstance(data[key], types)):
            raise ValueError(f"status: {str(p)!r}: field {key}: {str(data[key])[:40]!r} is not "
                             f"{' or '.join(t.__name__ for t in types)}")
    if "status" in data and data["status"] not in STATUSES:
        raise ValueError(f"status: {str(p)!r}: field status: {data['status'][:40]!r} not in {STATUSES}")
    return data


class RunExistsError(ValueError):
    """The run directory already holds a run and overwrite was not asked for."""


class RunDir:
    """One run directory. Cheap to construct; every method touches the disk directly so several
    readers (the app, the CLI) see what the writer wrote."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- creation
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        kind: str,
        experiment: dict,
        teacher_source: str | None = None,
        overwrite: bool = False,
        extra: dict | None = None,
    ) -> "RunDir":
        """Create (or, with ``overwrite``, reset) a run directory: writes config.json and a
        ``running`` status.json and removes metrics/samples/checkpoints of an earlier run there.

        Raises ValueError if ``kind`` is unknown or ``path`` already holds a run and
        ``overwrite`` is False. ``extra``: more top-level config.json sections (e.g. the
        pipeline's ``{"precond": {"sigma_data": ...}}``); they cannot replace the fixed keys.
        """
        if kind not in KINDS:
            raise ValueError(f"kind: {kind!r} not in {KINDS}")
        if not isinstance(experiment, dict):
            raise ValueError("experiment: must be a dict (ExperimentConfig.to_dict())")
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise ValueError(f"run_dir: {str(run.path)!r} exists and is not a directory")
        # Whether *this* process made the directory: an atomic mkdir of the last component (two
        # writers that both saw "not there yet" must not both think they made it: the one refused
        # below then removed the directory the other had claimed and was writing).
        with disk_full_as_error(run.path):
            run.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                run.path.mkdir()
                made = True
            except FileExistsError:
                made = False
        try:
            run.claim()
        except BaseException:
            if made:  # refused: another writer claimed it; remove it only while still empty
                try:
                    run.path.rmdir()
                except OSError:
                    pass
            raise
        try:
            if (run.path / CONFIG_FILE).exists() and not overwrite:
                raise RunExistsError(
                    f"run_dir: {str(run.path)!r} already holds a run (config.json exists); "
                    "choose another directory or pass overwrite=True (CLI: --overwrite)"
                )
            for name in (METRICS_FILE, TIMING_FILE, SAMPLES_FILE, STATUS_FILE) + tuple(f"{r}.pt" for r in CHECKPOINT_ROLES):
                p = run.path / name
                if p.exists():
                    p.unlink()
            content = {
                "kind": kind,
                "experiment": experiment,
                "teacher_source": teacher_source,
                "dmdcore_version": __version__,
            }
            clash = sorted(set(extra or {}) & set(content))
            if clash:
                raise ValueError(f"extra: key(s) {clash} would replace config.json's own fields")
            content.update(extra or {})
            atomic_write_json(run.path / CONFIG_FILE, content)
            run.write_status("running", "created", step=0)
        except BaseException:
            if made:  # ours alone: removed while still claimed (the lock goes with it)
                shutil.rmtree(run.path, ignore_errors=True)
            else:
                run.release()
            raise
        return run

    # -- exclusive ownership
    def lock_owner(self) -> dict | None:
        """The claim in ``.lock`` (see ``lock_owner``)."""
        return lock_owner(self.path)

    def claim(self) -> None:
        """Claim the directory for the calling process (``claim_dir``)."""
        claim_dir(self.path, "run_dir")

    def release(self) -> None:
        """Remove ``.lock`` if the calling process holds it (idempotent)."""
        release_dir(self.path)

    def exists(self) -> bool:
        return (self.path / CONFIG_FILE).is_file()

    # -- config
    def read_config(self) -> dict:
        """The parsed config.json. Raises ValueError when missing or unreadable."""
        p = self.path / CONFIG_FILE
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ValueError(f"run_dir: {str(self.path)!r} has no {CONFIG_FILE} (not a run directory)") from exc
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting
            raise ValueError(f"run_dir: {str(p)!r} is not valid JSON ({type(exc).__name__})") from None
        if not isinstance(data, dict):
            raise ValueError(f"config: {str(p)!r} holds a JSON {type(data).__name__}, not an object")
        for key in ("experiment",):
            if key in data and not isinstance(data[key], dict):
                raise ValueError(f"config: {str(p)!r}: {key} is a {type(data[key]).__name__}, not an object")
        return data

    # -- status
    def write_status(self, status: str, message: str = "", *, step: int = 0, extra: dict | None = None) -> dict:
        """Atomically write status.json for the calling process. Returns the written dict."""
        if status not in STATUSES:
            raise ValueError(f"status: {status!r} not in {STATUSES}")
        proc = this_process()
        data = {
            "status": status,
            "message": str(message),
            "pid": proc["pid"],
            "step": int(step),
            "updated": time.time(),
            "host": proc["host"],
            "pid_start": proc["pid_start"],
        }
        if extra:
            data.update(extra)
        p = self.path / STATUS_FILE
        try:
            atomic_write_json(p, data)
        except DiskFullError:
            # no room for a temporary copy: rewrite the file in place (its blocks are already
            # allocated), so a run on a full disk can still be marked failed
            if not p.is_file():
                raise
            text = (json.dumps(data, indent=2) + "\n").encode()
            with disk_full_as_error(p), open(p, "r+b") as fh:
                fh.write(text)
                fh.truncate()
                fh.flush()
                os.fsync(fh.fileno())
        return data

    def read_status(self) -> dict | None:
        """The parsed status.json, or None when the run has none yet."""
        p = self.path / STATUS_FILE
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (ValueError, RecursionError) as exc:  # cannot happen with atomic writes; say so if it does
            raise ValueError(f"status: {str(p)!r} is not valid JSON ({type(exc).__name__})") from None
        return _check_status(data, p)

    # -- metrics and timing (append-only CSV files)
    def _append_row(self, name: str, columns: tuple[str, ...], row: dict, what: str) -> None:
        unknown = set(row) - set(columns)
        if unknown:
            raise ValueError(f"{what} row: unknown columns {sorted(unknown)}; allowed {list(columns)}")
        if row.get("phase") not in PHASES:
            raise ValueError(f"{what} row: phase {row.get('phase')!r} not in {PHASES}")
        p = self.path / name
        new = not p.exists() or p.stat().st_size == 0
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        if new:
            writer.writerow(columns)
        else:
            # a run written by an older version (fewer columns) keeps its own header: its rows
            # stay readable; a column it lacks is not written
            with open(p, encoding="utf-8-sig", newline="") as fh:
                columns = tuple(next(csv.reader([fh.readline()]), ())) or columns
        writer.writerow([_format_cell(row.get(c)) for c in columns])
        with disk_full_as_error(p), open(p, "a", encoding="utf-8", newline="") as fh:
            fh.write(buf.getvalue())
            fh.flush()

    def _read_rows(self, name: str) -> list[dict]:
        p = self.path / name
        if not p.exists():
            return []
        text = p.read_text(encoding="utf-8-sig")  # a byte-order mark (Excel, Notepad) is not a column name
        # The element after the last newline is "" (complete file) or a row cut short: drop it.
        lines = text.split("\n")[:-1]
        rows: list[dict] = []
        reader = csv.reader(lines)
        header = None
        for cells in reader:
            if header is None:
                header = cells
                if "step" not in header or "phase" not in header:
                    raise ValueError(f"{name}: {str(p)!r}: header {header[:4]!r} lacks the step/phase columns")
                continue
            if len(cells) != len(header):
                continue
            try:
                rows.append({c: _parse_cell(c, v) for c, v in zip(header, cells)})
            except ValueError:
                continue  # a torn row: skip it rather than make the run unreadable
        return rows

    def append_metrics(self, row: dict) -> None:
        """Append one evaluation row to metrics.csv (header written first if the file is new).

        ``row`` keys must be a subset of METRIC_COLUMNS (missing ones are written empty); floats
        are written with ``repr`` so the file is bit-reproducible. Raises ValueError on an
        unknown key or a bad ``phase``.
        """
        self._append_row(METRICS_FILE, METRIC_COLUMNS, row, "metrics")

    def read_metrics(self) -> list[dict]:
        """Rows of metrics.csv as dicts (numbers parsed, empty cells → None). A last row cut
        short by a killed writer is skipped. Returns [] when there is no file."""
        return self._read_rows(METRICS_FILE)

    def append_timing(self, row: dict) -> None:
        """Append one evaluation's timing ``{"step", "phase", "wall_s"}`` to timing.csv (same
        append-only, torn-row-tolerant format as metrics.csv). Raises ValueError on an unknown
        key or a bad ``phase``."""
        self._append_row(TIMING_FILE, TIMING_COLUMNS, row, "timing")

    def read_timing(self) -> list[dict]:
        """Rows of timing.csv (``step`` int, ``phase`` str, ``wall_s`` float: cumulative seconds
        inside ``Experiment.step()`` at that evaluation). [] when there is no file; a torn last
        row is skipped."""
        return self._read_rows(TIMING_FILE)

    # -- checkpoints
    def checkpoint_path(self, role: str) -> Path:
        if role not in CHECKPOINT_ROLES:
            raise ValueError(f"role: {role!r} not in {CHECKPOINT_ROLES}")
        return self.path / f"{role}.pt"

    def save_checkpoint(self, role: str, obj: dict) -> Path:
        """Atomically ``torch.save`` a plain-dict checkpoint as ``<role>.pt``."""
        p = self.checkpoint_path(role)
        atomic_torch_save(p, obj)
        return p

    def has_checkpoint(self, role: str) -> bool:
        return self.checkpoint_path(role).is_file()

    # -- samples
    def save_samples(
        self,
        *,
        z: np.ndarray,
        teacher: np.ndarray | None,
        student: np.ndarray | None,
        history_steps: np.ndarray | None = None,
        history_student: np.ndarray | None = None,
        basin_steps: np.ndarray | None = None,
        basin_student: np.ndarray | None = None,
    ) -> Path:
        """Atomically write samples.npz. ``z``, ``teacher``, ``student``: (n, d); ``history_steps``
        (K,) int64 and ``history_student`` (K, n, d) float32; ``basin_steps`` (B,) int64 and
        ``basin_student`` (B, G, G) int16: the student's basin map (mode per noise-grid point) at
        those student steps (2-D data). Missing arrays are stored empty (shape (0,) / (0, n, d) /
        (0, 0, 0)) so the file always has the same keys."""
        z = np.asarray(z, dtype=np.float32)
        n, d = z.shape[0], int(np.prod(z.shape[1:])) if z.ndim > 1 else 1
        empty_nd = np.zeros((0, d), dtype=np.float32)
        arrays = {
            "z": z,
            "teacher": empty_nd if teacher is None else np.asarray(teacher, dtype=np.float32),
            "student": empty_nd if student is None else np.asarray(student, dtype=np.float32),
            "history_steps": np.zeros((0,), np.int64) if history_steps is None else np.asarray(history_steps, np.int64),
            "history_student": (
                np.zeros((0, n, d), np.float32) if history_student is None
                else np.asarray(history_student, np.float32)
            ),
            "basin_steps": np.zeros((0,), np.int64) if basin_steps is None else np.asarray(basin_steps, np.int64),
            "basin_student": (np.zeros((0, 0, 0), np.int16) if basin_student is None
                              else np.asarray(basin_student, np.int16)),
        }
        p = self.path / SAMPLES_FILE
        with _atomic_path(p) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        return p

    def load_samples(self) -> dict[str, np.ndarray]:
        """samples.npz as a dict of arrays (empty arrays where not yet available)."""
        p = self.path / SAMPLES_FILE
        if not p.exists():
            raise ValueError(f"run_dir: {str(self.path)!r} has no {SAMPLES_FILE} yet")
        with np.load(p, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}


# ----------------------------------------------------------------------------- run index

@dataclass
class RunRecord:
    """One row of the run index."""

    id: int
    path: str                 # absolute path of the run directory
    kind: str                 # teacher | distill | experiment
    status: str               # running | finished | stopped | diverged | failed
    name: str = ""
    dataset: str | None = None
    dim: int | None = None
    sweep: str | None = None
    teacher_source: str | None = None
    pid: int | None = None
    host: str | None = None
    pid_start: str | None = None
    step: int = 0
    message: str = ""
    created: float = 0.0
    updated: float = 0.0
    delta_e: float | None = None   # latest evaluated ΔE (None before the student phase)
    w2: float | None = None        # latest W₂²(student, teacher)
    summary: dict = field(default_factory=dict)  # latest metrics row

    @property
    def run_dir(self) -> RunDir:
        return RunDir(self.path)


_INDEX_COLUMNS = (
    "id", "path", "kind", "status", "name", "dataset", "dim", "sweep", "teacher_source", "pid",
    "host", "pid_start", "step", "message", "created", "updated", "delta_e", "w2", "summary",
)
_UPDATABLE = frozenset(_INDEX_COLUMNS) - {"id", "path", "created"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    path           TEXT NOT NULL UNIQUE,
    kind           TEXT NOT NULL,
    status         TEXT NOT NULL,
    name           TEXT NOT NULL DEFAULT '',
    dataset        TEXT,
    dim            INTEGER,
    sweep          TEXT,
    teacher_source TEXT,
    pid            INTEGER,
    host           TEXT,
    pid_start      TEXT,
    step           INTEGER NOT NULL DEFAULT 0,
    message        TEXT NOT NULL DEFAULT '',
    created        REAL NOT NULL,
    updated        REAL NOT NULL,
    delta_e        REAL,
    w2             REAL,
    summary        TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
CREATE INDEX IF NOT EXISTS runs_sweep ON runs(sweep);
"""


def _finite_or_none(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class RunIndex:
    """SQLite index of the runs under ``root`` (file ``root/index.sqlite``).

    Safe to use from several threads and processes at once: each call opens its own connection,
    the journal is WAL (readers never block the writer), writers wait up to ``timeout_s`` for the
    lock, and each write is one short ``BEGIN IMMEDIATE`` transaction.
    """

    def __init__(self, root: str | os.PathLike, *, timeout_s: float = 30.0):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"root: {str(self.root)!r} exists and is not a directory")
        self.path = self.root / INDEX_FILE
        self.timeout_s = float(timeout_s)
        self.read_only = False  # True when the disk is full: the existing index is read as it is
        try:
            with disk_full_as_error(self.path):
                self.root.mkdir(parents=True, exist_ok=True)
                with closing(self._connect()) as con:
                    con.execute("PRAGMA journal_mode=WAL")
                    con.executescript(_SCHEMA)
        except DiskFullError:
            if not self.path.is_file():
                raise
            self.read_only = True  # listings still work; every write raises DiskFullError
            try:
                with closing(self._connect()) as con:
                    con.execute("SELECT 1 FROM runs LIMIT 1").fetchall()
            except sqlite3.DatabaseError:  # created on the full disk but never got its table
                raise DiskFullError(self.path) from None
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"index: {str(self.path)!r} is not a readable SQLite run index ({exc})") from exc

    def __repr__(self) -> str:
        return f"RunIndex({str(self.root)!r})"

    def _connect(self) -> sqlite3.Connection:
        if getattr(self, "read_only", False):
            con = sqlite3.connect(f"{self.path.resolve().as_uri()}?immutable=1", uri=True, isolation_level=None)
            con.row_factory = sqlite3.Row
            return con
        con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        con.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
        con.row_factory = sqlite3.Row
        return con

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # a full disk rolls the transaction back (the index stays readable) and says so
        if self.read_only:
            raise DiskFullError(self.path)
        with disk_full_as_error(self.path), closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    @staticmethod
    def _record(row: sqlite3.Row) -> RunRecord:
        d = dict(row)
        try:
            d["summary"] = json.loads(d.get("summary") or "{}")
        except ValueError:
            d["summary"] = {}
        d["name"] = d.get("name") or ""
        d["message"] = d.get("message") or ""
        return RunRecord(**d)

    def _key(self, run: int | str | os.PathLike | RunRecord | RunDir) -> tuple[str, Any]:
        if isinstance(run, RunRecord):
            return "id", run.id
        if isinstance(run, bool):
            raise ValueError(f"run: {run!r} is neither a run id nor a run directory")
        if isinstance(run, (int, np.integer)):
            return "id", int(run)
        if isinstance(run, RunDir):
            run = run.path
        if isinstance(run, (str, os.PathLike)):
            return "path", str(Path(run).resolve())
        raise ValueError(f"run: {run!r} is neither a run id nor a run directory")

    # -- writes
    def register(
        self,
        run_dir: str | os.PathLike | RunDir,
        *,
        kind: str | None = None,
        status: str | None = None,
        name: str | None = None,
        dataset: str | None = None,
        dim: int | None = None,
        sweep: str | None = None,
        teacher_source: str | None = None,
        pid: int | None = None,
    ) -> RunRecord:
        """Add ``run_dir`` to the index, or refresh its row if it is already there (re-running
        into the same directory). Fields not given are read from the run's config.json and
        status.json; the owning process defaults to the caller (pid, host, start token)."""
        run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        path = str(run.path.resolve())
        cfg = run.read_config() if run.exists() else {}
        exp = cfg.get("experiment") or {}
        data = exp.get("data") or {}
        st = run.read_status() or {}
        kind = kind if kind is not None else cfg.get("kind", "experiment")
        if kind not in KINDS:
            raise ValueError(f"kind: {kind!r} not in {KINDS}")
        status = status if status is not None else st.get("status", "running")
        if status not in STATUSES:
            raise ValueError(f"status: {status!r} not in {STATUSES}")
        proc = this_process()
        if pid is None:
            pid, host, pid_start = st.get("pid", proc["pid"]), st.get("host", proc["host"]), st.get("pid_start", proc["pid_start"])
        else:
            host, pid_start = proc["host"], _proc_start_token(pid)
        now = time.time()
        values = {
            "path": path,
            "kind": kind,
            "status": status,
            "name": name if name is not None else exp.get("name", "") or "",
            "dataset": dataset if dataset is not None else data.get("dataset"),
            "dim": dim if dim is not None else data.get("dim"),
            "sweep": sweep,
            "teacher_source": teacher_source if teacher_source is not None else cfg.get("teacher_source"),
            "pid": pid,
            "host": host,
            "pid_start": pid_start,
            "step": int(st.get("step", 0) or 0),
            "message": st.get("message", "") or "",
            "created": now,
            "updated": now,
        }
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        upd = ", ".join(f"{c}=excluded.{c}" for c in values if c not in ("path", "created", "sweep"))
        with self._write() as con:
            con.execute(
                f"INSERT INTO runs ({cols}) VALUES ({marks}) ON CONFLICT(path) DO UPDATE SET {upd}, "
                "sweep=COALESCE(excluded.sweep, runs.sweep)",
                tuple(values.values()),
            )
            row = con.execute("SELECT * FROM runs WHERE path=?", (path,)).fetchone()
        return self._record(row)

    def register_unreadable(self, run_dir: str | os.PathLike, reason: str) -> RunRecord:
        """Add (or mark) a run directory whose files cannot be parsed as ``unreadable``, with
        the reason as its message, so listings show it and skip it."""
        path = str(Path(run_dir).resolve())
        now = time.time()
        with self._write() as con:
            con.execute(
                "INSERT INTO runs (path, kind, status, message, created, updated) VALUES (?, 'experiment', "
                "'unreadable', ?, ?, ?) ON CONFLICT(path) DO UPDATE SET status='unreadable', "
                "message=excluded.message, updated=excluded.updated",
                (path, reason[:500], now, now),
            )
            row = con.execute("SELECT * FROM runs WHERE path=?", (path,)).fetchone()
        return self._record(row)

    def update(self, run: int | str | os.PathLike | RunRecord | RunDir, **fields: Any) -> RunRecord:
        """Update columns of one run (e.g. ``status=``, ``step=``, ``message=``, ``delta_e=``,
        ``summary=`` a metrics row dict). Raises ValueError on an unknown column or status,
        KeyError when the run is not in the index."""
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"update: unknown fields {sorted(unknown)}; allowed {sorted(_UPDATABLE)}")
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"status: {fields['status']!r} not in {STATUSES}")
        if "kind" in fields and fields["kind"] not in KINDS:
            raise ValueError(f"kind: {fields['kind']!r} not in {KINDS}")
        if "summary" in fields:
            summary = dict(fields["summary"] or {})
            fields["summary"] = json.dumps(
                {k: (_finite_or_none(v) if isinstance(v, float) else v) for k, v in summary.items()}
            )
        for k in ("delta_e", "w2"):
            if k in fields:
                fields[k] = _finite_or_none(fields[k])
        fields["updated"] = time.time()
        col, key = self._key(run)
        sets = ", ".join(f"{c}=?" for c in fields)
        with self._write() as con:
            cur = con.execute(f"UPDATE runs SET {sets} WHERE {col}=?", (*fields.values(), key))
            if cur.rowcount == 0:
                raise KeyError(f"run {key!r} is not in the index {str(self.path)!r}")
            row = con.execute(f"SELECT * FROM runs WHERE {col}=?", (key,)).fetchone()
        return self._record(row)

    def remove(self, run: int | str | os.PathLike | RunRecord | RunDir) -> None:
        """Drop a run from the index (its directory is left alone)."""
        col, key = self._key(run)
        with self._write() as con:
            con.execute(f"DELETE FROM runs WHERE {col}=?", (key,))

    # -- reads
    def get(self, run: int | str | os.PathLike | RunRecord | RunDir) -> RunRecord:
        """The record of a run id or run directory. Raises KeyError when absent."""
        col, key = self._key(run)
        with closing(self._connect()) as con:
            row = con.execute(f"SELECT * FROM runs WHERE {col}=?", (key,)).fetchone()
        if row is None:
            raise KeyError(f"run {key!r} is not in the index {str(self.path)!r}")
        return self._record(row)

    def list(
        self,
        kind: str | None = None,
        status: str | None = None,
        dataset: str | None = None,
        sweep: str | None = None,
    ) -> list[RunRecord]:
        """Runs matching every given filter, oldest first."""
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind: {kind!r} not in {KINDS}")
        if status is not None and status not in STATUSES:
            raise ValueError(f"status: {status!r} not in {STATUSES}")
        where, args = [], []
        for col, val in (("kind", kind), ("status", status), ("dataset", dataset), ("sweep", sweep)):
            if val is not None:
                where.append(f"{col}=?")
                args.append(val)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        with closing(self._connect()) as con:
            rows = con.execute(sql, args).fetchall()
        return [self._record(r) for r in rows]

    # -- maintenance
    def _sweep_of(self, run_path: Path) -> str | None:
        """The sweep id a run directory belongs to: its ``cell.json`` ``sweep``, else the ``id`` of
        the nearest ``sweep.json`` in a parent directory up to ``root`` (sweep layout
        ``<sweep dir>/cells/<key>`` and ``<sweep dir>/teachers/<key>``, see dmdcore.sweep)."""
        try:
            sid = json.loads((run_path / "cell.json").read_text(encoding="utf-8")).get("sweep")
            if sid:
                return str(sid)
        except (OSError, ValueError, AttributeError):
            pass
        root = self.root.resolve()
        for parent in run_path.resolve().parents:
            man = parent / "sweep.json"
            if man.is_file():
                try:
                    sid = json.loads(man.read_text(encoding="utf-8")).get("id")
                except (OSError, ValueError, AttributeError):
                    sid = None
                return str(sid) if sid else None
            if parent == root or root not in parent.parents:
                break
        return None

    def scan(self) -> list[RunRecord]:
        """Register every run directory under ``root`` (any depth ≤ SCAN_DEPTH = 4, so sweep cells
        at ``root/sweeps/<id>/cells/<key>`` are found) that the index lacks, e.g. after the index
        file was deleted or for runs a sweep recorded in its own index. Runs inside a sweep
        directory get its sweep id (also filled in for known runs that lack one). Returns the
        newly added records."""
        known = {r.path: r for r in self.list()}
        added = []
        configs: list[Path] = []
        for depth in range(1, SCAN_DEPTH + 1):
            configs += sorted(self.root.glob("*/" * depth + CONFIG_FILE))
        for cfg in configs:
            run = RunDir(cfg.parent)
            rec = known.get(str(run.path.resolve()))
            if rec is not None:
                if rec.sweep is None:
                    sweep = self._sweep_of(run.path)
                    if sweep is not None:
                        self.update(rec.id, sweep=sweep)
                if rec.delta_e is None and rec.status != "unreadable":
                    self._fill_latest(rec, run)
                continue
            try:
                added.append(self._fill_latest(self.register(run, sweep=self._sweep_of(run.path)), run))
            except ValueError as exc:  # malformed config/status: listed as unreadable, never fatal
                added.append(self.register_unreadable(run.path, str(exc)))
        return added

    def _fill_latest(self, rec: RunRecord, run: RunDir) -> RunRecord:
        """Fill ΔE / W₂² / summary of a run registered from its files (e.g. a sweep cell recorded
        in its sweep's own index) from the last metrics.csv row that has ΔE."""
        try:
            rows = run.read_metrics()
        except (ValueError, OSError):
            return rec
        with_de = [r for r in rows if r.get("delta_e") is not None]
        if not with_de:
            return rec
        last = with_de[-1]
        return self.update(rec.id, delta_e=last.get("delta_e"), w2=last.get("w2"), summary=last)

    def mark_interrupted(self) -> list[RunRecord]:
        """Find runs left ``running`` by a process that no longer exists and mark them ``failed``
        (index row and status.json). Also brings the index in line with a status.json that
        moved on (finished/stopped/…) and marks runs whose directory vanished. Processes on
        another host cannot be checked and are left alone. Returns the changed records."""
        host = socket.gethostname()
        changed = []
        for rec in self.list(status="running"):
            run = rec.run_dir
            if not run.path.is_dir():
                changed.append(self.update(rec.id, status="failed", message="run directory missing"))
                continue
            try:
                st = run.read_status() or {}
            except ValueError as exc:  # malformed status.json: this run is unreadable, the others go on
                changed.append(self.register_unreadable(run.path, str(exc)))
                continue
            disk_status = st.get("status", "running")
            if disk_status != "running" and disk_status in STATUSES:
                changed.append(self.update(
                    rec.id, status=disk_status, message=st.get("message", ""), step=int(st.get("step", rec.step) or 0)
                ))
                continue
            pid = st.get("pid", rec.pid)
            owner_host = st.get("host", rec.host)
            token = st.get("pid_start", rec.pid_start)
            if owner_host not in (None, host):
                continue
            if pid_alive(pid, token):
                continue
            msg = f"interrupted: process {pid} is gone (killed or crashed) at step {st.get('step', rec.step)}"
            step = int(st.get("step", rec.step) or 0)
            if st:
                data = dict(st)
                data.update({"status": "failed", "message": msg, "updated": time.time()})
                atomic_write_json(run.path / STATUS_FILE, data)
            changed.append(self.update(rec.id, status="failed", message=msg, step=step))
        return changed
