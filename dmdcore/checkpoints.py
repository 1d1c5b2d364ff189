"""Loading image checkpoints safely: EDM persistence pickles, DMD2 / plain state dicts,
safetensors and our own format, all through ``load_checkpoint(path)``; the checkpoint manifest;
``fetch`` (download with resume + sha256) and its ``python -m dmdcore fetch NAME`` CLI.

Safety: an EDM ``.pkl`` embeds the full Python source of its classes and EDM's loader ``exec``s
it. We never do: ``EDMUnpickler`` maps EDM's reconstruct function to an inert stub that keeps only
the class name and state, allows an explicit list of other globals (tensor/parameter rebuild,
storages via a nested ``torch.load(weights_only=True)``, OrderedDict, numpy scalars/dtypes,
ModuleDict as a stub) and refuses everything else with ``UnsafePickleError``. Our own
``EDMPrecond`` is then built from the pickled constructor arguments and loaded with ``strict=True``.
"""

from __future__ import annotations

import codecs
import hashlib
import http.client
import io
import json
import os
import pickle
import re
import struct
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .device import pick_device
from .limits import MAX_NESTING, budget, check_edm_config, check_file_size, check_tensors, plain_structure
from .runs import disk_full_as_error, is_disk_full
from .networks import EDMPrecond, count_parameters

__all__ = [
    "CheckpointError",
    "UnsafePickleError",
    "ShapeMismatchError",
    "LoadedCheckpoint",
    "EDMUnpickler",
    "load_checkpoint",
    "save_checkpoint",
    "infer_config",
    "strip_prefixes",
    "file_sha256",
    "default_manifest_path",
    "read_manifest",
    "manifest_entry",
    "entry_path",
    "student_training",
    "fetch",
    "register_cli",
]

OUR_FORMAT = "dmdcore.image.v1"
FORMATS = ("edm-pickle", "state-dict", "safetensors", OUR_FORMAT)
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin")
EDMPRECOND_ARGS = ("img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_min", "sigma_max",
                   "sigma_data", "model_type")
_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint cannot be read: unknown format, truncated/corrupt file, wrong keys."""


class UnsafePickleError(CheckpointError):
    """A pickle asked for a global outside the allow-list (it was not executed)."""


class ShapeMismatchError(CheckpointError):
    """A tensor in the checkpoint has a different shape from the model's (message names the key)."""


@dataclass
class LoadedCheckpoint:
    """A ready model (eval mode, on ``device``) plus what we learnt about the file."""

    model: EDMPrecond
    format: str  # one of FORMATS
    config: dict  # EDMPrecond constructor kwargs
    n_params: int
    path: str
    sha256: str
    config_source: str  # "pickle" | "file" | "sidecar" | "explicit" | "inferred"
    extra: dict = field(default_factory=dict)  # role, dataset_kwargs, … when the file has them


# =============================================================== restricted EDM unpickler
class PersistentStub:
    """Inert stand-in for an EDM persistent object: class name + pickled ``__dict__`` (state).
    The embedded ``module_src`` is kept only as its length; it is never executed."""

    def __init__(self, class_name: str, state: dict, module_src_chars: int):
        self.class_name = class_name
        self.state = state
        self.module_src_chars = module_src_chars


def _reconstruct_persistent_stub(meta):
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise UnsafePickleError("EDM pickle: persistent object meta is not a dict with type='class'")
    name = meta.get("class_name")
    state = meta.get("state")
    if not isinstance(name, str) or not isinstance(state, dict):
        raise CheckpointError("EDM pickle: persistent object meta lacks class_name/state")
    return PersistentStub(name, state, len(meta.get("module_src") or ""))


