"""Teacher and DMD training against closed forms; determinism; divergence; resuming; checkpoints."""

import copy
import math

import pytest
import torch

from dmdcore.config import DistillConfig, TeacherConfig
from dmdcore.data import make_sampler
from dmdcore.distill import DivergenceError, DMDTrainer, TeacherTrainer
from dmdcore.toy import ToyTeacher, load_toy_model, save_toy_model

MU = torch.tensor([1.0, -0.5])
S = torch.tensor([0.5, 1.0])  # per-coordinate std of the Gaussian data N(MU, diag(S^2))


@pytest.fixture(autouse=True)
def one_thread():
    """Tests run single-threaded (2 shared cores); restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def gaussian_data(n=20000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return MU + S * torch.randn(n, 2, generator=g)


def ideal_denoiser(x, sigma):
    """D*(x; sigma) = MU + S^2 / (S^2 + sigma^2) (x - MU) for N(MU, diag(S^2))."""
    s2 = S.double() ** 2
    return MU.double() + s2 / (s2 + sigma**2) * (x.double() - MU.double())


def exact_ode_map(z, sigma_max=80.0):
    s = S.double()
    return MU.double() + (sigma_max * z.double() - MU.double()) * s / torch.sqrt(s**2 + sigma_max**2)


TEACHER_CFG = TeacherConfig(width=64, depth=3, emb_dim=16, steps=2500, batch=256, lr=2e-3, ema=0.99, seed=0)


@pytest.fixture(scope="module")
def gaussian_teacher():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tr = TeacherTrainer(TEACHER_CFG, gaussian_data(), device="cpu")
        losses = [tr.step()["loss"] for _ in range(TEACHER_CFG.steps)]
        return tr, losses
    finally:
        torch.set_num_threads(old)


def test_teacher_reaches_ideal_denoiser(gaussian_teacher):
    tr, losses = gaussian_teacher
    teacher = tr.teacher()
    # sigma_data estimated from the data (std over all coordinates) and recorded in the config
    assert tr.sigma_data == pytest.approx(float(gaussian_data().double().std()), rel=1e-9)
    assert teacher.teacher_config.sigma_data == pytest.approx(tr.sigma_data)
    assert sum(losses[-200:]) / 200 < sum(losses[:50]) / 50
    g = torch.Generator().manual_seed(7)
    x0 = gaussian_data(4000, seed=1)
    # denoiser error relative to the ideal denoiser's own error, per noise level:
    # E||D - D*||^2 <= 0.1 E||D* - x0||^2 (the irreducible part)
    for sigma in (0.05, 0.3, 1.0, 3.0, 20.0):
        x = x0 + sigma * torch.randn(x0.shape, generator=g)
        with torch.no_grad():
            d = teacher.denoiser(x, sigma).double()
        d_star = ideal_denoiser(x, sigma)
        err = (d - d_star).square().sum(1).mean()
        irreducible = (d_star - x0.double()).square().sum(1).mean()
        assert err <= 0.1 * irreducible, (sigma, float(err), float(irreducible))
    # the learned ODE map T(z) is close to the exact affine map
    z = torch.randn(2000, 2, generator=g)
    t = teacher.sample(z).double()
    exact = exact_ode_map(z)
    rel = (t - exact).square().sum(1).mean() / (exact - MU.double()).square().sum(1).mean()
    assert rel < 0.03, float(rel)


def test_teacher_is_deterministic_and_resumes():
    data = gaussian_data(2000)
    cfg = TEACHER_CFG.replace(steps=30, width=32)
    a, b = TeacherTrainer(cfg, data, device="cpu"), TeacherTrainer(cfg, data, device="cpu")
    la = [a.step()["loss"] for _ in range(20)]
    lb = [b.step()["loss"] for _ in range(20)]
    assert la == lb
    c = TeacherTrainer(cfg.replace(seed=1), data, device="cpu")
    assert [c.step()["loss"] for _ in range(20)] != la
    # resume: a fresh trainer loaded from a's state continues exactly like a
    state = copy.deepcopy(a.state_dict())
    r = TeacherTrainer(cfg, data, device="cpu")
    r.load_state_dict(state)
    assert [a.step()["loss"] for _ in range(5)] == [r.step()["loss"] for _ in range(5)]


def test_teacher_divergence_keeps_weights():
    data = gaussian_data(2000)
    tr = TeacherTrainer(TEACHER_CFG.replace(lr=1e6, width=32), data, device="cpu")
    with pytest.raises(DivergenceError, match="not finite"):
        for _ in range(200):
            before = copy.deepcopy(tr.net.state_dict())
            ema_before = copy.deepcopy(tr.ema.state_dict())
            step_before = tr.step_count
            tr.step()
    after = tr.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(ema_before[k], v) for k, v in tr.ema.state_dict().items())
    assert tr.step_count == step_before


def test_teacher_bad_inputs():
    with pytest.raises(ValueError, match="labels"):
        TeacherTrainer(TEACHER_CFG.replace(conditional=True), gaussian_data(500), device="cpu")
    with pytest.raises(ValueError, match="data"):
        TeacherTrainer(TEACHER_CFG, torch.zeros(10), device="cpu")
    bad = gaussian_data(500)
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="data"):
        TeacherTrainer(TEACHER_CFG, bad, device="cpu")
    with pytest.raises(ValueError, match="cfg"):
        TeacherTrainer({"width": 3}, gaussian_data(500), device="cpu")


def test_toy_checkpoint_round_trip(gaussian_teacher, tmp_path):
    teacher = gaussian_teacher[0].teacher()
    path = tmp_path / "teacher.pt"
    teacher.save(path)
    back = ToyTeacher.load(path, device="cpu")
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(back.sample(z), teacher.sample(z), rtol=0, atol=0)
    assert back.teacher_config == teacher.teacher_config and back.sigma_data == teacher.sigma_data
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "dmdcore.toy.v1" and raw["role"] == "teacher" and raw["dim"] == 2
    save_toy_model(tmp_path / "s.pt", teacher.denoiser, role="student", teacher_config=teacher.teacher_config, step=4)
    den, meta = load_toy_model(tmp_path / "s.pt")
    assert meta["role"] == "student" and meta["step"] == 4
    with pytest.raises(ValueError, match="role"):
        ToyTeacher.load(tmp_path / "s.pt")
    torch.save({"format": "other"}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="format"):
        ToyTeacher.load(tmp_path / "x.pt")


DMD_CFG = DistillConfig(ratio=5, steps=300, batch=256, lr_gen=3e-4, lr_fake=3e-3, seed=0)


class IdealGaussianDenoiser(torch.nn.Module):
    """The exact teacher for N(MU, diag(S^2)) with the denoiser call signature D(x, sigma, labels)."""

    def forward(self, x, sigma, labels=None):
        sig = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1, 1)
        return (MU + S**2 / (S**2 + sig**2) * (x.float() - MU)).to(x.dtype)


def test_dmd_matches_gaussian_mean_and_covariance(gaussian_teacher):
    """DMD against the exact Gaussian score (so the target is exactly N(MU, diag(S^2))); generator and
    fake score start from the trained MLP teacher."""
    tr = gaussian_teacher[0]
    mlp = tr.teacher().denoiser
    dmd = DMDTrainer(
        IdealGaussianDenoiser(), DMD_CFG, sample_shape=(2,), sigma_data=tr.sigma_data, device="cpu",
        generator=copy.deepcopy(mlp), fake=copy.deepcopy(mlp),
    )
    z = torch.randn(8000, 2, generator=torch.Generator().manual_seed(11))
    init = dmd.student(z).double()
    target_cov = torch.diag(S.double() ** 2)
    # a teacher copy evaluated once at sigma_max is far from the data covariance (it sits near the mean)
    assert (torch.cov(init.T) - target_cov).norm() > 0.5
    for _ in range(DMD_CFG.steps):
        m = dmd.step()
    assert set(m) == {"step", "loss_dm", "loss_fake", "grad_norm"} and m["step"] == DMD_CFG.steps
    x = dmd.student(z).double()
    mean, cov = x.mean(0), torch.cov(x.T)
    # stated tolerance: mean within 0.1 (L2), covariance within 0.15 (Frobenius; ||Sigma||_F = 1.03)
    assert (mean - MU.double()).norm() < 0.1, mean
    assert (cov - target_cov).norm() < 0.15, cov


def _small_teacher(label_dim=0):
    data = gaussian_data(2000)
    labels = (data[:, 0] > MU[0]).long() if label_dim else None
    cfg = TEACHER_CFG.replace(width=32, steps=5, conditional=bool(label_dim))
    tr = TeacherTrainer(cfg, data, labels, device="cpu")
    for _ in range(5):
        tr.step()
    return tr, data, labels


def test_dmd_is_deterministic_and_resumes():
    tr, data, _ = _small_teacher()
    cfg = DMD_CFG.replace(batch=64)
    make = lambda c=cfg: DMDTrainer(tr.teacher().denoiser, c, sample_shape=(2,), sigma_data=tr.sigma_data, device="cpu")  # noqa: E731
    a, b = make(), make()
    ma = [a.step() for _ in range(5)]
    mb = [b.step() for _ in range(5)]
    assert ma == mb
    assert [make(cfg.replace(seed=3)).step() for _ in range(2)] != ma[:2]
    r = make()
    r.load_state_dict(copy.deepcopy(a.state_dict()))
    assert [a.step() for _ in range(3)] == [r.step() for _ in range(3)]


def _states(dmd):
    return (copy.deepcopy(dmd.generator.state_dict()), copy.deepcopy(dmd.fake.state_dict()), copy.deepcopy(dmd.opt_fake.state_dict()["state"]))


def _assert_same(s1, s2):
    for d1, d2 in zip(s1[:2], s2[:2]):
        assert d1.keys() == d2.keys() and all(torch.equal(d1[k], d2[k]) for k in d1)
    assert s1[2].keys() == s2[2].keys()
    for k in s1[2]:
        assert all(torch.equal(s1[2][k][n], s2[2][k][n]) for n in s1[2][k])


def test_dmd_injected_inf_rolls_back_whole_step():
    tr, _, _ = _small_teacher()
    dmd = DMDTrainer(tr.teacher().denoiser, DMD_CFG.replace(batch=32), sample_shape=(2,), sigma_data=tr.sigma_data, device="cpu")
    dmd.step()
    calls = {"n": 0, "poison_at": None}

    def poison(module, inputs, output):
        calls["n"] += 1
        if calls["poison_at"] is not None and calls["n"] >= calls["poison_at"]:
            return output * float("inf")
        return output

    dmd.fake.register_forward_hook(poison)
    before = _states(dmd)
    calls["n"], calls["poison_at"] = 0, 4  # 4th fake forward: fake-score step 4 of 5, after 3 applied updates
    with pytest.raises(DivergenceError, match="fake-score"):
        dmd.step()
    _assert_same(before, _states(dmd))
    assert dmd.step_count == 1
    calls["poison_at"] = None
    assert math.isfinite(dmd.step()["loss_dm"])  # training continues from the restored state


def test_dmd_huge_lr_diverges_without_applying_update():
    tr, _, _ = _small_teacher()
    cfg = DMD_CFG.replace(batch=32, lr_gen=1e6, lr_fake=1e6, grad_clip=0.0, weight_decay=0.0)
    dmd = DMDTrainer(tr.teacher().denoiser, cfg, sample_shape=(2,), sigma_data=tr.sigma_data, device="cpu")
    with pytest.raises(DivergenceError):
        for _ in range(100):
            before = _states(dmd)
            dmd.step()
    _assert_same(before, _states(dmd))


def test_dmd_optional_terms_and_variants():
    tr, data, labels = _small_teacher(label_dim=2)
    teacher = tr.teacher()
    z_r = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    l_r = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(1))
    pairs = (z_r, teacher.sample(z_r, labels=torch.nn.functional.one_hot(l_r, 2).float()), l_r)
    cfg = DMD_CFG.replace(batch=32, ratio=2, regression=True, gan=True, reg_batch=16)
    kw = dict(sample_shape=(2,), sigma_data=tr.sigma_data, label_dim=2, device="cpu")
    dmd = DMDTrainer(teacher.denoiser, cfg, reg_pairs=pairs, data_sampler=make_sampler(data, labels, seed=0), **kw)
    m = dmd.step()
    assert set(m) == {"step", "loss_dm", "loss_fake", "loss_reg", "loss_gan_g", "loss_gan_d", "grad_norm"}
    assert all(math.isfinite(v) for v in m.values())
    # missing inputs for optional terms
    with pytest.raises(ValueError, match="data_sampler"):
        DMDTrainer(teacher.denoiser, cfg, reg_pairs=pairs, **kw)
    with pytest.raises(ValueError, match="reg_pairs"):
        DMDTrainer(teacher.denoiser, cfg.replace(gan=False), **kw)
    with pytest.raises(ValueError, match="sample_shape"):
        DMDTrainer(teacher.denoiser, DMD_CFG, sample_shape=(), sigma_data=1.0, device="cpu")
    # random init, another width: a different network that still trains
    rnd = DMDTrainer(teacher.denoiser, DMD_CFG.replace(batch=32, init="random", student_width=16, student_depth=2), **kw)
    assert rnd.generator.model.width == 16 and rnd.generator.model.depth == 2
    assert math.isfinite(rnd.step()["loss_dm"])
    # few-step student: deterministic sampling, all steps used
    few = DMDTrainer(teacher.denoiser, DMD_CFG.replace(batch=32, student_steps=3), **kw)
    for _ in range(3):
        assert math.isfinite(few.step()["loss_dm"])
    zz = torch.randn(10, 2)
    torch.testing.assert_close(few.student(zz), few.student(zz))
    assert few.student(zz).shape == (10, 2)


def test_conditional_teacher_follows_labels():
    """Two well-separated classes: T(z, label) lands at the labelled class centre."""
    from dmdcore.config import DataConfig
    from dmdcore.data import make_dataset

    ds = make_dataset(DataConfig(dataset="mixture", dim=2, n_modes=2, mode_scale=2.0, spread=0.1, n_samples=4000, seed=0))
    cfg = TEACHER_CFG.replace(steps=600, width=32, conditional=True)
    tr = TeacherTrainer(cfg, ds.x, ds.labels, device="cpu", label_dim=ds.n_classes)
    for _ in range(cfg.steps):
        tr.step()
    teacher = tr.teacher()
    assert teacher.label_dim == 2
    z = torch.randn(400, 2, generator=torch.Generator().manual_seed(5))
    for k in range(2):
        x = teacher.sample(z, labels=torch.full((400,), k, dtype=torch.long))
        nearest = torch.cdist(x, ds.centers).argmin(dim=1)
        assert (nearest == k).float().mean() > 0.95


def test_dmd_warmup_and_lognormal_fake_sigma():
    tr, _, _ = _small_teacher()
    cfg = DMD_CFG.replace(batch=16, ratio=2, warmup=10, fake_sigma="lognormal", lr_gen=1e-3, lr_fake=2e-3)
    dmd = DMDTrainer(tr.teacher().denoiser, cfg, sample_shape=(2,), sigma_data=tr.sigma_data, device="cpu")
    for t in range(1, 4):
        m = dmd.step()
        assert math.isfinite(m["loss_fake"])
        # linear warm-up: lr = base * t / warmup during step t
        assert dmd.opt_gen.param_groups[0]["lr"] == pytest.approx(1e-3 * t / 10)
        assert dmd.opt_fake.param_groups[0]["lr"] == pytest.approx(2e-3 * t / 10)


class _SigmaRecorder(torch.nn.Module):
    """Wraps the real-score denoiser D_real(x, sigma, labels) and records every sigma it is given."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.sigmas = []

    def forward(self, x, sigma, labels=None):
        self.sigmas.append(torch.as_tensor(sigma).detach().reshape(-1).to("cpu", torch.float64).clone())
        return self.inner(x, sigma, labels)


