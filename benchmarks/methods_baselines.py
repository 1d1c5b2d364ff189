"""Plain eager PyTorch loops of every student method (benchmarks/toy_pipeline.py --methods).

Same losses (the functions in dmdcore.students / dmdcore.losses), models and batch sizes as the
dmdcore trainers, written the obvious way: default torch.optim Adam(W), one generator forward per
fake-score step, no rollback snapshot, ``.item()`` per loss. Used only as the in-process
baseline of the steps/s ratio."""

from __future__ import annotations

import copy

import torch

from dmdcore.distill import GANHead
from dmdcore.losses import denoising_loss, dmd_loss, gan_d_loss, gan_g_loss
from dmdcore.samplers import karras_sigmas, student_sigmas
from dmdcore.students.consistency import consistency_loss, teacher_ode_step
from dmdcore.students.fdistill import normalized_weights, weighted_dmd_loss
from dmdcore.students.sid import sid_loss


class PlainLoop:
    def __init__(self, method, real, data, *, batch=256, ratio=5, lr_gen=1e-4, lr_fake=1e-3, sigma_data=0.5, seed=0):
        torch.manual_seed(seed)
        self.method, self.real, self.data, self.b, self.r = method, real, data, batch, ratio
        self.sd = sigma_data
        self.G = copy.deepcopy(real).requires_grad_(True)
        self.F = copy.deepcopy(real).requires_grad_(method != "cd")
        self.head = GANHead(real.feature_dim) if method in ("gan",) or method.startswith("fdistill") else None
        fake_params = list(self.F.parameters()) + (list(self.head.parameters()) if self.head else [])
        self.opt_g = torch.optim.AdamW(self.G.parameters(), lr=lr_gen)
        self.opt_f = torch.optim.AdamW(fake_params, lr=lr_fake) if method != "cd" else None
        self.karras = karras_sigmas(1000, 0.002, 80.0, 7.0, dtype=torch.float32).flip(0)
        self.cd_levels = karras_sigmas(18, 0.002, 80.0, 7.0, dtype=torch.float32).flip(0)
        self.levels = student_sigmas(2).float()

    def _gen(self, b, k=0):
        z = torch.randn(b, self.data.shape[1])
        if k == 0:
            return self.G(80.0 * z, torch.full((b,), 80.0))
        with torch.no_grad():
            x = self.G(80.0 * z, torch.full((b,), 80.0))
        s = float(self.levels[1])
        return self.G(x + s * torch.randn_like(x), torch.full((b,), s))

    def _real(self, b):
        return self.data[torch.randint(0, self.data.shape[0], (b,))]

    def _fake_step(self):
        b = self.b
        k = int(torch.randint(0, 2, (1,))) if self.method == "phased" else 0
        with torch.no_grad():
            x = self._gen(b, k)
        sigma = self.karras[torch.randint(0, 1000, (b,))]
        if self.method == "gan":
            xn = x + sigma[:, None] * torch.randn_like(x)
            real = self._real(b) + sigma[:, None] * torch.randn_like(x)
            loss = gan_d_loss(self.head(self.F.features(xn, sigma)), self.head(self.F.features(real, sigma)))
        else:
            loss, h = denoising_loss(self.F, x, sigma, torch.randn_like(x), self.sd, return_features=True)
            if self.head is not None:
                real = self._real(b) + sigma[:, None] * torch.randn_like(x)
                loss = loss + gan_d_loss(self.head(h), self.head(self.F.features(real, sigma)))
        self.opt_f.zero_grad()
        loss.backward()
        self.opt_f.step()
        return loss.item()

    def _gen_loss(self):
        b, m = self.b, self.method
        if m == "cd":
            x = self._real(b)
            n = torch.randint(0, 17, (b,))
            t_n, t_n1 = self.cd_levels[n], self.cd_levels[n + 1]
            x1 = x + t_n1[:, None] * torch.randn_like(x)
            with torch.no_grad():
                target = self.F(teacher_ode_step(self.real, x1, t_n1, t_n), t_n)
            return consistency_loss(self.G(x1, t_n1), target)
        k = int(torch.randint(0, 2, (1,))) if m == "phased" else 0
        x = self._gen(b, k)
        sigma = self.karras[torch.randint(20, 980, (b,))]
        if m == "gan":
            return gan_g_loss(self.head(self.F.features(x + sigma[:, None] * torch.randn_like(x), sigma)))
        xn = x.detach() + sigma[:, None] * torch.randn_like(x)
        if m == "sid":
            for p in self.F.parameters():
                p.requires_grad_(False)
            xg = x + (xn - x.detach())
            loss = sid_loss(x, self.real(xg, sigma), self.F(xg, sigma), 1.2)
            for p in self.F.parameters():
                p.requires_grad_(True)
            return loss
        with torch.no_grad():
            d_real, d_fake = self.real(xn, sigma), self.F(xn, sigma)
            if m.startswith("fdistill"):
                w = normalized_weights(self.head(self.F.features(xn, sigma)), m.split("-")[1], 10.0)
        if m.startswith("fdistill"):
            return weighted_dmd_loss(x, d_real, d_fake, w)
        return dmd_loss(x, d_real, d_fake)

    def step(self):
        if self.method != "cd":
            for _ in range(self.r):
                self._fake_step()
        loss = self._gen_loss()
        self.opt_g.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.G.parameters(), 10.0)
        self.opt_g.step()
        if self.method == "cd":
            with torch.no_grad():
                for pt, p in zip(self.F.parameters(), self.G.parameters()):
                    pt.mul_(0.95).add_(p, alpha=0.05)
        return loss.item()

