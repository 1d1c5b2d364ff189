"""EDM preconditioning, Karras schedule and the EDM sampler against closed forms."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from dmdcore.nets import MLPBackbone
from dmdcore.precond import EDMDenoiser, edm_coefficients, edm_loss_weight
from dmdcore.samplers import edm_sampler, few_step, karras_sigmas, one_step, student_sigmas


def test_edm_coefficients_closed_form():
    sd = 0.5
    sigma = torch.tensor([0.002, 0.1, 0.5, 1.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, sd)
    for i, s in enumerate(sigma.tolist()):
        assert c_skip[i].item() == pytest.approx(sd**2 / (s**2 + sd**2), rel=1e-12)
        assert c_out[i].item() == pytest.approx(s * sd / math.sqrt(s**2 + sd**2), rel=1e-12)
        assert c_in[i].item() == pytest.approx(1 / math.sqrt(sd**2 + s**2), rel=1e-12)
        assert c_noise[i].item() == pytest.approx(math.log(s) / 4, rel=1e-12)
    # at sigma = sigma_data: c_skip = 1/2, c_out = sd/sqrt2
    cs, co, ci, _ = edm_coefficients(torch.tensor(sd, dtype=torch.float64), sd)
    assert cs.item() == pytest.approx(0.5) and co.item() == pytest.approx(sd / math.sqrt(2))
    # EDM's derivation: unit-variance inputs c_in^2 (sd^2 + s^2) = 1 and
    # unit-variance training target c_out^2 = (1 - c_skip)^2 sd^2 + c_skip^2 s^2
    torch.testing.assert_close(c_in**2 * (sd**2 + sigma**2), torch.ones_like(sigma))
    torch.testing.assert_close(c_out**2, (1 - c_skip) ** 2 * sd**2 + c_skip**2 * sigma**2)
    # loss weight lambda = 1 / c_out^2
    torch.testing.assert_close(edm_loss_weight(sigma, sd), 1 / c_out**2)


class _ConstBackbone(nn.Module):
    """F(x, c_noise) = x * 0 + 2 + c_noise: lets D be checked against c_skip x + c_out F(c_in x, c_noise)."""

    label_dim = 0
    feature_dim = 1

    def forward(self, x, c_noise, labels=None):
        self.seen = (x.detach().clone(), c_noise.detach().clone())
        return torch.zeros_like(x) + 2 + c_noise.view(-1, *([1] * (x.ndim - 1)))


def test_denoiser_applies_preconditioning_and_accepts_sigma_shapes():
    sd = 0.7
    den = EDMDenoiser(_ConstBackbone(), sd)
    x = torch.randn(4, 3)
    sig = torch.tensor([0.1, 1.0, 5.0, 80.0])
    out = den(x, sig)
    c_skip, c_out, c_in, c_noise = edm_coefficients(sig, sd)
    expected = c_skip[:, None] * x + c_out[:, None] * (2 + c_noise[:, None])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(den.model.seen[0], c_in[:, None] * x)
    torch.testing.assert_close(den.model.seen[1], c_noise)
    # float, 0-d and (B,) sigma give the same answer
    a = den(x, 2.5)
    b = den(x, torch.tensor(2.5))
    c = den(x, torch.full((4,), 2.5))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    with pytest.raises(ValueError, match="sigma"):
        den(x, torch.ones(3))
    with pytest.raises(ValueError, match="sigma_data"):
        EDMDenoiser(_ConstBackbone(), 0.0)


def test_mlp_denoiser_features_and_labels():
    torch.manual_seed(0)
    den = EDMDenoiser(MLPBackbone(3, width=16, depth=2, emb_dim=8, label_dim=4), 1.0)
    nn.init.normal_(den.model.out.weight)
    x, s = torch.randn(5, 3), torch.rand(5) + 0.1
    lab = torch.tensor([0, 1, 2, 3, 0])
    h = den.features(x, s, lab)
    assert h.shape == (5, den.feature_dim) == (5, 16)
    out, h2 = den.forward_and_features(x, s, lab)
    torch.testing.assert_close(h, h2)
    torch.testing.assert_close(out, den(x, s, nn.functional.one_hot(lab, 4).float()))
    # labels matter; None = zero label row
    assert not torch.allclose(den(x, s, lab), den(x, s, None))
    torch.testing.assert_close(den(x, s, None), den(x, s, torch.zeros(5, 4)))
    # zero-initialised output layer: an untrained denoiser is c_skip x
    fresh = EDMDenoiser(MLPBackbone(3, 16, 2, 8), 1.0)
    torch.testing.assert_close(fresh(x, s), edm_coefficients(s, 1.0)[0][:, None] * x)


def test_karras_schedule_closed_form():
    n, smin, smax, rho = 18, 0.002, 80.0, 7.0
    t = karras_sigmas(n, smin, smax, rho)
    assert t.dtype == torch.float64 and t.shape == (n,)
    i = np.arange(n)
    ref = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    np.testing.assert_allclose(t.numpy(), ref, rtol=1e-12)
    assert t[0].item() == pytest.approx(smax) and t[-1].item() == pytest.approx(smin)
    assert (t[1:] < t[:-1]).all()
    tz = karras_sigmas(n, smin, smax, rho, append_zero=True)
    assert tz.shape == (n + 1,) and tz[-1].item() == 0.0
    # rho = 1 is a linear grid
    np.testing.assert_allclose(karras_sigmas(5, 1.0, 5.0, 1.0).numpy(), [5, 4, 3, 2, 1])
    assert karras_sigmas(1).tolist() == [80.0]
    for bad in (dict(n=0), dict(n=5, sigma_min=5.0, sigma_max=1.0), dict(n=5, rho=0.0)):
        with pytest.raises(ValueError):
            karras_sigmas(**bad)


class GaussianDenoiser(nn.Module):
    """Ideal denoiser for data N(mu, diag(s^2)): D(x; sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu)."""

    def __init__(self, mu, s):
        super().__init__()
        self.mu = torch.as_tensor(mu, dtype=torch.float64)
        self.s = torch.as_tensor(s, dtype=torch.float64)
        self.calls = 0

    def forward(self, x, sigma, labels=None):
        self.calls += 1
        sig = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, *([1] * (x.ndim - 1)))
        mu = self.mu.reshape(1, *x.shape[1:]) if self.mu.ndim else self.mu
        s2 = (self.s**2).reshape(1, *x.shape[1:]) if self.s.ndim else self.s**2
        return mu + s2 / (s2 + sig**2) * (x.double() - mu)


def exact_ode_map(z, mu, s, sigma_max=80.0):
    """The probability-flow ODE dx/dsigma = sigma (x - mu) / (s^2 + sigma^2) from x = sigma_max z at
    sigma_max to sigma = 0: T(z) = mu + (sigma_max z - mu) s / sqrt(s^2 + sigma_max^2) (affine in z)."""
    return mu + (sigma_max * z.double() - mu) * s / torch.sqrt(s**2 + sigma_max**2)


def test_heun_matches_exact_ode_map_for_gaussian_data():
    mu = torch.tensor([1.5, -0.5, 0.25], dtype=torch.float64)
    s = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    D = GaussianDenoiser(mu, s)
    z = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = exact_ode_map(z, mu, s)
    errs = {}
    for n in (18, 64, 256, 1024):
        D.calls = 0
        out = edm_sampler(D, z, steps=n)
        assert D.calls == 2 * n - 1  # Heun: 2 NFE per step except the last
        errs[n] = (out - exact).abs().max().item()
    # EDM's default N = 18 is within 6 % of the sample scale here (the ODE bends near sigma ~ s);
    # the discretisation error falls at second order (~N^-2) and is tight for fine grids
    scale = exact.abs().max().item()
    assert errs[18] < 0.06 * scale
    assert errs[64] / errs[256] > 12 and errs[256] / errs[1024] > 12  # 4x steps -> ~16x smaller
    assert errs[1024] < 1e-4


def test_sampler_is_shape_agnostic_and_returns_trajectory():
    D = GaussianDenoiser(torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.8, dtype=torch.float64))
    z = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    out, traj = edm_sampler(D, z, steps=256, return_trajectory=True)
    assert out.shape == z.shape and out.dtype == z.dtype
    assert traj.shape == (257, 2, 3, 4, 4)
    torch.testing.assert_close(traj[0], z * 80.0)
    torch.testing.assert_close(traj[-1], out)
    seen = []
    edm_sampler(D, z, steps=10, callback=lambda info: seen.append((info["i"], info["sigma"])))
    assert [i for i, _ in seen] == list(range(10)) and seen[-1][1] == 0.0
    torch.testing.assert_close(out.double(), exact_ode_map(z, 0.3, torch.tensor(0.8, dtype=torch.float64)), atol=2e-3, rtol=0)


def test_churn_is_seeded_and_stochastic():
    D = GaussianDenoiser(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    z = torch.randn(500, 2, generator=torch.Generator().manual_seed(2))
    kw = dict(steps=32, S_churn=40.0, S_min=0.05, S_max=50.0, S_noise=1.003)
    a = edm_sampler(D, z, generator=torch.Generator().manual_seed(5), **kw)
    b = edm_sampler(D, z, generator=torch.Generator().manual_seed(5), **kw)
    c = edm_sampler(D, z, **dict(kw, S_churn=0.0))
    torch.testing.assert_close(a, b)
    assert (a - c).abs().mean() > 0.05
    # the stochastic sampler still samples N(0, I) for this ideal denoiser
    assert abs(a.std().item() - 1.0) < 0.08
    with pytest.raises(ValueError, match="steps"):
        edm_sampler(D, z, steps=0)


def test_one_step_and_few_step():
    G = lambda z, labels=None: 2 * z  # noqa: E731
    z = torch.randn(4, 2)
    torch.testing.assert_close(one_step(G, z), 2 * z)
    levels = student_sigmas(3)
    assert levels.shape == (3,) and levels[0].item() == 80.0 and (levels[1:] < levels[:-1]).all()
    assert student_sigmas(1).tolist() == [80.0]
    with pytest.raises(ValueError, match="student_steps"):
        student_sigmas(5)
    D = GaussianDenoiser(torch.zeros(2, dtype=torch.float64), torch.full((2,), 0.5, dtype=torch.float64))
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = few_step(D, z.double(), sigmas=levels, generator=g1)
    b = few_step(D, z.double(), sigmas=levels, generator=g2)
    torch.testing.assert_close(a, b)
    # one level = one D evaluation at sigma_max on sigma_max z
    torch.testing.assert_close(few_step(D, z.double(), sigmas=student_sigmas(1)), D(80.0 * z.double(), 80.0))