class ModuleDictStub:
    """Stand-in for ``torch.nn.ModuleDict``: keeps the pickled state, runs no torch code."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise CheckpointError("EDM pickle: ModuleDict state is not a dict")
        self.state = state


def _safe_load_from_bytes(b):
    # Storage payloads are nested legacy torch.save blobs: read them with the weights-only loader.
    if not isinstance(b, (bytes, bytearray)):
        raise UnsafePickleError("EDM pickle: storage payload is not bytes")
    return torch.load(io.BytesIO(bytes(b)), map_location="cpu", weights_only=True)


def _check_hooks(hooks):
    if hooks:
        raise UnsafePickleError("EDM pickle: tensors with backward hooks are not accepted")


def _safe_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    if not isinstance(storage, torch.storage.TypedStorage):
        raise UnsafePickleError("EDM pickle: tensor storage is not a torch storage")
    _check_hooks(backward_hooks)
    return torch._utils._rebuild_tensor_v2(storage, int(storage_offset), tuple(int(s) for s in size),
                                           tuple(int(s) for s in stride), bool(requires_grad), OrderedDict())


def _safe_rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError("EDM pickle: parameter data is not a tensor")
    _check_hooks(backward_hooks)
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


_NUMPY_DTYPES = {"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1", "?"}


def _safe_np_dtype(name, align=False, copy=False):
    if str(name) not in _NUMPY_DTYPES:
        raise UnsafePickleError(f"EDM pickle: numpy dtype {name!r} not in the allowed numeric set")
    return np.dtype(str(name))


def _safe_np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError("EDM pickle: numpy scalar with unexpected payload")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]


def _safe_codecs_encode(obj, encoding="utf-8"):
    # Protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1').
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("EDM pickle: _codecs.encode only allowed for latin1 strings")
    return codecs.encode(obj, encoding)


def _safe_reconstructor(cls, base, state=None):
    # Protocol 0/1 spelling of object creation; only for our inert stubs.
    if cls not in (ModuleDictStub, PersistentStub) or base is not object or state is not None:
        raise UnsafePickleError(f"EDM pickle: copyreg._reconstructor for {cls!r} not allowed")
    return object.__new__(cls)


_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_stub,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): _safe_codecs_encode,
    ("copyreg", "_reconstructor"): _safe_reconstructor,
    ("copy_reg", "_reconstructor"): _safe_reconstructor,
    ("torch._utils", "_rebuild_tensor_v2"): _safe_rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _safe_rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _safe_rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _safe_load_from_bytes,
    ("torch.nn.modules.container", "ModuleDict"): ModuleDictStub,
    ("numpy", "dtype"): _safe_np_dtype,
    ("numpy.core.multiarray", "scalar"): _safe_np_scalar,
    ("numpy._core.multiarray", "scalar"): _safe_np_scalar,
}
for _name in ("float32", "float16", "float64", "bfloat16", "int64", "int32", "uint8", "bool"):
    _ALLOWED_GLOBALS[("torch", _name)] = getattr(torch, _name)


class EDMUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the globals in an explicit allow-list.

    Any other global (``os.system``, ``builtins.eval``, arbitrary classes…) raises
    ``UnsafePickleError`` *before* it could be called. Persistent ids are refused too.
    """

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"EDM pickle: refusing global {module}.{name} (not in the allow-list; nothing was executed)"
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError("EDM pickle: persistent ids are not allowed")


def _to_plain(v, what: str = "EDM pickle"):
    """numpy scalars/containers in pickled constructor args -> plain Python values; recursive,
    too deep or exploding ("billion laughs") structures raise BudgetError (dmdcore.limits)."""
    return plain_structure(v, what)


def _collect_tensors(obj, prefix: str, out: dict, _seen: set | None = None) -> None:
    """Walk a stub tree (PersistentStub / ModuleDictStub), collecting parameters and persistent
    buffers under their dotted names, as nn.Module.state_dict() would. A module tree that
    contains itself, shares a module, or nests deeper than MAX_NESTING is refused."""
    _seen = set() if _seen is None else _seen
    if id(obj) in _seen:
        raise CheckpointError(f"EDM pickle: module {prefix or '<root>'} appears twice in the module tree "
                              "(recursive or shared structure); refused")
    if prefix.count(".") >= MAX_NESTING:
        raise CheckpointError(f"EDM pickle: module tree deeper than {MAX_NESTING} at {prefix}; refused")
    _seen.add(id(obj))
    state = obj.state if isinstance(obj, (PersistentStub, ModuleDictStub)) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"EDM pickle: module {prefix or '<root>'} has no readable state")
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for kind in ("_parameters", "_buffers"):
        for name, t in (state.get(kind) or {}).items():
            if t is None or (kind == "_buffers" and name in non_persistent):
                continue
            if not isinstance(t, torch.Tensor):
                raise CheckpointError(f"EDM pickle: {prefix}{name} is not a tensor")
            out[prefix + name] = t.detach()
    modules = state.get("_modules") or {}
    if not isinstance(modules, dict):
        raise CheckpointError(f"EDM pickle: module {prefix or '<root>'} has _modules of type {type(modules).__name__}")
    for name, child in modules.items():
        if child is not None:
            _collect_tensors(child, f"{prefix}{name}.", out, _seen)


