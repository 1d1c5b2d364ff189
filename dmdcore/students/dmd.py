"""DMD / DMD2 (Yin et al. 2023, 2024): the default student method. The trainer lives in
``dmdcore.distill`` (where it has always been imported from); the other methods subclass it."""

from ..distill import DMDTrainer

__all__ = ["DMDTrainer"]
