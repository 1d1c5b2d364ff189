"""The experiment pipeline: data → teacher phase (EDM training) → student phase (DMD), with a
fixed evaluation noise batch, periodic evaluation of the pairing metrics, and run saving.

``Experiment`` implements the stepper protocol of ``dmdcore.jobs`` (``step``, ``done``,
``total_steps``, ``set_phases``, ``view``, ``finalize``) so a ``TrainingJob`` can run it on a
thread, and ``run()`` steps it to the end synchronously (the sweep and the CLI use that).

Evaluation (every ``cfg.eval.every`` steps of a phase, at step 0 of the student phase and at the
end of each phase) on the fixed noise z (``cfg.eval.n`` × d, ``torch.Generator`` seeded with
``cfg.eval.seed``):

* teacher phase: T(z) of the current EMA teacher (EDM Heun, ``cfg.sampler``); ``w2_data`` =
  W₂²(T(z), data subsample of n points) and ``eta_teacher`` = η(T); ``loss`` is the mean EDM loss
  since the previous evaluation;
* student phase: S(z) of the one-step (or few-step) student; ΔE with a bootstrap CI
  (``pairing_inefficiency(S, T, bootstrap=cfg.eval.bootstrap)``), ``w2`` = W₂²(S, T) (= E_OT of the
  same exact matching), ``w2_data`` = W₂²(S, data subsample), η(T), η(S), the copy rate of the
  mode transition (true mode centres when the data set has them, else k-means centres fitted
  once on T(z) with K = the data set's number of classes, or 8), top-1 pair retrieval; loss
  columns are means since the previous evaluation.

Evaluation runs off the training thread: at an evaluation step the training thread only draws
the samples (T(z) or S(z), where a divergence is caught before anything is saved), copies the
weights to save, and hands this snapshot to a single evaluation worker thread, which computes the
metrics (the optimal-transport solves that cost most of an evaluation) and writes metrics.csv,
timing.csv, the checkpoints and samples.npz in evaluation order while training goes on. At most
``_EVAL_PENDING_MAX`` evaluations wait; reading ``metrics``, ``history``, ``modes``,
``student_samples`` or ``timing`` waits for the evaluations already requested, ``view()`` does
not (it shows the latest finished one), and ``finalize`` waits for all. The numbers do not depend
on which thread computes them (``async_eval=False`` computes them on the training thread).

The ``step`` column of metrics.csv counts steps within its phase (teacher steps, or generator
steps of the student); ``Experiment.step_count`` / the job's snapshot step count both phases.
metrics.csv holds no clock: the same config and seeds give byte-identical files. Each evaluation
also appends ``{"step", "phase", "wall_s"}`` (cumulative seconds inside ``step()``) to timing.csv
(``Experiment.timing`` in memory).
"""

from __future__ import annotations

import copy
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from dmdcore import pairing
from dmdcore.config import DataConfig, ExperimentConfig, TeacherConfig
from dmdcore.data import make_dataset, make_sampler
from dmdcore.device import pick_device
from dmdcore.runs import RunDir, RunIndex

PHASES = ("teacher", "student")
_HISTORY_MAX = 200                      # at most this many (step, S(z)) snapshots are kept
_HISTORY_MAX_BYTES = 64 * 2**20         # ... and at most this many bytes of them
_LOSS_KEYS_TEACHER = ("loss",)
_LOSS_KEYS_STUDENT = ("loss_dm", "loss_fake", "loss_reg", "loss_gan_g", "loss_gan_d")
_EVAL_PENDING_MAX = 2                   # evaluations waiting for the worker before training waits
BASIN_GRID_N, BASIN_EXTENT = 64, 3.0    # 2-D data: the noise grid whose student basin map is kept
                                        # at every evaluation (time travel: basin_maps(step=…))


@dataclass(frozen=True)
class _EvalSnapshot:
    """What one evaluation needs, taken on the training thread at the evaluation step."""
    phase: str
    step: int                       # phase step
    step_count: int                 # both phases
    row: dict                       # step, phase and the loss means since the previous evaluation
    samples: np.ndarray             # T(z) (teacher phase) or S(z) (student phase), read-only
    wall_s: float                   # cumulative seconds inside step()
    teacher: Any = None             # teacher phase: the EMA teacher copy to save
    modules: tuple = ()             # student phase: ((role, module copy), ...) to save
    grid_samples: np.ndarray | None = None  # student phase, 2-D: S on the basin-map noise grid
    step_samples: tuple = ()        # few-step students: each sampling step's clean estimate


# ----------------------------------------------------------------------------- teacher sources

def checkpoints_dir() -> Path:
    """The repository's ``checkpoints/`` folder (found from the package location, not the cwd)."""
    return Path(__file__).resolve().parent.parent / "checkpoints"


def shipped_teachers() -> list[dict]:
    """Manifest entries of the shipped toy teachers (``kind == "toy"``, ``role == "teacher"``)."""
    from dmdcore.checkpoints import read_manifest

    return [
        e for e in read_manifest(checkpoints_dir() / "manifest.json")["entries"]
        if e.get("kind") == "toy" and e.get("role") == "teacher"
    ]


def resolve_teacher(source: str | os.PathLike) -> tuple[Path, str]:
    """Where a teacher lives: ``(path of its .pt file, canonical source string)``.

    source: a run directory (its ``teacher.pt``), a ``.pt`` file, ``manifest:<name>`` or a bare
    manifest name such as ``8gaussians`` (when no file or directory of that name exists).
    The canonical string is what a run's config.json records as ``teacher_source``.
    Raises ValueError naming the source when it cannot be found or fails its checksum.
    """
    from dmdcore.checkpoints import entry_path, file_sha256, manifest_entry

    text = os.fspath(source)
    if not text:
        raise ValueError("teacher: empty source (give a run directory, a .pt file or manifest:<name>)")
    name = None
    if text.startswith("manifest:"):
        name = text[len("manifest:"):]
    elif not Path(text).exists() and os.sep not in text and not text.endswith(".pt"):
        name = text
    if name is not None:
        known = [e["name"] for e in shipped_teachers()]
        if name not in known:
            raise ValueError(
                f"teacher: {text!r} is neither an existing path nor a shipped teacher (known: {', '.join(known) or 'none'})"
            )
        entry = manifest_entry(name, checkpoints_dir() / "manifest.json")
        path = entry_path(entry, checkpoints_dir())
        if not path.is_file():
            raise ValueError(f"teacher: manifest entry {name!r} points at {str(path)!r}, which is missing")
        if entry.get("size") is not None and path.stat().st_size != entry["size"]:
            raise ValueError(f"teacher: {str(path)!r} has {path.stat().st_size} bytes, the manifest says {entry['size']}")
        if entry.get("sha256") and file_sha256(path) != entry["sha256"].lower():
            raise ValueError(f"teacher: {str(path)!r} does not match the manifest's sha256")
        return path, f"manifest:{name}"
    p = Path(text)
    if p.is_dir():
        pt = p / "teacher.pt"
        if not pt.is_file():
            st = RunDir(p).read_status() if (p / "status.json").exists() else None
            extra = f" (run status: {st.get('status')}: {st.get('message')})" if st else ""
            raise ValueError(f"teacher: run directory {text!r} has no teacher.pt{extra}")
        return pt, str(p.resolve())
    if p.is_file():
        return p, str(p.resolve())
    raise ValueError(f"teacher: {text!r} does not exist (give a run directory, a .pt file or manifest:<name>)")