def read_edm_pickle(path: str | Path) -> tuple[dict, dict, dict]:
    """Read an EDM persistence pickle without executing anything.

    Returns (init_kwargs of the ``ema`` EDMPrecond, its state dict, extra info). Raises
    UnsafePickleError for a disallowed global and CheckpointError for corrupt/unsupported files.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = EDMUnpickler(f).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, struct.error, ValueError, TypeError, AttributeError,
            IndexError, KeyError, RuntimeError, UnicodeDecodeError, MemoryError, OverflowError) as exc:
        # RecursionError is a RuntimeError: a pickle nested too deep lands here too
        raise CheckpointError(f"{path.name}: truncated or corrupt EDM pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict) or "ema" not in data:
        raise CheckpointError(f"{path.name}: not an EDM network pickle (expected a dict with an 'ema' entry)")
    ema = data["ema"]
    if not isinstance(ema, PersistentStub) or ema.class_name != "EDMPrecond":
        name = getattr(ema, "class_name", type(ema).__name__)
        raise CheckpointError(f"{path.name}: 'ema' is {name}, only EDMPrecond is supported")
    raw_args, raw_kwargs = ema.state.get("_init_args") or (), ema.state.get("_init_kwargs") or {}
    if not isinstance(raw_args, (list, tuple)) or not isinstance(raw_kwargs, dict):
        raise CheckpointError(f"{path.name}: EDMPrecond _init_args/_init_kwargs are not a list/dict")
    args = list(_to_plain(list(raw_args), f"{path.name}: _init_args"))
    kwargs = _to_plain(dict(raw_kwargs), f"{path.name}: _init_kwargs")
    if len(args) > len(EDMPRECOND_ARGS):
        raise CheckpointError(f"{path.name}: EDMPrecond has {len(args)} positional args (max {len(EDMPRECOND_ARGS)})")
    kwargs.update(dict(zip(EDMPRECOND_ARGS, args)))
    sd: dict = OrderedDict()
    _collect_tensors(ema, "", sd)
    extra = {"dataset_kwargs": _to_plain(data.get("dataset_kwargs"), f"{path.name}: dataset_kwargs")
             if isinstance(data.get("dataset_kwargs"), dict) else None,
             "pickle_keys": sorted(str(k) for k in data)}
    return kwargs, sd, extra


# =============================================================== state dicts
def strip_prefixes(sd: dict) -> OrderedDict:
    """Remove ``module.`` / ``_orig_mod.`` prefixes (possibly nested) from every key."""
    out = OrderedDict()
    for k, v in sd.items():
        k = str(k)
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        # A bare DhariwalUNet state dict gets the EDMPrecond child name.
        if not k.startswith("model.") and re.match(r"^(map_|enc\.|dec\.|out_)", k):
            k = "model." + k
        out[k] = v
    return out


def infer_config(sd: dict) -> dict:
    """Infer EDMPrecond(DhariwalUNet) kwargs from state-dict key names and shapes.

    model_channels = width of map_layer0's input (the noise embedding), channel_mult from each
    level's block widths, num_blocks from the encoder block count at the top level, attention
    resolutions from which ``*_block*`` have ``qkv``. Not in the keys: sigma_data (0.5 assumed),
    dropout (0, inference), use_fp16 (False). Raises CheckpointError if the keys are not EDM's.
    """
    def need(key):
        if key not in sd:
            raise CheckpointError(f"state dict: key {key!r} missing; cannot infer a DhariwalUNet architecture")
        return tuple(sd[key].shape)

    mc = need("model.map_layer0.weight")[1]
    emb = need("model.map_layer0.weight")[0]
    convs = [k for k in sd if re.fullmatch(r"model\.enc\.(\d+)x\1_conv\.weight", k)]
    if len(convs) != 1:
        raise CheckpointError("state dict: expected exactly one model.enc.<R>x<R>_conv.weight")
    res = int(re.fullmatch(r"model\.enc\.(\d+)x\d+_conv\.weight", convs[0]).group(1))
    cout, cin = need(convs[0])[:2]
    levels = sorted({int(m.group(1)) for k in sd for m in [re.match(r"model\.enc\.(\d+)x\d+_", k)] if m},
                    reverse=True)
    mult, attn = [], []
    num_blocks = len({m.group(1) for k in sd
                      for m in [re.match(rf"model\.enc\.{res}x{res}_block(\d+)\.", k)] if m})
    for r in levels:
        key = f"model.dec.{r}x{r}_block0.conv1.weight"
        width = need(key)[0]
        if width % mc:
            raise CheckpointError(f"state dict: {key} width {width} is not a multiple of model_channels {mc}")
        mult.append(width // mc)
        if any(re.match(rf"model\.(enc|dec)\.{r}x{r}_block\d+\.qkv\.weight$", k) for k in sd):
            attn.append(r)
    label_dim = need("model.map_label.weight")[1] if "model.map_label.weight" in sd else 0
    cfg = dict(img_resolution=res, img_channels=cin, label_dim=label_dim, model_type="DhariwalUNet",
               model_channels=mc, channel_mult=mult, channel_mult_emb=emb // mc, num_blocks=num_blocks,
               attn_resolutions=attn, dropout=0.0)
    if "model.map_augment.weight" in sd:
        cfg["augment_dim"] = need("model.map_augment.weight")[1]
    if cout != mc * mult[0]:
        raise CheckpointError(f"state dict: {convs[0]} has {cout} outputs, expected {mc * mult[0]}")
    return cfg


def _build_and_load(cfg: dict, sd: dict, source: str) -> EDMPrecond:
    try:
        with torch.device("meta"):
            probe = EDMPrecond(**cfg)
    except TypeError as exc:
        raise CheckpointError(f"{source}: bad architecture config {cfg}: {exc}") from exc
    want = probe.state_dict()
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    for k, v in want.items():
        if k in sd and tuple(sd[k].shape) != tuple(v.shape):
            raise ShapeMismatchError(f"{source}: shape mismatch at {k}: checkpoint {tuple(sd[k].shape)} "
                                     f"vs model {tuple(v.shape)}")
    if missing or unexpected:
        raise CheckpointError(f"{source}: keys do not match the architecture: missing {missing[:3]}"
                              f"{'…' if len(missing) > 3 else ''} ({len(missing)}), unexpected {unexpected[:3]}"
                              f"{'…' if len(unexpected) > 3 else ''} ({len(unexpected)})")
    model = EDMPrecond(**cfg)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True)
    return model


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _detect_format(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise CheckpointError(f"{path.name}: file is empty or truncated ({len(head)} bytes)")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if head[0] == 0x80:
        return "edm-pickle" if suffix == ".pkl" else "torch-legacy"
    (n,) = struct.unpack("<Q", head[:8])
    if head[8:9] == b"{" and n < 100_000_000:
        return "safetensors"
    raise CheckpointError(f"{path.name}: unknown checkpoint format (expected an EDM .pkl, a torch "
                          f"state dict {'/'.join(STATE_DICT_SUFFIXES)}, or .safetensors)")


def _unwrap_state_dict(obj, source: str) -> tuple[dict, dict | None, dict]:
    """Find the tensor dict inside a torch.load result; returns (sd, config or None, extra)."""
    if isinstance(obj, dict) and obj.get("format") == OUR_FORMAT:
        if not isinstance(obj.get("state_dict"), dict):
            raise CheckpointError(f"{source}: state_dict: missing or not a dict of tensors")
        return obj["state_dict"], obj.get("config"), {k: obj.get(k) for k in ("role", "meta") if k in obj}
    if isinstance(obj, dict) and isinstance(obj.get("format"), str):
        raise CheckpointError(f"{source}: format {obj['format']!r} is not an image checkpoint "
                              f"(use the toy loader for dmdcore.toy.v1)")
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "ema", "generator"):
            if isinstance(obj.get(key), dict) and obj[key] and all(
                    isinstance(v, torch.Tensor) for v in obj[key].values()):
                return obj[key], None, {"wrapped_in": key}
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj, None, {}
    raise CheckpointError(f"{source}: no tensor state dict found in the file")


def _sidecar_config(path: Path) -> dict | None:
    side = path.with_name(path.name + ".json")
    if not side.exists():
        return None
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{side.name}: unreadable sidecar JSON ({exc})") from exc
    cfg = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{side.name}: sidecar must be a JSON object with a 'config' object")
    return cfg


def load_checkpoint(path: str | Path, *, config: dict | None = None, device: str | torch.device | None = "auto",
                    hash_file: bool = True) -> LoadedCheckpoint:
    """Load an EDM-family image denoiser from any supported file.

    - ``.pkl``: EDM persistence pickle (``ema`` entry) through the restricted ``EDMUnpickler``;
      the config is the pickled ``EDMPrecond`` constructor arguments.
    - ``.pt`` / ``.pth`` / ``.bin``: ``torch.load(weights_only=True)`` of a plain (DMD2-style) state
      dict, possibly wrapped or prefixed (``module.``, ``_orig_mod.``), or our ``dmdcore.image.v1``
      dict; the config comes from the file, a ``<file>.json`` sidecar, or is inferred from shapes.
    - ``.safetensors``: tensors plus optional ``config`` JSON in the header metadata.
    ``config`` (EDMPrecond kwargs) overrides whatever the file says. Returns a LoadedCheckpoint with
    the model in eval mode on ``device``. Raises CheckpointError (a ValueError) with the file name
    and the reason; UnsafePickleError for a refused pickle; ShapeMismatchError naming the first
    mismatching key.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"path: {str(path)!r} is not an existing file")
    check_file_size(path, path.name, "DMD_MAX_CHECKPOINT_BYTES")
    kind = _detect_format(path)
    extra: dict = {}
    file_cfg = None
    if kind == "edm-pickle":
        file_cfg, sd, extra = read_edm_pickle(path)
        fmt, cfg_source = "edm-pickle", "pickle"
    elif kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            sd = load_file(str(path), device="cpu")
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path.name}: truncated or corrupt safetensors file ({exc})") from exc
        if meta.get("config"):
            try:
                file_cfg = json.loads(meta["config"])
            except (json.JSONDecodeError, RecursionError) as exc:
                raise CheckpointError(f"{path.name}: safetensors metadata 'config' is not JSON") from exc
        extra = {k: v for k, v in meta.items() if k != "config"}
        fmt, cfg_source = "safetensors", "file"
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UnsafePickleError(f"{path.name}: refused by torch's weights-only loader ({exc})") from exc
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path.name}: truncated or corrupt torch file ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        sd, file_cfg, extra = _unwrap_state_dict(obj, path.name)
        fmt = OUR_FORMAT if file_cfg is not None and isinstance(obj, dict) and obj.get("format") == OUR_FORMAT \
            else "state-dict"
        cfg_source = "file"
    check_tensors(sd, path.name)
    sd = strip_prefixes(sd)
    if config is not None:
        cfg, cfg_source = config, "explicit"
    elif file_cfg is not None:
        cfg = file_cfg
    elif (side := _sidecar_config(path)) is not None:
        cfg, cfg_source = side, "sidecar"
    else:
        cfg, cfg_source = infer_config(sd), "inferred"
    # ranges + meta-device parameter count against DMD_MAX_MODEL_BYTES, before anything is built
    check_edm_config(cfg, f"{path.name} ({cfg_source} config)")
    cfg = dict(cfg)
    model = _build_and_load(cfg, sd, path.name)
    model = model.to(pick_device(device)).eval().requires_grad_(False)
    # the config actually used (explicit overrides included): part of dmdcore.images' cache key
    model.init_kwargs = json.loads(json.dumps(cfg, default=repr))
    return LoadedCheckpoint(model=model, format=fmt, config=cfg, n_params=count_parameters(model),
                            path=str(path), sha256=file_sha256(path) if hash_file else "",
                            config_source=cfg_source, extra=extra)


