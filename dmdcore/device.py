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
