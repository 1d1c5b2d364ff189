"""Background training jobs: a ``TrainingJob`` runs any stepper on a daemon thread with
start / pause / resume / stop / step-N and a thread-safe ``snapshot()``; a ``JobManager`` caps how
many run at once (jobs beyond the cap wait in state ``queued``).

The stepper protocol (``dmdcore.pipeline.Experiment`` implements all of it; only ``step`` is
required, so a bare ``TeacherTrainer``/``DMDTrainer`` works too)::

    step() -> dict                  one training step; numeric values are logged in train_log
    done: bool                      (optional) True when there is nothing left to do
    total_steps: int                (optional) for progress and ETA
    set_phases(phases)              (optional) called once before the first step
    view() -> dict                  (optional) published state: phase, step, total_steps, metrics,
                                    z, teacher_samples, student_samples, history, modes, run_dir
    finalize(status, message)       (optional) called once on the job thread when it ends
                                    (status: finished | stopped | diverged | failed)
    wait_evaluations()              (optional) finish work done off the stepper's thread; called
                                    before the job reads as paused

A step that raises ``dmdcore.distill.DivergenceError`` — or returns a non-finite ``loss*`` value —
ends the job in state ``diverged``; any other exception ends it in ``failed`` with the message.

Threads: the job thread never changes process-wide torch settings (``torch.set_num_threads`` is
process-wide, so jobs leave it alone); CPU use is bounded by the manager's concurrency cap.
``snapshot()`` returns copies, except the ``history`` arrays, which are published read-only and
never mutated afterwards, so they are shared instead of copied (they can be large).
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import threading
import time
import traceback
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

JOB_STATES = ("queued", "running", "paused", "finished", "stopped", "diverged", "failed", "abandoned")
TERMINAL_STATES = frozenset({"finished", "stopped", "diverged", "failed", "abandoned"})
# A job with an ``owner`` (a browser session) that has not called ``heartbeat()`` for this many
# seconds is stopped by its manager and ends ``abandoned`` (files kept, slot freed); env
# DMD_SESSION_TIMEOUT_S overrides it.
SESSION_TIMEOUT_S = 60.0
_VALID_PHASES = ("teacher", "student")
_TRAIN_LOG_CAP = 1000  # per-step losses kept for live plots (thinned by 2 when full)


def _divergence_types() -> tuple[type[BaseException], ...]:
    """(dmdcore.distill.DivergenceError,); empty only while dmdcore.distill does not exist (the job
    wrapper is generic). An ImportError inside distill is not swallowed."""
    if importlib.util.find_spec("dmdcore.distill") is None:
        return ()
    from dmdcore.distill import DivergenceError

    return (DivergenceError,)


@dataclass
class Snapshot:
    """A consistent copy of a job's state at one instant (safe to keep and render)."""

    job_id: str
    state: str                          # queued|running|paused|finished|stopped|diverged|failed
    phase: str | None                   # teacher|student (None before the stepper says)
    step: int                           # global step (teacher steps + student steps)
    total_steps: int | None
    steps_per_s: float | None
    eta_s: float | None
    message: str
    metrics: list[dict] = field(default_factory=list)    # metrics.csv rows so far
    train_log: list[dict] = field(default_factory=list)  # recent per-step losses (thinned)
    z: np.ndarray | None = None                           # (n, d) fixed evaluation noise
    teacher_samples: np.ndarray | None = None             # (n, d) T(z)
    student_samples: np.ndarray | None = None             # (n, d) S(z), latest evaluation
    history: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (step, S(z)) per eval
    modes: Any = None                                     # pairing.ModeTransition or None
    run_dir: str | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES


def _copy_array(a: Any) -> np.ndarray | None:
    if a is None:
        return None
    return np.array(a, dtype=np.float32, copy=True)


class _TrainLog:
    """Per-step log, thinned by keeping every ``stride``-th step and doubling ``stride`` (and
    dropping every other kept entry) whenever ``cap`` is reached, so it spans the whole run."""

    def __init__(self, cap: int = _TRAIN_LOG_CAP):
        self.cap = cap
        self.stride = 1
        self.rows: list[dict] = []
        self._count = 0

    def add(self, row: dict) -> None:
        if self._count % self.stride == 0:
            self.rows.append(row)
            if len(self.rows) >= self.cap:
                self.rows = self.rows[::2]
                self.stride *= 2
        self._count += 1