def model_config(model: EDMPrecond) -> dict:
    """Best-effort EDMPrecond kwargs of a model (from its shapes plus sigma attributes)."""
    cfg = infer_config(model.state_dict())
    cfg.update(sigma_data=model.sigma_data, sigma_min=model.sigma_min, sigma_max=model.sigma_max)
    return cfg


def save_checkpoint(model: EDMPrecond, path: str | Path, *, fmt: str = OUR_FORMAT, config: dict | None = None,
                    role: str | None = None, meta: dict | None = None) -> Path:
    """Write ``model`` as ``fmt``: "dmdcore.image.v1" (torch dict with config), "state-dict"
    (plain DMD2-style state dict, plus a ``<file>.json`` sidecar with the config) or "safetensors"
    (config JSON in the header). Returns the path. Writes atomically (temp file + replace)."""
    path = Path(path)
    cfg = dict(config) if config is not None else model_config(model)
    sd = OrderedDict((k, v.detach().float().cpu().contiguous()) for k, v in model.state_dict().items())
    if fmt not in (OUR_FORMAT, "state-dict", "safetensors"):
        raise ValueError(f"fmt: {fmt!r} not in {OUR_FORMAT!r}, 'state-dict', 'safetensors'")
    from .runs import disk_full_as_error, is_disk_full

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with disk_full_as_error(path):
            _write_checkpoint(tmp, path, fmt, cfg, sd, role, meta)
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _write_checkpoint(tmp: Path, path: Path, fmt: str, cfg: dict, sd: dict, role, meta) -> None:
    # torch.save to an open file, not a path: given a path, torch names the zip's inner folder
    # after it (here the temp name, which holds the pid), so the same weights gave different bytes
    # and sha256 on every run; through a file object the archive is named "archive" every time.
    if fmt == OUR_FORMAT:
        with open(tmp, "wb") as fh:
            torch.save({"format": OUR_FORMAT, "role": role, "config": cfg, "meta": meta or {}, "state_dict": sd}, fh)
    elif fmt == "state-dict":
        with open(tmp, "wb") as fh:
            torch.save(sd, fh)
        path.with_name(path.name + ".json").write_text(json.dumps({"config": cfg, "role": role, "meta": meta or {}},
                                                                  indent=1))
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        md = {"format": OUR_FORMAT, "config": json.dumps(cfg)}
        if role:
            md["role"] = role
        save_file(dict(sd), str(tmp), metadata=md)


