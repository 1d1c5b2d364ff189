"""f-distill (Xu et al. 2025, "One-step diffusion models with f-divergence distribution matching").

The gradient of D_f(p || q_theta) w.r.t. generated samples is DMD's score difference times
h(r) = f''(r) r^2, r = p/q the real/fake density ratio at the noised sample. With a discriminator
logit l trained to tell noised real (p) from noised generated (q) samples, the optimal
sigmoid(l) = p / (p + q) gives r = exp(l). Weights per divergence:

| variant | f(r) | h(r) = f''(r) r^2 |
|---|---|---|
| reverse KL (``fdistill-rkl``) | -log r | 1 (= DMD) |
| Jensen-Shannon (``fdistill-js``) | r log r - (1 + r) log((1 + r)/2) | r / (1 + r) = sigmoid(l) |
| forward KL (``fdistill-fkl``) | r log r | r = exp(l) |

As in the paper, weights are normalised by their batch mean (and clipped at ``max_weight``). The
discriminator is DMD2's GAN head on the fake score's features, trained in the fake-score steps
(loss = denoising + d_weight * discriminator loss).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..config import DistillConfig, FDistillConfig
from ..distill import DMDTrainer, GANHead, _make_adam, _seeded
from ..losses import dmd_grad, gan_g_loss

DIVERGENCES = ("rkl", "js", "fkl")


def f_weight(logits: torch.Tensor, divergence: str) -> torch.Tensor:
    """h(r) = f''(r) r^2 at r = exp(logits) (B,), before normalisation."""
    if divergence == "rkl":
        return torch.ones_like(logits)
    if divergence == "js":
        return torch.sigmoid(logits)
    if divergence == "fkl":
        return logits.exp()
    raise ValueError(f"divergence: {divergence!r} not in {DIVERGENCES}")


def normalized_weights(logits: torch.Tensor, divergence: str, max_weight: float = 0.0) -> torch.Tensor:
    """h(r) / mean h(r) over the batch, clipped to [0, max_weight] when max_weight > 0 (no grad)."""
    with torch.no_grad():
        h = f_weight(logits.float(), divergence)
        w = h / h.mean().clamp_min(1e-12)
        return w.clamp(max=max_weight) if max_weight > 0 else w


def weighted_dmd_loss(x: torch.Tensor, D_real_x: torch.Tensor, D_fake_x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """0.5 * mean((x - stopgrad(x - w * grad))^2) with DMD's grad (losses.dmd_grad); its gradient
    w.r.t. x is w_i * grad_i / numel. w (B,)."""
    grad = dmd_grad(x.detach(), D_real_x, D_fake_x) * w.reshape((-1,) + (1,) * (x.ndim - 1))
    return 0.5 * F.mse_loss(x, (x - grad).detach(), reduction="mean")


class FDistillTrainer(DMDTrainer):
    """f-distill with ``divergence`` in DIVERGENCES; ``data_sampler`` is required (discriminator)."""

    NEEDS_DATA = True

    def __init__(self, real, cfg: DistillConfig, method_cfg: FDistillConfig = FDistillConfig(), *, divergence: str = "js", **kwargs):
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence: {divergence!r} not in {DIVERGENCES}")
        if kwargs.get("data_sampler") is None:
            raise ValueError("data_sampler: f-distill needs real data samples for its discriminator")
        super().__init__(real, cfg.replace(gan=False), **kwargs)
        self.mcfg = method_cfg
        self.divergence = divergence
        fdim = int(getattr(self.fake, "feature_dim", 0))
        if fdim <= 0 or not hasattr(self.fake, "features"):
            raise ValueError("method 'fdistill': the fake score needs features() and feature_dim > 0 for the discriminator")
        self.gan_head = _seeded(cfg.seed + 2, lambda: GANHead(fdim)).to(self.device)
        self.fake_params = list(self.fake.parameters()) + list(self.gan_head.parameters())
        self.opt_fake = _make_adam(self.fake_params, cfg.lr_fake, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, adamw=True)
        self._rollback = False

    def _d_weight(self) -> float:
        return self.mcfg.d_weight

    def _generator_objective(self, step_no: int):
        b, shape = self.cfg.batch, self.sample_shape
        x, lab, sigma, x_noisy = self._dm_batch()
        with torch.no_grad():
            D_real = self.real(x_noisy, sigma, lab)
            D_fake, h = self.fake.forward_and_features(x_noisy, sigma, lab)
            w = normalized_weights(self.gan_head(h), self.divergence, self.mcfg.max_weight)
        loss = weighted_dmd_loss(x, D_real, D_fake, w)
        total, out = loss, {"loss_dm": loss.detach()}
        if self.mcfg.gan_g_weight > 0:
            s = self._fake_sigmas((b,))
            x_g = x + s.view((-1,) + (1,) * len(shape)) * torch.randn(x.shape, generator=self.gen, device=self.device)
            loss_g = gan_g_loss(self.gan_head(self.fake.features(x_g, s, lab)))
            total = total + self.mcfg.gan_g_weight * loss_g
            out["loss_gan_g"] = loss_g.detach()
        return total, out