def test_dm_loss_sigmas_come_from_karras_levels_20_to_980():
    """dmd.md, generator step 2: the DM loss's sigma is a level of the ascending 1000-level Karras
    grid (sigma 0.002..80, rho 7), index in [20, 980) -- never one of the 20 lowest or highest."""
    tr, _, _ = _small_teacher()
    dmd = DMDTrainer(tr.teacher().denoiser, DMD_CFG.replace(batch=64, ratio=1), sample_shape=(2,),
                     sigma_data=tr.sigma_data, device="cpu")
    rec = _SigmaRecorder(dmd.real)
    dmd.real = rec  # wrapped after construction: generator and fake score are copies of the unwrapped teacher
    for _ in range(6):
        dmd.step()
    assert len(rec.sigmas) == 6 and all(s.shape == (64,) for s in rec.sigmas)  # one real-score call per step
    got = torch.cat(rec.sigmas)

    # The grid from its definition (dmd.md): descending Karras levels, then ascending (index 0 = sigma_min).
    n, s_min, s_max, rho = 1000, 0.002, 80.0, 7.0
    i = torch.arange(n, dtype=torch.float64)
    desc = (s_max ** (1 / rho) + i / (n - 1) * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    karras = desc.flip(0)
    assert karras[0] == pytest.approx(s_min) and karras[-1] == pytest.approx(s_max)
    # nearest level of each recorded sigma (in log space; neighbouring levels differ by >= 2.5%)
    idx = (got.log()[:, None] - karras.log()[None, :]).abs().argmin(dim=1)
    rel = ((got - karras[idx]).abs() / karras[idx])
    assert rel.max() < 1e-5  # every sigma is a grid level (float32 rounding only) ...
    assert idx.min() >= 20 and idx.max() < 980  # ... of the allowed index range, never outside
    assert got.min() >= karras[20] * (1 - 1e-5) and got.max() <= karras[979] * (1 + 1e-5)
    assert len(set(idx.tolist())) > 150  # drawn across the range, not one fixed level


@pytest.mark.parametrize("fake_sigma", ["karras", "lognormal"])
def test_gan_head_sees_real_and_generated_samples_at_the_same_noise_levels(fake_sigma):
    # DMD2 noises real and generated samples from one σ distribution before the classifier head;
    # otherwise the head could tell them apart by noise level alone.
    from dmdcore.samplers import karras_sigmas

    tr, data, _ = _small_teacher()
    cfg = DMD_CFG.replace(batch=64, ratio=2, gan=True, fake_sigma=fake_sigma)
    dmd = DMDTrainer(tr.teacher().denoiser, cfg, sample_shape=(2,), sigma_data=tr.sigma_data,
                     data_sampler=make_sampler(data, None, seed=0), device="cpu")
    seen = {"generated": [], "real_or_generator": []}
    fwd_feats, feats = dmd.fake.forward_and_features, dmd.fake.features

    def rec_fwd(x, sigma, labels=None):
        seen["generated"].append(torch.as_tensor(sigma).reshape(-1).clone())
        return fwd_feats(x, sigma, labels)

    def rec_feats(x, sigma, labels=None):
        seen["real_or_generator"].append(torch.as_tensor(sigma).reshape(-1).clone())
        return feats(x, sigma, labels)

    dmd.fake.forward_and_features, dmd.fake.features = rec_fwd, rec_feats
    for _ in range(6):
        dmd.step()
    gen_s = torch.cat(seen["generated"])
    # features() calls per step: one per fake-score step (real samples), then the generator's
    calls = seen["real_or_generator"]
    assert len(calls) == 6 * 3
    real_s = torch.cat([c for i, c in enumerate(calls) if i % 3 != 2])
    gen_gan_s = torch.cat([c for i, c in enumerate(calls) if i % 3 == 2])
    other_s = torch.cat([real_s, gen_gan_s])
    assert gen_s.numel() == 6 * 2 * 64 and real_s.numel() == 6 * 2 * 64 and gen_gan_s.numel() == 6 * 64
    if fake_sigma == "karras":
        grid = karras_sigmas(1000, 0.002, 80.0, 7.0, dtype=torch.float32)
        for s in (gen_s, real_s, gen_gan_s):
            assert torch.isin(s, grid).all()
            # the whole grid, not only the DM loss's indices [20, 980)
            assert (s < torch.sort(grid).values[20]).any()
            assert (s > torch.sort(grid).values[979]).any()
    # same distribution: the log-σ quartiles agree (two-sample check with ~770 and ~1150 draws)
    q = torch.tensor([0.25, 0.5, 0.75])
    assert torch.allclose(gen_s.log().quantile(q), other_s.log().quantile(q), atol=0.5)