# =============================================================== manifest + fetch
def default_manifest_path() -> Path:
    """``checkpoints/manifest.json`` of this repository (located from the package, not the cwd)."""
    return Path(__file__).resolve().parent.parent / "checkpoints" / "manifest.json"


def read_manifest(manifest: str | Path | dict | None = None) -> dict:
    """The manifest as a dict (``{"version", "entries": [...]}``); accepts a path or a dict."""
    if isinstance(manifest, dict):
        data = manifest
    else:
        p = Path(manifest) if manifest is not None else default_manifest_path()
        if not p.exists():
            return {"version": 1, "entries": []}
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"manifest: {p} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise ValueError("manifest: expected an object with an 'entries' list")
    return data


def manifest_entry(name: str, manifest: str | Path | dict | None = None) -> dict:
    """The entry called ``name``; ValueError listing the known names otherwise."""
    entries = read_manifest(manifest)["entries"]
    for e in entries:
        if e.get("name") == name:
            return e
    raise ValueError(f"name: {name!r} not in the manifest (known: {', '.join(e.get('name', '?') for e in entries)})")


def entry_path(entry: dict, root: str | Path | None = None) -> Path:
    """Where an entry's file lives: ``root`` (default: the checkpoints/ folder) / entry['file']."""
    root = Path(root) if root is not None else default_manifest_path().parent
    f = entry.get("file")
    if not f or Path(f).is_absolute() or ".." in Path(f).parts:
        raise ValueError(f"manifest entry {entry.get('name')!r}: 'file' must be a relative path inside checkpoints/")
    return root / f


