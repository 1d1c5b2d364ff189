"""Toy (vector) models as plain-dict checkpoints: ``ToyTeacher`` and student / fake-score files.

File format ``dmdcore.toy.v1`` (a dict saved with ``torch.save``, read with ``weights_only=True``):
{"format", "role" ("teacher" | "student" | "fake"), "config" (TeacherConfig dict),
 "data_config" (DataConfig dict or None), "sigma_data", "dim", "label_dim", "step",
 "arch" (MLPBackbone constructor arguments), "state_dict"} (+ "distill_config" for students).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .config import DataConfig, DistillConfig, SamplerConfig, TeacherConfig
from .device import pick_device
from .nets import MLPBackbone
from .precond import EDMDenoiser
from .samplers import edm_sampler

FORMAT = "dmdcore.toy.v1"
ROLES = ("teacher", "student", "fake")


def build_denoiser(dim: int, width: int, depth: int, emb_dim: int, label_dim: int, sigma_data: float) -> EDMDenoiser:
    """EDMDenoiser over a fresh MLPBackbone (initialised from torch's global RNG; seed around it)."""
    return EDMDenoiser(MLPBackbone(dim, width, depth, emb_dim, label_dim), sigma_data)


def save_toy_model(
    path: str | os.PathLike,
    denoiser: EDMDenoiser,
    *,
    role: str,
    teacher_config: TeacherConfig,
    data_config: DataConfig | None = None,
    step: int = 0,
    distill_config: DistillConfig | None = None,
) -> None:
    """Write an EDMDenoiser(MLPBackbone) in the toy format, atomically and durably (a unique temp
    file next to ``path``, fsync'ed, then ``os.replace``: a reader or a crash sees the old file or
    the new one, never a partial one; concurrent writers never share a temp file)."""
    if role not in ROLES:
        raise ValueError(f"role: {role!r} not in {ROLES}")
    if not isinstance(denoiser, EDMDenoiser) or not isinstance(denoiser.model, MLPBackbone):
        raise ValueError("denoiser: the toy format holds EDMDenoiser(MLPBackbone) models only")
    arch = denoiser.model.arch()
    payload = {
        "format": FORMAT,
        "role": role,
        "config": teacher_config.to_dict(),
        "data_config": data_config.to_dict() if data_config is not None else None,
        "sigma_data": float(denoiser.sigma_data),
        "dim": arch["dim"],
        "label_dim": arch["label_dim"],
        "step": int(step),
        "arch": arch,
        "state_dict": {k: v.detach().cpu().clone() for k, v in denoiser.state_dict().items()},
    }
    if distill_config is not None:
        payload["distill_config"] = distill_config.to_dict()
    # unique temporary file in the same directory, fsync, os.replace (dmdcore.runs._atomic_path)
    from .runs import atomic_torch_save

    atomic_torch_save(path, payload)


def load_toy_model(path: str | os.PathLike, device=None) -> tuple[EDMDenoiser, dict]:
    """Read a toy-format file -> (EDMDenoiser in eval mode on ``device``, the raw dict without weights).

    Before anything is built: the file size (``DMD_MAX_CHECKPOINT_BYTES``), the ``arch`` fields
    (ranges, ``DMD_MAX_MODEL_BYTES`` from the computed shapes), ``sigma_data``, honest tensors (no
    stride-0 / overlapping views) and every state-dict shape against the declared ``arch`` are
    checked; a failure is a ValueError naming the file and the field (dmdcore.limits)."""
    from .limits import check_file_size, check_tensors, check_toy_arch, finite_positive, match_shapes

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"path: {path!r} is not an existing file")
    name = os.path.basename(path)
    check_file_size(path, name, "DMD_MAX_CHECKPOINT_BYTES")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, IndexError… of a foreign file
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ValueError(f"{name}: not a readable torch checkpoint ({type(exc).__name__}: {first})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        fmt = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{name}: format {fmt!r} not in {{{FORMAT!r}}}")
    arch = payload.get("arch")
    want = check_toy_arch(arch, name)
    sigma_data = finite_positive(payload.get("sigma_data"), name, "sigma_data")
    sd = payload.get("state_dict")
    if not isinstance(sd, dict):
        raise ValueError(f"{name}: state_dict: missing or not a dict of tensors")
    check_tensors(sd, name)
    match_shapes(want, sd, name, hint=f" (arch: {dict(arch)})")
    for key in ("dim", "label_dim"):
        if key in payload and payload[key] != arch[key]:
            raise ValueError(f"{name}: {key}: {payload[key]!r} differs from arch.{key} {arch[key]!r}")
    den = build_denoiser(*(int(arch[k]) for k in ("dim", "width", "depth", "emb_dim", "label_dim")), sigma_data)
    den.load_state_dict(sd, strict=True)
    den.requires_grad_(False).eval()
    den.to(pick_device(device or "auto"))
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return den, meta


class ToyTeacher:
    """A trained toy EDM teacher: denoiser D(x, sigma, labels) plus its configs.

    ``sample(z)`` is the teacher map T(z) (EDM Heun sampler, deterministic for S_churn = 0).
    """

    def __init__(
        self,
        denoiser: EDMDenoiser,
        sigma_data: float,
        dim: int,
        label_dim: int,
        teacher_config: TeacherConfig,
        data_config: DataConfig | None = None,
        step: int = 0,
    ):
        self.denoiser = denoiser
        self.sigma_data = float(sigma_data)
        self.dim = int(dim)
        self.label_dim = int(label_dim)
        self.teacher_config = teacher_config
        self.data_config = data_config
        self.step = int(step)
        self.twin: "ToyTeacher | None" = None  # its independent twin (dmdcore.twins), when known

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def sample(
        self,
        z: torch.Tensor,
        sampler_cfg: SamplerConfig = SamplerConfig(),
        labels: torch.Tensor | None = None,
        return_trajectory: bool = False,
        generator: torch.Generator | None = None,
        callback=None,
    ):
        """T(z): z (B, dim) -> samples (B, dim) float32 (and the (steps+1, B, dim) trajectory)."""
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"z: shape {tuple(z.shape)} not (B, {self.dim})")
        c = sampler_cfg
        return edm_sampler(
            self.denoiser,
            z.to(self.device),
            labels.to(self.device) if labels is not None else None,
            steps=c.steps,
            sigma_min=c.sigma_min,
            sigma_max=c.sigma_max,
            rho=c.rho,
            S_churn=c.S_churn,
            S_min=c.S_min,
            S_max=c.S_max,
            S_noise=c.S_noise,
            generator=generator,
            return_trajectory=return_trajectory,
            callback=callback,
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write ``{"format": "dmdcore.toy.v1", "role": "teacher", ...}`` to ``path``."""
        save_toy_model(path, self.denoiser, role="teacher", teacher_config=self.teacher_config, data_config=self.data_config, step=self.step)

    @classmethod
    def load(cls, path: str | os.PathLike, device=None) -> "ToyTeacher":
        den, meta = load_toy_model(path, device)
        if meta.get("role") != "teacher":
            raise ValueError(f"{os.path.basename(os.fspath(path))}: role {meta.get('role')!r} not in {{'teacher'}}")
        data_cfg = DataConfig.from_dict(meta["data_config"]) if meta.get("data_config") is not None else None
        return cls(den, meta["sigma_data"], meta["dim"], meta["label_dim"], TeacherConfig.from_dict(meta["config"]), data_cfg, meta.get("step", 0))
