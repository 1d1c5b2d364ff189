"""Resource budgets for everything that reads a file a user (or a stranger) supplied.

Every loader asks here *before* it allocates: how many bytes the model a checkpoint declares would
need, whether its tensors are honest (no stride-0 / overlapping views that expand on load),
whether a pickled structure is small and acyclic, whether an upload fits the row and byte
limits. The budgets are module-level defaults that an environment variable overrides (read at
call time, so a test or an operator can change them without a restart of the import):

=============================  ==========================  =========================================
budget                         environment variable        default
=============================  ==========================  =========================================
model parameters (fp32 bytes)  ``DMD_MAX_MODEL_BYTES``     2 GiB (EDM ImageNet-64: 296 M = 1.2 GB)
checkpoint file size           ``DMD_MAX_CHECKPOINT_BYTES`` 4 GiB
uploaded array file size       ``DMD_MAX_UPLOAD_BYTES``    64 MiB
uploaded array rows            ``DMD_MAX_UPLOAD_ROWS``     2,000,000
uploaded array values (n·d)    ``DMD_MAX_UPLOAD_VALUES``   20,000,000 (160 MB as float64)
parsing time                   ``DMD_PARSE_TIMEOUT_S``     30 s
pickled structure elements     ``DMD_MAX_PICKLE_NODES``    100,000
=============================  ==========================  =========================================

See docs/reliability.md for the threat model. All refusals are ``ValueError`` subclasses whose
message names the file and the field.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping

__all__ = [
    "BudgetError",
    "budget",
    "Deadline",
    "plain_structure",
    "check_tensors",
    "check_edm_config",
    "check_toy_arch",
    "match_shapes",
    "fmt_bytes",
]

DEFAULTS = {
    "DMD_MAX_MODEL_BYTES": 2 * 1024 ** 3,
    "DMD_MAX_CHECKPOINT_BYTES": 4 * 1024 ** 3,
    "DMD_MAX_UPLOAD_BYTES": 64 * 1024 ** 2,
    "DMD_MAX_UPLOAD_ROWS": 2_000_000,
    "DMD_MAX_UPLOAD_VALUES": 20_000_000,
    "DMD_PARSE_TIMEOUT_S": 30,
    "DMD_MAX_PICKLE_NODES": 100_000,
}
MAX_NESTING = 64  # deepest nesting of a pickled config / module tree we walk

# Hyper-parameter ranges of an EDMPrecond(DhariwalUNet) config: wide enough for every published
# EDM / DMD2 network (ImageNet-64: 192 channels, mult [1,2,3,4], 3 blocks), narrow enough that
# building even a meta-device probe is instant.
EDM_INT_RANGES = {
    "img_resolution": (1, 1024),
    "img_channels": (1, 64),
    "label_dim": (0, 100_000),
    "model_channels": (1, 4096),
    "channel_mult_emb": (1, 64),
    "num_blocks": (1, 32),
    "augment_dim": (0, 1024),
}
EDM_LIST_RANGES = {"channel_mult": (1, 8, 1, 64), "attn_resolutions": (0, 16, 1, 1024)}  # len lo/hi, item lo/hi
TOY_ARCH_RANGES = {"dim": (1, 4096), "width": (1, 16384), "depth": (1, 64), "emb_dim": (2, 4096),
                   "label_dim": (0, 100_000)}


class BudgetError(ValueError):
    """An input would need more memory / time / elements than its documented budget."""


def budget(name: str) -> float:
    """The current value of budget ``name`` (an env variable in DEFAULTS overrides the default)."""
    if name not in DEFAULTS:
        raise ValueError(f"budget: {name!r} not in {sorted(DEFAULTS)}")
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return DEFAULTS[name]
    try:
        v = float(raw)
    except ValueError:
        raise ValueError(f"{name}: {raw!r} is not a number") from None
    if not v > 0:
        raise ValueError(f"{name}: {raw!r} must be > 0")
    return v


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class Deadline:
    """A time bound for a parse loop: ``check()`` raises BudgetError once ``DMD_PARSE_TIMEOUT_S``
    (or ``seconds``) has passed since construction."""

    def __init__(self, what: str, seconds: float | None = None):
        self.what = what
        self.seconds = float(seconds if seconds is not None else budget("DMD_PARSE_TIMEOUT_S"))
        self.end = time.monotonic() + self.seconds

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise BudgetError(f"{self.what}: parsing took longer than {self.seconds:g} s "
                              f"(DMD_PARSE_TIMEOUT_S); refused")


def plain_structure(obj, what: str, *, max_nodes: int | None = None):
    """Convert a pickled value (dicts, lists, tuples, numpy scalars, str/int/float/bool/None) to
    plain Python, refusing recursive structures, nesting deeper than MAX_NESTING and more than
    ``DMD_MAX_PICKLE_NODES`` elements in total (shared sub-lists count every time they are
    reached, so a "billion laughs" structure is refused after that many, not expanded)."""
    import numpy as np

    limit = int(max_nodes if max_nodes is not None else budget("DMD_MAX_PICKLE_NODES"))
    count = [0]
    active: set[int] = set()

    def walk(v, depth: int, path: str):
        count[0] += 1
        if count[0] > limit:
            raise BudgetError(f"{what}: more than {limit} elements (a shared or exploding structure at "
                              f"{path}); refused (DMD_MAX_PICKLE_NODES)")
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, (str, bytes, int, float, bool, type(None))):
            return v
        if not isinstance(v, (list, tuple, dict)):
            return v
        if depth >= MAX_NESTING:
            raise BudgetError(f"{what}: nesting deeper than {MAX_NESTING} at {path}; refused")
        if id(v) in active:
            raise BudgetError(f"{what}: recursive structure at {path} (it contains itself); refused")
        active.add(id(v))
        try:
            if isinstance(v, dict):
                return {k: walk(x, depth + 1, f"{path}.{k}") for k, x in v.items()}
            return [walk(x, depth + 1, f"{path}[{i}]") for i, x in enumerate(v)]
        finally:
            active.discard(id(v))

    return walk(obj, 0, what)


def check_tensors(sd: Mapping, source: str) -> None:
    """Refuse tensors that are views which would expand on load: a stride of 0 along a dimension
    of size > 1 (``expand``), a tensor larger than its storage (self-overlapping), or tensors
    sharing one storage with more bytes than it holds (overlapping each other)."""
    import torch

    per_storage: dict[int, list] = {}
    for k, t in sd.items():
        if not isinstance(t, torch.Tensor):
            raise BudgetError(f"{source}: {k} is {type(t).__name__}, not a tensor")
        if t.numel() == 0:
            continue
        if any(st == 0 and sz > 1 for sz, st in zip(t.shape, t.stride())):
            raise BudgetError(f"{source}: tensor {k} {tuple(t.shape)} has stride 0 (an expanded view that "
                              f"would multiply in memory on load); refused")
        if t.is_sparse or t.layout != torch.strided:
            raise BudgetError(f"{source}: tensor {k} has layout {t.layout}, only dense tensors are accepted")
        storage = t.untyped_storage()
        nbytes = t.numel() * t.element_size()
        if nbytes > storage.nbytes():
            raise BudgetError(f"{source}: tensor {k} {tuple(t.shape)} needs {fmt_bytes(nbytes)} but its storage "
                              f"holds {fmt_bytes(storage.nbytes())} (overlapping view); refused")
        entry = per_storage.setdefault(storage.data_ptr(), [storage.nbytes(), 0, k])
        entry[1] += nbytes
        if entry[1] > entry[0]:
            raise BudgetError(f"{source}: tensor {k} overlaps tensor {entry[2]} in one storage; refused")


def _int_field(cfg: Mapping, key: str, lo: int, hi: int, source: str, prefix: str) -> None:
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise BudgetError(f"{source}: {prefix}{key}: {v!r} is not an integer")
    if not lo <= v <= hi:
        raise BudgetError(f"{source}: {prefix}{key}: {v} not in [{lo}, {hi}]")


def _model_bytes(module) -> int:
    return sum(t.numel() * 4 for t in module.state_dict().values())


def _check_model_budget(nbytes: int, source: str, what: str) -> None:
    limit = budget("DMD_MAX_MODEL_BYTES")
    if nbytes > limit:
        raise BudgetError(f"{source}: {what} would need {fmt_bytes(nbytes)} of parameters, above the model budget "
                          f"{fmt_bytes(limit)} (DMD_MAX_MODEL_BYTES); refused before allocating")


def check_edm_config(cfg, source: str) -> dict:
    """Validate EDMPrecond(DhariwalUNet) kwargs before anything is built: a dict with string
    keys, integer hyper-parameters in EDM_INT_RANGES, lists in EDM_LIST_RANGES; then a
    meta-device probe (no memory) counts the parameters against ``DMD_MAX_MODEL_BYTES``.
    Returns the probe's state dict (meta tensors, for shape matching)."""
    import torch

    from .networks import EDMPrecond

    if not isinstance(cfg, Mapping):
        raise BudgetError(f"{source}: config: expected an object of EDMPrecond arguments, got {type(cfg).__name__}")
    bad = [k for k in cfg if not isinstance(k, str)]
    if bad:
        raise BudgetError(f"{source}: config: key {bad[0]!r} is not a string")
    for key, (lo, hi) in EDM_INT_RANGES.items():
        if key in cfg:
            _int_field(cfg, key, lo, hi, source, "config.")
    for key, (nlo, nhi, lo, hi) in EDM_LIST_RANGES.items():
        if key not in cfg:
            continue
        v = cfg[key]
        if not isinstance(v, (list, tuple)) or not nlo <= len(v) <= nhi:
            raise BudgetError(f"{source}: config.{key}: {str(v)[:80]!r} is not a list of {nlo}..{nhi} integers")
        for i, x in enumerate(v):
            if isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= hi:
                raise BudgetError(f"{source}: config.{key}[{i}]: {x!r} not in integers [{lo}, {hi}]")
    # A cheap lower bound first (every encoder/decoder block holds a 3x3 conv of C x C, C =
    # model_channels * mult): an absurd config is refused in microseconds, before the first
    # meta-device operation (whose one-time torch import costs seconds).
    mc, mult = int(cfg.get("model_channels", 192)), [int(m) for m in cfg.get("channel_mult", (1, 2, 3, 4))]
    nb, emb = int(cfg.get("num_blocks", 3)), int(cfg.get("model_channels", 192)) * int(cfg.get("channel_mult_emb", 4))
    lower = 9 * mc * mc * sum(m * m for m in mult) * (2 * nb + 1) + emb * emb + int(cfg.get("label_dim", 0)) * emb
    _check_model_budget(4 * lower, source, "the declared architecture")
    try:
        with torch.device("meta"):
            probe = EDMPrecond(**cfg)
    except (TypeError, ValueError) as exc:
        raise BudgetError(f"{source}: bad architecture config: {exc}") from exc
    _check_model_budget(_model_bytes(probe), source, "the declared architecture")
    return probe.state_dict()