def student_training(sha256: str, manifest: str | Path | dict | None = None,
                     root: str | Path | None = None) -> dict | None:
    """How a shipped student was distilled, read from its training record (the manifest entry with
    this ``sha256`` names the record in ``training_record``; the answer comes from the record's
    ``distill_config``, not from the entry's name). None when no student entry with a training
    record has this hash, or when the record is unreadable.

    Returns {"name", "record", "regression", "reg_weight", "n_reg_pairs", "gan", "steps", "init"};
    reg_weight / n_reg_pairs are None without regression."""
    try:
        entries = read_manifest(manifest)["entries"]
    except ValueError:
        return None
    for e in entries:
        if e.get("role") != "student" or not sha256 or e.get("sha256") != sha256 or not e.get("training_record"):
            continue
        try:
            p = entry_path({"name": e.get("name"), "file": e["training_record"]}, root)
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        dc = rec.get("distill_config") if isinstance(rec, dict) else None
        if not isinstance(dc, dict) or "regression" not in dc:
            return None
        reg = dc.get("regression") is True
        return {"name": e.get("name"), "record": e["training_record"], "regression": reg,
                "reg_weight": dc.get("reg_weight") if reg else None,
                "n_reg_pairs": dc.get("n_reg_pairs") if reg else None,
                "gan": dc.get("gan") is True, "steps": dc.get("steps"), "init": dc.get("init")}
    return None