class TrainingJob:
    """Run ``experiment.step()`` on a daemon thread.

    experiment: the stepper (see module docstring).
    phases:     passed to ``experiment.set_phases`` when it has one; subset of
                ("teacher", "student").
    manager:    a ``JobManager`` whose concurrency cap applies (None: no cap).
    total_steps: overrides ``experiment.total_steps``; a stepper without ``done`` finishes after
                this many steps (None: runs until stopped).
    job_id:     a name; default ``job-<8 hex>`` (the manager gives ``job-<n>``).

    Before ``start()`` a job is ``paused`` at step 0 ("not started"). Every public method is
    thread-safe and returns immediately.
    """

    def __init__(
        self,
        experiment: Any,
        *,
        phases: Sequence[str] = ("teacher", "student"),
        manager: "JobManager | None" = None,
        total_steps: int | None = None,
        job_id: str | None = None,
        owner: str | None = None,
    ):
        if not callable(getattr(experiment, "step", None)):
            raise ValueError("experiment: must have a step() method")
        phases = tuple(phases)
        if not phases or any(p not in _VALID_PHASES for p in phases) or len(set(phases)) != len(phases):
            raise ValueError(f"phases: {phases!r} must be a non-empty subset of {_VALID_PHASES}")
        if total_steps is not None and (not isinstance(total_steps, int) or total_steps < 0):
            raise ValueError(f"total_steps: {total_steps!r} must be an int >= 0 or None")
        self.experiment = experiment
        self.phases = phases
        self.manager = manager
        if job_id is None:
            job_id = manager._new_id() if manager is not None else f"job-{uuid.uuid4().hex[:8]}"
        self.job_id = str(job_id)
        self._total_override = total_steps
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._state = "paused"
        self._message = "not started"
        self._paused = False        # a pause was requested (or step_n budget runs out)
        self._budget = 0            # steps left to run while paused (step_n)
        self._stop_req = False
        self._steps_done = 0
        self._view: dict = {}
        self._log = _TrainLog()
        self._times: deque[tuple[float, int]] = deque(maxlen=50)
        self._rate: float | None = None
        self.error: str | None = None  # traceback text when the job failed
        self.owner = None if owner is None else str(owner)  # session that must keep heart-beating
        self._beat = time.monotonic()
        self.slot_since: float | None = None  # wall time when the job got its manager slot
        self._abandon_msg: str | None = None
        if manager is not None:
            manager._adopt(self)

    def __repr__(self) -> str:
        return f"TrainingJob({self.job_id!r}, state={self.state!r})"

    # ------------------------------------------------------------------ control
    def start(self) -> "TrainingJob":
        """Start the thread (queued first if the manager's cap is reached). Idempotent."""
        with self._cond:
            if self._state in TERMINAL_STATES:
                return self
            launch = self._thread is None and self._prepare_launch_locked()
            if not launch and self._paused:
                self._paused, self._budget = False, 0
                self._mark_running_locked()
                self._cond.notify_all()
        if launch:
            self._launch()
        return self

    def pause(self) -> None:
        """Pause after the current step (no-op when finished)."""
        with self._cond:
            if self._state in TERMINAL_STATES:
                return
            self._paused, self._budget = True, 0
            if self._thread is None:
                self._message = "not started"
            self._cond.notify_all()

    def resume(self) -> None:
        """Continue a paused job (starts it if it was never started)."""
        self.start()

    def stop(self) -> None:
        """Ask the job to end after the current step; it finalises with status ``stopped``. A
        queued job leaves the queue; a never-started job becomes ``stopped`` at once."""
        with self._cond:
            if self._state in TERMINAL_STATES:
                return
            self._stop_req = True
            if self._thread is None:
                self._state, self._message = "stopped", "stopped before start"
            self._cond.notify_all()
        if self.manager is not None:
            self.manager._wake()

    def heartbeat(self) -> None:
        """The owning session is alive (see JobManager.reap)."""
        with self._cond:
            self._beat = time.monotonic()

    def seconds_since_heartbeat(self) -> float:
        with self._cond:
            return time.monotonic() - self._beat

    def abandon(self, reason: str) -> None:
        """Stop the job because its owner went away; it ends ``abandoned`` (after finalize, so its
        run directory keeps every file) and frees its slot."""
        with self._cond:
            if self._state in TERMINAL_STATES:
                return
            self._abandon_msg = str(reason)
            self._stop_req = True
            if self._thread is None:
                self._state, self._message = "abandoned", self._abandon_msg
            self._cond.notify_all()
        if self.manager is not None:
            self.manager._wake()

    def step_n(self, n: int) -> None:
        """Run exactly ``n`` more steps, then pause (starts the job if needed)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n: {n!r} must be an int >= 1")
        with self._cond:
            if self._state in TERMINAL_STATES:
                return
            self._paused = True
            self._budget += int(n)
            launch = self._thread is None and self._prepare_launch_locked()
            if not launch:
                self._mark_running_locked()
            self._cond.notify_all()
        if launch:
            self._launch()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has ended (or ``timeout`` seconds). Returns True if it ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not (self._final_done or (self._thread is None and self._state in TERMINAL_STATES)):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def wait_paused(self, timeout: float | None = None) -> bool:
        """Block until the job is paused or ended (e.g. after ``step_n``). True if it is."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not (self._state in TERMINAL_STATES or (self._state == "paused" and self._budget == 0 and self._paused)):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    @property
    def state(self) -> str:
        with self._cond:
            return self._state

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    # ------------------------------------------------------------------ snapshot
    def snapshot(self) -> Snapshot:
        """A copy of the current state (metrics rows, train log, samples, history)."""
        with self._cond:
            view = self._view
            total = self._total_locked()
            step = int(view.get("step", self._steps_done))
            rate = self._rate
            eta = None
            if rate and rate > 0 and total is not None and self._state not in TERMINAL_STATES:
                eta = max(0, total - step) / rate
            return Snapshot(
                job_id=self.job_id,
                state=self._state,
                phase=view.get("phase"),
                step=step,
                total_steps=total,
                steps_per_s=rate,
                eta_s=eta,
                message=self._message,
                metrics=[dict(r) for r in view.get("metrics", ())],
                train_log=[dict(r) for r in self._log.rows],
                z=_copy_array(view.get("z")),
                teacher_samples=_copy_array(view.get("teacher_samples")),
                student_samples=_copy_array(view.get("student_samples")),
                history=list(view.get("history", ())),
                modes=view.get("modes"),
                run_dir=None if view.get("run_dir") is None else str(view.get("run_dir")),
            )

    # ------------------------------------------------------------------ internals
    _final_done = False

    def _total_locked(self) -> int | None:
        if self._total_override is not None:
            return self._total_override
        t = self._view.get("total_steps", getattr(self.experiment, "total_steps", None))
        return None if t is None else int(t)

    def _prepare_launch_locked(self) -> bool:
        self._thread = threading.Thread(target=self._run, name=f"dmdcore-{self.job_id}", daemon=True)
        if self.manager is not None:
            self._state, self._message = "queued", "queued"
        else:
            self._state, self._message = "running", "starting"
        return True

    def _launch(self) -> None:
        """Join the manager's queue in start order (caller's thread, no job lock held), then
        start the thread."""
        if self.manager is not None:
            self.manager._enqueue(self)
        self._thread.start()

    def _stepper_done(self) -> bool:
        done = getattr(self.experiment, "done", None)
        if done is not None:
            return bool(done() if callable(done) else done)
        return self._total_override is not None and self._steps_done >= self._total_override

    def _publish(self, out: dict | None) -> None:
        """Record one step's output (called on the job thread, outside the stepper)."""
        view_fn = getattr(self.experiment, "view", None)
        view = view_fn() if callable(view_fn) else {}
        now = time.monotonic()
        with self._cond:
            if out is not None:
                self._steps_done += 1
                row = {k: (float(v) if isinstance(v, (float, np.floating)) else v)
                       for k, v in out.items() if isinstance(v, (int, float, str, np.integer, np.floating))}
                row.setdefault("step", view.get("step", self._steps_done))
                self._log.add(row)
                self._times.append((now, self._steps_done))
                if len(self._times) >= 2:
                    (t0, s0), (t1, s1) = self._times[0], self._times[-1]
                    if t1 > t0:
                        self._rate = (s1 - s0) / (t1 - t0)
            self._view = dict(view)
            self._cond.notify_all()

    @staticmethod
    def _nonfinite_loss(out: dict) -> str | None:
        for k, v in out.items():
            if k.startswith("loss") and isinstance(v, (float, int, np.floating, np.integer)) and not math.isfinite(float(v)):
                return f"non-finite {k}={float(v)}"
        return None

    def _mark_running_locked(self) -> None:
        # A paused, started job that was given work reads as running at once (not only when its
        # thread wakes), so a caller that polls right after resume()/step_n() sees it live.
        if self._thread is not None and self._state == "paused":
            self._state, self._message = "running", "running"

    def _wait_turn(self) -> bool:
        """Block while paused (without step budget). False when a stop was requested."""
        settled = False
        with self._cond:
            while True:
                if self._stop_req:
                    return False
                if self._paused and self._budget == 0:
                    if self._state != "paused" and not settled:
                        # before reading as paused, let the stepper finish the evaluations it has
                        # requested (computed off its thread), so a paused job's files and
                        # snapshot show its current step; errors fail the job
                        self._cond.release()
                        try:
                            self._settle()
                        finally:
                            self._cond.acquire()
                        settled = True
                        continue
                    if self._state != "paused":
                        self._state, self._message = "paused", f"paused at step {self._steps_done}"
                        self._cond.notify_all()
                    self._cond.wait()
                    continue
                if self._budget > 0:
                    self._budget -= 1
                if self._state != "running":
                    self._state, self._message = "running", "running"
                    self._cond.notify_all()
                return True

    def _settle(self) -> None:
        wait = getattr(self.experiment, "wait_evaluations", None)
        if callable(wait):
            wait()
            self._publish(None)

    def _run(self) -> None:
        final, message = "failed", ""
        acquired = False
        try:
            if self.manager is not None:
                acquired = self.manager._acquire(self)
                if not acquired:
                    final, message = "stopped", "stopped while queued"
                    if self._abandon_msg:
                        final, message = "abandoned", f"{self._abandon_msg} (while queued)"
                    return
            with self._cond:
                if self._state == "queued":
                    self._state, self._message = "running", "running"
                    self._cond.notify_all()
            set_phases = getattr(self.experiment, "set_phases", None)
            if callable(set_phases):
                set_phases(self.phases)
            self._publish(None)
            divergence = _divergence_types()
            while True:
                if self._stepper_done():
                    final, message = "finished", f"finished at step {self._steps_done}"
                    break
                if not self._wait_turn():
                    final, message = "stopped", f"stopped by user at step {self._steps_done}"
                    if self._abandon_msg:
                        final, message = "abandoned", f"{self._abandon_msg} at step {self._steps_done}"
                    break
                try:
                    out = self.experiment.step()
                except divergence as exc:
                    final, message = "diverged", f"diverged: {exc}"
                    break
                out = out if isinstance(out, dict) else {}
                bad = self._nonfinite_loss(out)
                self._publish(out)
                if bad is not None:
                    final, message = "diverged", f"diverged: {bad} at step {self._steps_done}"
                    break
        except Exception as exc:  # recorded as the job's failure, never hidden
            final, message = "failed", f"{type(exc).__name__}: {exc}"
            self.error = traceback.format_exc()
        finally:
            self._finish(final, message, acquired)

    def _finish(self, final: str, message: str, acquired: bool) -> None:
        finalize = getattr(self.experiment, "finalize", None)
        try:
            if callable(finalize):
                finalize(final, message)
        except Exception as exc:  # a failure to save is a failure of the job: report it
            final, message = "failed", f"{message}; finalize failed: {type(exc).__name__}: {exc}"
            self.error = traceback.format_exc()
        try:
            view_fn = getattr(self.experiment, "view", None)
            view = view_fn() if callable(view_fn) else None
        except Exception as exc:
            view = None
            message = f"{message}; view failed: {type(exc).__name__}: {exc}"
        with self._cond:
            if view is not None:
                self._view = dict(view)
            self._state, self._message = final, message
        if self.manager is not None and acquired:
            self.manager._release(self)
        with self._cond:
            self._final_done = True
            self._cond.notify_all()


