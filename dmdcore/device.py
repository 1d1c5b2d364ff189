"""Device selection in one place: CUDA when available, else CPU."""

from __future__ import annotations

import torch


def pick_device(preference: str | torch.device | None = "auto") -> torch.device:
    """Return the device to compute on.

    preference: "auto" (CUDA if available, else CPU), "cpu", "cuda", "cuda:N" or a torch.device.
    Raises ValueError for an unknown name or for CUDA requested on a machine without it.
    """
    if preference is None or preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(preference)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: unknown device {preference!r} (use 'auto', 'cpu' or 'cuda')") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {preference!r} requested but CUDA is not available on this machine")
    return dev


_ALLOCATOR_TUNED: bool | None = None


def tune_allocator() -> bool:
    """Keep freed tensor memory in the process instead of handing it back to the OS (glibc only).

    CPU training allocates and frees the same activation-sized blocks (hundreds of KB) every
    step. glibc serves blocks above its mmap threshold with fresh ``mmap`` pages and trims the
    heap top after frees, so each step pays page faults on memory it just released; on the
    2-core reference machine that is 10-20% of a toy training step. Raising the mmap threshold
    to 256 MiB and the trim threshold to 1 GiB (``mallopt``) makes steady-state steps reuse warm
    heap memory. The cost is that the process keeps more freed memory mapped: glibc applies the
    1 GiB trim threshold per malloc arena (and only to the top of each heap), so it is not a bound
    on the whole process; large blocks (> 256 MiB) still come from and go back to mmap.

    Idempotent; does nothing (returns False) off glibc or when ``DMD_MALLOC_TUNING=0``.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED is not None:
        return _ALLOCATOR_TUNED
    _ALLOCATOR_TUNED = False
    import os
    import sys

    if os.environ.get("DMD_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
        ok = bool(libc.mallopt(M_MMAP_THRESHOLD, 256 * 2**20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**30))
    except (OSError, AttributeError):  # not glibc (musl, ...)
        ok = False
    _ALLOCATOR_TUNED = ok
    return ok