def toy_shapes(arch: Mapping) -> dict:
    """State-dict shapes of EDMDenoiser(MLPBackbone(**arch)) (keys ``model.…``), computed, not built."""
    d, w, depth, e, lab = (int(arch[k]) for k in ("dim", "width", "depth", "emb_dim", "label_dim"))
    shapes = {"model.emb0.weight": (e, e), "model.emb0.bias": (e,), "model.emb1.weight": (w, e),
              "model.emb1.bias": (w,), "model.inp.weight": (w, d), "model.inp.bias": (w,)}
    if lab:
        shapes["model.label.weight"] = (w, lab)
    for i in range(depth - 1):
        shapes[f"model.hidden.{i}.weight"], shapes[f"model.hidden.{i}.bias"] = (w, w), (w,)
    shapes["model.out.weight"], shapes["model.out.bias"] = (d, w), (d,)
    return shapes


class _Shape:  # what match_shapes needs of a tensor
    def __init__(self, shape):
        self.shape = shape


def check_toy_arch(arch, source: str) -> dict:
    """Validate a toy checkpoint's ``arch`` (MLPBackbone arguments: ranges, even emb_dim) and its
    parameter bytes against ``DMD_MAX_MODEL_BYTES``; returns ``{key: shape}`` of its state dict."""
    if arch is None:
        raise BudgetError(f"{source}: arch: missing (the MLP's dim, width, depth, emb_dim, label_dim)")
    if not isinstance(arch, Mapping):
        raise BudgetError(f"{source}: arch: expected an object with {', '.join(TOY_ARCH_RANGES)}, "
                          f"got {type(arch).__name__}")
    for key, (lo, hi) in TOY_ARCH_RANGES.items():
        if key not in arch:
            raise BudgetError(f"{source}: arch.{key}: missing")
        _int_field(arch, key, lo, hi, source, "arch.")
    if int(arch["emb_dim"]) % 2:
        raise BudgetError(f"{source}: arch.emb_dim: {arch['emb_dim']} is not even")
    shapes = toy_shapes(arch)
    _check_model_budget(4 * sum(math.prod(s) for s in shapes.values()), source, "the declared MLP")
    return {k: _Shape(v) for k, v in shapes.items()}


def match_shapes(want: Mapping, sd: Mapping, source: str, hint: str = "") -> None:
    """Refuse a state dict whose keys or shapes differ from ``want`` (naming the first key)."""
    for k, v in want.items():
        if k not in sd:
            raise BudgetError(f"{source}: state_dict lacks {k}{hint}")
        if tuple(sd[k].shape) != tuple(v.shape):
            raise BudgetError(f"{source}: state_dict {k} has shape {tuple(sd[k].shape)}, the declared "
                              f"architecture needs {tuple(v.shape)}{hint}")
    extra = [k for k in sd if k not in want]
    if extra:
        raise BudgetError(f"{source}: state_dict has unexpected key {extra[0]!r} ({len(extra)} in all){hint}")


def check_file_size(path, what: str, env: str) -> int:
    """Size of ``path``; BudgetError above budget ``env``."""
    size = os.path.getsize(path)
    limit = budget(env)
    if size > limit:
        raise BudgetError(f"{what}: {fmt_bytes(size)} is above the {fmt_bytes(limit)} limit ({env}); refused")
    return size


def finite_positive(v, source: str, field: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not v > 0:
        raise BudgetError(f"{source}: {field}: {v!r} is not a finite number > 0")
    return float(v)
