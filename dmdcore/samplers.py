"""Samplers: Karras noise schedule, the EDM sampler (Karras et al. 2022, Algorithm 2), and one-step /
few-step student sampling. Pure functions under ``torch.no_grad``; shape-agnostic ((B, *shape))."""

from __future__ import annotations

import math
from typing import Callable

import torch


def karras_sigmas(
    n: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    *,
    append_zero: bool = False,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Karras et al. 2022 eq. (5): t_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho,
    i = 0..n-1, descending from sigma_max to sigma_min (n = 1 gives [sigma_max]).

    With ``append_zero`` the sampler's t_N = 0 is appended (n + 1 values).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: {n!r} not in integers >= 1")
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ValueError(f"sigma_min, sigma_max: ({sigma_min}, {sigma_max}) must satisfy 0 < sigma_min < sigma_max < inf")
    if not (rho > 0):
        raise ValueError(f"rho: {rho} not in (0, inf)")
    i = torch.arange(n, dtype=torch.float64, device=device)
    frac = i / (n - 1) if n > 1 else torch.zeros_like(i)
    # EDM eq. (5)
    t = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    if append_zero:
        t = torch.cat([t, torch.zeros(1, dtype=torch.float64, device=device)])
    return t.to(dtype)


@torch.no_grad()
def edm_sampler(
    D: Callable,
    z: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = math.inf,
    S_noise: float = 1.0,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
    callback: Callable[[dict], None] | None = None,
):
    """EDM Algorithm 2 (stochastic when S_churn > 0, else the deterministic Heun ODE map T(z)).

    D: denoiser D(x, sigma, labels) -> x0_hat; z: (B, *shape) standard normal noise; labels passed
    through to D. x_0 = z * t_0 and the state is accumulated in float64, as EDM does; D receives the
    float64 state and a float64 (B,) sigma (EDM-style denoisers cast internally).
    ``generator`` drives the churn noise (required for reproducibility when S_churn > 0).
    ``callback({"i", "steps", "sigma", "x"})`` is called after each step with the new state.

    Returns x_N (B, *shape) in z's dtype, or (x_N, trajectory) with trajectory (steps + 1, B, *shape)
    holding x_0 = t_0 z, ..., x_N.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: {steps!r} not in integers >= 1")
    if S_churn < 0 or S_noise < 0:
        raise ValueError(f"S_churn, S_noise: ({S_churn}, {S_noise}) must be >= 0")
    if z.ndim < 1 or z.shape[0] < 1:
        raise ValueError(f"z: expected a (B, ...) tensor with B >= 1, got shape {tuple(z.shape)}")
    t_steps = karras_sigmas(steps, sigma_min, sigma_max, rho, append_zero=True, device=z.device)
    b = z.shape[0]
    # Algorithm 2, line 1: x_0 = t_0 * z (accumulate in float64)
    x_next = z.to(torch.float64) * t_steps[0]
    traj = [x_next.to(z.dtype)] if return_trajectory else None
    gamma_max = math.sqrt(2) - 1
    for i in range(steps):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        x_cur = x_next
        # Algorithm 2, lines 4-6: increase noise temporarily (churn)
        t_cur_f = float(t_cur)
        gamma = min(S_churn / steps, gamma_max) if (S_churn > 0 and S_min <= t_cur_f <= S_max) else 0.0
        t_hat = t_cur * (1 + gamma)
        if gamma > 0:
            eps = torch.randn(x_cur.shape, generator=generator, device=x_cur.device, dtype=torch.float64)
            x_hat = x_cur + (t_hat**2 - t_cur**2).sqrt() * S_noise * eps
        else:
            x_hat = x_cur
        # Algorithm 2, lines 7-8: Euler step
        denoised = D(x_hat, t_hat.expand(b), labels).to(torch.float64)
        d_cur = (x_hat - denoised) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        # Algorithm 2, lines 9-11: second-order (Heun) correction, except on the last step
        if i < steps - 1:
            denoised = D(x_next, t_next.expand(b), labels).to(torch.float64)
            d_prime = (x_next - denoised) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        if traj is not None:
            traj.append(x_next.to(z.dtype))
        if callback is not None:
            callback({"i": i, "steps": steps, "sigma": float(t_next), "x": x_next})
    out = x_next.to(z.dtype)
    if return_trajectory:
        return out, torch.stack(traj)
    return out


@torch.no_grad()
def one_step(G: Callable, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """One-step student sample x = G(z, labels), without gradients. z: (B, *shape)."""
    return G(z, labels)


def student_sigmas(student_steps: int, sigma_max: float = 80.0) -> torch.Tensor:
    """Noise levels of a K-step student (DMD2 multistep): the first K levels of a (K+1)-level
    Karras schedule from sigma_max to 0.002 (K = 1 gives [sigma_max]); float64 (K,)."""
    if isinstance(student_steps, bool) or not isinstance(student_steps, int) or not 1 <= student_steps <= 4:
        raise ValueError(f"student_steps: {student_steps!r} not in integers [1, 4]")
    return karras_sigmas(student_steps + 1, 0.002, sigma_max, 7.0)[:student_steps]


@torch.no_grad()
def few_step(
    D_G: Callable,
    z: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    sigmas: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Few-step student (DMD2 multistep): x = D_G(sigmas[0] z; sigmas[0]); then for each further
    level s: x = D_G(x + s eps; s) with fresh eps ~ N(0, I) from ``generator``. z: (B, *shape)."""
    b = z.shape[0]
    x = D_G(z * float(sigmas[0]), z.new_full((b,), float(sigmas[0])), labels)
    for s in sigmas[1:]:
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = D_G(x + float(s) * eps, x.new_full((b,), float(s)), labels)
    return x
