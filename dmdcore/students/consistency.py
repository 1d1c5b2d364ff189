"""Consistency distillation (Song et al. 2023, "Consistency Models", Alg. 2), EDM-teacher variant.

The student f_theta(x, sigma) is the generator denoiser D_G (EDM preconditioning: c_skip(sigma_min)
= 1 - O(sigma_min^2/sigma_data^2), so f(x, sigma_min) ~ x, the boundary condition up to ~1e-5).
Per step, on real data x (Song et al. use data, not generated samples):

    n ~ U{1, .., N-1};  x_{t_{n+1}} = x + t_{n+1} eps;
    x_hat_{t_n} = one ODE step of the teacher from t_{n+1} to t_n (Heun or Euler, EDM eq. 5)
    L = mean || f_theta(x_{t_{n+1}}, t_{n+1}) - f_theta^-(x_hat_{t_n}, t_n) ||^2   (lambda = 1, d = L2)

with t_1..t_N the Karras schedule (sigma_min..sigma_max, rho 7) and theta^- <- mu theta^- + (1-mu) theta
after each update. The one-step sample is f_theta(sigma_max z, sigma_max), the same call as DMD's
student. theta^- is kept in ``self.fake`` (saved as the run's fake.pt). Works for flow teachers too:
their denoiser defines the same probability-flow ODE.
"""

from __future__ import annotations

import copy

import torch

from ..config import ConsistencyConfig, DistillConfig
from ..distill import DMDTrainer
from ..samplers import karras_sigmas


def teacher_ode_step(D, x: torch.Tensor, s_from: torch.Tensor, s_to: torch.Tensor, labels=None, solver: str = "heun") -> torch.Tensor:
    """One step of the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma from s_from to
    s_to (per-sample (B,) levels, s_to > 0), Euler or Heun (EDM Alg. 1 lines 5-8)."""
    view = (-1,) + (1,) * (x.ndim - 1)
    h = (s_to - s_from).view(view)
    d_cur = (x - D(x, s_from, labels)) / s_from.view(view)
    x_next = x + h * d_cur
    if solver == "heun":
        d_next = (x_next - D(x_next, s_to, labels)) / s_to.view(view)
        x_next = x + h * 0.5 * (d_cur + d_next)
    return x_next


def consistency_loss(f_online: torch.Tensor, f_target: torch.Tensor) -> torch.Tensor:
    """CD loss with lambda = 1 and d = squared L2: mean over batch and dims of (f - f^-)^2."""
    return (f_online - f_target.detach()).square().mean()


class ConsistencyTrainer(DMDTrainer):
    """Consistency distillation; ``data_sampler`` (real data) is required. No fake score: the
    target network theta^- takes its place (``self.fake``, never optimised)."""

    NEEDS_DATA = True

    def __init__(self, real, cfg: DistillConfig, method_cfg: ConsistencyConfig = ConsistencyConfig(), **kwargs):
        if kwargs.get("data_sampler") is None:
            raise ValueError("data_sampler: consistency distillation needs real data samples")
        super().__init__(real, cfg.replace(gan=False, regression=False, student_steps=1), **kwargs)
        self.mcfg = method_cfg
        self.fake = copy.deepcopy(self.generator).requires_grad_(False).eval()
        self.fake_params = []
        self._rollback = False
        self.levels = karras_sigmas(method_cfg.n_levels, 0.002, self.sigma_max, 7.0, dtype=torch.float32,
                                    device=self.device).flip(0).contiguous()  # ascending t_1 .. t_N

    def _fake_phase(self, step_no: int):
        return [], []

    def _generator_objective(self, step_no: int):
        b, shape = self.cfg.batch, self.sample_shape
        x, lab = self._real_batch(b)
        n = torch.randint(0, self.mcfg.n_levels - 1, (b,), generator=self.gen, device=self.device)
        t_n, t_n1 = self.levels[n], self.levels[n + 1]
        eps = torch.randn(x.shape, generator=self.gen, device=self.device)
        x_n1 = x + t_n1.view((-1,) + (1,) * len(shape)) * eps
        with torch.no_grad():
            x_hat = teacher_ode_step(self.real, x_n1, t_n1, t_n, lab, self.mcfg.solver)
            f_target = self.fake(x_hat, t_n, lab)
        loss = consistency_loss(self.generator(x_n1, t_n1, lab), f_target)
        return loss, {"loss_dm": loss.detach()}

    def _after_generator_step(self) -> None:
        # theta^- <- stopgrad(mu theta^- + (1 - mu) theta)  (Song et al. 2023, Alg. 2)
        with torch.no_grad():
            torch._foreach_lerp_(list(self.fake.parameters()), self.gen_params, 1.0 - self.mcfg.ema_target)
