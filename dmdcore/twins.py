"""Independent-teacher controls ("twins"): where a teacher's twin lives and how one is trained.

A twin is a second teacher trained on the same data with the same settings and another seed
(``TWIN_SEED_OFFSET`` added to the teacher seed).  ΔE(T′, T) between them is what "the same map"
reads for two models that never saw each other's pairing (docs/metrics.md).  Shipped toy
teachers ship theirs (manifest entries with ``role == "twin"`` and ``twin_of``); a teacher run
trained with ``TeacherConfig.twin`` (the default) saves ``twin.pt`` beside ``teacher.pt``.

``TeacherConfig.twin_data = "disjoint"`` makes the control stricter: the training set is split
into two disjoint halves (``split_halves``, seeded by the teacher seed), the teacher trains on
one and its twin on the other, so T and T′ share no training point as well as no pairing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dmdcore.config import TeacherConfig

TWIN_SEED_OFFSET = 1


def twin_config(tc: TeacherConfig) -> TeacherConfig:
    """The twin's teacher config: the same settings, seed + TWIN_SEED_OFFSET."""
    return tc.replace(seed=tc.seed + TWIN_SEED_OFFSET)


def split_halves(n: int, seed: int) -> tuple[Any, Any]:
    """Two disjoint index sets covering range(n) (sizes ⌈n/2⌉ and ⌊n/2⌋), from a permutation
    seeded by ``seed``: the teacher's and the twin's training rows for ``twin_data="disjoint"``."""
    import numpy as np

    if n < 4:
        raise ValueError(f"teacher.twin_data: 'disjoint' needs at least 4 training samples, got {n}")
    perm = np.random.default_rng(np.random.SeedSequence([seed, 0x7017])).permutation(n)
    half = (n + 1) // 2
    return np.sort(perm[:half]), np.sort(perm[half:])


def twin_path(teacher_path: str | os.PathLike, canonical: str, checkpoints: Path) -> Path | None:
    """The twin's ``.pt`` of a resolved teacher (``dmdcore.pipeline.resolve_teacher``'s result),
    or None when it has none: ``manifest:<name>`` → the manifest entry whose ``twin_of`` is name;
    a run's ``teacher.pt`` → ``twin.pt`` beside it."""
    from dmdcore.checkpoints import entry_path, read_manifest

    if canonical.startswith("manifest:"):
        name = canonical[len("manifest:"):]
        for e in read_manifest(checkpoints / "manifest.json")["entries"]:
            if e.get("role") == "twin" and e.get("twin_of") == name:
                p = entry_path(e, checkpoints)
                return p if p.is_file() else None
        return None
    p = Path(teacher_path)
    if p.name == "teacher.pt" and (p.parent / "twin.pt").is_file():
        return p.parent / "twin.pt"
    return None


def load_twin(source: Any, device: Any = None):
    """A ToyTeacher twin from ``source`` (a ``.pt`` path), or None for None."""
    if source is None:
        return None
    from dmdcore.toy import ToyTeacher

    return ToyTeacher.load(source, device=device)
