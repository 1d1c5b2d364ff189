"""Transport figures of a teacher's ODE map, comparable across families.

Every family's trajectory is put on the linear path of flow matching: an EDM state x at noise
level sigma becomes x_t = x / (1 + sigma) at t = sigma / (1 + sigma) (the same Gaussian path,
``teachers.flow``), so trajectories of all families run from about z (t near 1) to T(z) (t = 0).
On that path, per sample, with the trajectory points x_0 .. x_N at times t_0 > .. > t_N:

* path energy  E = sum_i ||x_{i+1} - x_i||^2 / (t_i - t_{i+1})  (kinetic energy of the
  piecewise-linear path; >= ||x_N - x_0||^2 / (t_0 - t_N), equal only for a straight,
  constant-speed path);
* straightness S = ||x_N - x_0|| / sum_i ||x_{i+1} - x_i||  (1 = straight line);
* eta(T) = pairing.transport_inefficiency(z, T(z)) (pairing.md).

Reported as means over the noise batch, with ``energy_ratio`` = E / (||x_N - x_0||^2/(t_0 - t_N)) - 1
(0 for straight paths).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..config import SamplerConfig
from ..samplers import karras_sigmas


@dataclass(frozen=True)
class TransportFigures:
    family: str
    n: int
    d: int
    eta: float | None          # transport inefficiency of T (pairing.md)
    path_energy: float         # mean kinetic energy of the trajectory on the linear path
    energy_ratio: float        # path_energy / straight-line energy - 1 (0 = straight)
    straightness: float        # mean chord / arc length (1 = straight)

    def to_dict(self) -> dict:
        return asdict(self)


def _times(family: str, sampler_cfg: SamplerConfig, steps: int) -> np.ndarray:
    if family == "edm":
        c = sampler_cfg
        s = karras_sigmas(steps, c.sigma_min, c.sigma_max, c.rho, append_zero=True).numpy()
        return s / (1.0 + s)
    return np.linspace(1.0, 0.0, steps + 1)


def path_figures(traj: np.ndarray, times: np.ndarray) -> tuple[float, float, float]:
    """(path_energy, energy_ratio, straightness) of trajectories traj (N+1, B, d) already on the
    linear path at times (N+1,) (descending)."""
    steps = np.diff(traj, axis=0)                            # (N, B, d)
    seg = np.sqrt((steps ** 2).sum(-1))                      # (N, B)
    dt = (times[:-1] - times[1:])[:, None]                   # (N, 1)
    energy = ((seg ** 2) / dt).sum(0)                        # (B,)
    chord2 = ((traj[-1] - traj[0]) ** 2).sum(-1)             # (B,)
    straight_energy = chord2 / (times[0] - times[-1])
    arc = seg.sum(0)
    ok = arc > 0
    straightness = float(np.mean(np.sqrt(chord2[ok]) / arc[ok])) if ok.any() else 1.0
    ratio = float(np.mean(energy) / np.mean(straight_energy) - 1.0) if np.mean(straight_energy) > 0 else 0.0
    return float(np.mean(energy)), ratio, straightness


def transport_figures(teacher, z: torch.Tensor, sampler_cfg: SamplerConfig = SamplerConfig(), labels=None) -> TransportFigures:
    """eta(T), path energy and straightness of ``teacher`` (a ToyTeacher of any family) on the
    noise batch z (n, d)."""
    from ..pairing import transport_inefficiency

    family = teacher.family
    x, traj = teacher.sample(z, sampler_cfg, labels=labels, return_trajectory=True)
    traj = traj.detach().cpu().double().numpy()
    times = _times(family, sampler_cfg, traj.shape[0] - 1)
    if family == "edm":  # EDM state x = x_0 + sigma eps  ->  x_t = x / (1 + sigma)
        sig = karras_sigmas(traj.shape[0] - 1, sampler_cfg.sigma_min, sampler_cfg.sigma_max, sampler_cfg.rho,
                            append_zero=True).numpy()
        traj = traj / (1.0 + sig)[:, None, None]
    energy, ratio, straight = path_figures(traj, times)
    try:
        eta = float(transport_inefficiency(z.detach().cpu().numpy(), x.detach().cpu().numpy()))
    except ValueError:
        eta = None
    return TransportFigures(family=family, n=int(z.shape[0]), d=int(z.shape[1]), eta=eta,
                            path_energy=energy, energy_ratio=ratio, straightness=straight)
