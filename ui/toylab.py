"""Toy Lab glue between widget values and the engine (no training logic here).

* ``init_controls`` / ``read_controls``: the flat control values of ``ui.urlstate`` in
  ``st.session_state`` (seeded from the Home page's request, else the URL, else defaults).
* ``build_config``: control values → ``dmdcore.config.ExperimentConfig`` (validated by the
  engine; a bad combination raises ValueError naming the field).
* ``shipped_teachers``: toy teacher entries of ``checkpoints/manifest.json``.
* ``save_upload``: validate an uploaded CSV/NPY with the engine's loader and store it as .npy.
* export helpers: metrics CSV, evaluation-samples NPZ, run directory as a zip (bytes).
"""

from __future__ import annotations

import hashlib
import io
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any, Mapping, MutableMapping

import numpy as np
import pandas as pd

from ui import urlstate

REPO_ROOT = Path(__file__).resolve().parent.parent

# Session-state keys shared by Home and Toy Lab.
AUTOSTART_KEY = "toylab_autostart"
PENDING_VALUES_KEY = "toylab_pending_values"
VALUES_KEY = "toylab_values"          # last control values (persist across page switches)
GOOD_KEY = "toylab_good"              # (values, ExperimentConfig) of the last valid config
WIDGET_PREFIX = "ctl_"

# The Home page's one-click demo: the shipped 8-gaussians teacher, distilled until the plateau
# criterion (dmdcore.convergence) fires. Chosen from measurements (scripts/measure_starter.py,
# one torch thread, process CPU time, 2-core machine under a second job's load):
#   batch 256,  lr 1e-4: converged at step 600, 15.6 CPU s, ΔE 0.037, W₂²(S,T) 0.141, copy rate 0.88
#   batch 512,  lr 3e-4: converged at step 350, 11.6 CPU s, ΔE 0.007, W₂²(S,T) 0.070, copy rate 0.94
#   batch 1024, lr 3e-4: converged at step 300, 14.1 CPU s, ΔE 0.005, W₂²(S,T) 0.060, copy rate 0.97
#   batch 256,  lr 1e-3: converged at step 250,  7.5 CPU s, ΔE 0.016, W₂²(S,T) 0.161, copy rate 0.86
# (floor max(W₂²(T′,T), W₂²(T(z),T(z′))) = 0.41 at n = 1024). Past the plateau (the same run with
# the stop off, 1000 steps, 44.6 CPU s) ΔE stays at 0.004–0.006 and the copy rate at ~0.965 while
# W₂²(S,T) keeps falling to 0.03 (the twin's 0.030) by step 800: at the plateau the pairing is the
# teacher's, S(z) still a ring through the 8 modes rather than 8 separate ones. The old starter (300 steps, batch 256,
# lr 1e-4, no stop) ended at W₂²(S,T) ≈ 0.23 with S(z) still a filled disc. The 1000-step cap
# bounds a run that never plateaus to under a minute of CPU.
START_HERE_VALUES: dict[str, Any] = {
    "teacher_source": "shipped",
    "shipped_name": "8gaussians",
    "dataset": "8gaussians",
    "dim": 2,
    "batch": 1024,
    "lr": 3e-4,
    "s_steps": 1000,
    "eval_n": 1024,
    "eval_every": 50,
    "stop_plateau": True,
}


def request_autostart(state: MutableMapping[str, Any], values: dict[str, Any]) -> None:
    """Ask the Toy Lab to load ``values`` (checked) into its controls and start distilling."""
    checked = {k: urlstate.check(k, v) for k, v in values.items()}
    state[PENDING_VALUES_KEY] = checked
    state[AUTOSTART_KEY] = True


