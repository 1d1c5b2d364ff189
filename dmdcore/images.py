"""Image sampling for EDM-family teachers and one-step students, per-image seeds, an on-disk
cache, pair metrics, and the digits data of the demo pair.

- Teacher: ``dmdcore.samplers.edm_sampler`` (EDM Algorithm 2: Heun, Karras steps, optional churn).
- Student: one step at σ = 80, x = D_G(80·z; 80, one_hot(label)) (DMD2's generator).
- Noise: one ``torch.Generator`` per image seed (z drawn on the CPU, then moved), so an image
  never depends on the batch it was computed in or on the device that drew it. With churn
  (S_churn > 0) the sampler's fresh noise comes from the batch's generator, so stochastic
  teacher sampling is run one image at a time, with its own churn generator seeded by
  ``churn_seed(seed)`` (a separate stream, see there; never another image's starting-noise seed).
- All sampling runs under ``torch.inference_mode``.
Images are float32 (B, C, H, W) in the data range [-1, 1]; ``to_uint8`` maps them with
x·127.5 + 128, clipped (EDM's convention).
"""

from __future__ import annotations

import hashlib
from typing import Any
import json
import io
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import SamplerConfig
from .device import pick_device
from .networks import DEMO_KWARGS, set_fast_attention
from .samplers import edm_sampler

__all__ = [
    "DEMO_CONFIG",
    "IMAGENET_SAMPLER",
    "DETERMINISTIC_SAMPLER",
    "digits16",
    "image_noise",
    "churn_seed",
    "churn_generator",
    "model_fingerprint",
    "one_hot",
    "optimize_for_inference",
    "sample_teacher",
    "sample_student",
    "generate_images",
    "ImageCache",
    "to_uint8",
    "pair_metrics",
    "PairMetrics",
    "image_grid",
]

# The demo pair's EDMPrecond kwargs (see scripts/make_demo_pair.py).
DEMO_CONFIG: dict = dict(DEMO_KWARGS, sigma_data=0.5)
# EDM's deterministic default (N = 18, 35 NFE) and its stochastic ImageNet-64 setting (N = 256).
DETERMINISTIC_SAMPLER = SamplerConfig()
IMAGENET_SAMPLER = SamplerConfig(steps=256, S_churn=40.0, S_min=0.05, S_max=50.0, S_noise=1.003)
STUDENT_SIGMA = 80.0


def digits16() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 8×8 digits as (1797, 1, 16, 16) float32 in [-1, 1] (pixel/16, bilinear
    2× upsampling, ·2 − 1) and (1797,) int64 labels 0-9."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).clamp(0, 1) * 2 - 1
    return x.contiguous(), torch.tensor(d.target, dtype=torch.int64)


def _check_ids(name: str, values: Sequence[int], low: int, high: int | None = None) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low or (high is not None and v >= high):
            rng = f"[{low}, {high})" if high is not None else f">= {low}"
            raise ValueError(f"{name}: {v!r} not an integer in {rng}")
        out.append(int(v))
    return out


def image_noise(seeds: Sequence[int], shape: Sequence[int], device=None) -> torch.Tensor:
    """Standard normal noise, one independent generator per seed: (len(seeds), *shape) float32.
    Drawn on the CPU then moved to ``device``, so z is the same on every device."""
    seeds = _check_ids("seeds", seeds, 0, 2**63)
    z = torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(s)) for s in seeds])
    return z.to(pick_device(device) if device is not None else "cpu")


CHURN_STREAM = "dmdcore.images.churn"


def churn_seed(seed: int) -> int:
    """Seed of the churn-noise stream of image ``seed``: the first 8 bytes (little-endian) of
    sha256("dmdcore.images.churn:<seed>"), an integer in [0, 2**64).

    A separate stream from the starting noise (which uses ``seed`` itself): seeding churn with
    ``seed + 1`` would replay the *next* image's starting noise z_{seed+1} as churn noise. (CPU
    generators use only the low 32 bits of a seed, so a hashed seed, rather than a fixed offset
    such as 2**32 or 2**63, is what keeps the streams apart.)"""
    (s,) = _check_ids("seeds", [seed], 0, 2**63)
    return int.from_bytes(hashlib.sha256(f"{CHURN_STREAM}:{s}".encode()).digest()[:8], "little")


