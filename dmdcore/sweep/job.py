"""A sweep as a background job for the Experiments page: ``run_sweep`` on a daemon thread with
``start() / stop() / snapshot() / wait()``, optionally queued behind a server-wide slot."""

from __future__ import annotations

import copy
import os
import threading
from dataclasses import dataclass

from dmdcore.sweep.backends import check_backend
from dmdcore.sweep.run import SweepProgress, SweepResult, run_sweep
from dmdcore.sweep.spec import expand, load_spec


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
                 device: str | None = "cpu", slots: threading.Semaphore | None = None, backend: str = "local",
                 address: str | None = None):
        """``slots``: an optional semaphore shared by every SweepJob of a server (each sweep's pool
        already uses every core): a started job stays ``queued`` until it holds a slot.
        ``backend`` / ``address``: where the jobs run (``run_sweep``); checked here."""
        self.spec = load_spec(spec)
        self._slots = slots
        self._message = ""
        expand(self.spec, quick=quick)
        self.out_dir = str(out_dir)
        check_backend(backend, address)
        self.backend, self.address = backend, address or None
        self._kw = dict(workers=workers, quick=quick, device=device, backend=backend, address=address or None)
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
