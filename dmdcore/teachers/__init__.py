"""Teacher families behind one protocol.

Every teacher is a denoiser ``D(x, sigma, labels=None) -> x0_hat`` (what the students train
against) plus an ODE map ``T(z)`` (what the students are compared with):

| family | module | network predicts | ODE map T(z) |
|---|---|---|---|
| ``edm`` | ``dmdcore.precond.EDMDenoiser`` | x_0 via EDM preconditioning | EDM Heun (Karras schedule) |
| ``fm`` | ``teachers.flow.FlowDenoiser`` | velocity, linear path | Euler / Heun on uniform t |
| ``otcfm`` | ``teachers.flow.FlowDenoiser`` | velocity, minibatch-OT pairs | Euler / Heun on uniform t |

``velocity(D, x_t, t)`` gives the flow velocity of any family (for EDM from the denoiser);
``ode_map`` is T(z) for a family; training lives in ``teachers.training`` (imports the trainers)
and transport figures (eta, path energy, straightness) in ``teachers.transport``.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..config import TEACHER_FAMILIES, SamplerConfig
from ..nets import MLPBackbone
from ..precond import EDMDenoiser
from ..samplers import edm_sampler
from .flow import FlowDenoiser, flow_sampler

__all__ = ["TEACHER_FAMILIES", "FlowDenoiser", "build_denoiser", "family_of", "ode_map", "velocity"]


def build_denoiser(dim: int, width: int, depth: int, emb_dim: int, label_dim: int, sigma_data: float, family: str = "edm"):
    """A fresh denoiser of ``family`` over an MLPBackbone (initialised from torch's global RNG)."""
    if family not in TEACHER_FAMILIES:
        raise ValueError(f"family: {family!r} not in {TEACHER_FAMILIES}")
    backbone = MLPBackbone(dim, width, depth, emb_dim, label_dim)
    return EDMDenoiser(backbone, sigma_data) if family == "edm" else FlowDenoiser(backbone, sigma_data)


def family_of(denoiser) -> str:
    """"edm" for EDM-preconditioned denoisers, "fm" for flow (velocity) denoisers."""
    return "fm" if isinstance(denoiser, FlowDenoiser) else "edm"


def velocity(D, x_t: torch.Tensor, t, labels=None) -> torch.Tensor:
    """Flow velocity v(x_t, t) = (x_t - x0_hat) / t of any denoiser on the linear path (t > 0)."""
    if isinstance(D, FlowDenoiser):
        return D.velocity(x_t, t, labels)
    t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device).reshape(-1)
    view = (-1,) + (1,) * (x_t.ndim - 1)
    sigma = t / (1 - t)
    x0 = D(x_t * (1 + sigma).view(view), sigma, labels)
    return (x_t - x0) / t.view(view)


def ode_map(
    D,
    family: str,
    z: torch.Tensor,
    sampler_cfg: SamplerConfig = SamplerConfig(),
    labels: torch.Tensor | None = None,
    *,
    return_trajectory: bool = False,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
):
    """The teacher map T(z) of ``family`` (z (B, *shape) standard normal): EDM Algorithm 2 for
    "edm", the flow ODE from t = 1 for "fm"/"otcfm" (``sampler_cfg.steps``, ``.solver``).
    Returns x (B, *shape) or (x, trajectory (steps + 1, B, *shape))."""
    c = sampler_cfg
    if family == "edm":
        if c.solver != "heun":
            raise ValueError(f"SamplerConfig.solver: {c.solver!r} not in {{'heun'}} for an EDM teacher")
        return edm_sampler(
            D, z, labels, steps=c.steps, sigma_min=c.sigma_min, sigma_max=c.sigma_max, rho=c.rho,
            S_churn=c.S_churn, S_min=c.S_min, S_max=c.S_max, S_noise=c.S_noise, generator=generator,
            return_trajectory=return_trajectory, callback=callback,
        )
    if family not in TEACHER_FAMILIES:
        raise ValueError(f"family: {family!r} not in {TEACHER_FAMILIES}")
    if not isinstance(D, FlowDenoiser):
        raise ValueError(f"family: {family!r} needs a FlowDenoiser, got {type(D).__name__}")
    return flow_sampler(D.velocity, z, labels, steps=c.steps, solver=c.solver,
                        return_trajectory=return_trajectory, callback=callback)
