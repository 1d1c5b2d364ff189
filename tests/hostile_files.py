"""Tiny hostile files (issue 15) and a subprocess driver that loads each one and reports the
exception, the time and the peak RSS over the process's baseline.

``make_all(folder) -> {name: (loader, path, expected substring)}`` writes every bomb;
``run_bombs(folder, names) -> {name: {"type", "is_value_error", "message", "seconds", "rss_mb"}}``
loads them in one fresh Python process (RLIMIT_AS = baseline + 3 GiB and a 20 s alarm per bomb,
so a loader without budgets fails fast instead of taking the machine down). Used by
tests/test_hostile.py and benchmarks/faults.py.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _edm_pickle(path: Path, init_kwargs, *, tensors: dict | None = None) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers_edm_pickle import _fake_persistence_module, _Persistent

    state = {"_init_args": (), "_init_kwargs": init_kwargs, "_parameters": OrderedDict(tensors or {}),
             "_buffers": OrderedDict(), "_modules": OrderedDict(), "training": False}
    data = {"ema": _Persistent("EDMPrecond", state, "")}
    with _fake_persistence_module(), open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)


def _expanded_state_dict(cfg: dict) -> dict:
    """Every tensor of EDMPrecond(**cfg) as a stride-0 view of one element (tiny on disk)."""
    import torch

    from dmdcore.networks import EDMPrecond

    with torch.device("meta"):
        probe = EDMPrecond(**cfg)
    one = torch.zeros(1)
    return {k: one.expand(*v.shape) if v.dim() else torch.zeros(()) for k, v in probe.state_dict().items()}


def make_all(folder: str | os.PathLike) -> dict:
    import numpy as np
    import torch

    from dmdcore.networks import IMAGENET64_KWARGS

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    # 1. stride-0 tensors under a huge and under the real ImageNet-64 config
    for mc in (768, 192):
        cfg = dict(IMAGENET64_KWARGS, model_channels=mc)
        p = d / f"expand_mc{mc}.pt"
        torch.save({"format": "dmdcore.image.v1", "config": cfg, "state_dict": _expanded_state_dict(cfg)}, p)
        out[f"expand_mc{mc}"] = ("image", str(p), "stride 0")
    # 2. huge declared architecture, honest (empty) tensors: the budget refuses it
    p = d / "mc768_config.pt"
    torch.save({"format": "dmdcore.image.v1", "config": dict(IMAGENET64_KWARGS, model_channels=768),
                "state_dict": {"x": torch.zeros(1)}}, p)
    out["mc768_budget"] = ("image", str(p), "DMD_MAX_MODEL_BYTES")
    # 3. billion laughs and a cycle in _init_kwargs
    a: list = [0] * 10
    for _ in range(9):
        a = [a] * 10
    p = d / "laughs.pkl"
    _edm_pickle(p, {"img_resolution": 16, "img_channels": 1, "x": a})
    out["billion_laughs"] = ("image", str(p), "DMD_MAX_PICKLE_NODES")
    cyc: list = []
    cyc.append(cyc)
    p = d / "cycle.pkl"
    _edm_pickle(p, {"img_resolution": 16, "img_channels": 1, "x": cyc})
    out["cyclic_kwargs"] = ("image", str(p), "recursive")
    # 4. num_blocks = 10**7 in a .pkl, safetensors metadata and a .pt
    big = dict(img_resolution=16, img_channels=1, model_channels=16, channel_mult=[1], num_blocks=10 ** 7,
               attn_resolutions=[])
    p = d / "blocks.pkl"
    _edm_pickle(p, big)
    out["num_blocks_pkl"] = ("image", str(p), "num_blocks")
    from safetensors.torch import save_file

    p = d / "blocks.safetensors"
    save_file({"x": torch.zeros(1)}, str(p), metadata={"config": json.dumps(big)})
    out["num_blocks_safetensors"] = ("image", str(p), "num_blocks")
    p = d / "blocks.pt"
    torch.save({"format": "dmdcore.image.v1", "config": big, "state_dict": {"x": torch.zeros(1)}}, p)
    out["num_blocks_pt"] = ("image", str(p), "num_blocks")
    # 5. a config that is a list
    p = d / "list_config.pt"
    torch.save({"format": "dmdcore.image.v1", "config": [1, 2], "state_dict": {"x": torch.zeros(1)}}, p)
    out["config_list"] = ("image", str(p), "config")
    # 6. uploads
    header = b"\x93NUMPY\x01\x00"
    hd = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 2), }"
    hd = hd + b" " * (64 - 10 - len(hd) - 1) + b"\n" if len(hd) < 53 else hd + b" " * ((-(10 + len(hd) + 1)) % 64) + b"\n"
    p = d / "huge.npy"
    p.write_bytes(header + struct.pack("<H", len(hd)) + hd + b"\0" * 16)
    out["npy_huge_shape"] = ("upload", str(p), "DMD_MAX_UPLOAD_ROWS")
    p = d / "empty.npy"
    p.write_bytes(b"")
    out["npy_empty"] = ("upload", str(p), "empty")
    p = d / "wide_field.csv"
    p.write_text("x,y\n" + "1," + "9" * 200_000 + "\n" + "1,2\n" * 200)
    out["csv_huge_field"] = ("upload", str(p), "row")
    p = d / "ten_million.csv"
    p.write_bytes(b"0.1,0.2\n" * 10_000_000)
    out["csv_10M_rows"] = ("upload", str(p), "DMD_MAX_UPLOAD_BYTES")
    p = d / "three_million.csv"
    p.write_bytes(b"1,2\n" * 3_000_000)
    out["csv_3M_rows"] = ("upload", str(p), "DMD_MAX_UPLOAD_ROWS")
    # 7. toy teachers: foreign files and a tampered shipped teacher
    out["toy_passwd"] = ("toy", "/etc/passwd", "not a readable torch checkpoint")
    p = d / "random.pt"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    out["toy_random_bytes"] = ("toy", str(p), "not a readable torch checkpoint")
    shipped = torch.load(ROOT / "checkpoints" / "toy" / "8gaussians.pt", weights_only=True)
    for name, change, expect in (("toy_dim3", {"dim": 3}, "shape"), ("toy_no_arch", None, "arch: missing"),
                                 ("toy_width60000", {"width": 60000}, "arch.width")):
        obj = dict(shipped)
        if change is None:
            obj.pop("arch")
        else:
            obj["arch"] = dict(obj["arch"], **change)
        p = d / f"{name}.pt"
        torch.save(obj, p)
        out[name] = ("toy", str(p), expect)
    obj = dict(shipped, arch=dict(shipped["arch"], width=16384, depth=64))
    p = d / "toy_budget.pt"
    torch.save(obj, p)
    out["toy_budget"] = ("toy", str(p), "DMD_MAX_MODEL_BYTES")  # each field in range, the product is not
    return out


_DRIVER = r"""
import json, resource, signal, sys, time
sys.setrecursionlimit(10000)
from dmdcore.checkpoints import load_checkpoint
from dmdcore.data import load_user_array
from dmdcore.toy import load_toy_model
import torch
bombs = json.loads(sys.argv[1])
def vm_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + 3 * 1024 ** 3, resource.RLIM_INFINITY))
def alarm(signum, frame):
    raise TimeoutError("still loading after 20 s")
