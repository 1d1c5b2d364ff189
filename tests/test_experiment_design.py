"""Experiment design of the shipped presets: the dimension preset isolates dimension (same
intrinsic structure, σ_data and evaluation n in every d)."""

import numpy as np
import pytest

from dmdcore import sweep as sw
from dmdcore.data import make_dataset
from dmdcore.pipeline import run_sigma_data


@pytest.mark.parametrize("variant", ["dimension", "dimension:full"])
def test_dimension_preset_cells_have_equal_sigma_data_and_n(variant):
    cells = sw.expand(sw.load_preset(variant))
    dims = sorted({c.config.data.dim for c in cells})
    assert dims[0] == 2 and dims[-1] >= 128
    sigmas, ns, seen = set(), set(), set()
    for c in cells:
        ns.add(c.config.eval.n)
        key = (repr(c.config.data), repr(c.config.teacher))
        if key in seen:
            continue
        seen.add(key)
        # the σ_data the pipeline records (2000 points stand in for the 20000 to keep this fast:
        # an estimated σ_data would differ across d at any size)
        ds = make_dataset(c.config.data.replace(n_samples=2000))
        sigmas.add(run_sigma_data(c.config, ds.x))
    assert sigmas == {0.5} and len(ns) == 1


def test_dimension_preset_holds_mode_distances_and_spread_fixed():
    spec = sw.load_preset("dimension")
    per_d = {}
    for c in sw.expand(spec):
        cfg = c.config.data
        if cfg.dim in per_d:
            continue
        ds = make_dataset(cfg.replace(n_samples=4000))
        centers = ds.centers.numpy().astype(np.float64)
        pd = np.sqrt(((centers[:, None] - centers[None]) ** 2).sum(-1))
        resid = ds.x.numpy().astype(np.float64) - centers[ds.labels.numpy()]
        per_d[cfg.dim] = (np.sort(pd.ravel()), resid.std(axis=0))
    ref = per_d[2][0]
    for d, (dists, stds) in per_d.items():
        np.testing.assert_allclose(dists, ref, atol=1e-4, err_msg=f"pairwise mode distances change at d={d}")
        # every coordinate of a mode has std 0.1 (in-plane spread and off-plane noise alike)
        assert np.all(np.abs(stds - 0.1) < 0.01), (d, stds.min(), stds.max())


def test_random_full_student_is_not_a_scaled_copy_of_the_noise():
    import torch

    from dmdcore import pairing
    from dmdcore.config import DataConfig, DistillConfig, SamplerConfig, TeacherConfig
    from dmdcore.distill import DMDTrainer, TeacherTrainer

    dc = DataConfig(dataset="8gaussians", n_samples=500)
    tr = TeacherTrainer(TeacherConfig(width=32, depth=2, emb_dim=16, steps=40, batch=128), make_dataset(dc).x,
                        data_config=dc, device="cpu")
    for _ in range(40):
        tr.step()
    teacher = tr.teacher()
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(3))
    t = teacher.sample(z, SamplerConfig(steps=6)).detach().numpy()
    out = {}
    for init in ("random", "random_full"):
        dmd = DMDTrainer(teacher.denoiser, DistillConfig(init=init, batch=32), sample_shape=(2,),
                         sigma_data=teacher.sigma_data, device="cpu")
        s = dmd.student(z).detach().numpy()
        out[init] = (s, pairing.pairing_inefficiency(s, t, bootstrap=0).delta_e)
    s0, de0 = out["random"]
    # zero output layer: S(z) = c_skip(80)·80·z exactly, and ΔE ≈ 0 (already OT-paired)
    c_skip = teacher.sigma_data**2 / (80.0**2 + teacher.sigma_data**2)
    np.testing.assert_allclose(s0, c_skip * 80.0 * z.numpy(), rtol=1e-4, atol=1e-7)
    assert abs(de0) < 0.1
    s1, de1 = out["random_full"]
    assert not np.allclose(s1, c_skip * 80.0 * z.numpy(), atol=1e-3) and de1 > de0 + 0.2


def test_every_preset_stops_students_at_their_plateau_and_records_it():
    for name in sw.list_presets():
        for variant in (name, f"{name}:full"):
            cells = sw.expand(sw.load_preset(variant))
            assert {c.config.eval.stop_when_converged for c in cells} == {"student"}, variant
