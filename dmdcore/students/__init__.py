"""Student methods behind one protocol: a trainer built from (teacher denoiser, ExperimentConfig)
whose ``step()`` returns a metrics dict and whose ``student(z)`` is the noise -> sample map S(z).
All subclass ``DMDTrainer`` (its generator, fake-score, optimiser, rollback and RNG machinery)
and override the fake-score phase and/or the generator objective:

| method | module | generator objective | auxiliary network |
|---|---|---|---|
| ``dmd`` | ``distill`` (``students.dmd``) | DMD / DMD2 distribution matching | fake score |
| ``cd`` | ``students.consistency`` | consistency loss along the teacher ODE (real data) | EMA target |
| ``fdistill-{rkl,js,fkl}`` | ``students.fdistill`` | DM gradient x h(r), r from a discriminator | fake score + head |
| ``sid`` | ``students.sid`` | score identity distillation | fake score |
| ``gan`` | ``students.adversarial`` | non-saturating GAN loss only | discriminator |
| ``phased`` | ``students.phased`` | DM within each step's noise subinterval (k steps) | fake score |

Metric columns (metrics.csv is shared by all methods): ``loss_dm`` holds the method's generator
objective, ``loss_fake`` the fake-score loss (empty for cd and gan), ``loss_gan_d`` the
discriminator loss (gan, fdistill-*), ``loss_gan_g`` the generator's GAN loss where there is one.
"""

from __future__ import annotations

from ..config import STUDENT_METHODS, ExperimentConfig


def _spec(method: str):
    from ..distill import DMDTrainer
    from .adversarial import AdversarialTrainer
    from .consistency import ConsistencyTrainer
    from .fdistill import FDistillTrainer
    from .phased import PhasedDMDTrainer
    from .sid import SiDTrainer

    table = {
        "dmd": (DMDTrainer, None, {}),
        "cd": (ConsistencyTrainer, "cd", {}),
        "fdistill-rkl": (FDistillTrainer, "fdistill", {"divergence": "rkl"}),
        "fdistill-js": (FDistillTrainer, "fdistill", {"divergence": "js"}),
        "fdistill-fkl": (FDistillTrainer, "fdistill", {"divergence": "fkl"}),
        "sid": (SiDTrainer, "sid", {}),
        "gan": (AdversarialTrainer, "adversarial", {}),
        "phased": (PhasedDMDTrainer, "phased", {}),
    }
    if method not in table:
        raise ValueError(f"DistillConfig.method: {method!r} not in {STUDENT_METHODS}")
    return table[method]


def needs_data(method: str) -> bool:
    """Whether the method trains on real data samples (a ``data_sampler`` must be given)."""
    cls, _, _ = _spec(method)
    return bool(getattr(cls, "NEEDS_DATA", False))


def make_student(real, cfg: ExperimentConfig, **kwargs):
    """The trainer of ``cfg.distill.method`` for teacher denoiser ``real``; kwargs as
    ``DMDTrainer`` (sample_shape, sigma_data, label_dim, reg_pairs, data_sampler, device, ...)."""
    cls, section, extra = _spec(cfg.distill.method)
    if section is None:
        return cls(real, cfg.distill, **kwargs)
    return cls(real, cfg.distill, getattr(cfg, section), **extra, **kwargs)
