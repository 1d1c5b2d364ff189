"""Data sets: the 2-D suite, Gaussian mixtures in R^d, 2-D sets embedded in R^d, sklearn digits,
and user arrays (.csv / .npy) with validation.

Everything is float32 and seeded by an explicit ``torch.Generator`` built from ``DataConfig.seed``.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np
import torch

from .config import DATASETS_2D, MAX_DIM, DataConfig

MIN_USER_ROWS = 100


@dataclass(frozen=True)
class Dataset:
    """A data set.

    x: float32 tensor (n, d); labels: int64 tensor (n,) of classes 0..n_classes-1 or None;
    centers: float32 tensor (K, d) of the true mode centres (mixtures) or None; name: short name;
    n_classes: number of label classes (0 when labels is None).
    """

    x: torch.Tensor
    labels: torch.Tensor | None
    centers: torch.Tensor | None
    name: str
    n_classes: int = 0

    @property
    def dim(self) -> int:
        return int(self.x.shape[1])


# ----------------------------------------------------------------------------------------------
# 2-D suite. Each function returns (x (n,2) float32, labels (n,) int64 | None, centers | None).


def _randn(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(n, d, generator=g, dtype=torch.float32)


def _rand(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g, dtype=torch.float32)


def _gaussians_8(n, g, scale, spread):
    angles = torch.arange(8, dtype=torch.float32) * (2 * math.pi / 8)
    centers = scale * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    labels = torch.randint(0, 8, (n,), generator=g)
    return centers[labels] + spread * _randn(n, 2, g), labels, centers


def _gaussians_25(n, g, scale, spread):
    # 5x5 grid spanning [-scale, scale]^2
    ticks = torch.linspace(-scale, scale, 5)
    centers = torch.cartesian_prod(ticks, ticks).to(torch.float32)
    labels = torch.randint(0, 25, (n,), generator=g)
    return centers[labels] + spread * _randn(n, 2, g), labels, centers


def _moons(n, g, scale, spread):
    labels = torch.randint(0, 2, (n,), generator=g)
    t = math.pi * _rand(n, g)
    upper = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    lower = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
    x = torch.where(labels[:, None] == 0, upper, lower) - torch.tensor([0.5, 0.25])
    return 1.5 * x + 0.05 * _randn(n, 2, g), labels, None


def _rings(n, g, scale, spread):
    # three concentric rings of radii 0.5, 1.25, 2.0 with 0.04 radial noise
    radii = torch.tensor([0.5, 1.25, 2.0])
    labels = torch.randint(0, 3, (n,), generator=g)
    t = 2 * math.pi * _rand(n, g)
    r = radii[labels] + 0.04 * _randn(n, 1, g)[:, 0]
    return torch.stack([r * torch.cos(t), r * torch.sin(t)], dim=1), labels, None


def _swissroll(n, g, scale, spread):
    t = 1.5 * math.pi * (1 + 2 * _rand(n, g))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / 5.0
    return x + 0.05 * _randn(n, 2, g), None, None


def _checkerboard(n, g, scale, spread):
    # 8 filled cells of a 4x4 board on [-2, 2]^2 (the FFJORD checkerboard)
    x1 = 4 * _rand(n, g) - 2
    row = 2 * torch.randint(0, 2, (n,), generator=g).to(torch.float32)
    x2 = _rand(n, g) - row + torch.remainder(torch.floor(x1), 2)
    return torch.stack([x1, x2], dim=1), None, None


def _spirals(n, g, scale, spread):
    labels = torch.randint(0, 2, (n,), generator=g)
    t = torch.sqrt(_rand(n, g)) * 3 * math.pi
    r = t / (3 * math.pi) * 2.0
    sign = 1 - 2 * labels.to(torch.float32)
    x = sign[:, None] * torch.stack([r * torch.cos(t), r * torch.sin(t)], dim=1)
    return x + 0.05 * _randn(n, 2, g), labels, None


def _pinwheel(n, g, scale, spread):
    # 5 arms (Johnson et al. 2016): radial std 0.3, tangential std 0.05, rate 0.25
    k, radial, tangential, rate = 5, 0.3, 0.05, 0.25
    labels = torch.randint(0, k, (n,), generator=g)
    feats = _randn(n, 2, g) * torch.tensor([radial, tangential]) + torch.tensor([1.0, 0.0])
    angles = labels.to(torch.float32) * (2 * math.pi / k) + rate * torch.exp(feats[:, 0])
    c, s = torch.cos(angles), torch.sin(angles)
    rot = torch.stack([torch.stack([c, -s], dim=1), torch.stack([s, c], dim=1)], dim=1)  # (n,2,2)
    return 2.0 * torch.einsum("nij,nj->ni", rot, feats), labels, None


_SUITE: Mapping[str, tuple[Callable, int]] = MappingProxyType({
    "8gaussians": (_gaussians_8, 8),
    "25gaussians": (_gaussians_25, 25),
    "moons": (_moons, 2),
    "rings": (_rings, 3),
    "swissroll": (_swissroll, 0),
    "checkerboard": (_checkerboard, 0),
    "2spirals": (_spirals, 2),
    "pinwheel": (_pinwheel, 5),
})
assert set(_SUITE) == set(DATASETS_2D)


def sample_2d(name: str, n: int, generator: torch.Generator, *, mode_scale: float = 2.0, spread: float = 0.1):
    """Draw n points of a 2-D suite data set -> (x (n,2) float32, labels (n,) | None, centers | None).

    mode_scale/spread only affect the Gaussian sets (8gaussians: circle radius; 25gaussians: grid
    half-width; spread: per-coordinate std of a mode); the other sets have fixed shapes of
    overall radius about 2.
    """
    if name not in _SUITE:
        raise ValueError(f"dataset: {name!r} not in {{{', '.join(DATASETS_2D)}}}")
    fn, _ = _SUITE[name]
    x, labels, centers = fn(n, generator, float(mode_scale), float(spread))
    return x.contiguous(), labels, centers


# ----------------------------------------------------------------------------------------------
# High-dimensional data sets.


def mixture_means(n_modes: int, dim: int, mode_scale: float, generator: torch.Generator) -> torch.Tensor:
    """K mode means in R^d: random directions (Gaussian, normalised) at distance mode_scale from 0."""
    m = _randn(n_modes, dim, generator)
    return mode_scale * m / m.norm(dim=1, keepdim=True).clamp_min(1e-12)


def random_frame(dim: int, generator: torch.Generator, k: int = 2) -> torch.Tensor:
    """A random orthonormal frame Q (dim, k), Q^T Q = I_k (QR of a Gaussian matrix, sign-fixed)."""
    a = torch.randn(dim, k, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))[None, :]
    return q.to(torch.float32)


def _mixture(cfg: DataConfig, g: torch.Generator) -> Dataset:
    centers = mixture_means(cfg.n_modes, cfg.dim, cfg.mode_scale, g)
    if cfg.weights is None:
        w = torch.full((cfg.n_modes,), 1.0 / cfg.n_modes, dtype=torch.float64)
    else:
        w = torch.tensor(cfg.weights, dtype=torch.float64)
        w = w / w.sum()
    labels = torch.multinomial(w, cfg.n_samples, replacement=True, generator=g)
    x = centers[labels] + cfg.spread * _randn(cfg.n_samples, cfg.dim, g)
    return Dataset(x, labels, centers, f"mixture{cfg.n_modes}-d{cfg.dim}", cfg.n_modes)


def _embedded(cfg: DataConfig, g: torch.Generator) -> Dataset:
    x2, labels, centers2 = sample_2d(cfg.base, cfg.n_samples, g, mode_scale=cfg.mode_scale, spread=cfg.spread)
    q = random_frame(cfg.dim, g)  # (d, 2)
    x = x2 @ q.T
    if cfg.off_plane_noise > 0:
        # noise orthogonal to the plane: (I - Q Q^T) eps
        eps = _randn(cfg.n_samples, cfg.dim, g)
        x = x + cfg.off_plane_noise * (eps - (eps @ q) @ q.T)
    centers = centers2 @ q.T if centers2 is not None else None
    return Dataset(x.contiguous(), labels, centers, f"{cfg.base}-in-R{cfg.dim}", _SUITE[cfg.base][1] if labels is not None else 0)


def _digits(cfg: DataConfig, g: torch.Generator) -> Dataset:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    bunch = load_digits()
    x = torch.from_numpy(bunch.data.astype(np.float32)) / 8.0 - 1.0  # [0, 16] -> [-1, 1]
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    if cfg.n_samples < x.shape[0]:
        idx = torch.randperm(x.shape[0], generator=g)[: cfg.n_samples]
        x, labels = x[idx], labels[idx]
    return Dataset(x.contiguous(), labels, None, "digits", 10)


def _user(cfg: DataConfig, g: torch.Generator) -> Dataset:
    arr = load_user_array(cfg.path)
    if arr.shape[1] != cfg.dim:
        raise ValueError(f"DataConfig.dim: {cfg.dim} not in {{{arr.shape[1]}}} (the number of columns of {os.path.basename(str(cfg.path))})")
    x = torch.from_numpy(arr)
    if cfg.n_samples < x.shape[0]:
        idx = torch.randperm(x.shape[0], generator=g)[: cfg.n_samples]
        x = x[idx]
    return Dataset(x.contiguous(), None, None, os.path.basename(str(cfg.path)), 0)


def make_dataset(cfg: DataConfig) -> Dataset:
    """Build the data set described by ``cfg`` (deterministic in ``cfg.seed``)."""
    if not isinstance(cfg, DataConfig):
        raise ValueError(f"cfg: expected a DataConfig, got {type(cfg).__name__}")
    g = torch.Generator().manual_seed(cfg.seed)
    if cfg.dataset in _SUITE:
        x, labels, centers = sample_2d(cfg.dataset, cfg.n_samples, g, mode_scale=cfg.mode_scale, spread=cfg.spread)
        return Dataset(x, labels, centers, cfg.dataset, _SUITE[cfg.dataset][1])
    if cfg.dataset == "mixture":
        return _mixture(cfg, g)
    if cfg.dataset == "embedded":
        return _embedded(cfg, g)
    if cfg.dataset == "digits":
        return _digits(cfg, g)
    return _user(cfg, g)


def make_sampler(
    x: torch.Tensor, labels: torch.Tensor | None = None, *, seed: int = 0
) -> Callable[[int], tuple[torch.Tensor, torch.Tensor | None]]:
    """A seeded minibatch sampler over a fixed data set: ``sampler(n) -> (x_batch, labels_batch|None)``.

    Draws indices uniformly with replacement from its own ``torch.Generator`` (on x's device).
    Used as the real-data source of the DMD2 GAN head.
    """
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"x: expected a non-empty (n, ...) tensor, got shape {tuple(x.shape)}")
    if labels is not None and labels.shape[0] != x.shape[0]:
        raise ValueError(f"labels: length {labels.shape[0]} != number of rows {x.shape[0]}")
    gen = torch.Generator(device=x.device).manual_seed(seed)
    n_rows = x.shape[0]

    def sampler(n: int):
        idx = torch.randint(0, n_rows, (n,), generator=gen, device=x.device)
        return x[idx], (labels[idx] if labels is not None else None)

    return sampler


# ----------------------------------------------------------------------------------------------
# User arrays.


def _validate_array(arr: np.ndarray, filename: str) -> np.ndarray:
    if arr.ndim == 1:
        raise ValueError(f"{filename}: expected a 2-D array (n rows, d columns), got a 1-D array of length {arr.shape[0]}")
    if arr.ndim != 2:
        raise ValueError(f"{filename}: expected a 2-D array (n rows, d columns), got shape {arr.shape}")
    n, d = arr.shape
    if not (1 <= d <= MAX_DIM):
        raise ValueError(f"{filename}: {d} columns; the number of columns d must be in [1, {MAX_DIM}]")
    if n < MIN_USER_ROWS:
        raise ValueError(f"{filename}: {n} rows; at least {MIN_USER_ROWS} rows are required")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{filename}: array dtype {arr.dtype} is not numeric (need integers or floats)")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"{filename}: row {r + 1}, column {c + 1}: {float(arr[r, c])!r} is not finite ({int(bad.sum())} non-finite values in all)")
    if np.abs(arr).max() > 3.0e38:
        r, c = np.unravel_index(np.abs(arr).argmax(), arr.shape)
        raise ValueError(f"{filename}: row {r + 1}, column {c + 1}: {float(arr[r, c])!r} overflows float32")
    return arr.astype(np.float32)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _parse_csv(text: str, filename: str) -> np.ndarray:
    """Stream the rows of a CSV text into a float64 (n, d) array, refusing more than
    ``DMD_MAX_UPLOAD_ROWS`` rows or ``DMD_MAX_UPLOAD_VALUES`` values as soon as they are reached,
    oversized fields, and a parse running past ``DMD_PARSE_TIMEOUT_S`` (dmdcore.limits)."""
    from .limits import BudgetError, Deadline, budget

    max_rows, max_values = int(budget("DMD_MAX_UPLOAD_ROWS")), int(budget("DMD_MAX_UPLOAD_VALUES"))
    deadline = Deadline(filename)
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t ")
        delimiter = dialect.delimiter
    except csv.Error:
        delimiter = ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    chunks: list[np.ndarray] = []
    buf: list[list[float]] = []
    d = None
    first_line = None
    n_rows = 0
    line = 0
    try:
        for raw in reader:
            line += 1
            if line % 4096 == 0:
                deadline.check()
            row = [c.strip() for c in raw if c.strip() != ""] if delimiter == " " else [c.strip() for c in raw]
            if not any(c != "" for c in row):
                continue  # blank line
            if d is None:
                if first_line is None and not any(_is_number(c) for c in row):
                    first_line = 0  # a first row with no numeric cell at all is a header
                    continue
                d, first_line = len(row), line
                if d > MAX_DIM:
                    raise ValueError(f"{filename}: {d} columns; the number of columns d must be in [1, {MAX_DIM}]")
            if len(row) != d:
                raise ValueError(f"{filename}: row {line} has {len(row)} columns, expected {d} (as in row {first_line})")
            n_rows += 1
            if n_rows > max_rows or n_rows * d > max_values:
                raise BudgetError(f"{filename}: more than {min(max_rows, max_values // d):,} rows of {d} columns; "
                                  f"the upload limit is {max_rows:,} rows and {max_values:,} values "
                                  f"(DMD_MAX_UPLOAD_ROWS / DMD_MAX_UPLOAD_VALUES)")
            values = []
            for j, cell in enumerate(row):
                try:
                    v = float(cell)
                except ValueError:
                    raise ValueError(f"{filename}: row {line}, column {j + 1}: {cell[:40]!r} is not a number") from None
                if not math.isfinite(v):
                    raise ValueError(f"{filename}: row {line}, column {j + 1}: {cell!r} is not finite")
                values.append(v)
            buf.append(values)
            if len(buf) >= 65536:
                chunks.append(np.asarray(buf, dtype=np.float64))
                buf = []
    except csv.Error as exc:  # e.g. "field larger than field limit (131072)"
        raise ValueError(f"{filename}: row {line + 1}: not readable as CSV ({exc})") from None
    if d is None:
        raise ValueError(f"{filename}: the file holds a header but no data rows" if first_line == 0
                         else f"{filename}: the file holds no rows")
    if buf:
        chunks.append(np.asarray(buf, dtype=np.float64))
    return np.concatenate(chunks, axis=0)


def _load_npy(data: bytes, filename: str) -> np.ndarray:
    """Read a .npy from bytes, checking its header (shape, dtype) against the upload budgets
    and the bytes actually present *before* the array is allocated."""
    from .limits import BudgetError, budget

    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, EOFError, OSError, SyntaxError, TypeError) as exc:
        what = "empty" if not data else "not a readable .npy array without pickles"
        raise ValueError(f"{filename}: {what} ({type(exc).__name__}: {str(exc)[:120]})") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise ValueError(f"{filename}: array dtype {dtype} is not numeric (need integers or floats)")
    if len(shape) == 2:
        max_rows, max_values = int(budget("DMD_MAX_UPLOAD_ROWS")), int(budget("DMD_MAX_UPLOAD_VALUES"))
        if shape[0] > max_rows or shape[0] * shape[1] > max_values:
            raise BudgetError(f"{filename}: shape {shape} is above the upload limit of {max_rows:,} rows and "
                              f"{max_values:,} values (DMD_MAX_UPLOAD_ROWS / DMD_MAX_UPLOAD_VALUES)")
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    have = len(data) - f.tell()
    if need != have:
        raise ValueError(f"{filename}: header declares shape {shape} ({need:,} bytes) but the file holds {have:,} "
                         f"bytes of data")
    f.seek(0)
    try:
        return np.load(f, allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise ValueError(f"{filename}: not a readable .npy array without pickles ({exc})") from None


def _check_upload_size(n: int, filename: str) -> None:
    from .limits import BudgetError, budget, fmt_bytes

    limit = budget("DMD_MAX_UPLOAD_BYTES")
    if n > limit:
        raise BudgetError(f"{filename}: {fmt_bytes(n)} is above the upload limit {fmt_bytes(limit)} "
                          f"(DMD_MAX_UPLOAD_BYTES)")


def load_user_array(path_or_bytes: str | os.PathLike | bytes, filename: str | None = None) -> np.ndarray:
    """Load and validate a user (n, d) array from a .csv or .npy file (a path, or raw bytes + filename).

    Checks: numeric, finite, n >= 100 rows, 1 <= d <= 4096 columns; the budgets of
    dmdcore.limits (file size, rows, values, parse time) before the array is allocated. A .csv may have one header row
    (a first row without any number); delimiters , ; tab or space. Returns float32 (n, d).
    Raises ValueError naming the file and, where it applies, the 1-based row and column.
    """
    if isinstance(path_or_bytes, (bytes, bytearray)):
        if not filename:
            raise ValueError("filename: required with raw bytes (to tell .csv from .npy)")
        data = bytes(path_or_bytes)
    else:
        path = os.fspath(path_or_bytes)
        filename = filename or os.path.basename(path)
        if not os.path.isfile(path):
            raise ValueError(f"path: {path!r} is not an existing file")
        from .limits import check_file_size

        check_file_size(path, filename, "DMD_MAX_UPLOAD_BYTES")
        with open(path, "rb") as fh:
            data = fh.read()
    _check_upload_size(len(data), filename)
    ext = os.path.splitext(filename)[1].lower()
    if ext == ".npy":
        return _validate_array(np.asarray(_load_npy(data, filename)), filename)
    if ext in (".csv", ".txt", ".tsv"):
        from .limits import BudgetError, budget

        max_rows = int(budget("DMD_MAX_UPLOAD_ROWS"))
        lines = data.count(b"\n") - data.count(b"\n\n")  # fast (C) count of non-blank lines, before parsing
        if lines > max_rows + 1:
            raise BudgetError(f"{filename}: {lines:,} lines is above the upload limit of {max_rows:,} rows "
                              f"(DMD_MAX_UPLOAD_ROWS)")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{filename}: not UTF-8 text (byte {exc.start})") from None
        return _validate_array(_parse_csv(text, filename), filename)
    raise ValueError(f"{filename}: file type {ext or '(none)'!r} not in {{.csv, .npy}}")