def churn_generator(seed: int, device=None) -> torch.Generator:
    """``torch.Generator`` on ``device`` (default CPU) for image ``seed``'s churn noise."""
    return torch.Generator(device=device or "cpu").manual_seed(churn_seed(seed))


def one_hot(class_ids: Sequence[int], label_dim: int, device=None) -> torch.Tensor | None:
    """One-hot labels (B, label_dim) float32, or None when label_dim = 0 (unconditional)."""
    if label_dim == 0:
        return None
    ids = _check_ids("class_ids", class_ids, 0, label_dim)
    return F.one_hot(torch.tensor(ids, dtype=torch.int64), label_dim).float().to(device or "cpu")


def _model_device(net: nn.Module) -> torch.device:
    p = next(net.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def optimize_for_inference(net: nn.Module, *, channels_last: bool | None = None) -> nn.Module:
    """The project's fast path (same math, same weights): fused SDPA attention and, on CUDA (or
    when asked), channels-last memory format. Returns ``net`` (modified in place)."""
    set_fast_attention(net, True)
    if channels_last is None:
        channels_last = _model_device(net).type == "cuda"
    if channels_last:
        net.to(memory_format=torch.channels_last)
    return net


def _labels_for(net, class_ids, device):
    return one_hot(class_ids, int(getattr(net, "label_dim", 0)), device)


def _net_shape(net) -> tuple[int, int, int]:
    return (int(net.img_channels), int(net.img_resolution), int(net.img_resolution))


_FINGERPRINT_ATTRS = ("img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_min", "sigma_max",
                      "sigma_data")


def model_fingerprint(net: nn.Module) -> str:
    """Short hash of what, besides the checkpoint's bytes, decides a model's images: its
    constructor config (``net.init_kwargs``, set by ``load_checkpoint`` with any explicit
    override applied), the live EDMPrecond attributes (sigma_data, sigma_min/max, use_fp16, …),
    the parameter dtype and the device type. Part of the image cache key."""
    p = next(net.parameters(), None)
    blob = {
        "class": type(net).__name__,
        "attrs": {k: getattr(net, k, None) for k in _FINGERPRINT_ATTRS},
        "config": getattr(net, "init_kwargs", None),
        "dtype": str(p.dtype) if p is not None else None,
        "device": p.device.type if p is not None else "cpu",
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def _nfe_fraction(i: int, steps: int) -> float:
    """Fraction of a Heun run's 2N−1 network evaluations done after step i (0-based)."""
    return (2 * (i + 1) - (1 if i == steps - 1 else 0)) / (2 * steps - 1)


def sample_student(net: nn.Module, class_ids: Sequence[int], seeds: Sequence[int], *,
                   sigma: float = STUDENT_SIGMA, channels_last: bool = False) -> torch.Tensor:
    """One-step student: x = D_G(σ·z; σ, one_hot(class)) with σ = 80 (DMD2). Runs on the model's
    device; returns (B, C, H, W) float32 on the CPU."""
    if len(class_ids) != len(seeds):
        raise ValueError(f"class_ids/seeds: lengths {len(class_ids)} and {len(seeds)} differ")
    dev = _model_device(net)
    z = image_noise(seeds, _net_shape(net), dev)
    labels = _labels_for(net, class_ids, dev)
    if channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        # DMD2 one-step generator: G(z) = D_G(sigma_max z; sigma_max)
        x = net(z * sigma, torch.full((z.shape[0],), float(sigma), device=dev), labels)
    return x.float().cpu().contiguous()


def sample_teacher(net: nn.Module, class_ids: Sequence[int], seeds: Sequence[int], *,
                   sampler: SamplerConfig = DETERMINISTIC_SAMPLER, channels_last: bool = False,
                   callback: Callable[[dict], None] | None = None) -> torch.Tensor:
    """Teacher samples with the EDM sampler (``dmdcore.samplers.edm_sampler``): (B, C, H, W)
    float32 on the CPU. Deterministic settings run batched; with churn each image runs alone with
    its own generator (``churn_generator(seed)``) so results never depend on the batch.

    ``callback`` gets the sampler's per-step event ``{"i", "steps", "sigma", "x"}`` plus
    ``"image"`` (index in this call when images run one at a time, else None) and ``"fraction"``
    (share of this call's network evaluations done, in (0, 1])."""
    if not isinstance(sampler, SamplerConfig):
        raise ValueError(f"sampler: expected a SamplerConfig, got {type(sampler).__name__}")
    sampler.validate()
    if len(class_ids) != len(seeds):
        raise ValueError(f"class_ids/seeds: lengths {len(class_ids)} and {len(seeds)} differ")
    dev = _model_device(net)
    z = image_noise(seeds, _net_shape(net), dev)
    labels = _labels_for(net, class_ids, dev)
    if channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    kw = dict(steps=sampler.steps, sigma_min=sampler.sigma_min, sigma_max=sampler.sigma_max, rho=sampler.rho,
              S_churn=sampler.S_churn, S_min=sampler.S_min, S_max=sampler.S_max, S_noise=sampler.S_noise)
    n = len(seeds)

    def step_cb(image):
        if callback is None:
            return None

        def cb(ev):
            f = _nfe_fraction(ev["i"], ev["steps"])
            callback({**ev, "image": image, "fraction": f if image is None else (image + f) / n})
        return cb

    with torch.inference_mode():
        if sampler.S_churn == 0:
            out = edm_sampler(net, z, labels, callback=step_cb(None), **kw)
        else:
            outs = []
            for i, s in enumerate(seeds):
                g = churn_generator(s, dev)  # churn noise of image i: its own stream
                outs.append(edm_sampler(net, z[i:i + 1], labels[i:i + 1] if labels is not None else None,
                                        generator=g, callback=step_cb(i), **kw))
            out = torch.cat(outs)
    return out.float().cpu().contiguous()


def sampler_key(sampler: SamplerConfig | None) -> dict:
    """JSON-able description of the sampling settings (cache key part); None = one-step student."""
    if sampler is None:
        return {"kind": "one-step", "sigma": STUDENT_SIGMA}
    d = asdict(sampler)
    return {"kind": "edm", **{k: (repr(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}}


class ImageCache:
    """On-disk cache of generated images keyed by (checkpoint sha256, model fingerprint, class,
    seed, sampler settings); the fingerprint (``model_fingerprint``) covers config overrides such
    as sigma_data, the dtype and the device type.

    Each image is a small ``.npy`` (float32 (C, H, W)) under ``root``; reads refresh the file's
    mtime and writes evict least-recently-used files once the total exceeds ``max_bytes``.
    """

    def __init__(self, root: str | Path, max_bytes: int = 256 * 2**20):
        if not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes: {max_bytes!r} not an integer >= 1")
        self.root = Path(root)
        self.max_bytes = max_bytes

    @staticmethod
    def key(ckpt_hash: str, class_id: int, seed: int, sampler: SamplerConfig | None, model: str = "") -> str:
        blob = json.dumps({"ckpt": ckpt_hash, "model": model, "class": int(class_id), "seed": int(seed),
                           "sampler": sampler_key(sampler)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        p = self._path(key)
        try:
            arr = np.load(p, allow_pickle=False)
        except (FileNotFoundError, ValueError, OSError, EOFError):
            return None
        os.utime(p)
        return arr

    def put(self, key: str, image: np.ndarray) -> None:
        from .runs import DiskFullError, atomic_write_bytes

        p = self._path(key)
        buf = io.BytesIO()
        np.save(buf, np.asarray(image, dtype=np.float32), allow_pickle=False)
        try:
            atomic_write_bytes(p, buf.getvalue())
        except DiskFullError:
            return  # a cache: on a full disk the image is simply not cached (no temp file left)
        self.evict()

    def _files(self) -> list[Path]:
        return list(self.root.glob("*/*.npy")) if self.root.exists() else []

    def stats(self) -> dict:
        files = self._files()
        return {"files": len(files), "bytes": sum(f.stat().st_size for f in files), "max_bytes": self.max_bytes}

    def evict(self) -> int:
        """Delete least-recently-used files until the cache fits in max_bytes; returns the count."""
        files = [(f.stat().st_mtime_ns, f.stat().st_size, f) for f in self._files()]
        total = sum(s for _, s, _ in files)
        removed = 0
        for _, size, f in sorted(files, key=lambda t: t[0]):
            if total <= self.max_bytes:
                break
            f.unlink(missing_ok=True)
            total -= size
            removed += 1
        return removed

    def clear(self) -> int:
        """Delete every cached image; returns how many were removed."""
        files = self._files()
        for f in files:
            f.unlink(missing_ok=True)
        return len(files)


def generate_images(net: nn.Module, class_ids: Sequence[int], seeds: Sequence[int], *,
                    sampler: SamplerConfig | None, ckpt_hash: str | None = None,
                    cache: ImageCache | None = None, batch_size: int = 8,
                    callback: Callable[[dict], None] | None = None,
                    should_stop: Callable[[], bool] | None = None,
                    progress: Callable[[dict], None] | None = None) -> torch.Tensor:
    """Generate (or read from ``cache``) one image per (class, seed): (B, C, H, W) float32 CPU.

    sampler None = one-step student at σ = 80; a SamplerConfig = teacher (EDM sampler). Missing
    images are computed in batches of ``batch_size`` (results do not depend on it). After each
    batch ``callback({"done", "total", "indices", "images", "elapsed_s", "cached"})`` is called
    with the newly finished images; ``should_stop()`` returning True ends early with
    ``InterruptedError``. The cache is used only when ``ckpt_hash`` is given; its key also holds
    ``model_fingerprint(net)`` (config overrides, dtype, device type).
    ``progress({"done", "total", "indices", "fraction", "elapsed_s"})`` is called during a
    teacher batch after every sampler step: ``fraction`` is the share of the batch's network
    evaluations done, so ``done + fraction·len(indices)`` images' worth of work is finished.
    """
    class_ids = list(class_ids)
    seeds = list(seeds)
    if len(class_ids) != len(seeds) or not seeds:
        raise ValueError(f"class_ids/seeds: need equal, non-zero lengths (got {len(class_ids)}, {len(seeds)})")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: {batch_size!r} not an integer >= 1")
    C, H, W = _net_shape(net)
    out = torch.empty((len(seeds), C, H, W), dtype=torch.float32)
    todo = []
    t0 = time.perf_counter()
    fp = model_fingerprint(net) if (cache and ckpt_hash) else ""
    keys = [ImageCache.key(ckpt_hash, c, s, sampler, fp) if (cache and ckpt_hash) else None
            for c, s in zip(class_ids, seeds)]
    cached = []
    for i, k in enumerate(keys):
        arr = cache.get(k) if k else None
        if arr is not None and arr.shape == (C, H, W):
            out[i] = torch.from_numpy(arr)
            cached.append(i)
        else:
            todo.append(i)
    done = len(cached)
    if cached and callback:
        callback({"done": done, "total": len(seeds), "indices": cached, "images": out[cached],
                  "elapsed_s": time.perf_counter() - t0, "cached": True})
    for start in range(0, len(todo), batch_size):
        if should_stop is not None and should_stop():
            raise InterruptedError(f"generation stopped after {done}/{len(seeds)} images")
        idx = todo[start:start + batch_size]
        cls = [class_ids[i] for i in idx]
        sd = [seeds[i] for i in idx]
        if sampler is None:
            imgs = sample_student(net, cls, sd)
        else:
            step_cb = None
            if progress is not None:
                def step_cb(ev, idx=idx, done=done):
                    progress({"done": done, "total": len(seeds), "indices": idx, "fraction": ev["fraction"],
                              "elapsed_s": time.perf_counter() - t0})
            imgs = sample_teacher(net, cls, sd, sampler=sampler, callback=step_cb)
        out[idx] = imgs
        for j, i in enumerate(idx):
            if keys[i]:
                cache.put(keys[i], imgs[j].numpy())
        done += len(idx)
        if callback:
            callback({"done": done, "total": len(seeds), "indices": idx, "images": imgs,
                      "elapsed_s": time.perf_counter() - t0, "cached": False})
    return out


def to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8 via x·127.5 + 128, clipped (EDM)."""
    x = torch.as_tensor(x, dtype=torch.float32)
    return (x * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_grid(images: np.ndarray, ncols: int, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile (B, H, W, C) uint8 images into one (rows·(H+pad)+pad, cols·(W+pad)+pad, C) image."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images: expected (B, H, W, C), got shape {images.shape}")
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols: {ncols!r} not an integer >= 1")
    B, H, W, C = images.shape
    rows = math.ceil(B / ncols)
    grid = np.full((rows * (H + pad) + pad, ncols * (W + pad) + pad, C), fill, dtype=images.dtype)
    for i in range(B):
        r, c = divmod(i, ncols)
        y, x = pad + r * (H + pad), pad + c * (W + pad)
        grid[y:y + H, x:x + W] = images[i]
    return grid


@dataclass
class PairMetrics:
    """Pair metrics of n (teacher, student) images generated from the same (noise, class)."""

    n: int
    delta_e: float
    ci_low: float | None
    ci_high: float | None
    e_pair: float
    e_ot: float
    e_ind: float
    retrieval: float  # top-1 pair retrieval accuracy (chance 1/n)
    l2: np.ndarray  # (n,) per-pair ‖s_i − t_i‖ (data units, flattened image)
    absdiff: np.ndarray  # (n, H, W) per-pixel |s − t| averaged over channels
    report: Any = None  # dmdcore.verdict.CopyReport: ΔE with n, d, references, resolution, verdict (no twin)


def pair_metrics(teacher: torch.Tensor, student: torch.Tensor, *, bootstrap: int = 200, seed: int = 0) -> PairMetrics:
    """ΔE (with bootstrap CI), pair retrieval accuracy, per-pair L2 and |difference| maps for
    (n, C, H, W) teacher/student images (flattened for the set metrics; n >= 2)."""
    from .pairing import pair_retrieval_accuracy, pairing_inefficiency

    t = torch.as_tensor(teacher, dtype=torch.float32)
    s = torch.as_tensor(student, dtype=torch.float32)
    if t.shape != s.shape or t.ndim != 4:
        raise ValueError(f"teacher/student: need equal (n, C, H, W) shapes, got {tuple(t.shape)} and {tuple(s.shape)}")
    if t.shape[0] < 2:
        raise ValueError(f"teacher/student: n = {t.shape[0]} pairs, need at least 2 for ΔE")
    tf, sf = t.reshape(t.shape[0], -1).double(), s.reshape(s.shape[0], -1).double()
    pr = pairing_inefficiency(sf.numpy(), tf.numpy(), bootstrap=bootstrap, seed=seed)
    from .verdict import copy_report

    # the copy verdict: no independent image teacher ships, so the twin controls are absent
    report = copy_report(sf.numpy(), tf.numpy(), bootstrap=bootstrap, seed=seed)
    return PairMetrics(report=report,
        n=pr.n, delta_e=float(pr.delta_e), ci_low=pr.ci_low, ci_high=pr.ci_high, e_pair=float(pr.e_pair),
        e_ot=float(pr.e_ot), e_ind=float(pr.e_ind),
        retrieval=float(pair_retrieval_accuracy(sf.numpy(), tf.numpy())),
        l2=(sf - tf).norm(dim=1).numpy(),
        absdiff=(s - t).abs().mean(dim=1).numpy(),
    )


class ImageGenerationJob:
    """Background generation of a teacher/student comparison on a daemon thread.

    Student images (one step, fast) are generated first, then teacher images batch by batch;
    ``snapshot()`` returns copies of what is finished so far (NaN-filled where not yet done),
    progress (updated after every sampler step, so it moves within a batch), the per-image time
    and an ETA. Thread-safe; ``stop()`` ends after the current batch. Any exception in the worker
    ends the job in state "failed" with the message in ``error``.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, class_ids: Sequence[int], seeds: Sequence[int], *,
                 sampler: SamplerConfig = DETERMINISTIC_SAMPLER, teacher_hash: str | None = None,
                 student_hash: str | None = None, cache: ImageCache | None = None, batch_size: int = 4):
        import threading

        if _net_shape(teacher) != _net_shape(student):
            raise ValueError(f"student: image shape {_net_shape(student)} differs from the teacher's {_net_shape(teacher)}")
        if int(getattr(teacher, "label_dim", 0)) != int(getattr(student, "label_dim", 0)):
            raise ValueError("student: label_dim differs from the teacher's")
        self.class_ids, self.seeds = list(class_ids), list(seeds)
        if len(self.class_ids) != len(self.seeds) or not self.seeds:
            raise ValueError("class_ids/seeds: need equal, non-zero lengths")
        self._args = dict(teacher=teacher, student=student, sampler=sampler, teacher_hash=teacher_hash,
                          student_hash=student_hash, cache=cache, batch_size=batch_size)
        n = len(self.seeds)
        shape = (n, *_net_shape(teacher))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t = torch.full(shape, float("nan"))
        self._s = torch.full(shape, float("nan"))
        self._done = {"teacher": 0, "student": 0}
        self._state, self._phase, self._error = "queued", "student", None
        self._t0 = None
        self._teacher_t0 = None
        self._teacher_computed = 0
        self._teacher_partial = 0.0  # images' worth of work done in the running teacher batch
        self._teacher_elapsed = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True, name="image-generation")

    def start(self) -> "ImageGenerationJob":
        self._t0 = time.perf_counter()
        self._state = "running"
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _cb(self, role):
        def cb(ev):
            with self._lock:
                buf = self._t if role == "teacher" else self._s
                buf[ev["indices"]] = ev["images"]
                self._done[role] = ev["done"]
                if role == "teacher" and not ev["cached"]:
                    self._teacher_computed += len(ev["indices"])
                    self._teacher_partial = 0.0
                    self._teacher_elapsed = time.perf_counter() - self._teacher_t0
        return cb

    def _progress(self, ev):
        with self._lock:
            self._teacher_partial = ev["fraction"] * len(ev["indices"])
            self._teacher_elapsed = time.perf_counter() - self._teacher_t0

    def _run(self):
        a = self._args
        try:
            generate_images(a["student"], self.class_ids, self.seeds, sampler=None, ckpt_hash=a["student_hash"],
                            cache=a["cache"], batch_size=max(a["batch_size"], 8), callback=self._cb("student"),
                            should_stop=self._stop.is_set)
            with self._lock:
                self._phase = "teacher"
                self._teacher_t0 = time.perf_counter()
            generate_images(a["teacher"], self.class_ids, self.seeds, sampler=a["sampler"], ckpt_hash=a["teacher_hash"],
                            cache=a["cache"], batch_size=a["batch_size"], callback=self._cb("teacher"),
                            should_stop=self._stop.is_set, progress=self._progress)
            with self._lock:
                self._state, self._phase = "finished", "done"
        except InterruptedError:
            with self._lock:
                self._state = "stopped"
        except Exception as exc:  # noqa: BLE001 - any error must end the job, or the page polls forever
            with self._lock:
                self._state, self._error = "failed", f"{type(exc).__name__}: {exc}"

    def snapshot(self) -> dict:
        """Copies: state (running|finished|stopped|failed), phase, done counts, total,
        progress_teacher (finished teacher images plus the share of the running batch, a float),
        teacher / student (n, C, H, W) float32 with NaN where unfinished, per_image_s and eta_s of
        the teacher phase (None until measurable; both move within a batch), elapsed_s, error."""
        with self._lock:
            n = len(self.seeds)
            work = self._teacher_computed + self._teacher_partial
            per = self._teacher_elapsed / work if work > 0 else None
            left = max(0.0, n - self._done["teacher"] - self._teacher_partial)
            return {
                "state": self._state, "phase": self._phase, "total": n,
                "done_teacher": self._done["teacher"], "done_student": self._done["student"],
                "progress_teacher": min(float(n), self._done["teacher"] + self._teacher_partial),
                "teacher": self._t.clone(), "student": self._s.clone(),
                "per_image_s": per, "eta_s": per * left if per is not None else None,
                "elapsed_s": time.perf_counter() - self._t0 if self._t0 else 0.0,
                "error": self._error,
            }