def init_controls(state: MutableMapping[str, Any], query: Mapping[str, Any]) -> list[str]:
    """Seed the widget keys ``ctl_<name>`` before the widgets are drawn.

    Priority: a pending request from Home > values kept from earlier in this session > the URL
    (only on the session's first visit) > defaults. Returns URL-parameter error messages.
    """
    errors: list[str] = []
    if VALUES_KEY not in state:
        values, errors = urlstate.decode(dict(query))
        state[VALUES_KEY] = values
    pending = state.pop(PENDING_VALUES_KEY, None)
    if pending:
        state[VALUES_KEY] = {**state[VALUES_KEY], **pending}
        for name in pending:
            state.pop(WIDGET_PREFIX + name, None)
    for name, value in state[VALUES_KEY].items():
        if WIDGET_PREFIX + name not in state:
            state[WIDGET_PREFIX + name] = value
    return errors


def read_controls(state: MutableMapping[str, Any]) -> dict[str, Any]:
    """Current control values from the widgets (after they are drawn); remembered in state."""
    values = dict(state.get(VALUES_KEY, urlstate.defaults()))
    for c in urlstate.CONTROLS:
        if WIDGET_PREFIX + c.name in state:
            values[c.name] = state[WIDGET_PREFIX + c.name]
    state[VALUES_KEY] = values
    return values


# ---------------------------------------------------------------------------------------------
def shipped_teachers() -> list[dict]:
    """Toy teacher entries of checkpoints/manifest.json (the engine's list; [] if it has none)."""
    from dmdcore.pipeline import shipped_teachers as _engine_list

    return _engine_list()


SHIPPED_FIELDS = ("dataset", "dim", "n_modes", "base", "t_width", "t_depth", "t_steps", "t_lr", "t_twin", "family")