def load_teacher(source: str | os.PathLike, device: str | torch.device | None = None):
    """Load a ``ToyTeacher`` from a run directory, a ``.pt`` file or ``manifest:<name>`` (see
    ``resolve_teacher``), onto ``device`` (default: ``pick_device("auto")``), with its twin
    (``.twin``: a shipped teacher's twin entry or a run's twin.pt; None when it has none)."""
    from dmdcore.toy import ToyTeacher
    from dmdcore.twins import twin_path

    path, canonical = resolve_teacher(source)
    dev = pick_device(device if device is not None else "auto")
    teacher = ToyTeacher.load(path, device=dev)
    tp = twin_path(path, canonical, checkpoints_dir())
    teacher.twin = None if tp is None else ToyTeacher.load(tp, device=dev)  # the ΔE controls' T′
    return teacher


# ----------------------------------------------------------------------------- basin maps

@dataclass(frozen=True)
class BasinMaps:
    """Which mode each noise of a 2-D grid is sent to by the teacher and the student.

    xs, ys: (grid_n,) noise coordinates; teacher_modes, student_modes: (grid_n, grid_n) int64
    mode index at noise (xs[j], ys[i]) (student_modes None before the student phase);
    centers: (K, 2) mode centres used; agreement: fraction of grid points where both agree
    (None without a student); step: student step of the student used (None without one).
    """

    xs: np.ndarray
    ys: np.ndarray
    teacher_modes: np.ndarray
    student_modes: np.ndarray | None
    centers: np.ndarray
    agreement: float | None
    step: int | None


# ----------------------------------------------------------------------------- experiment

