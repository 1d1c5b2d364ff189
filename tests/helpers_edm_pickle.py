"""Test helper: write a network in EDM's persistence-pickle format (no EDM code involved).

EDM pickles a dict ``{"ema": net, "loss_fn": …, "augment_pipe": None, "dataset_kwargs": …}``
where every persistent module is stored as a call
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta = dict(type='class',
version=6, module_src=<full source>, class_name=…, state=<the module's __dict__>)``; the state
holds ``_parameters`` / ``_buffers`` / ``_modules`` OrderedDicts, ``training``, plain attributes and
the constructor arguments ``_init_args`` / ``_init_kwargs``. ``torch.nn.ModuleDict`` containers
are pickled the ordinary way (class reference + state). We reproduce exactly that byte structure
by registering a throw-away ``torch_utils.persistence`` module while pickling.
"""

from __future__ import annotations

import contextlib
import copyreg
import pickle
import sys
import types
from collections import OrderedDict

import torch
from torch import nn

# Source text that would be exec'd by EDM's own loader. Our loader must never run it: it creates
# the file named in MARKER_ENV when executed.
HOSTILE_MODULE_SRC = (
    "import os, pathlib\n"
    "pathlib.Path(os.environ.get('DMD_TEST_MARKER', '/tmp/dmd_module_src_was_executed')).write_text('ran')\n"
    "class EDMPrecond: pass\n"
)


def _reconstruct_persistent_obj(meta):  # pragma: no cover - stand-in, never called by the tests
    raise RuntimeError("this stand-in only exists so that pickle can reference it")


@contextlib.contextmanager
def _fake_persistence_module():
    pkg = types.ModuleType("torch_utils")
    mod = types.ModuleType("torch_utils.persistence")
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    pkg.persistence = mod
    saved = {k: sys.modules.get(k) for k in ("torch_utils", "torch_utils.persistence")}
    sys.modules["torch_utils"], sys.modules["torch_utils.persistence"] = pkg, mod
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class _Persistent:
    """Pickles as EDM's persistent reconstruct call."""

    def __init__(self, class_name, state, module_src):
        self.meta = dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)

    def __reduce__(self):
        return (_reconstruct_persistent_obj, (self.meta,))


class _ModuleDict:
    """Pickles as a real torch.nn.ModuleDict (NEWOBJ of the class + BUILD with its state)."""

    def __init__(self, state):
        self.state = state

    @property
    def __class__(self):  # pickle checks that __newobj__'s class is the object's class
        return nn.ModuleDict

    def __reduce__(self):
        return (copyreg.__newobj__, (nn.ModuleDict,), self.state)


def _module_state(m: nn.Module, children: OrderedDict) -> dict:
    state = {
        "training": False,
        "_parameters": OrderedDict((k, v) for k, v in m._parameters.items()),
        "_buffers": OrderedDict((k, v) for k, v in m._buffers.items()),
        "_non_persistent_buffers_set": set(),
        "_backward_hooks": OrderedDict(),
        "_forward_hooks": OrderedDict(),
        "_forward_pre_hooks": OrderedDict(),
        "_state_dict_hooks": OrderedDict(),
        "_load_state_dict_pre_hooks": OrderedDict(),
        "_modules": children,
    }
    # plain attributes (ints, floats, bools, strings, lists), as EDM modules carry them
    for k, v in vars(m).items():
        if not k.startswith("_") and isinstance(v, (int, float, bool, str, list, tuple)):
            state[k] = v
    return state


def _mirror(m: nn.Module, module_src: str, init_kwargs: dict | None = None):
    children = OrderedDict((k, _mirror(c, module_src) if c is not None else None) for k, c in m._modules.items())
    state = _module_state(m, children)
    if isinstance(m, nn.ModuleDict):
        return _ModuleDict(state)
    state["_init_args"] = ()
    state["_init_kwargs"] = dict(init_kwargs or {})
    return _Persistent(type(m).__name__, state, module_src)


def write_edm_pickle(path, net: nn.Module, init_kwargs: dict, *, module_src: str = HOSTILE_MODULE_SRC,
                     protocol: int = 4, dataset_kwargs: dict | None = None) -> None:
    """Write ``net`` (an EDMPrecond) as an EDM network pickle at ``path``.

    ``init_kwargs`` are stored as the top module's ``_init_kwargs`` (numpy scalars allowed, as in
    real files). A fake ``loss_fn`` persistent object is included, like EDM's EDMLoss.
    """
    with torch.no_grad():
        ema = _mirror(net, module_src, init_kwargs)
    loss_fn = _Persistent("EDMLoss", {"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5,
                                      "_init_args": (), "_init_kwargs": {}}, module_src)
    data = {"ema": ema, "loss_fn": loss_fn, "augment_pipe": None,
            "dataset_kwargs": dataset_kwargs or {"class_name": "training.dataset.ImageFolderDataset",
                                                 "resolution": 16}}
    with _fake_persistence_module(), open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)


class _SystemCall:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        import os

        return (os.system, (self.cmd,))


def write_hostile_pickle(path, command: str, *, inside_edm_dict: bool = True) -> None:
    """A pickle whose loading would run ``os.system(command)`` (for refusal tests)."""
    payload = _SystemCall(command)
    data = {"ema": payload, "loss_fn": None} if inside_edm_dict else payload
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