signal.signal(signal.SIGALRM, alarm)
out = {}
for name, (loader, path) in bombs.items():
    t0 = time.perf_counter()
    signal.alarm(20)
    try:
        if loader == "image":
            load_checkpoint(path, device="cpu", hash_file=False)
        elif loader == "toy":
            load_toy_model(path, device="cpu")
        else:
            load_user_array(path)
        r = {"type": None, "message": "loaded", "is_value_error": False}
    except BaseException as exc:
        r = {"type": type(exc).__name__, "message": str(exc)[:400], "is_value_error": isinstance(exc, ValueError)}
    finally:
        signal.alarm(0)
    r["seconds"] = time.perf_counter() - t0
    r["rss_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    out[name] = r
print("RESULT" + json.dumps(out))
"""


def run_bombs(bombs: dict, timeout: float = 600) -> dict:
    """Load ``{name: (loader, path, …)}`` in a fresh process; see the module docstring."""
    arg = json.dumps({k: v[:2] for k, v in bombs.items()})
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _DRIVER, arg], capture_output=True, text=True, timeout=timeout,
                          cwd=str(ROOT), env=env)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    if not line:
        raise RuntimeError(f"bomb driver died (rc {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(line[-1][len("RESULT"):])


if __name__ == "__main__":  # python tests/hostile_files.py DIR: write the bombs and load them
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/hostile-bombs")
    shutil.rmtree(folder, ignore_errors=True)
    files = make_all(folder)
    for k, v in run_bombs(files).items():
        print(f"{k:24} {v['type'] or 'LOADED':18} {v['seconds']:6.2f} s {v['rss_mb']:8.1f} MB  {v['message'][:90]}")