class Experiment:
    """data → teacher phase → student phase, evaluated on a fixed noise batch.

    cfg:      the complete ExperimentConfig (written to config.json).
    run_dir:  where to save the run (None: keep everything in memory).
    index:    a RunIndex to register the run in and keep up to date (None: no index).
    teacher:  a ToyTeacher, or a source for ``load_teacher`` (run dir / .pt / ``manifest:<name>``);
              when given, the teacher phase is skipped.
    device:   "auto" | "cpu" | "cuda" | torch.device | None (auto).
    phases:   which phases to run (default: both, or ("student",) when a teacher is given).
    kind:     config.json ``kind``; default "teacher" for a teacher-only run, else "experiment".
    teacher_source: recorded in config.json (default: the canonical form of ``teacher`` when it
              is a source string, None when trained here).
    twin:     the independent teacher T′ for the ΔE controls (dmdcore.verdict): a ToyTeacher, a
              ``.pt`` path, or None = the given teacher's own twin when it has one (shipped
              teachers; a run's twin.pt), else the twin trained in the teacher phase when
              ``cfg.teacher.twin``; False = none (controls absent).
    overwrite: reuse a ``run_dir`` that already holds a run.
    async_eval: compute the evaluation metrics and write them on an evaluation worker thread
              while training goes on (default); False computes them inside ``step()``.

    Raises ValueError for a bad config, an unknown teacher source, a teacher whose dimension or
    data config does not match ``cfg.data``, or a run_dir that already holds a run.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        *,
        run_dir: str | os.PathLike | None = None,
        index: RunIndex | None = None,
        teacher: Any = None,
        device: str | torch.device | None = None,
        phases: Sequence[str] | None = None,
        kind: str | None = None,
        teacher_source: str | None = None,
        overwrite: bool = False,
        async_eval: bool = True,
        twin: Any = None,
    ):
        if not isinstance(cfg, ExperimentConfig):
            raise ValueError(f"cfg: expected an ExperimentConfig, got {type(cfg).__name__}")
        cfg.validate()
        if 0 < cfg.eval.bootstrap < 10:
            raise ValueError(f"EvalConfig.bootstrap: {cfg.eval.bootstrap} not in {{0}} ∪ [10, 100000]")
        if cfg.eval.n > cfg.data.n_samples:
            raise ValueError(f"EvalConfig.n: {cfg.eval.n} not in [2, DataConfig.n_samples={cfg.data.n_samples}]")
        self.cfg = cfg
        self.device = pick_device(device if device is not None else "auto")
        self._lock = threading.RLock()
        self._pub_lock = threading.Lock()  # guards _published (training thread and evaluation worker)
        self._eval_pool = ThreadPoolExecutor(1, thread_name_prefix="dmd-eval") if async_eval else None
        self._eval_pending: list[Future] = []
        self._teacher_grid: tuple | None = None  # (key, T(z) on the basin-map grid) of self.teacher

        # Teacher given (object or source) → distillation only.
        self.teacher = None
        if teacher is not None:
            if isinstance(teacher, (str, os.PathLike)):
                _, canonical = resolve_teacher(teacher)
                teacher_source = teacher_source if teacher_source is not None else canonical
                teacher = load_teacher(teacher, device=self.device)
            if twin is None:
                twin = getattr(teacher, "twin", None)
            self.teacher = teacher
            self.teacher.denoiser.to(self.device)
        self._teacher_given = self.teacher is not None
        if isinstance(twin, (str, os.PathLike)):
            from dmdcore.twins import load_twin

            twin = load_twin(twin, device=self.device)
        self.twin = twin if twin is not None and twin is not False else None
        self._train_twin = twin is None and not self._teacher_given and cfg.teacher.twin

        # Data, fixed evaluation noise and data subsample.
        self.dataset = make_dataset(cfg.data)
        d = self.dataset.dim
        if self._teacher_given:
            if self.teacher.dim != d:
                raise ValueError(f"teacher: dimension {self.teacher.dim} != data dimension {d} ({cfg.data.dataset})")
            tdata = self.teacher.data_config
            if tdata is not None and tdata.to_dict() != cfg.data.to_dict():
                raise ValueError(
                    "cfg.data: does not match the data the teacher was trained on "
                    f"({tdata.to_dict()}); use the teacher's data config"
                )
        if self.twin is not None:
            if self.twin.dim != d:
                raise ValueError(f"twin: dimension {self.twin.dim} != data dimension {d}")
            self.twin.denoiser.to(self.device)
        g = torch.Generator().manual_seed(cfg.eval.seed)
        self.z = torch.randn(cfg.eval.n, d, generator=g, dtype=torch.float32)
        self.eval_labels = None
        if cfg.teacher.conditional:
            if self.dataset.labels is None or self.dataset.n_classes < 1:
                raise ValueError(f"TeacherConfig.conditional: True needs a labelled data set; {cfg.data.dataset!r} has no labels")
            self.eval_labels = torch.randint(0, self.dataset.n_classes, (cfg.eval.n,), generator=g)
        rng = np.random.default_rng(cfg.eval.seed)
        n_rows = self.dataset.x.shape[0]
        sub = rng.choice(n_rows, size=cfg.eval.n, replace=cfg.eval.n > n_rows)
        self.data_eval = self.dataset.x[torch.from_numpy(sub)].numpy().astype(np.float32)
        # a second data sample of the same n (other rows where there are enough) for the data floor
        rest = np.setdiff1d(np.arange(n_rows), sub)
        sub2 = rng.choice(rest, size=cfg.eval.n, replace=False) if rest.size >= cfg.eval.n else \
            rng.choice(n_rows, size=cfg.eval.n, replace=True)
        self._data_floor_sample = self.dataset.x[torch.from_numpy(sub2)].numpy().astype(np.float32)
        self._data_floor: float | None | bool = False  # computed at the first evaluation

        # σ_data of the preconditioning: the given teacher's, else what the teacher trainer will use
        self.sigma_data = run_sigma_data(cfg, self.dataset.x, self.teacher if self._teacher_given else None)

        # Phases.
        self.phases: tuple[str, ...] = ()
        self._set_phases_unchecked(phases if phases is not None else PHASES)
        self.kind = kind if kind is not None else ("teacher" if self.phases == ("teacher",) else "experiment")

        # Progress state.
        self._started = False
        self._phase_idx = 0
        self.phase_step = 0
        self.step_count = 0
        self._metrics: list[dict] = []  # metrics.csv rows (deterministic numbers only)
        self._timing: list[dict] = []   # timing.csv rows: {"step", "phase", "wall_s"} per evaluation
        self._loss_acc: dict[str, list[float]] = {}
        self._active_s = 0.0
        self._teacher_trainer = None
        self._twin_trainer = None
        self._controls = None        # dmdcore.verdict.CopyControls of the student phase
        self.twin_samples: np.ndarray | None = None
        self._dmd = None
        self.teacher_samples: np.ndarray | None = None
        self._student_samples: np.ndarray | None = None
        self._history: list[tuple[int, np.ndarray]] = []
        self._basin_history: dict[int, np.ndarray] = {}  # student step -> basin map (2-D data)
        self._modes = None
        self.per_step: list[dict] = []  # few-step students: ΔE per sampling step (per_step.csv)
        self._centers: np.ndarray | None = None
        self._eta_teacher: float | None = None
        self._finalized = False
        self._memo_probe = None                 # ablations.MemorizationProbe (False: no held-out draw)
        self._memo_student = None               # (teacher samples, their memorization score)
        self._teacher_quality = None            # (teacher samples, W2^2(T(z), data))
        self._stopped_at: dict[str, int] = {}   # phase -> step where the plateau criterion ended it
        self.stop_reasons: dict[str, str] = {}  # phase -> "converged" | "cap" (status.json "stop")
        self.status = "running"
        self.message = ""
        self._published: dict = {}

        # Run directory and index.
        self.teacher_source = teacher_source
        self.rundir = None
        self.index = index
        if run_dir is not None:
            self.rundir = RunDir.create(
                run_dir, kind=self.kind, experiment=cfg.to_dict(), teacher_source=teacher_source, overwrite=overwrite,
                extra={"precond": {"sigma_data": self.sigma_data}},
            )
            if self._teacher_given:
                self._save_teacher(self.teacher)
            if self.twin is not None:
                self._save_teacher(self.twin, role="twin")
            if index is not None:
                index.register(self.rundir, kind=self.kind, status="running")
        self._publish()

    # ------------------------------------------------------------------ protocol
    @property
    def total_steps(self) -> int:
        """Training steps of all phases to run (teacher steps + generator steps)."""
        return sum(self._phase_len(p) for p in self.phases)

    @property
    def done(self) -> bool:
        return self._phase_idx >= len(self.phases)

    @property
    def phase(self) -> str | None:
        """The current phase ("teacher" | "student"), None when done."""
        return None if self.done else self.phases[self._phase_idx]

    @property
    def run_dir(self) -> Path | None:
        return None if self.rundir is None else self.rundir.path

    # Results of the evaluations: reading one waits for the evaluations already requested.
    @property
    def metrics(self) -> list[dict]:
        self.wait_evaluations()
        return self._metrics

    @property
    def timing(self) -> list[dict]:
        self.wait_evaluations()
        return self._timing

    @property
    def history(self) -> list[tuple[int, np.ndarray]]:
        self.wait_evaluations()
        return self._history

    @property
    def modes(self):
        self.wait_evaluations()
        return self._modes

    @property
    def student_samples(self) -> np.ndarray | None:
        self.wait_evaluations()
        return self._student_samples

    def _wait_quietly(self) -> Exception | None:
        try:
            self.wait_evaluations()
        except Exception as exc:  # noqa: BLE001 - returned to the caller
            return exc
        return None

    def wait_evaluations(self, *, raise_errors: bool = True) -> None:
        """Block until every requested evaluation has been computed and written. An error raised
        by one (e.g. an OT solver failure) is raised here, once (``raise_errors=False``: only
        waited for)."""
        error = None
        while self._eval_pending:
            fut = self._eval_pending.pop(0)
            try:
                fut.result()
            except Exception as exc:  # noqa: BLE001 - re-raised below
                error = error or exc
        if error is not None and raise_errors:
            raise error

    def set_phases(self, phases: Sequence[str]) -> None:
        """Choose the phases before the first step. With a given teacher, "teacher" is dropped
        (it is already trained); ValueError when nothing is left or the names are wrong."""
        with self._lock:
            if self._started:
                raise ValueError("phases: cannot change the phases after the first step")
            self._set_phases_unchecked(phases)
            self._publish()

    def _set_phases_unchecked(self, phases: Sequence[str]) -> None:
        phases = tuple(phases)
        if not phases or any(p not in PHASES for p in phases) or len(set(phases)) != len(phases):
            raise ValueError(f"phases: {phases!r} must be a non-empty subset of {PHASES}")
        phases = tuple(p for p in PHASES if p in phases)
        if self._teacher_given:
            phases = tuple(p for p in phases if p != "teacher")
            if not phases:
                raise ValueError("phases: ('teacher',) with a given teacher leaves nothing to do")
        self.phases = phases

    def _phase_len(self, phase: str) -> int:
        if phase in self._stopped_at:  # ended early by the plateau criterion
            return self._stopped_at[phase]
        return self.cfg.teacher.steps if phase == "teacher" else self.cfg.distill.steps

    def step(self) -> dict:
        """One training step of the current phase (evaluating when due). Returns the trainer's
        step dict plus ``phase``, ``phase_step``, ``step`` (both phases) and ``evaluated``.

        Raises ValueError when already done; ``dmdcore.distill.DivergenceError`` on a non-finite
        loss (weights stay at the last good state; checkpoints at the last evaluation)."""
        # timed from before the lock: a wait for another thread holding it (e.g. a page drawing
        # basin maps) is time this step lost, and timing.csv's throughput must show it
        t0 = time.perf_counter()
        with self._lock:
            if self.done:
                raise ValueError("step: the experiment is already done")
            try:
                if not self._started:
                    self._started = True
                    self._begin_phase()
                phase = self.phase
                trainer = self._teacher_trainer if phase == "teacher" else self._dmd
                out = dict(trainer.step())
                if phase == "teacher" and self._twin_trainer is not None:
                    self._twin_trainer.step()  # the independent twin trains in the same job
                self.phase_step += 1
                self.step_count += 1
                for k in (_LOSS_KEYS_TEACHER if phase == "teacher" else _LOSS_KEYS_STUDENT):
                    if out.get(k) is not None:
                        self._loss_acc.setdefault(k, []).append(float(out[k]))
                end = self.phase_step >= self._phase_len(phase)
                evaluated = end or self.phase_step % self.cfg.eval.every == 0
                if evaluated:
                    self._evaluate()
                    end = self._plateau_stop(phase, end)
                if end:
                    self._end_phase()
            finally:
                self._active_s += time.perf_counter() - t0
            out.update(phase=phase, phase_step=self.phase_step, step=self.step_count, evaluated=evaluated)
            self._publish()
            return out

    def view(self) -> dict:
        """State published for the job snapshot (references to arrays that are never mutated)."""
        with self._pub_lock:
            return dict(self._published)

    def run(self, callback: Callable[[dict], None] | None = None) -> dict:
        """Step to the end synchronously, then finalize. ``callback(step_dict)`` after each step.

        Returns the last metrics row ({} if none). A DivergenceError ends the run as "diverged"
        (returned, not raised); KeyboardInterrupt finalizes "stopped" and re-raises; any other
        exception finalizes "failed" and re-raises."""
        from dmdcore.distill import DivergenceError

        try:
            while not self.done:
                out = self.step()
                if callback is not None:
                    callback(out)
            self.wait_evaluations()  # an evaluation that failed after the last step fails the run
        except DivergenceError as exc:
            self.finalize("diverged", f"diverged: {exc}")
            return dict(self.metrics[-1]) if self.metrics else {}
        except KeyboardInterrupt:
            self.finalize("stopped", f"interrupted at step {self.step_count}")
            raise
        except Exception as exc:
            self.finalize("failed", f"{type(exc).__name__}: {exc}")
            raise
        self.finalize("finished", f"finished at step {self.step_count}")
        return dict(self.metrics[-1]) if self.metrics else {}

    def finalize(self, status: str, message: str = "") -> None:
        """End the run once: "finished" (nothing more to save), "stopped" (evaluate and save the
        current weights), "diverged"/"failed" (keep the checkpoints of the last evaluation).
        Writes status.json and the index row. Later calls are ignored."""
        from dmdcore.runs import STATUSES

        if status not in STATUSES or status == "running":
            raise ValueError(f"status: {status!r} not in {tuple(s for s in STATUSES if s != 'running')}")
        with self._lock:
            if self._finalized:
                return
            self._finalized = True
            eval_error = self._wait_quietly()
            if status == "stopped" and self._started and not self.done and self.phase_step > 0:
                last = self._metrics[-1] if self._metrics else None
                if last is None or last["step"] != self.phase_step or last["phase"] != self.phase:
                    from dmdcore.distill import DivergenceError

                    try:
                        self._evaluate()
                    except DivergenceError as exc:
                        status, message = "diverged", f"diverged: {exc}"
                    eval_error = eval_error or self._wait_quietly()
            if eval_error is not None and status in ("finished", "stopped"):
                status, message = "failed", f"evaluation failed: {type(eval_error).__name__}: {eval_error}"
            if self._eval_pool is not None:
                self._eval_pool.shutdown(wait=True)
            if status in ("failed", "abandoned") and self.rundir is not None:
                kept = [p.name for p in (self.rundir.checkpoint_path(r) for r in ("teacher", "student"))
                        if p.is_file()]
                if kept:
                    message = f"{message}; last good checkpoint kept: {', '.join(kept)}"
            self.status, self.message = status, message
            errors = []
            # best effort: on a full disk status.json or the index row may not be writable; the
            # other still is, and the lock is released either way
            try:
                if self.rundir is not None:
                    try:
                        self.rundir.write_status(status, message, step=self.step_count, extra=self._stop_extra())
                    except OSError as exc:
                        errors.append(exc)
                if self.index is not None and self.rundir is not None:
                    last = self._metrics[-1] if self._metrics else {}
                    try:
                        self.index.update(
                            self.rundir, status=status, message=message, step=self.step_count,
                            delta_e=last.get("delta_e"), w2=last.get("w2"), summary=last,
                        )
                    except OSError as exc:
                        errors.append(exc)
            finally:
                if self.rundir is not None:
                    self.rundir.release()
            self._publish()
            if errors and status == "finished":
                raise errors[0]

    # ------------------------------------------------------------------ phases
    def _begin_phase(self) -> None:
        phase = self.phase
        self.phase_step = 0
        self._loss_acc = {}
        if phase == "teacher":
            from dmdcore.teachers.training import make_teacher_trainer

            conditional = self.cfg.teacher.conditional
            x, labels = self.dataset.x, self.dataset.labels if conditional else None
            rows = (None, None)
            if self._train_twin and self.cfg.teacher.twin_data == "disjoint":
                from dmdcore.twins import split_halves

                rows = split_halves(x.shape[0], self.cfg.teacher.seed)  # teacher and twin share no point

            def trainer(cfg: Any, idx: Any) -> Any:
                sel = slice(None) if idx is None else torch.as_tensor(idx)
                return make_teacher_trainer(
                    cfg, x[sel], labels=None if labels is None else labels[sel], device=self.device,
                    label_dim=self.dataset.n_classes if conditional else None, data_config=self.cfg.data,
                )

            self._teacher_trainer = trainer(self.cfg.teacher, rows[0])
            if self._train_twin:
                from dmdcore.twins import twin_config

                self._twin_trainer = trainer(twin_config(self.cfg.teacher), rows[1])
        else:
            self._begin_student()

    def _begin_student(self) -> None:
        from dmdcore.students import make_student, needs_data

        teacher = self.teacher
        if teacher is None:
            raise ValueError("phases: the student phase needs a teacher (train one first or pass teacher=)")
        z = self.z.to(self.device)
        labels = None if self.eval_labels is None else self.eval_labels.to(self.device)
        self.teacher_samples = self._np(teacher.sample(z, self.cfg.sampler, labels=labels))
        self._eta_teacher = self._safe(pairing.transport_inefficiency, self.z.numpy(), self.teacher_samples)
        if self.dataset.centers is not None:
            self._centers = self.dataset.centers.numpy().astype(np.float64)
        else:
            k = self.dataset.n_classes if self.dataset.n_classes >= 2 else 8
            k = min(k, self.cfg.eval.n)
            mt = pairing.mode_transition(self.teacher_samples, self.teacher_samples, n_modes=k, seed=self.cfg.eval.seed)
            self._centers = mt.centers
        self._begin_controls(z, labels)
        reg_pairs = None
        dc = self.cfg.distill
        if dc.regression:
            # DMD regression pairs (z_k, T(z_k)) from the teacher's deterministic ODE, own seed.
            g = torch.Generator().manual_seed(dc.seed + 1)
            zr = torch.randn(dc.n_reg_pairs, teacher.dim, generator=g, dtype=torch.float32).to(self.device)
            lr = None
            if self.eval_labels is not None:
                lr = torch.randint(0, self.dataset.n_classes, (dc.n_reg_pairs,), generator=g).to(self.device)
            reg_pairs = (zr, teacher.sample(zr, self.cfg.sampler, labels=lr), lr)
        data_sampler = None
        if dc.gan or needs_data(dc.method):
            # DMD2 GAN head: real samples for the discriminator, own seed
            labels = self.dataset.labels if teacher.label_dim > 0 else None
            data_sampler = make_sampler(
                self.dataset.x.to(self.device), None if labels is None else labels.to(self.device), seed=dc.seed + 3
            )
        # the student method's trainer (dmdcore.students; "dmd" is DMDTrainer, as always)
        self._dmd = make_student(
            teacher.denoiser, self.cfg, sample_shape=(teacher.dim,), sigma_data=teacher.sigma_data,
            label_dim=teacher.label_dim, reg_pairs=reg_pairs, data_sampler=data_sampler, device=self.device,
        )
        self._evaluate()  # student step 0

    def _begin_controls(self, z: torch.Tensor, labels: torch.Tensor | None) -> None:
        """T′(z) of the twin (here, with the teacher's samples); the OT-heavy teacher-side controls
        of the copy verdict are computed once by the first student evaluation (_copy_controls)."""
        if self.twin is not None:
            self.twin_samples = self._np(self.twin.sample(z, self.cfg.sampler, labels=labels))
        # T(z′) on an independent noise batch of the same n (own seed): the sampling floor
        # W₂²(T(z), T(z′)) that a student matching T's distribution with its own pairing reaches
        g = torch.Generator().manual_seed(self.cfg.eval.seed + 0x1D3)
        z_ind = torch.randn(z.shape, generator=g, dtype=torch.float32).to(self.device)
        self.teacher_indep_samples = self._np(self.teacher.sample(z_ind, self.cfg.sampler, labels=labels))
        self._controls = None
        self._controls_due = True

    def _copy_controls(self):
        """dmdcore.verdict.CopyControls of this student phase (evaluation worker; once per run)."""
        if getattr(self, "_controls_due", False):
            from dmdcore.verdict import copy_controls

            self._controls_due = False
            try:
                self._controls = copy_controls(self.teacher_samples, twin=self.twin_samples,
                                               seed=self.cfg.eval.seed, centers=self._centers,
                                               indep=self.teacher_indep_samples)
            except ValueError:
                self._controls = None  # a zero-spread teacher: ΔE is undefined, cells stay empty
        return self._controls

    def _end_phase(self) -> None:
        if self.phase == "teacher":
            self.teacher = self._current_teacher()
            self._teacher_trainer = None
            if self._twin_trainer is not None:
                self.twin = self._twin_trainer.teacher()
                self.twin.data_config = self.cfg.data
                self.teacher.twin = self.twin
                self._twin_trainer = None
                self._save_teacher(self.twin, role="twin")
        self._phase_idx += 1
        if not self.done:
            self._begin_phase()

    def _current_teacher(self):
        t = self._teacher_trainer.teacher()
        t.data_config = self.cfg.data
        return t

    # ------------------------------------------------------------------ evaluation
    @staticmethod
    def _np(x: torch.Tensor) -> np.ndarray:
        a = x.detach().to("cpu", torch.float32).numpy()
        a.setflags(write=False)
        return a

    @staticmethod
    def _safe(fn, *args, **kw) -> float | None:
        """A metric that is undefined for these samples (e.g. zero spread) is left empty."""
        try:
            return float(fn(*args, **kw))
        except ValueError:
            return None

    def _check_finite(self, what: str, x: np.ndarray) -> None:
        """Non-finite samples mean the weights diverged: stop before anything is saved."""
        if not np.isfinite(x).all():
            from dmdcore.distill import DivergenceError

            raise DivergenceError(f"{what} not finite at {self.phase} step {self.phase_step}; last good checkpoint kept")

    def _loss_means(self) -> dict:
        out = {k: float(np.mean(v)) for k, v in self._loss_acc.items() if v}
        self._loss_acc = {}
        return out

    def _evaluate(self) -> None:
        """Evaluate the current weights: the samples are drawn here, on the training thread (a
        divergence raises before anything is saved); the metrics are computed and written by the
        evaluation worker (or here when ``async_eval=False``)."""
        ev = self._eval_snapshot()
        if self._eval_pool is None:
            self._evaluate_snapshot(ev)
            return
        # errors of finished evaluations surface here, on the training thread
        while self._eval_pending and self._eval_pending[0].done():
            self._eval_pending.pop(0).result()
        while len(self._eval_pending) >= _EVAL_PENDING_MAX:  # the worker is behind: wait for it
            self._eval_pending.pop(0).result()
        self._eval_pending.append(self._eval_pool.submit(self._evaluate_snapshot, ev))

    def _eval_snapshot(self) -> _EvalSnapshot:
        phase = self.phase
        row: dict = {"step": self.phase_step, "phase": phase}
        row.update(self._loss_means())
        zeval = self.z.to(self.device)
        labels = None if self.eval_labels is None else self.eval_labels.to(self.device)
        teacher, modules, grid, step_samples = None, (), None, ()
        if phase == "teacher":
            teacher = self._current_teacher()  # a copy of the EMA weights
            samples = self._np(teacher.sample(zeval, self.cfg.sampler, labels=labels))
            self._check_finite("teacher samples T(z)", samples)
            self.teacher_samples = samples
        else:
            samples = self._np(self._dmd.student(zeval, labels))
            self._check_finite("student samples S(z)", samples)
            if self.cfg.distill.gan:  # needs the trainer as it is now: measured here, not on the worker
                from dmdcore.ablations import gan_dm_grad_ratio

                row["gan_dm_ratio"] = gan_dm_grad_ratio(self._dmd, seed=self.cfg.eval.seed)
            if self.rundir is not None:
                modules = tuple((role, copy.deepcopy(m)) for role, m in
                                (("student", self._dmd.generator), ("fake", self._dmd.fake)))
            if self.dataset.dim == 2:  # one forward pass over the 64 x 64 grid
                zg, gl = self._noise_grid(BASIN_GRID_N, BASIN_EXTENT)
                grid = self._np(self._dmd.student(zg, gl))
            if len(getattr(self._dmd, "student_levels", ())) >= 2:
                step_samples = tuple(self._np(x) for x in self._dmd.per_step_samples(zeval, labels))
        return _EvalSnapshot(phase=phase, step=self.phase_step, step_count=self.step_count, row=row,
                             samples=samples, wall_s=self._active_s, teacher=teacher, modules=modules,
                             grid_samples=grid, step_samples=step_samples)

    def _evaluate_snapshot(self, ev: _EvalSnapshot) -> None:
        """The metrics of one evaluation snapshot, then metrics.csv, timing.csv, checkpoints,
        samples.npz, status and index (evaluation worker, in evaluation order)."""
        phase = ev.phase
        cfg = self.cfg
        row = dict(ev.row)
        if phase == "teacher":
            t = ev.samples
            # W₂²(T(z), data) and η(T) = E‖T(z) − z‖² / W₂²(z, T(z)) − 1 (pairing.md)
            row["w2_data"] = self._safe(pairing.wasserstein2_squared, t, self.data_eval)
            row["eta_teacher"] = self._safe(pairing.transport_inefficiency, self.z.numpy(), t)
            self._save_teacher(ev.teacher)
        else:
            s = ev.samples
            t = self.teacher_samples
            # ΔE = (E_pair − E_OT) / (E_ind − E_OT) with a bootstrap CI, n, d, the twin and
            # reference controls, validity and the copy verdict (dmdcore.verdict, pairing.md)
            rep = None
            controls = self._copy_controls()
            if controls is not None:
                from dmdcore.verdict import copy_report, report_row

                rep = copy_report(s, t, seed=cfg.eval.seed, bootstrap=cfg.eval.bootstrap, controls=controls)
                row.update(report_row(rep))
            if rep is not None and rep.delta_e is not None and rep.exact:
                row["w2"] = rep.e_ot  # W₂²(S, T) is the E_OT of the same exact matching
            else:
                row["w2"] = self._safe(pairing.wasserstein2_squared, s, t)
            row["w2_data"] = self._safe(pairing.wasserstein2_squared, s, self.data_eval)
            if controls is not None:
                row["w2_floor"] = controls.w2_floor  # what W₂²(S, T) can reach (plateau criterion)
            row["eta_teacher"] = self._eta_teacher
            row["eta_student"] = self._safe(pairing.transport_inefficiency, self.z.numpy(), s)
            modes = pairing.mode_transition(s, t, centers=self._centers)
            row["copy_rate"] = modes.copy_rate
            row["copy_k"] = int(self._centers.shape[0])
            row["retrieval"] = pairing.pair_retrieval_accuracy(s, t)
            self._evaluate_per_step(ev.step, ev.step_samples, t)
            basin = None
            if ev.grid_samples is not None:
                basin = _nearest(ev.grid_samples, self._centers).reshape(BASIN_GRID_N, BASIN_GRID_N).astype(np.int16)
            with self._pub_lock:
                self._student_samples, self._modes = s, modes
                self._add_history(ev.step, s)
                if basin is not None:
                    self._basin_history[ev.step] = basin
                    kept = {h[0] for h in self._history}
                    self._basin_history = {k: v for k, v in self._basin_history.items() if k in kept}
            for role, module in ev.modules:
                self._save_student_module(role, module, ev.step)
        self._ablation_columns(phase, row, ev.samples if phase == "teacher" else self.teacher_samples)
        row["converged"] = self._converged_flag(phase, row)
        # Wall-clock time goes to timing.csv, not metrics.csv (which must be reproducible to the byte).
        timing = {"step": ev.step, "phase": phase, "wall_s": ev.wall_s}
        with self._pub_lock:
            self._metrics.append(row)
            self._timing.append(timing)
        if self.rundir is not None:
            self.rundir.append_metrics(row)
            self.rundir.append_timing(timing)
            self._save_samples()
            self.rundir.write_status("running", f"{phase} step {ev.step}", step=ev.step_count)
            if self.index is not None:
                self.index.update(self.rundir, step=ev.step_count, delta_e=row.get("delta_e"), w2=row.get("w2"),
                                  summary=row)
        self._publish()

    def _evaluate_per_step(self, step: int, step_samples: tuple, t: np.ndarray) -> None:
        """Few-step students: ΔE (no CI) and W₂² to data of each sampling step's clean estimate
        against T(z) -> ``self.per_step`` rows and the run's per_step.csv (metrics.csv is unchanged)."""
        if len(step_samples) < 2:
            return
        levels = self._dmd.student_levels
        for k, a in enumerate(step_samples):
            row = {"step": step, "sampling_step": k + 1, "sigma_in": float(levels[k]),
                   "delta_e": None, "w2_data": self._safe(pairing.wasserstein2_squared, a, self.data_eval)}
            try:
                row["delta_e"] = pairing.pairing_inefficiency(a, t, seed=self.cfg.eval.seed).delta_e
            except ValueError:
                pass
            self.per_step.append(row)
        if self.rundir is not None:
            from dmdcore.runs import atomic_write_text

            cols = ("step", "sampling_step", "sigma_in", "delta_e", "w2_data")
            lines = [",".join(cols)] + [",".join("" if r[c] is None else repr(r[c]) for c in cols) for r in self.per_step]
            atomic_write_text(self.rundir.path / "per_step.csv", "\n".join(lines) + "\n")

    # ------------------------------------------------------------------ ablation power
    def _ablation_columns(self, phase: str, row: dict, tsamples: np.ndarray | None) -> None:
        """memorization of the teacher's samples ``tsamples`` (teacher rows: this evaluation's
        T(z); student rows repeat the fixed teacher's score), dmdcore.ablations, and
        w2_teacher_data = W2^2(T(z), data) of the fixed teacher in student rows. (gan_dm_ratio is
        measured on the training thread, in _eval_snapshot, where the trainer is.)"""
        from dmdcore import ablations

        if self._memo_probe is None:
            held = ablations.heldout_data(self.cfg.data, max(1000, self.cfg.eval.n), seed=self.cfg.eval.seed)
            self._memo_probe = False if held is None else ablations.MemorizationProbe(self.dataset.x.numpy(), held)
        if self._memo_probe is not False and tsamples is not None:
            if self._memo_student is None or self._memo_student[0] is not tsamples:
                self._memo_student = (tsamples, self._memo_probe.score(tsamples).fraction)
            row["memorization"] = self._memo_student[1]
        if self._data_floor is False:  # once per run: W₂² between two independent data samples
            self._data_floor = self._safe(pairing.wasserstein2_squared, self._data_floor_sample, self.data_eval)
        row["w2_data_floor"] = self._data_floor
        if phase == "student" and tsamples is not None:
            # the teacher's quality beside every student row (sweep cells load their teacher)
            if self._teacher_quality is None or self._teacher_quality[0] is not tsamples:
                self._teacher_quality = (tsamples, self._safe(pairing.wasserstein2_squared, tsamples, self.data_eval))
            row["w2_teacher_data"] = self._teacher_quality[1]

    # ------------------------------------------------------------------ convergence
    def _converged_flag(self, phase: str, row: dict) -> int:
        """1 when this evaluation satisfies the plateau criterion (dmdcore.convergence), else 0."""
        from dmdcore import convergence

        rows = [r for r in self._metrics if r.get("phase") == phase] + [row]  # worker thread: no wait
        if phase == "teacher":
            floor = row.get("w2_data_floor")  # W₂² between two data samples of this n (data floor)
        else:
            floor = self.cfg.eval.twin_floor_w2
            if floor is None and self._controls is not None:
                # the run's own floor: max(W₂²(T′,T), W₂²(T(z),T(z′))) (dmdcore.verdict.CopyControls.w2_floor)
                floor = self._controls.w2_floor
        crit = convergence.Plateau.from_eval(self.cfg.eval)
        return int(convergence.phase_converged(phase, rows, crit, floor_w2=floor))

    def _plateau_stop(self, phase: str, end: bool) -> bool:
        """After an evaluation: whether the phase ends now (at its cap, or converged when
        ``EvalConfig.stop_when_converged`` covers it); records the reason for status.json."""
        from dmdcore import convergence

        if end:
            self.stop_reasons[phase] = "cap"
            return True
        if not convergence.should_stop(self.cfg.eval.stop_when_converged, phase):
            return False
        row = self.metrics[-1]  # waits for the evaluation worker: stopping needs this row's flag
        if row.get("converged") == 1:
            self._stopped_at[phase] = self.phase_step
            self.stop_reasons[phase] = "converged"
            return True
        return False

    def _stop_extra(self) -> dict:
        """status.json fields: per phase how it ended ("converged" | "cap") and whether the last
        evaluation of the last phase run was converged."""
        last = self._metrics[-1] if self._metrics else {}
        return {"stop": dict(self.stop_reasons), "converged": bool(last.get("converged") == 1)}

    def _add_history(self, step: int, s: np.ndarray) -> None:
        self._history.append((step, s))
        cap = max(2, min(_HISTORY_MAX, _HISTORY_MAX_BYTES // max(1, s.nbytes)))
        if len(self._history) > cap:
            # thin the older half of the history by two, keep the first and the newest entries
            keep = self._history[:-1][::2] + [self._history[-1]]
            self._history = keep

    # ------------------------------------------------------------------ saving
    def _save_teacher(self, teacher, role: str = "teacher") -> None:
        if self.rundir is None:
            return
        from dmdcore.toy import save_toy_model

        save_toy_model(
            self.rundir.checkpoint_path(role), teacher.denoiser, role="teacher",
            teacher_config=teacher.teacher_config, data_config=teacher.data_config or self.cfg.data,
            step=teacher.step,
        )

    def _save_student_module(self, role: str, module, step: int) -> None:
        from dmdcore.toy import save_toy_model

        tc = self.teacher.teacher_config if self.teacher is not None else self.cfg.teacher
        save_toy_model(
            self.rundir.checkpoint_path(role), module, role=role, teacher_config=tc,
            data_config=self.cfg.data, step=step, distill_config=self.cfg.distill,
        )

    def _save_samples(self) -> None:
        with self._pub_lock:
            history, student = list(self._history), self._student_samples
            basins = sorted(self._basin_history.items())
        hs = np.array([h[0] for h in history], dtype=np.int64)
        hx = np.stack([h[1] for h in history]) if history else None
        self.rundir.save_samples(
            z=self.z.numpy(), teacher=self.teacher_samples, student=student,
            history_steps=hs if history else None, history_student=hx,
            basin_steps=np.array([b[0] for b in basins], np.int64) if basins else None,
            basin_student=np.stack([b[1] for b in basins]) if basins else None,
        )

    def _publish(self) -> None:
        with self._pub_lock:
            self._publish_unlocked()

    def _publish_unlocked(self) -> None:
        self._published = {
            "phase": self.phase,
            "step": self.step_count,
            "phase_step": self.phase_step,
            "total_steps": self.total_steps,
            "metrics": tuple(self._metrics),
            "z": self.z.numpy(),
            "teacher_samples": self.teacher_samples,
            "student_samples": self._student_samples,
            "history": tuple(self._history),
            "modes": self._modes,
            "run_dir": None if self.rundir is None else str(self.rundir.path),
            "status": self.status,
        }

    # ------------------------------------------------------------------ basin maps
    def _noise_grid(self, grid_n: int, extent: float):
        """The basin-map noise grid (z at (xs[j], xs[i]) in row i*grid_n + j) and its labels."""
        xs = np.linspace(-extent, extent, grid_n, dtype=np.float32)
        gx, gy = np.meshgrid(xs, xs)  # gx[i, j] = xs[j], gy[i, j] = xs[i]
        zg = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], axis=1)).to(self.device)
        labels = None
        if self.eval_labels is not None:
            labels = torch.zeros(zg.shape[0], dtype=torch.long, device=self.device)
        return zg, labels

    def basin_steps(self) -> list[int]:
        """Student steps whose basin map was kept (2-D data; evaluations finished so far)."""
        with self._pub_lock:
            return sorted(self._basin_history)

    def basin_maps(self, grid_n: int = 64, extent: float = 3.0, step: int | None = None) -> BasinMaps:
        """Teacher and student mode maps over a grid_n × grid_n noise grid on [-extent, extent]²
        (2-D data only). Modes are the nearest of the centres used for the copy rate. ``step``:
        the student's map kept at that evaluation (student step; the default grid only) instead
        of the current weights'. Raises ValueError for non-2-D data, bad arguments, a step
        without a kept map, or before a teacher exists."""
        if isinstance(grid_n, bool) or not isinstance(grid_n, int) or not 2 <= grid_n <= 512:
            raise ValueError(f"grid_n: {grid_n!r} not in integers [2, 512]")
        if not (isinstance(extent, (int, float)) and 0 < float(extent) <= 10):
            raise ValueError(f"extent: {extent!r} not in (0, 10]")
        if self.dataset.dim != 2:
            raise ValueError(f"basin_maps: data dimension {self.dataset.dim} not in {{2}} (2-D data only)")
        kept = None
        if step is not None:
            if (grid_n, float(extent)) != (BASIN_GRID_N, BASIN_EXTENT):
                raise ValueError(f"step: kept basin maps use grid_n={BASIN_GRID_N}, extent={BASIN_EXTENT}")
            with self._pub_lock:
                kept = self._basin_history.get(step)
            if kept is None:
                raise ValueError(f"step: no basin map kept at student step {step}")
        xs = np.linspace(-extent, extent, grid_n, dtype=np.float32)
        zg, labels = self._noise_grid(grid_n, float(extent))
        with self._lock:
            teacher = self.teacher
            fixed = teacher is not None  # loaded, or the finished teacher phase's EMA copy
            if teacher is None and self._teacher_trainer is not None:
                teacher = self._current_teacher()
            if teacher is None:
                raise ValueError("basin_maps: no teacher yet (start the teacher phase first)")
            # A fixed teacher's grid map is computed once per grid; the student's side is one
            # forward pass, cheap enough to redraw at every evaluation.
            tkey = (grid_n, float(extent), id(teacher))
            cached = self._teacher_grid if fixed else None
            t = cached[1] if cached is not None and cached[0] == tkey else None
            if t is None and not fixed:  # a teacher still training: sample it under the lock
                t = teacher.sample(zg, self.cfg.sampler, labels=labels).detach().cpu().numpy().astype(np.float64)
        if t is None:
            # a fixed teacher is never written to: sample its grid without holding up training
            t = teacher.sample(zg, self.cfg.sampler, labels=labels).detach().cpu().numpy().astype(np.float64)
        with self._lock:
            if fixed and teacher is self.teacher:
                self._teacher_grid = (tkey, t)
            centers = self._centers
            if centers is None:
                if self.dataset.centers is not None:
                    centers = self.dataset.centers.numpy().astype(np.float64)
                else:
                    k = self.dataset.n_classes if self.dataset.n_classes >= 2 else 8
                    centers = pairing.mode_transition(t, t, n_modes=k, seed=self.cfg.eval.seed).centers

            def assign(x: np.ndarray) -> np.ndarray:
                return _nearest(x, centers).reshape(grid_n, grid_n).astype(np.int64)

            tm = assign(t)
            sm, agreement = None, None
            if kept is not None:
                sm = kept.astype(np.int64)
                agreement = float((sm == tm).mean())
            elif self._dmd is not None:
                s = self._dmd.student(zg, labels).detach().cpu().numpy().astype(np.float64)
                sm = assign(s)
                agreement = float((sm == tm).mean())
                step = self.phase_step
        return BasinMaps(xs=xs, ys=xs.copy(), teacher_modes=tm, student_modes=sm, centers=np.asarray(centers),
                         agreement=agreement, step=step)


