"""Teacher training for every family: EDM (``distill.TeacherTrainer``) and flow matching /
OT-CFM (``FlowTeacherTrainer``, same batching, optimiser, EMA and checkpoints; only the loss
differs). ``make_teacher_trainer(cfg, ...)`` picks the trainer by ``cfg.family``."""

from __future__ import annotations

import torch

from ..config import TeacherConfig
from ..distill import TeacherTrainer
from .flow import flow_matching_loss, interpolate


class FlowTeacherTrainer(TeacherTrainer):
    """Flow matching (family "fm": independent coupling, rectified flow's first stage) or OT-CFM
    ("otcfm": each minibatch's noise re-paired to its data by exact OT, Tong et al. 2024 Alg. 1).

    Per step: data x_0 (B, d), eps ~ N(0, I), t ~ U(0, 1); for otcfm eps is permuted by the
    squared-Euclidean OT plan between the batches (``pairing.minibatch_ot_permutation``, POT);
    loss = mean (v_theta(x_t, t) - (eps - x_0))^2 with x_t = (1 - t) x_0 + t eps."""

    FAMILIES = ("fm", "otcfm")

    def _loss(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        b, d = x.shape
        t = torch.rand(b, generator=self.gen, device=self.device)
        eps = torch.randn(b, d, generator=self.gen, device=self.device)
        if self.config.family == "otcfm":
            from ..pairing import minibatch_ot_permutation

            perm = minibatch_ot_permutation(x, eps)
            eps = eps[torch.from_numpy(perm).to(self.device)]
        v = self.net.velocity(interpolate(x, eps, t), t, labels)
        return flow_matching_loss(v, x, eps)


def make_teacher_trainer(cfg: TeacherConfig, data, labels=None, device=None, **kwargs) -> TeacherTrainer:
    """The trainer of ``cfg.family`` (same arguments as ``TeacherTrainer``)."""
    cls = TeacherTrainer if cfg.family == "edm" else FlowTeacherTrainer
    return cls(cfg, data, labels, device, **kwargs)
