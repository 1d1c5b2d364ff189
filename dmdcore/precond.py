"""EDM preconditioning (Karras et al. 2022, "Elucidating the Design Space...", Table 1, column
"EDM"): the only place with c_skip, c_out, c_in and c_noise."""

from __future__ import annotations

import torch
from torch import nn


def edm_coefficients(sigma, sigma_data: float):
    """EDM preconditioning coefficients for noise level(s) sigma (float or tensor, any shape).

    Returns (c_skip, c_out, c_in, c_noise), each like ``sigma``:
    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sd^2 + sigma^2), c_noise = ln(sigma) / 4.
    """
    sigma = torch.as_tensor(sigma)
    sd = sigma_data
    # EDM Table 1 (preconditioning), also EDM eq. (7)
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
    c_in = 1 / (sd**2 + sigma**2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma, sigma_data: float):
    """EDM loss weighting lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 (EDM Table 1)."""
    sigma = torch.as_tensor(sigma)
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


class EDMDenoiser(nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise, labels) (EDM eq. 7) over any backbone F
    with the call F(x, c_noise, labels) (e.g. ``nets.MLPBackbone``).

    forward(x (B, *shape), sigma float | 0-d | (B,) tensor, labels (B, label_dim) one-hot float,
    (B,) int class indices, or None) -> x0_hat (B, *shape) in the network's dtype (float32).
    Inputs of other dtypes (float64 from the sampler) are cast, as EDM's EDMPrecond does.
    """

    def __init__(self, backbone: nn.Module, sigma_data: float):
        super().__init__()
        sigma_data = float(sigma_data)
        if not (sigma_data > 0 and sigma_data < float("inf")):
            raise ValueError(f"sigma_data: {sigma_data} not in (0, inf)")
        self.model = backbone
        self.sigma_data = sigma_data
        self.label_dim = int(getattr(backbone, "label_dim", 0))
        self.feature_dim = int(getattr(backbone, "feature_dim", 0))

    def _prepare(self, x, sigma, labels):
        dtype = self.model.inp.weight.dtype if hasattr(self.model, "inp") else torch.float32
        x = x.to(dtype)
        b = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=dtype, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(b)
        elif sigma.numel() != b:
            raise ValueError(f"sigma: {sigma.numel()} values for a batch of {b} (need 1 or {b})")
        if labels is not None:
            if labels.dtype in (torch.int64, torch.int32) and labels.ndim == 1:
                labels = nn.functional.one_hot(labels.long(), self.label_dim).to(dtype)
            else:
                labels = labels.to(dtype)
        elif self.label_dim > 0:
            labels = torch.zeros(b, self.label_dim, dtype=dtype, device=x.device)
        return x, sigma, labels

    def forward(self, x: torch.Tensor, sigma, labels: torch.Tensor | None = None) -> torch.Tensor:
        x, sigma, labels = self._prepare(x, sigma, labels)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        view = (-1,) + (1,) * (x.ndim - 1)
        # EDM eq. (7): D_theta(x; sigma) = c_skip x + c_out F_theta(c_in x; c_noise)
        F_x = self.model(c_in.view(view) * x, c_noise, labels)
        return torch.addcmul(c_skip.view(view) * x, c_out.view(view), F_x)

    def features(self, x: torch.Tensor, sigma, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The backbone's last hidden layer at (c_in x, c_noise): (B, feature_dim)."""
        x, sigma, labels = self._prepare(x, sigma, labels)
        _, _, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        view = (-1,) + (1,) * (x.ndim - 1)
        return self.model.features(c_in.view(view) * x, c_noise, labels)

    def forward_and_features(self, x: torch.Tensor, sigma, labels: torch.Tensor | None = None):
        """(D(x; sigma), features) from a single backbone pass."""
        x, sigma, labels = self._prepare(x, sigma, labels)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        view = (-1,) + (1,) * (x.ndim - 1)
        F_x, h = self.model.forward_and_features(c_in.view(view) * x, c_noise, labels)
        return torch.addcmul(c_skip.view(view) * x, c_out.view(view), F_x), h
