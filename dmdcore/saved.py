"""A saved run, read back for display: what a live ``Experiment.view()`` publishes, rebuilt from
the run directory (config.json, status.json, metrics.csv, samples.npz, teacher.pt), so a run
named by its index id opens in a fresh session without re-running anything.

``saved_view(run_dir)`` → dict with ``metrics`` (metrics.csv rows), ``z``, ``teacher_samples``,
``student_samples`` (latest), ``history`` ((student step, S(z)) per kept evaluation), ``modes``
(the mode transition of the latest student, centres as the run used them), ``centers``,
``basins`` ({student step: (G, G) mode map}) with ``basin_teacher`` (G, G) and
``basin_extent`` (2-D data only), ``config`` (ExperimentConfig), ``status`` (status.json).
"""

from __future__ import annotations

import os

import numpy as np

from dmdcore import pairing
from dmdcore.config import ExperimentConfig
from dmdcore.runs import RunDir


def _centers(cfg: ExperimentConfig, teacher_samples: np.ndarray) -> np.ndarray:
    """The mode centres the run's copy rate used: the data set's true centres when it has them,
    else k-means on T(z) (as ``Experiment._begin_student``)."""
    from dmdcore.data import make_dataset

    try:
        ds = make_dataset(cfg.data)
    except (ValueError, OSError):
        ds = None
    if ds is not None and ds.centers is not None:
        return ds.centers.numpy().astype(np.float64)
    k = ds.n_classes if ds is not None and ds.n_classes >= 2 else 8
    k = min(k, cfg.eval.n)
    return pairing.mode_transition(teacher_samples, teacher_samples, n_modes=k, seed=cfg.eval.seed).centers


def saved_view(run_dir: str | os.PathLike) -> dict:
    """Everything the Toy Lab draws of a saved run. ValueError (naming the run directory) when
    the run has no config, no samples or no student evaluation yet."""
    rd = RunDir(run_dir)
    cfg = ExperimentConfig.from_dict(rd.read_config()["experiment"])
    status = rd.read_status()
    metrics = rd.read_metrics()
    smp = rd.load_samples()
    z, t, s = smp["z"], smp["teacher"], smp["student"]
    if not len(t):
        raise ValueError(f"run_dir: {str(rd.path)!r} has no teacher samples yet (no evaluation saved)")
    for a in (z, t, s):
        a.setflags(write=False)
    hist = [(int(k), smp["history_student"][i]) for i, k in enumerate(smp["history_steps"])]
    centers = _centers(cfg, t)
    modes = pairing.mode_transition(s, t, centers=centers) if len(s) else None
    out = {"config": cfg, "status": status, "metrics": metrics, "z": z, "teacher_samples": t,
           "student_samples": s if len(s) else None, "history": hist, "modes": modes, "centers": centers,
           "basins": {}, "basin_teacher": None, "basin_extent": None}
    steps = smp.get("basin_steps", np.zeros(0, np.int64))
    if len(steps) and z.shape[1] == 2:
        from dmdcore.pipeline import BASIN_EXTENT, BASIN_GRID_N, _nearest, load_teacher

        out["basins"] = {int(k): smp["basin_student"][i].astype(np.int64) for i, k in enumerate(steps)}
        teacher = load_teacher(rd.path, device="cpu")
        xs = np.linspace(-BASIN_EXTENT, BASIN_EXTENT, BASIN_GRID_N, dtype=np.float32)
        gx, gy = np.meshgrid(xs, xs)
        import torch

        zg = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], axis=1))
        labels = torch.zeros(zg.shape[0], dtype=torch.long) if teacher.label_dim > 0 else None
        tg = teacher.sample(zg, cfg.sampler, labels=labels).detach().cpu().numpy()
        out["basin_teacher"] = _nearest(tg, centers).reshape(BASIN_GRID_N, BASIN_GRID_N).astype(np.int64)
        out["basin_extent"] = BASIN_EXTENT
    return out