def run_sigma_data(cfg: ExperimentConfig, x: torch.Tensor, teacher=None) -> float:
    """The σ_data a run uses (recorded in config.json as ``precond.sigma_data``): a given
    teacher's own, else ``cfg.teacher.sigma_data``, else the std of the training data over all
    coordinates (``TeacherTrainer``'s estimate)."""
    if teacher is not None:
        return float(teacher.sigma_data)
    if cfg.teacher.sigma_data is not None:
        return float(cfg.teacher.sigma_data)
    return float(x.double().std())


def _nearest(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest centre of each row of x."""
    d2 = ((np.asarray(x, np.float64)[:, None, :] - np.asarray(centers, np.float64)[None, :, :]) ** 2).sum(-1)
    return d2.argmin(axis=1)


def teacher_experiment_config(teacher, **overrides: Any) -> ExperimentConfig:
    """An ExperimentConfig whose data and teacher sections are the teacher's own (so a student
    can be distilled from a loaded teacher); ``overrides`` replace whole sections
    (``distill=``, ``eval=``, ``sampler=``, ``name=``)."""
    data = teacher.data_config if teacher.data_config is not None else DataConfig()
    tc = teacher.teacher_config if isinstance(teacher.teacher_config, TeacherConfig) else TeacherConfig()
    return ExperimentConfig(data=data, teacher=tc, **overrides)
