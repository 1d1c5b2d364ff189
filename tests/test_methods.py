"""Student methods (dmdcore.students) and teacher families (dmdcore.teachers): each loss against
a hand-computed value on a tiny case, and a short run of each method lowering W2^2(S, data)."""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch

from dmdcore import pairing
from dmdcore.config import (
    STUDENT_METHODS, DataConfig, DistillConfig, ExperimentConfig, SamplerConfig, TeacherConfig,
)
from dmdcore.data import make_sampler
from dmdcore.losses import dmd_loss, gan_g_loss
from dmdcore.students import make_student, needs_data
from dmdcore.students.consistency import consistency_loss, teacher_ode_step
from dmdcore.students.fdistill import f_weight, normalized_weights, weighted_dmd_loss
from dmdcore.students.phased import phase_index_ranges
from dmdcore.students.sid import sid_loss
from dmdcore.teachers import build_denoiser, ode_map, velocity
from dmdcore.teachers.flow import flow_matching_loss, flow_sampler
from dmdcore.teachers.training import make_teacher_trainer
from dmdcore.teachers.transport import path_figures, transport_figures


# ---------------------------------------------------------------- hand-computed losses

def test_consistency_loss_and_ode_step_by_hand():
    # f = (1, 2), f^- = (0, 0): mean of squares = (1 + 4) / 2
    assert consistency_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])).item() == pytest.approx(2.5)
    # data at 0: D = 0, dx/dsigma = x / sigma, so x(s_to) = x * s_to / s_from exactly (Euler and Heun)
    D = lambda x, s, labels=None: torch.zeros_like(x)  # noqa: E731
    x = torch.tensor([[2.0, -4.0]])
    for solver in ("euler", "heun"):
        out = teacher_ode_step(D, x, torch.tensor([2.0]), torch.tensor([1.0]), None, solver)
        assert torch.allclose(out, torch.tensor([[1.0, -2.0]]))


def test_fdistill_weights_and_loss_by_hand():
    logits = torch.tensor([0.0, math.log(3.0)])
    assert torch.allclose(f_weight(logits, "rkl"), torch.tensor([1.0, 1.0]))
    assert torch.allclose(f_weight(logits, "js"), torch.tensor([0.5, 0.75]))      # r / (1 + r)
    assert torch.allclose(f_weight(logits, "fkl"), torch.tensor([1.0, 3.0]))      # r
    assert torch.allclose(normalized_weights(logits, "fkl"), torch.tensor([0.5, 1.5]))
    assert torch.allclose(normalized_weights(logits, "fkl", max_weight=1.2), torch.tensor([0.5, 1.2]))
    # x = (1, 2), D_real = 0, D_fake = 1: p_real = (1, 2), p_fake = (0, 1), grad = (1, 1) / 1.5
    x = torch.tensor([[1.0, 2.0]], requires_grad=True)
    D_r, D_f = torch.zeros(1, 2), torch.ones(1, 2)
    loss = weighted_dmd_loss(x, D_r, D_f, torch.tensor([2.0]))
    assert loss.item() == pytest.approx(0.5 * (2 / 1.5) ** 2)
    loss.backward()
    assert torch.allclose(x.grad, torch.full((1, 2), 2 / 1.5 / 2))                # w * grad / numel
    # reverse KL weights are 1: exactly DMD's loss
    x2 = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    w = normalized_weights(torch.tensor([0.3, -2.0]), "rkl")
    assert weighted_dmd_loss(x2, D_r.expand(2, 2), D_f.expand(2, 2), w).item() == dmd_loss(x2, D_r.expand(2, 2), D_f.expand(2, 2)).item()


def test_sid_loss_by_hand():
    # diff = D_r - D_f = (-1, -1); (1 - 1.2) diff^2 = (-0.2, -0.2); diff (D_f - x) = (0, -1);
    # sum = -1.4; w = mean|x - D_r| = 0.5  ->  -2.8
    x = torch.tensor([[1.0, 0.0]])
    assert sid_loss(x, torch.zeros(1, 2), torch.ones(1, 2), 1.2).item() == pytest.approx(-2.8)


def test_gan_generator_loss_by_hand():
    logits = torch.tensor([0.0, math.log(3.0)])
    assert gan_g_loss(logits).item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2)


def test_phase_ranges_partition_the_noise_levels():
    from dmdcore.samplers import karras_sigmas, student_sigmas

    karras = karras_sigmas(1000, 0.002, 80.0, 7.0, dtype=torch.float32).flip(0)
    levels = student_sigmas(3).to(torch.float32)
    ranges = phase_index_ranges(levels, karras)
    assert ranges[-1][0] == 0 and len(ranges) == 3
    for j, (lo, hi) in enumerate(ranges):
        assert hi > lo
        assert float(karras[hi - 1]) < float(levels[j]) + 1e-4
        if j + 1 < 3:
            assert float(karras[lo]) >= float(levels[j + 1]) - 1e-4
    assert [r[1] for r in ranges[1:]] == [r[0] for r in ranges[:-1]]  # contiguous, no overlap


