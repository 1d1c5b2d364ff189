"""File-system helpers of the run store: atomic writes that report a full disk as
``DiskFullError("disk full at PATH")`` and leave no temporary file, process identity (pid plus
start time), and exclusive directory claims (an ``O_EXCL`` ``.lock``) for run and sweep
directories. Re-exported by ``dmdcore.runs``; see docs/reliability.md."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import socket
import sqlite3
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

LOCK_FILE = ".lock"  # O_EXCL claim of a run or sweep directory: {"pid", "pid_start", "host", "since"}

# ----------------------------------------------------------------------------- atomic files

class DiskFullError(OSError):
    """No space left on the device while writing ``path`` (message: "disk full at PATH")."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(errno.ENOSPC, f"disk full at {os.fspath(path)}")
        self.path = os.fspath(path)

    def __str__(self) -> str:
        return f"disk full at {self.path}"


_FULL_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _nearly_full(path: str | os.PathLike | None) -> bool:
    if path is None:
        return False
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free < 1 << 20
    except OSError:
        return False


def is_disk_full(exc: BaseException, path: str | os.PathLike | None = None) -> bool:
    """True for ENOSPC/EDQUOT, SQLite's "database or disk is full", and an I/O error (SQLite's
    "disk I/O error" when its WAL cannot grow, torch's writer failures) while the device holding
    ``path`` has less than 1 MiB free."""
    if isinstance(exc, DiskFullError):
        return True
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    text = str(exc).lower()
    if "disk is full" in text or "no space left" in text:
        return True
    io_error = "i/o error" in text or "file write failed" in text or "inline_container" in text
    return io_error and _nearly_full(path)


@contextmanager
def disk_full_as_error(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise a disk-full failure inside the block as ``DiskFullError(path)``."""
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, RuntimeError, sqlite3.DatabaseError) as exc:
        if is_disk_full(exc, path):
            raise DiskFullError(path) from exc
        raise


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and ``os.replace`` it onto
    ``path`` (atomic on POSIX and Windows); on failure remove it. A full disk raises
    ``DiskFullError(path)`` and leaves no temporary file."""
    path = Path(path)
    tmp_path = None
    try:
        with disk_full_as_error(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            tmp_path = Path(tmp)
            os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; run files are meant to be shared/readable
            yield tmp_path
            with open(tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp_path, path)
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with _atomic_path(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (DiskFullError when the device is full)."""
    with _atomic_path(Path(path)) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (inf/nan allowed, as Python writes
    them, so configs with ``S_max=inf`` round-trip)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save(obj)`` to ``path`` atomically (the file is either the old or the new one).
    The object is serialised in memory first (toy checkpoints are small), so a full disk is a
    plain ENOSPC on write, reported as ``DiskFullError(path)``, never torch's writer error."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------- process identity

def _proc_start_token(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (Linux /proc), used to tell a live process
    from a later one that reused the pid; None where /proc is unavailable."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name; field 22 (starttime) is index 19 there.
    rest = raw[raw.rfind(")") + 2:].split()
    return rest[19] if len(rest) > 19 else None


def _proc_state(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2:].split()
    return rest[0] if rest else None


def pid_alive(pid: int | None, start_token: str | None = None) -> bool:
    """True when process ``pid`` exists on this host, is not a zombie and (if ``start_token`` is
    given and /proc is available) is the same process that recorded the token."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return False
    if _proc_state(pid) in ("Z", "X"):
        return False
    if start_token is not None:
        now = _proc_start_token(pid)
        if now is not None and now != start_token:
            return False
    return True


def this_process() -> dict:
    """``{"pid", "host", "pid_start"}`` of the calling process."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "pid_start": _proc_start_token(pid)}


def lock_owner(path: str | os.PathLike) -> dict | None:
    """The claim in ``path/.lock`` ({"pid", "pid_start", "host", "since"}), {} when unreadable,
    None when there is none."""
    try:
        data = json.loads((Path(path) / LOCK_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def claim_dir(path: str | os.PathLike, what: str = "run_dir") -> None:
    """Claim directory ``path`` (which must exist) for the calling process: create ``.lock`` with
    O_EXCL (atomic on every POSIX file system). A lock of a live process on this host refuses with
    ``RunBusyError`` naming it; a stale lock (its process is gone, or unreadable and older than
    60 s) is taken over. The calling process may re-claim its own lock. Used for run directories
    and sweep directories (``what`` names the field in the message)."""
    path = Path(path)
    me = this_process()
    body = json.dumps({**me, "since": time.time()}).encode()
    lock = path / LOCK_FILE
    for _ in range(3):
        try:
            with disk_full_as_error(lock):
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    os.write(fd, body)
                finally:
                    os.close(fd)
            return
        except FileExistsError:
            pass
        owner = lock_owner(path)
        if owner is None:
            continue  # released in between: try again
        if owner.get("pid") == me["pid"] and owner.get("pid_start") == me["pid_start"]:
            return
        pid = owner.get("pid") if isinstance(owner.get("pid"), int) else None
        if owner and owner.get("host") not in (None, me["host"]):
            alive = True  # cannot check a process on another host
        elif owner:
            alive = pid_alive(pid, owner.get("pid_start"))
        else:  # unreadable: a writer between O_EXCL and write, unless it is old
            try:
                alive = time.time() - lock.stat().st_mtime < 60
            except FileNotFoundError:
                continue
        if alive:
            since = owner.get("since")
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
            raise RunBusyError(f"{what}: {str(path)!r} is being written by process {owner.get('pid', '?')} "
                               f"on {owner.get('host', '?')} (since {when}); choose another directory or wait")
        stale = lock.with_name(f"{LOCK_FILE}.stale.{os.getpid()}.{time.monotonic_ns()}")
        try:
            os.replace(lock, stale)  # only one taker wins the stale file; the others retry O_EXCL
            stale.unlink()
        except FileNotFoundError:
            pass
    raise RunBusyError(f"{what}: {str(path)!r}: could not claim {LOCK_FILE} (another writer keeps taking it)")


def release_dir(path: str | os.PathLike) -> None:
    """Remove ``path/.lock`` if the calling process holds it (idempotent)."""
    owner = lock_owner(path)
    me = this_process()
    if owner and owner.get("pid") == me["pid"] and owner.get("pid_start") == me["pid_start"]:
        try:
            (Path(path) / LOCK_FILE).unlink()
        except FileNotFoundError:
            pass


class RunBusyError(ValueError):
    """Another live process holds the run (or sweep) directory's ``.lock``."""
