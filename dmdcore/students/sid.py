"""Score identity distillation (SiD; Zhou et al. 2024, ICML), on the DMD fake-score machinery.

SiD trains the fake score exactly as DMD does (denoising on generated samples, ``self.fake``) and
replaces the generator loss by (paper eq. 23 / official code, sigma^4 weighting absorbed in the
DMD-style normaliser):

    L_theta = mean_i sum_d [ (1 - alpha) (D_real - D_fake)^2 + (D_real - D_fake)(D_fake - x) ] / w_i,
    w_i = mean_d |x - D_real|  (stop-gradient),

with x = G(z), D_* evaluated at x_sigma = x + sigma eps, and gradients flowing through
x_sigma into G (both networks frozen for this step). alpha = 1.2 (paper default). Differences
from the paper's setup: G(z) = D_G(sigma_max z; sigma_max) with sigma_max = 80 (SiD uses
sigma_init = 2.5) so all students share one noise -> sample map, and sigma is drawn like DMD's
DM loss (Karras levels [20, 980)).
"""

from __future__ import annotations

import torch

from ..config import DistillConfig, SiDConfig
from ..distill import DMDTrainer


def sid_loss(x: torch.Tensor, D_real_x: torch.Tensor, D_fake_x: torch.Tensor, alpha: float) -> torch.Tensor:
    """SiD generator loss (module docstring); all three tensors may carry the generator's graph."""
    dims = tuple(range(1, x.ndim))
    with torch.no_grad():
        w = (x - D_real_x).abs().mean(dim=dims).clamp_min(1e-5)
    diff = D_real_x - D_fake_x
    per = ((1 - alpha) * diff.square() + diff * (D_fake_x - x)).sum(dim=dims)
    return (per / w).mean()


class SiDTrainer(DMDTrainer):
    NEEDS_DATA = False

    def __init__(self, real, cfg: DistillConfig, method_cfg: SiDConfig = SiDConfig(), **kwargs):
        super().__init__(real, cfg.replace(gan=False, regression=False), **kwargs)
        self.mcfg = method_cfg

    def _generator_objective(self, step_no: int):
        x, lab, sigma, x_sigma = self._dm_batch()
        x_noisy = x + (x_sigma - x.detach())  # the same x + sigma eps, now with grad through G
        self.fake.requires_grad_(False)
        try:
            loss = sid_loss(x, self.real(x_noisy, sigma, lab), self.fake(x_noisy, sigma, lab), self.mcfg.alpha)
        finally:
            self.fake.requires_grad_(True)
        return loss, {"loss_dm": loss.detach()}
