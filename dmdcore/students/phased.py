"""Phased DMD (after Fan et al. 2025, "Phased DMD: few-step distribution matching distillation
via score matching within subintervals"): a k-step student whose noise range is split into k
phases.

Student levels s_0 = sigma_max > s_1 > .. > s_{k-1} (DMD2's few-step schedule,
``samplers.student_sigmas``), s_k = sigma_min. Step j maps its input at s_j to a clean estimate;
phase j's distribution matching and fake-score training noise that estimate only with sigma in
[s_{j+1}, s_j) (the Karras levels of the subinterval), so each step is responsible for its own
range of noise levels; one fake score serves all phases. Sampling is DMD2's few-step chain with
re-noising; ``per_step_samples`` returns every step's clean estimate, so ΔE can be reported per
sampling step.
"""

from __future__ import annotations

import torch

from ..config import DistillConfig, PhasedConfig
from ..distill import DM_INDEX_RANGE, DMDTrainer, N_KARRAS_LEVELS
from ..losses import denoising_loss, dmd_loss
from ..distill import _check_finite, _grad_norm_and_clip
from ..samplers import student_sigmas


def phase_index_ranges(levels: torch.Tensor, karras_ascending: torch.Tensor) -> list[tuple[int, int]]:
    """[lo, hi) indices into the ascending Karras grid for each phase j: sigma in [s_{j+1}, s_j)
    (s_k = the grid's minimum); each range non-empty."""
    k = levels.shape[0]
    bounds = [float(v) for v in levels] + [float(karras_ascending[0])]
    out = []
    for j in range(k):
        hi_s, lo_s = bounds[j], bounds[j + 1]
        lo = int(torch.searchsorted(karras_ascending, torch.tensor(lo_s, dtype=karras_ascending.dtype)))
        hi = int(torch.searchsorted(karras_ascending, torch.tensor(hi_s, dtype=karras_ascending.dtype)))
        hi = min(max(hi, lo + 1), N_KARRAS_LEVELS)
        out.append((lo, hi))
    return out


class PhasedDMDTrainer(DMDTrainer):
    NEEDS_DATA = False

    def __init__(self, real, cfg: DistillConfig, method_cfg: PhasedConfig = PhasedConfig(), **kwargs):
        super().__init__(real, cfg.replace(student_steps=method_cfg.phases, regression=False, gan=False), **kwargs)
        self.mcfg = method_cfg
        self.student_levels = student_sigmas(method_cfg.phases, self.sigma_max).to(torch.float32)
        self.ranges = phase_index_ranges(self.student_levels, self.karras)

    def _phase_sigmas(self, j: int, shape, dm: bool = False) -> torch.Tensor:
        lo, hi = self.ranges[j]
        if dm:  # DMD2's DM range [20, 980) intersected with the phase, when that leaves levels
            lo2, hi2 = max(lo, DM_INDEX_RANGE[0]), min(hi, DM_INDEX_RANGE[1])
            lo, hi = (lo2, hi2) if hi2 > lo2 else (lo, hi)
        return self.karras[torch.randint(lo, hi, shape, generator=self.gen, device=self.device)]

    def _fake_phase(self, step_no: int):
        cfg = self.cfg
        b, r, shape = cfg.batch, cfg.ratio, self.sample_shape
        k = self.mcfg.phases
        j = int(torch.randint(0, k, (1,), generator=self.gen, device=self.device))
        z_all = torch.randn((r * b, *shape), generator=self.gen, device=self.device)
        lab_all = self._labels(r * b)
        with torch.no_grad():
            x_all = self._generate(z_all, lab_all, j)
        sig_all = self._phase_sigmas(j, (r, b))
        eps_all = torch.randn((r, b, *shape), generator=self.gen, device=self.device)
        losses = []
        for i in range(r):
            lab_i = lab_all[i * b : (i + 1) * b] if lab_all is not None else None
            loss = denoising_loss(self.fake, x_all[i * b : (i + 1) * b], sig_all[i], eps_all[i], self.sigma_data, lab_i)
            self.opt_fake.zero_grad(set_to_none=True)
            loss.backward()
            gn = _grad_norm_and_clip(self.fake_params, cfg.grad_clip)
            _check_finite("fake-score loss / gradient", step_no, loss, gn)
            self.opt_fake.step()
            losses.append(loss.detach())
        return losses, []

    def _generator_objective(self, step_no: int):
        b, shape = self.cfg.batch, self.sample_shape
        j = int(torch.randint(0, self.mcfg.phases, (1,), generator=self.gen, device=self.device))
        z = torch.randn((b, *shape), generator=self.gen, device=self.device)
        lab = self._labels(b)
        x = self._generate(z, lab, j)
        sigma = self._phase_sigmas(j, (b,), dm=True)
        eps = torch.randn(x.shape, generator=self.gen, device=self.device)
        with torch.no_grad():
            x_noisy = x.detach() + sigma.view((-1,) + (1,) * len(shape)) * eps
            D_real, D_fake = self.real(x_noisy, sigma, lab), self.fake(x_noisy, sigma, lab)
        loss = dmd_loss(x, D_real, D_fake)
        return loss, {"loss_dm": loss.detach()}