# ---------------------------------------------------------------- teacher families

def test_flow_denoiser_velocity_and_sampler_by_hand():
    den = build_denoiser(2, 8, 1, 4, 0, 1.0, "fm")   # output layer starts at zero: v = 0
    x = torch.tensor([[2.0, -4.0]])
    assert torch.allclose(den(x, 1.0), x / 2)        # t = 1/2, x_t = x / 2, x0 = x_t - t * 0
    assert flow_matching_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])).item() == pytest.approx(2.5)
    # dx/dt = x from t = 1 to 0, one Heun step: Euler gives 0, slope there 0 -> z / 2
    z = torch.tensor([[2.0, 1.0]])
    assert torch.allclose(flow_sampler(lambda x, t, l: x, z, steps=1, solver="heun"), z / 2)
    assert torch.allclose(flow_sampler(lambda x, t, l: x, z, steps=1, solver="euler"), torch.zeros(1, 2))
    # velocity() of an EDM denoiser on the same path: D = 0 (data at 0) gives v = x_t / t
    D = lambda x, s, labels=None: torch.zeros_like(x)  # noqa: E731
    assert torch.allclose(velocity(D, z, 0.5), z / 0.5)
    with pytest.raises(ValueError, match="solver"):
        ode_map(D, "edm", z, SamplerConfig(solver="euler"))


def test_minibatch_ot_permutation_matches_raw_pot():
    g = np.random.default_rng(0)
    x, y = g.normal(size=(12, 3)), g.normal(size=(12, 3))
    perm = pairing.minibatch_ot_permutation(x, y)
    plan = ot.emd(np.full(12, 1 / 12), np.full(12, 1 / 12), ot.dist(x, y))
    assert np.array_equal(perm, plan.argmax(axis=1))


def test_path_figures_by_hand():
    times = np.array([1.0, 0.5, 0.0])
    straight = np.array([[[0.0, 0.0]], [[1.0, 0.0]], [[2.0, 0.0]]])
    e, ratio, s = path_figures(straight, times)
    assert (e, ratio, s) == pytest.approx((4.0, 0.0, 1.0))  # 1/.5 + 1/.5 = chord^2 / 1
    bent = np.array([[[0.0, 0.0]], [[1.0, 0.0]], [[1.0, 1.0]]])   # E = 1/.5 + 1/.5 = 4 vs chord^2 = 2
    e, ratio, s = path_figures(bent, times)
    assert (e, ratio, s) == pytest.approx((4.0, 1.0, math.sqrt(2) / 2))


# ---------------------------------------------------------------- short runs lower W2(S, data)

MU = torch.tensor([2.0, -1.0])


def _data(n=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    return MU + 0.3 * torch.randn(n, 2, generator=g)


@pytest.fixture(scope="module")
def teachers():
    """family -> a small teacher of N(MU, 0.3^2 I), trained on first use."""
    cache = {}

    def get(family):
        if family not in cache:
            torch.manual_seed(0)
            tr = make_teacher_trainer(TeacherConfig(width=32, depth=2, emb_dim=8, steps=150, batch=128, lr=3e-3, family=family), _data())
            for _ in range(150):
                tr.step()
            cache[family] = tr.teacher()
        return cache[family]

    return get


def _w2_data(trainer, z, data):
    return pairing.wasserstein2_squared(trainer.student(z).numpy(), data[: z.shape[0]].numpy())


# every method on the EDM teacher; the flow teachers with one score-based and one other method
CASES = [("edm", m) for m in STUDENT_METHODS] + [("fm", "dmd"), ("fm", "cd"), ("otcfm", "sid"), ("otcfm", "gan")]


@pytest.mark.parametrize("family, method", CASES)
def test_short_run_lowers_w2_to_data(teachers, family, method):
    teacher = teachers(family)
    data = _data(seed=1)
    cfg = ExperimentConfig(
        teacher=teacher.teacher_config,
        distill=DistillConfig(method=method, init="random", steps=40, batch=64, ratio=2, lr_gen=1e-3, lr_fake=3e-3, warmup=0, seed=0),
    )
    cfg = cfg.replace(adversarial=cfg.adversarial.replace(lr_disc=3e-3))
    sampler = make_sampler(data, seed=3) if needs_data(method) else None
    tr = make_student(teacher.denoiser, cfg, sample_shape=(2,), sigma_data=teacher.sigma_data, data_sampler=sampler, device="cpu")
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(5))
    before = _w2_data(tr, z, data)
    for _ in range(40):
        out = tr.step()
        assert math.isfinite(out["loss_dm"])
    after = _w2_data(tr, z, data)
    assert after < 0.8 * before, (method, teacher.family, before, after)
