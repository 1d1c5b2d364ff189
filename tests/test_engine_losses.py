"""Loss functions against their definitions (dmd.md, EDM Table 1)."""

import torch

from dmdcore.losses import denoising_loss, dmd_grad, dmd_loss, edm_sigma, gan_d_loss, gan_g_loss, regression_loss
from dmdcore.precond import edm_loss_weight


def test_dmd_loss_gradient_is_normalised_score_difference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    d_real = torch.randn(6, 3, 4, generator=g, dtype=torch.float64)
    d_fake = torch.randn(6, 3, 4, generator=g, dtype=torch.float64)
    loss = dmd_loss(x, d_real, d_fake)
    loss.backward()
    p_real, p_fake = x.detach() - d_real, x.detach() - d_fake
    grad = (p_real - p_fake) / p_real.abs().mean(dim=(1, 2), keepdim=True)
    # d loss / dx = grad / numel (dmd.md step 5); sign: descent moves x toward D_real - D_fake
    torch.testing.assert_close(x.grad, grad / x.numel())
    torch.testing.assert_close(loss, 0.5 * grad.square().mean())
    step = -x.grad
    assert torch.sum(step * (d_real - d_fake) / p_real.abs().mean(dim=(1, 2), keepdim=True)) > 0


def test_dmd_grad_nan_becomes_zero():
    x = torch.zeros(2, 3)
    d_real = torch.zeros(2, 3)  # p_real = 0 -> 0/0 = NaN for sample 0 and 1
    d_fake = torch.zeros(2, 3)
    d_real[1] = 1.0
    grad = dmd_grad(x, d_real, d_fake)
    assert torch.isfinite(grad).all()
    assert torch.equal(grad[0], torch.zeros(3))
    torch.testing.assert_close(grad[1], torch.full((3,), -1.0))


def test_denoising_loss_is_edm_weighted_mse():
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g)
    sigma = torch.tensor([0.01, 0.1, 1.0, 10.0, 80.0])
    D = lambda xn, s, labels=None: 0.5 * xn  # noqa: E731
    loss = denoising_loss(D, x, sigma, eps, 0.7)
    ref = (edm_loss_weight(sigma, 0.7)[:, None] * (0.5 * (x + sigma[:, None] * eps) - x) ** 2).mean()
    torch.testing.assert_close(loss, ref)


def test_edm_sigma_is_lognormal():
    rnd = torch.randn(200000, generator=torch.Generator().manual_seed(2))
    log_s = edm_sigma(rnd, -1.2, 1.2).log()
    assert abs(log_s.mean().item() + 1.2) < 0.01 and abs(log_s.std().item() - 1.2) < 0.01


def test_regression_and_gan_losses():
    pred, target = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert regression_loss(pred, target).item() == (5.0 + 25.0) / 2
    lf, lr = torch.tensor([0.0, 2.0]), torch.tensor([1.0, -1.0])
    sp = lambda v: torch.log1p(torch.exp(v))  # noqa: E731
    torch.testing.assert_close(gan_d_loss(lf, lr), sp(lf).mean() + sp(-lr).mean())
    torch.testing.assert_close(gan_g_loss(lf), sp(-lf).mean())


def test_denoising_loss_features_fallback_matches_single_pass():
    from dmdcore.nets import MLPBackbone
    from dmdcore.precond import EDMDenoiser

    torch.manual_seed(0)
    den = EDMDenoiser(MLPBackbone(2, 16, 2, 8), 0.5)
    torch.nn.init.normal_(den.model.out.weight)

    class OnlyFeatures(torch.nn.Module):  # like a denoiser exposing features() but no fused pass
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, sigma, labels=None):
            return self.inner(x, sigma, labels)

        def features(self, x, sigma, labels=None):
            return self.inner.features(x, sigma, labels)

    x, eps, sigma = torch.randn(8, 2), torch.randn(8, 2), torch.rand(8) + 0.1
    a = denoising_loss(den, x, sigma, eps, 0.5, return_features=True)
    b = denoising_loss(OnlyFeatures(den), x, sigma, eps, 0.5, return_features=True)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