def _expected_total(resp, have: int) -> int | None:
    """Final file size the server announced: the Content-Range total of a 206 answer, else
    ``have`` + Content-Length; None when the server sent neither (chunked / unknown length)."""
    if resp.status == 206:
        m = re.match(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range") or "")
        if m and m[3] != "*":
            return int(m[3])
    length = resp.headers.get("Content-Length")
    if length is not None and length.strip().isdigit():
        return have + int(length)
    return None


def fetch(name: str, dest_dir: str | Path | None = None, *, manifest: str | Path | dict | None = None,
          callback: Callable[[int, int | None], None] | None = None, chunk: int = 1 << 16,
          timeout: float = 30.0, with_sha256: bool = False) -> Path | tuple[Path, str]:
    """Download manifest entry ``name`` into ``dest_dir`` (default: checkpoints/) and verify it.

    Resumes from ``<file>.part`` with an HTTP Range request (restarts if the server ignores it),
    calls ``callback(bytes_done, bytes_total_or_None)`` as data arrives, checks ``size`` and
    ``sha256`` when the entry has them (a sha256 mismatch deletes the partial file and raises
    CheckpointError), then renames into place. An existing file with the right checksum is kept.

    Independently of the manifest, the byte count is checked against what the server announced
    (Content-Length, or the Content-Range total of a resumed download): a connection that closes
    early raises CheckpointError naming the expected and received byte counts and keeps the
    ``.part`` file, so running fetch again resumes. With ``with_sha256`` the result is
    ``(path, sha256 hex)`` so the checksum can be pinned in the manifest.
    """
    entry = manifest_entry(name, manifest)
    url = entry.get("url")
    if not url:
        raise ValueError(f"name: {name!r} has no url (shipped with the repository, nothing to fetch)")
    dest = entry_path(entry, dest_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    want_sha = (entry.get("sha256") or "").lower() or None
    want_size = entry.get("size")
    if dest.exists() and (want_sha is None or file_sha256(dest) == want_sha):
        if callback:
            callback(dest.stat().st_size, dest.stat().st_size)
        return (dest, want_sha or file_sha256(dest)) if with_sha256 else dest
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if want_size and have > want_size:
        part.unlink()
        have = 0
    if not (want_size and have == want_size):
        req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            resp = urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as exc:
            # 416 (range not satisfiable) for a .part that is already complete: with a known size,
            # or when the server's "Content-Range: bytes */N" says N == what we have (a previous
            # fetch was interrupted between the last byte and the rename)
            m = re.match(r"\s*bytes\s+\*/(\d+)", (exc.headers or {}).get("Content-Range") or "") if exc.code == 416 else None
            if exc.code == 416 and have and ((want_size and have == want_size) or (m and int(m[1]) == have)):
                resp = None
            else:
                raise CheckpointError(f"fetch {name}: HTTP {exc.code} from {url}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise CheckpointError(f"fetch {name}: cannot reach {url} ({exc})") from exc
        if resp is not None:
            with resp:
                if have and resp.status != 206:
                    have = 0  # server ignored the Range header: start over
                if have:
                    m = re.match(r"\s*bytes\s+(\d+)-", resp.headers.get("Content-Range") or "")
                    if m and int(m[1]) != have:
                        raise CheckpointError(f"fetch {name}: asked the server for bytes {have}- but it sent "
                                              f"bytes {m[1]}- (partial file kept at {part.name})")
                expected = _expected_total(resp, have)
                total = expected if expected is not None else want_size
                # the stream is cut off as soon as it passes the manifest size (or, without one,
                # what the server announced, capped by DMD_MAX_CHECKPOINT_BYTES)
                cap = want_size if want_size else min(expected or float("inf"), budget("DMD_MAX_CHECKPOINT_BYTES"))
                failure = None
                with disk_full_as_error(part), open(part, "ab" if have else "wb") as f:
                    done = have
                    if callback:
                        callback(done, total)
                    try:
                        # http.client returns b"" (no exception) when the server closes early,
                        # so the byte count is compared with `expected` below
                        while b := resp.read(chunk):
                            if done + len(b) > cap:
                                failure = "oversize"
                                break
                            f.write(b)
                            done += len(b)
                            if callback:
                                callback(done, total)
                    except (http.client.HTTPException, OSError) as exc:
                        if is_disk_full(exc):
                            raise
                        failure = f"{type(exc).__name__}: {exc}"
                if failure == "oversize":
                    part.unlink()
                    what = (f"the manifest size {want_size}" if want_size else
                            f"the announced size {expected}" if expected is not None and expected <= cap else
                            f"the download limit {int(cap)} bytes (DMD_MAX_CHECKPOINT_BYTES)")
                    raise CheckpointError(f"fetch {name}: the server sent more than {what}; download aborted "
                                          f"and the partial file removed")
                if expected is not None and done != expected:
                    if done > expected:
                        part.unlink()
                        raise CheckpointError(f"fetch {name}: received {done} bytes but the server announced "
                                              f"{expected}; partial file removed")
                    raise CheckpointError(
                        f"fetch {name}: download incomplete: expected {expected} bytes, received {done} "
                        f"(connection closed early{'; ' + failure if failure else ''}); partial file kept at "
                        f"{part.name}; run fetch again to resume")
                if failure is not None:
                    raise CheckpointError(f"fetch {name}: download interrupted after {done} bytes ({failure}); "
                                          f"partial file kept at {part.name}; run fetch again to resume")
    size = part.stat().st_size
    if want_size is not None and size != want_size:
        raise CheckpointError(f"fetch {name}: got {size} bytes, manifest says {want_size} "
                              f"(partial file kept at {part.name}; run fetch again to resume)")
    got = file_sha256(part)
    if want_sha is not None and got != want_sha:
        part.unlink()
        raise CheckpointError(f"fetch {name}: sha256 mismatch (got {got}, expected {want_sha}); file removed")
    os.replace(part, dest)
    return (dest, got) if with_sha256 else dest


def register_cli(subparsers) -> None:
    """Add ``fetch NAME [--dest DIR] [--manifest PATH]`` to an argparse CLI."""
    p = subparsers.add_parser("fetch", help="download a checkpoint listed in checkpoints/manifest.json",
                              description="Download with resume and sha256 verification.")
    p.add_argument("name", help="manifest entry name (e.g. edm-imagenet64-teacher)")
    p.add_argument("--dest", default=None, help="folder to write into (default: the repository's checkpoints/)")
    p.add_argument("--manifest", default=None, help="manifest JSON (default: checkpoints/manifest.json)")
    p.set_defaults(func=cli_fetch)


def cli_fetch(args) -> int:
    """Entry point of ``python -m dmdcore fetch``: tqdm progress bar on stderr; 0 on success."""
    import sys

    from tqdm import tqdm

    bar = None  # created at the first byte count, so a bad name fails without an empty bar

    def cb(done, total):
        nonlocal bar
        if bar is None:
            bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=args.name, file=sys.stderr)
        if total is not None and bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    try:
        out, sha = fetch(args.name, args.dest, manifest=args.manifest, callback=cb, with_sha256=True)
    except ValueError as exc:
        if bar is not None:
            bar.close()
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except OSError as exc:  # disk full at …, permission denied …
        if bar is not None:
            bar.close()
        sys.stderr.write(f"error: {exc}\n")
        return 1
    if bar is not None:
        bar.close()
    size = out.stat().st_size
    sys.stdout.write(f"{out}\nsha256 {sha}  size {size}\n")
    entry = manifest_entry(args.name, args.manifest)
    if not entry.get("sha256") or entry.get("size") is None:
        sys.stderr.write(f'to pin this download, set "size": {size}, "sha256": "{sha}" for {args.name!r} in the '
                         f"manifest\n")
    return 0


def describe(ck: LoadedCheckpoint) -> str:
    """One-line human summary of a loaded checkpoint."""
    c = ck.config
    return (f"{Path(ck.path).name}: {ck.format}, {ck.n_params / 1e6:.1f} M params, "
            f"{c.get('img_resolution')}px × {c.get('img_channels')} ch, {c.get('label_dim', 0)} classes "
            f"(config: {ck.config_source})")

