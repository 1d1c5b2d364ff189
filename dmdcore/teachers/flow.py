"""Flow-matching teachers: rectified flow (Liu et al. 2023; Lipman et al. 2023) and OT-CFM
(Tong et al. 2024, minibatch optimal-transport couplings), behind the denoiser call
``D(x, sigma, labels) -> x0_hat`` so every student trainer runs on them unchanged.

Path (linear interpolation, noise at t = 1): x_t = (1 - t) x_0 + t eps, target velocity
v = eps - x_0. The network predicts v_theta(x_t, t). The same Gaussian path in EDM's
parametrisation is x = x_0 + sigma eps with sigma = t / (1 - t) and x_t = x / (1 + sigma), so

    D(x; sigma) = x_t - t v_theta(x_t, t),   t = sigma / (1 + sigma),  x_t = x / (1 + sigma)

is the flow teacher's denoiser (the x_0 prediction), and its EDM probability-flow ODE is the flow
ODE dx_t/dt = v(x_t, t) re-timed. The ODE map T(z) integrates dx_t/dt = v from x_1 = z to t = 0
with Euler or Heun on a uniform t grid (``flow_sampler``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class FlowDenoiser(nn.Module):
    """Velocity model v_theta(x_t, t) = F(x_t, t, labels) over any backbone F(x, c_noise, labels)
    (e.g. ``nets.MLPBackbone``), exposed as the denoiser D(x, sigma, labels) (module docstring).

    forward(x (B, *shape), sigma float | 0-d | (B,) tensor, labels one-hot (B, L) | int (B,) | None)
    -> x0_hat (B, *shape) float32. ``velocity(x_t, t, labels)`` is the raw velocity.
    ``sigma_data`` is kept for the fake-score loss weighting (EDM lambda(sigma)).
    """

    def __init__(self, backbone: nn.Module, sigma_data: float):
        super().__init__()
        sigma_data = float(sigma_data)
        if not (0 < sigma_data < float("inf")):
            raise ValueError(f"sigma_data: {sigma_data} not in (0, inf)")
        self.model = backbone
        self.sigma_data = sigma_data
        self.label_dim = int(getattr(backbone, "label_dim", 0))
        self.feature_dim = int(getattr(backbone, "feature_dim", 0))

    def _labels(self, labels, b: int, dtype, device):
        if labels is not None:
            if labels.dtype in (torch.int64, torch.int32) and labels.ndim == 1:
                return nn.functional.one_hot(labels.long(), self.label_dim).to(dtype)
            return labels.to(dtype)
        if self.label_dim > 0:
            return torch.zeros(b, self.label_dim, dtype=dtype, device=device)
        return None

    def _per_sample(self, v, b: int, dtype, device) -> torch.Tensor:
        v = torch.as_tensor(v, dtype=dtype, device=device).reshape(-1)
        if v.numel() == 1:
            return v.expand(b)
        if v.numel() != b:
            raise ValueError(f"sigma/t: {v.numel()} values for a batch of {b} (need 1 or {b})")
        return v

    def velocity(self, x_t: torch.Tensor, t, labels: torch.Tensor | None = None) -> torch.Tensor:
        """v_theta(x_t, t): x_t (B, *shape), t in [0, 1] (float or (B,)) -> (B, *shape) float32."""
        x_t = x_t.to(torch.float32)
        b = x_t.shape[0]
        t = self._per_sample(t, b, torch.float32, x_t.device)
        return self.model(x_t, t, self._labels(labels, b, torch.float32, x_t.device))

    def _to_flow(self, x, sigma):
        x = x.to(torch.float32)
        b = x.shape[0]
        sigma = self._per_sample(sigma, b, torch.float32, x.device)
        view = (-1,) + (1,) * (x.ndim - 1)
        # sigma = t / (1 - t)  <=>  t = sigma / (1 + sigma); x_t = x / (1 + sigma)
        t = sigma / (1 + sigma)
        return x / (1 + sigma).view(view), t, view

    def forward(self, x: torch.Tensor, sigma, labels: torch.Tensor | None = None) -> torch.Tensor:
        x_t, t, view = self._to_flow(x, sigma)
        # x_0 = x_t - t v  (from x_t = (1 - t) x_0 + t eps and v = eps - x_0)
        return x_t - t.view(view) * self.model(x_t, t, self._labels(labels, x.shape[0], torch.float32, x.device))

    def features(self, x: torch.Tensor, sigma, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The backbone's last hidden layer at (x_t, t): (B, feature_dim)."""
        x_t, t, _ = self._to_flow(x, sigma)
        return self.model.features(x_t, t, self._labels(labels, x.shape[0], torch.float32, x.device))

    def forward_and_features(self, x: torch.Tensor, sigma, labels: torch.Tensor | None = None):
        """(D(x; sigma), features) from a single backbone pass."""
        x_t, t, view = self._to_flow(x, sigma)
        F_x, h = self.model.forward_and_features(x_t, t, self._labels(labels, x.shape[0], torch.float32, x.device))
        return x_t - t.view(view) * F_x, h


def flow_matching_loss(v_pred: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Conditional flow matching loss (Lipman et al. 2023 eq. 9 for the linear path): mean over
    batch and dims of (v_theta(x_t, t) - (eps - x_0))^2."""
    return (v_pred - (eps - x0)).square().mean()


def interpolate(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x_0 + t eps, t (B,)."""
    tv = t.reshape((-1,) + (1,) * (x0.ndim - 1))
    return (1 - tv) * x0 + tv * eps


@torch.no_grad()
def flow_sampler(
    velocity: Callable,
    z: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    steps: int = 18,
    solver: str = "heun",
    return_trajectory: bool = False,
    callback: Callable[[dict], None] | None = None,
):
    """The flow ODE map T(z): integrate dx/dt = v(x, t) from x_1 = z down to t = 0 on the uniform
    grid t_i = 1 - i / steps with Euler or Heun (Heun's correction on every step; the last one ends
    at t = 0, where v is still defined). State accumulated in float64; velocity gets float32.

    Returns x_0 (B, *shape) in z's dtype, or (x_0, trajectory (steps + 1, B, *shape)).
    ``callback({"i", "steps", "t", "x"})`` after each step.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: {steps!r} not in integers >= 1")
    if solver not in ("heun", "euler"):
        raise ValueError(f"solver: {solver!r} not in ('heun', 'euler')")
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    x = z.to(torch.float64)
    traj = [x.to(z.dtype)] if return_trajectory else None
    for i in range(steps):
        t_cur, t_next = float(ts[i]), float(ts[i + 1])
        h = t_next - t_cur
        d_cur = velocity(x.to(torch.float32), t_cur, labels).to(torch.float64)
        x_next = x + h * d_cur
        if solver == "heun":
            d_next = velocity(x_next.to(torch.float32), t_next, labels).to(torch.float64)
            x_next = x + h * 0.5 * (d_cur + d_next)
        x = x_next
        if traj is not None:
            traj.append(x.to(z.dtype))
        if callback is not None:
            callback({"i": i, "steps": steps, "t": t_next, "x": x})
    out = x.to(z.dtype)
    return (out, torch.stack(traj)) if return_trajectory else out