class JobManager:
    """Holds jobs and caps how many run at once (``max_concurrent``, default 2). A started job
    beyond the cap waits in state ``queued`` with a message such as
    "queued: 1 job ahead (2 running, cap 2)". A job keeps its slot while paused. The app keeps one
    manager in ``st.cache_resource``; dmdcore keeps no global one."""

    def __init__(self, max_concurrent: int = 2, *, session_timeout_s: float | None = None):
        self._cond = threading.Condition()
        self._max = self._check_cap(max_concurrent)
        self.session_timeout_s = self._check_timeout(session_timeout_s)
        self._reaper: threading.Thread | None = None
        self._jobs: dict[str, TrainingJob] = {}
        self._queue: deque[TrainingJob] = deque()
        self._running: set[str] = set()
        self._ids = itertools.count(1)

    @staticmethod
    def _check_cap(n: Any) -> int:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"max_concurrent: {n!r} must be an int >= 1")
        return int(n)

    @staticmethod
    def _check_timeout(t: Any) -> float:
        if t is None:
            import os

            raw = os.environ.get("DMD_SESSION_TIMEOUT_S", "")
            try:
                t = float(raw) if raw.strip() else SESSION_TIMEOUT_S
            except ValueError:
                raise ValueError(f"DMD_SESSION_TIMEOUT_S: {raw!r} is not a number of seconds") from None
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"session_timeout_s: {t!r} must be a number of seconds > 0")
        return float(t)

    def reap(self) -> list[TrainingJob]:
        """Abandon every live job whose owner has not heart-beaten for ``session_timeout_s``
        (running, paused or queued alike). Returns the jobs it abandoned. Called every
        ``session_timeout_s / 4`` (at most 5 s) by a daemon thread once a job has an owner."""
        gone = []
        for job in self.jobs():
            if job.owner is None or job.done:
                continue
            idle = job.seconds_since_heartbeat()
            if idle > self.session_timeout_s:
                job.abandon(f"abandoned: session {job.owner[:8]} gone (no heartbeat for {idle:.0f} s, "
                            f"limit {self.session_timeout_s:.0f} s)")
                gone.append(job)
        return gone

    def heartbeat(self, owner: str) -> None:
        """Heart-beat every job of ``owner``."""
        for job in self.jobs():
            if job.owner == owner:
                job.heartbeat()

    def slots(self) -> list[dict]:
        """Who holds the running slots: ``[{"job_id", "owner", "state", "since"}]`` (since: wall
        time the slot was taken), oldest first."""
        with self._cond:
            held = [self._jobs[j] for j in self._running if j in self._jobs]
        out = [{"job_id": j.job_id, "owner": j.owner, "state": j.state, "since": j.slot_since} for j in held]
        return sorted(out, key=lambda d: d["since"] or 0.0)

    def _reap_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait(min(5.0, self.session_timeout_s / 4))
            self.reap()

    @classmethod
    def from_env(cls, environ: dict | None = None, *, default: int = 2) -> "JobManager":
        """A manager whose cap is env ``DMD_MAX_JOBS`` (default ``default``). Raises ValueError
        naming DMD_MAX_JOBS when it is not an int >= 1."""
        import os

        env = os.environ if environ is None else environ
        raw = env.get("DMD_MAX_JOBS")
        if raw is None or raw == "":
            return cls(default)
        try:
            n = int(raw)
        except ValueError as exc:
            raise ValueError(f"DMD_MAX_JOBS: {raw!r} must be an int >= 1") from exc
        if n < 1:
            raise ValueError(f"DMD_MAX_JOBS: {raw!r} must be an int >= 1")
        return cls(n)

    @property
    def max_concurrent(self) -> int:
        with self._cond:
            return self._max

    @max_concurrent.setter
    def max_concurrent(self, n: int) -> None:
        n = self._check_cap(n)
        with self._cond:
            self._max = n
            self._cond.notify_all()
            self._update_queue_messages_locked()

    def submit(
        self, experiment: Any, *, phases: Sequence[str] = ("teacher", "student"), start: bool = True,
        total_steps: int | None = None,
    ) -> TrainingJob:
        """Wrap ``experiment`` in a job held by this manager (started unless ``start=False``)."""
        job = TrainingJob(experiment, phases=phases, manager=self, total_steps=total_steps)
        if start:
            job.start()
        return job

    def jobs(self) -> list[TrainingJob]:
        with self._cond:
            return list(self._jobs.values())

    def get(self, job_id: str) -> TrainingJob:
        with self._cond:
            try:
                return self._jobs[job_id]
            except KeyError:
                raise KeyError(f"job {job_id!r} is not held by this manager") from None

    def remove(self, job_id: str) -> None:
        """Forget a job that has ended. Raises ValueError if it is still live."""
        job = self.get(job_id)
        if not job.done:
            raise ValueError(f"job_id: {job_id!r} is still {job.state}; stop it first")
        with self._cond:
            self._jobs.pop(job_id, None)

    def running_count(self) -> int:
        with self._cond:
            return len(self._running)

    def queued_count(self) -> int:
        with self._cond:
            return len(self._queue)

    def stop_all(self) -> None:
        for job in self.jobs():
            job.stop()

    def wait_all(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for job in self.jobs():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not job.wait(remaining):
                return False
        return True

    # -- called by jobs (lock order: manager lock, then job lock; never the reverse)
    def _new_id(self) -> str:
        with self._cond:
            return f"job-{next(self._ids)}"

    def _adopt(self, job: TrainingJob) -> None:
        with self._cond:
            if job.job_id in self._jobs:
                raise ValueError(f"job_id: {job.job_id!r} already used in this manager")
            self._jobs[job.job_id] = job
            if job.owner is not None and self._reaper is None:
                self._reaper = threading.Thread(target=self._reap_loop, name="dmd-job-reaper", daemon=True)
                self._reaper.start()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _holders_locked(self) -> str:
        parts = []
        for jid in sorted(self._running, key=lambda j: self._jobs[j].slot_since or 0.0 if j in self._jobs else 0.0):
            j = self._jobs.get(jid)
            if j is None:
                continue
            since = time.strftime("%H:%M:%S", time.localtime(j.slot_since)) if j.slot_since else "?"
            who = f"session {j.owner[:8]}, " if j.owner else ""
            parts.append(f"{jid} ({who}{j._state} since {since})")
        return "; held by " + ", ".join(parts) if parts else ""

    def _update_queue_messages_locked(self) -> None:
        holders = self._holders_locked()
        for pos, job in enumerate(self._queue):
            ahead = f"{pos} job{'s' if pos != 1 else ''} ahead"
            msg = f"queued: {ahead} ({len(self._running)} running, cap {self._max}{holders})"
            with job._cond:
                if job._state == "queued":
                    job._message = msg
                    job._cond.notify_all()

    def _enqueue(self, job: TrainingJob) -> None:
        with self._cond:
            self._queue.append(job)
            self._update_queue_messages_locked()

    def _acquire(self, job: TrainingJob) -> bool:
        """Block until ``job`` may run. False if it was stopped while waiting."""
        with self._cond:
            try:
                while True:
                    with job._cond:
                        stopped = job._stop_req
                    if stopped:
                        return False
                    if self._queue[0] is job and len(self._running) < self._max:
                        self._running.add(job.job_id)
                        job.slot_since = time.time()
                        return True
                    self._update_queue_messages_locked()
                    self._cond.wait()
            finally:
                self._queue.remove(job)
                self._update_queue_messages_locked()
                self._cond.notify_all()

    def _release(self, job: TrainingJob) -> None:
        with self._cond:
            self._running.discard(job.job_id)
            self._update_queue_messages_locked()
            self._cond.notify_all()