def shipped_fields(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The data/teacher control values a shipped toy teacher brings (its manifest entry's
    config): what the greyed sidebar fields show while that teacher is selected."""
    cfg = entry.get("config") or {}
    data, teacher = cfg.get("data") or {}, cfg.get("teacher") or entry.get("teacher_config") or {}
    raw = {"dataset": data.get("dataset", entry.get("dataset")), "dim": data.get("dim", entry.get("dim")),
           "n_modes": data.get("n_modes"), "base": data.get("base"), "t_width": teacher.get("width"),
           "t_depth": teacher.get("depth"), "t_steps": teacher.get("steps"), "t_lr": teacher.get("lr"),
           "t_twin": bool(entry.get("twin")), "family": teacher.get("family") or "edm"}
    out = {}
    for name, v in raw.items():
        if v is None:
            continue
        try:
            out[name] = urlstate.check(name, v)
        except ValueError:  # outside this page's ranges: shown as the manifest has it
            out[name] = v
    return out


def build_config(values: Mapping[str, Any], *, teacher=None, user_path: str | None = None):
    """Control values → ExperimentConfig.

    teacher: a loaded ``ToyTeacher`` (shipped or trained this session) whose data/teacher
    configs then replace the dataset and teacher controls (the student must match them).
    user_path: the stored .npy of an upload (dataset "user"). Raises ValueError (from the
    control checks or the engine's config validation) naming the bad field.
    """
    from dmdcore.config import (DATASETS_2D, DataConfig, DistillConfig, EvalConfig,
                                ExperimentConfig, TeacherConfig)

    v = {k: urlstate.check(k, values[k]) for k in urlstate.BY_NAME if k in values}
    seed = v["seed"]
    if teacher is not None:
        data = teacher.data_config
        tcfg = teacher.teacher_config
    else:
        ds = v["dataset"]
        if ds in DATASETS_2D:
            dim = 2
        elif ds == "digits":
            dim = 64
        else:
            dim = v["dim"]
        if ds == "user" and not user_path:
            raise ValueError("dataset: 'user' needs an uploaded CSV/NPY file (upload one first)")
        if ds == "user":
            dim = int(np.load(user_path, mmap_mode="r").shape[1])
        data = DataConfig(dataset=ds, dim=dim, n_modes=v["n_modes"], base=v["base"],
                          path=user_path if ds == "user" else None, seed=seed)
        tcfg = TeacherConfig(width=v["t_width"], depth=v["t_depth"], steps=v["t_steps"],
                             lr=v["t_lr"], seed=seed, twin=v["t_twin"], family=v.get("family", "edm"))
    distill = DistillConfig(
        init=v["init"], ratio=v["ratio"], steps=v["s_steps"], batch=v["batch"], lr_gen=v["lr"],
        lr_fake=v["lr_fake"], gan=v["gan"], regression=v["regression"],
        reg_weight=v["reg_weight"], student_steps=v["student_steps"], seed=seed,
        method=v.get("method", "dmd"),
    )
    ev = EvalConfig(every=v["eval_every"], n=v["eval_n"], bootstrap=v["bootstrap"],
                    stop_when_converged="student" if v.get("stop_plateau", True) else "off")
    return ExperimentConfig(data=data, teacher=tcfg, distill=distill, eval=ev, name="toylab")


def save_upload(data: bytes, filename: str, root: Path) -> tuple[str, tuple[int, int]]:
    """Validate an uploaded CSV/NPY with ``dmdcore.data.load_user_array`` and store it.

    Returns (path of the stored float32 .npy, shape). Raises ValueError with the loader's
    message (file, row, column) for invalid content or an unsupported extension.
    """
    from dmdcore.data import load_user_array

    ext = Path(filename).suffix.lower()
    if ext not in (".csv", ".npy"):
        raise ValueError(f"upload: {filename!r} must be a .csv or .npy file")
    arr = load_user_array(data, filename=filename)
    if arr.shape[1] < 2:
        raise ValueError(f"upload: {filename!r} has {arr.shape[1]} column; need d >= 2")
    digest = hashlib.sha256(data).hexdigest()[:16]
    out = Path(root) / "uploads" / f"{digest}.npy"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        # atomic and tidy: a full disk raises "disk full at <path>" and leaves no temp file
        from dmdcore.runs import atomic_write_bytes

        buf = io.BytesIO()
        np.save(buf, arr)
        atomic_write_bytes(out, buf.getvalue())
    return str(out), tuple(arr.shape)


def new_run_dir(root: Path, label: str) -> Path:
    """A fresh, unique run directory path under ``root`` (not created)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in label)[:40]
    return Path(root) / f"toylab-{stamp}-{safe}-{uuid.uuid4().hex[:6]}"


# ---------------------------------------------------------------------------------------------
# Exports
def metrics_frame(metrics: list[dict]) -> pd.DataFrame:
    """metrics rows (as in metrics.csv) → DataFrame with numeric columns where possible."""
    df = pd.DataFrame(metrics)
    for col in df.columns:
        if col != "phase":
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def metrics_csv_bytes(metrics: list[dict], run_dir: str | Path | None = None) -> bytes:
    """The run's metrics.csv itself when it has one on disk (the same columns and bytes as the
    CLI and sweeps write); else the rows with metrics.csv's columns, in its order."""
    from dmdcore.runs import METRIC_COLUMNS

    if run_dir is not None and (Path(run_dir) / "metrics.csv").is_file():
        return (Path(run_dir) / "metrics.csv").read_bytes()
    df = metrics_frame(metrics)
    return df.reindex(columns=list(METRIC_COLUMNS)).to_csv(index=False).encode("utf-8")


def samples_npz_bytes(z, teacher, student, history) -> bytes:
    """NPZ with z, teacher, student (n, d) and history_steps (K,), history_student (K, n, d)."""
    buf = io.BytesIO()
    arrays = {"z": np.asarray(z, np.float32), "teacher": np.asarray(teacher, np.float32)}
    if student is not None:
        arrays["student"] = np.asarray(student, np.float32)
    if history:
        arrays["history_steps"] = np.asarray([s for s, _ in history], np.int64)
        arrays["history_student"] = np.stack([np.asarray(h, np.float32) for _, h in history])
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def run_dir_zip_bytes(run_dir: str | Path) -> bytes:
    """The whole run directory as an in-memory zip (paths relative to the run's parent)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run_dir: {str(run_dir)!r} is not a directory")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(run_dir.rglob("*")):
            if path.is_file() and not path.name.endswith(".tmp"):
                zf.write(path, path.relative_to(run_dir.parent).as_posix())
    return buf.getvalue()
