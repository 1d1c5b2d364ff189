"""Worker processes of the local backend: one thread per library pool, an orphan watchdog, the
``spawn`` process pool; and the thread limit of the serial baseline.

Cells run in ``spawn``-ed worker processes with one thread in every torch/BLAS/OpenMP pool each
(the workers are the parallelism; library pools on top of them would oversubscribe the cores).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import os
import threading
import time

from dmdcore.sweep.jobs import _JOB_RUNNING

# Library thread pools the worker initializer pins to one thread before they load.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


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


class _OrphanQuietStream:
    """A worker's stderr that goes silent once the sweep process is gone: the pool's queue
    readers then fail with EOFError tracebacks that no one asked for (the sweep was killed; the
    cells' own outcomes and status files carry every real error)."""

    def __init__(self, stream, parent: int):
        self._stream, self._parent = stream, parent

    def write(self, text):
        if os.getppid() != self._parent:
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _worker_init(parent: int | None = None) -> None:
    """Pool initializer: every thread pool of a worker process has one thread (workers are the
    parallelism; library pools on top of them would oversubscribe the cores). Sets the
    OMP/BLAS thread variables for libraries loaded later, loads the job libraries, then limits
    torch and (through threadpoolctl, when installed) every loaded BLAS/OpenMP pool to 1."""
    for var in THREAD_ENV:
        os.environ[var] = "1"
    import torch

    import sys

    from dmdcore.sweep import jobs

    # The sweep's pid comes from the sweep process itself (initargs): a worker that starts after
    # the sweep was killed would read init's pid from os.getppid() and wait for work forever.
    parent = os.getppid() if parent is None else int(parent)
    if os.getppid() != parent:
        os._exit(0)
    jobs._SWEEP_PARENT = parent  # every job checks it before it starts (jobs._parent_gone)
    sys.stderr = _OrphanQuietStream(sys.stderr, parent)
    torch.set_num_threads(1)
    _start_orphan_watchdog(parent=parent)
    _load_numeric_libraries()
    _library_thread_limit(1)  # applied now, kept for the worker's lifetime (never exited)


def _start_orphan_watchdog(poll_s: float = 1.0, grace_s: float = 60.0, parent: int | None = None) -> None:
    """Exit the worker when the sweep process is gone (killed: its pool cannot shut us down, and
    an idle worker would otherwise wait for work forever). A job in progress notices first and
    stops at its next step, saving its status; the watchdog waits for it (at most ``grace_s``)."""
    parent = os.getppid() if parent is None else parent

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
                                  initializer=_worker_init, initargs=(os.getpid(),))
