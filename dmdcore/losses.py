"""Losses as small functions of explicit tensors (all randomness is drawn by the caller).

Sources: EDM (Karras et al. 2022) training loss, eq. (2) + Table 1; DMD (Yin et al. 2023) eq. (7)
and regression loss; DMD2 (Yin et al. 2024) fake-score ("guidance") loss and GAN losses.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .precond import edm_loss_weight


def _per_sample_view(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return sigma.reshape((-1,) + (1,) * (x.ndim - 1))


def edm_sigma(rnd_normal: torch.Tensor, P_mean: float = -1.2, P_std: float = 1.2) -> torch.Tensor:
    """EDM training noise levels: ln(sigma) ~ N(P_mean, P_std^2), from standard normals (B,)."""
    # EDM Table 1, "Noise distribution"
    return (rnd_normal * P_std + P_mean).exp()


def denoising_loss(D, x: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor, sigma_data: float, labels=None, *, return_features: bool = False):
    """EDM-weighted denoising score matching (EDM eq. 2, weighting of Table 1):
    mean over batch and dims of lambda(sigma) * (D(x + sigma eps; sigma) - x)^2.

    x, eps: (B, *shape); sigma: (B,). Used for the teacher (sigma ~ EDM log-normal) and for the DMD
    fake score on generated samples. With ``return_features`` (``D.forward_and_features`` or ``D.features``)
    returns (loss, features of D at x + sigma eps) for the GAN head.
    """
    s = _per_sample_view(sigma, x)
    x_noisy = x + s * eps
    feats = None
    if return_features and hasattr(D, "forward_and_features"):
        D_x, feats = D.forward_and_features(x_noisy, sigma, labels)
    elif return_features:  # denoisers with only features(): a second pass
        D_x, feats = D(x_noisy, sigma, labels), D.features(x_noisy, sigma, labels)
    else:
        D_x = D(x_noisy, sigma, labels)
    weight = _per_sample_view(edm_loss_weight(sigma, sigma_data), x)
    loss = (weight * (D_x - x).square()).mean()
    return (loss, feats) if return_features else loss


def dmd_grad(x: torch.Tensor, D_real_x: torch.Tensor, D_fake_x: torch.Tensor) -> torch.Tensor:
    """DMD distribution-matching direction (dmd.md steps 3-4), no grad:
    p_real = x - D_real, p_fake = x - D_fake, grad = (p_real - p_fake) / mean|p_real| (mean over
    non-batch dims, per sample), NaN -> 0. Shapes (B, *shape)."""
    with torch.no_grad():
        p_real = x - D_real_x
        p_fake = x - D_fake_x
        dims = tuple(range(1, x.ndim))
        norm = p_real.abs().mean(dim=dims, keepdim=True)
        grad = (p_real - p_fake) / norm
        return torch.nan_to_num(grad, nan=0.0)


def dmd_loss(x: torch.Tensor, D_real_x: torch.Tensor, D_fake_x: torch.Tensor) -> torch.Tensor:
    """DMD loss (dmd.md step 5): 0.5 * mean((x - stopgrad(x - grad))^2); its gradient w.r.t. x is
    grad / numel, moving x toward D_real and away from D_fake. x carries the generator's graph."""
    grad = dmd_grad(x.detach(), D_real_x, D_fake_x)
    target = (x - grad).detach()
    return 0.5 * F.mse_loss(x, target, reduction="mean")


def regression_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DMD regression loss on vectors: mean over pairs of the squared L2 distance ||G(z) - T(z)||^2."""
    return (pred - target).flatten(1).square().sum(dim=1).mean()


def gan_d_loss(logits_fake: torch.Tensor, logits_real: torch.Tensor) -> torch.Tensor:
    """DMD2 discriminator loss: mean softplus(fake) + mean softplus(-real)."""
    return F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()


def gan_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """DMD2 generator (non-saturating) GAN loss: mean softplus(-fake)."""
    return F.softplus(-logits_fake).mean()
