"""Pure adversarial distillation (``method="gan"``): the "no score matching" control.

The generator gets only the non-saturating GAN loss softplus(-D(G(z) + sigma eps)) and no
distribution-matching (score) gradient. The discriminator is DMD2's: a GANHead on the last hidden
layer of a teacher-initialised network, on real and generated samples noised at the same sigma
(uniform over the 1000 Karras levels); here it is trained with the discriminator loss only
(softplus(fake) + softplus(-real)), no denoising loss, ``ratio`` updates per generator step.
"""

from __future__ import annotations

import torch

from ..config import AdversarialConfig, DistillConfig
from ..distill import DMDTrainer, GANHead, _grad_norm_and_clip, _check_finite, _make_adam, _seeded
from ..losses import gan_g_loss


class AdversarialTrainer(DMDTrainer):
    """GAN-only student; ``data_sampler`` is required. ``self.fake`` is the discriminator's
    feature network, ``self.gan_head`` its head."""

    NEEDS_DATA = True

    def __init__(self, real, cfg: DistillConfig, method_cfg: AdversarialConfig = AdversarialConfig(), **kwargs):
        if kwargs.get("data_sampler") is None:
            raise ValueError("data_sampler: adversarial distillation needs real data samples")
        super().__init__(real, cfg.replace(gan=False, regression=False), **kwargs)
        self.mcfg = method_cfg
        fdim = int(getattr(self.fake, "feature_dim", 0))
        if fdim <= 0 or not hasattr(self.fake, "features"):
            raise ValueError("method 'gan': the teacher network needs features() and feature_dim > 0 for the discriminator")
        self.gan_head = _seeded(cfg.seed + 2, lambda: GANHead(fdim)).to(self.device)
        self.fake_params = list(self.fake.parameters()) + list(self.gan_head.parameters())
        self.opt_fake = _make_adam(self.fake_params, method_cfg.lr_disc, betas=tuple(cfg.betas),
                                   weight_decay=cfg.weight_decay, adamw=True)

    def _set_lr(self) -> None:
        super()._set_lr()
        w = self.cfg.warmup
        factor = min(1.0, (self.step_count + 1) / w) if w > 0 else 1.0
        for group in self.opt_fake.param_groups:
            group["lr"] = self.mcfg.lr_disc * factor

    def _fake_phase(self, step_no: int):
        cfg = self.cfg
        b, r, shape = cfg.batch, cfg.ratio, self.sample_shape
        view = (-1,) + (1,) * len(shape)
        z_all = torch.randn((r * b, *shape), generator=self.gen, device=self.device)
        lab_all = self._labels(r * b)
        with torch.no_grad():
            x_all = self._generate(z_all, lab_all, 0)
        d_losses = []
        for k in range(r):
            x_k = x_all[k * b : (k + 1) * b]
            lab_k = lab_all[k * b : (k + 1) * b] if lab_all is not None else None
            s = self._fake_sigmas((b,))
            x_noisy = x_k + s.view(view) * torch.randn(x_k.shape, generator=self.gen, device=self.device)
            loss_d = self._disc_loss(self.fake.features(x_noisy, s, lab_k), b)
            self.opt_fake.zero_grad(set_to_none=True)
            loss_d.backward()
            gn = _grad_norm_and_clip(self.fake_params, cfg.grad_clip)
            _check_finite("discriminator loss / gradient", step_no, loss_d, gn)
            self.opt_fake.step()
            d_losses.append(loss_d.detach())
        return [], d_losses

    def _generator_objective(self, step_no: int):
        b, shape = self.cfg.batch, self.sample_shape
        z = torch.randn((b, *shape), generator=self.gen, device=self.device)
        lab = self._labels(b)
        x = self._generate(z, lab, 0)
        s = self._fake_sigmas((b,))
        x_noisy = x + s.view((-1,) + (1,) * len(shape)) * torch.randn(x.shape, generator=self.gen, device=self.device)
        loss_g = gan_g_loss(self.gan_head(self.fake.features(x_noisy, s, lab)))
        return loss_g, {"loss_dm": loss_g.detach(), "loss_gan_g": loss_g.detach()}
