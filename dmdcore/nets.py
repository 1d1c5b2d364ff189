"""Raw backbones F(x, c_noise, labels) that know nothing about sigma (EDM's "F_theta").

The EDM preconditioning (``precond.EDMDenoiser``) wraps a backbone into a denoiser D(x; sigma).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class FourierEmbedding(nn.Module):
    """Sinusoidal embedding of a scalar per sample: (B,) -> (B, emb_dim), [cos(c f_k), sin(c f_k)].

    Frequencies f_k are geometric from 1 to 100 rad per unit of c (c = c_noise = ln(sigma)/4 spans
    about [-1.6, 1.1] for sigma in [0.002, 80], so the lowest frequency already varies over the range).
    """

    def __init__(self, emb_dim: int, f_min: float = 1.0, f_max: float = 100.0):
        super().__init__()
        if emb_dim < 2 or emb_dim % 2:
            raise ValueError(f"emb_dim: {emb_dim} not in even integers >= 2")
        half = emb_dim // 2
        freqs = torch.exp(torch.linspace(math.log(f_min), math.log(f_max), half))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        arg = c.reshape(-1, 1).to(self.freqs.dtype) * self.freqs
        return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)


class MLPBackbone(nn.Module):
    """MLP F(x, c_noise, labels) for vectors.

    h_1 = SiLU(W_in x + E(c_noise) + W_label y), h_{k+1} = SiLU(W_k h_k) for k < depth,
    F = W_out h_depth, where E = Linear(SiLU(Linear(Fourier(c_noise)))) is a small embedding MLP
    and y the one-hot labels. ``depth`` hidden layers of ``width`` in total; the last hidden layer
    h_depth is what ``features`` returns (``feature_dim`` = width), used by the DMD2 GAN head.
    The output layer starts at zero, so an untrained denoiser is D = c_skip * x.

    Shapes: x (B, dim) float32, c_noise (B,), labels (B, label_dim) one-hot float or None.
    """

    def __init__(self, dim: int, width: int = 256, depth: int = 3, emb_dim: int = 32, label_dim: int = 0):
        super().__init__()
        for name, value, lo in (("dim", dim, 1), ("width", width, 1), ("depth", depth, 1), ("label_dim", label_dim, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"MLPBackbone.{name}: {value!r} not in integers >= {lo}")
        self.dim = dim
        self.width = width
        self.depth = depth
        self.emb_dim = emb_dim
        self.label_dim = label_dim
        self.feature_dim = width
        self.embed = FourierEmbedding(emb_dim)
        self.emb0 = nn.Linear(emb_dim, emb_dim)
        self.emb1 = nn.Linear(emb_dim, width)
        self.inp = nn.Linear(dim, width)
        self.label = nn.Linear(label_dim, width, bias=False) if label_dim > 0 else None
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def features(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden layer h_depth, (B, width)."""
        emb = self.emb1(F.silu(self.emb0(self.embed(c_noise))))
        pre = self.inp(x) + emb
        if self.label is not None and labels is not None:
            pre = pre + self.label(labels.to(pre.dtype))
        h = F.silu(pre)
        for layer in self.hidden:
            h = F.silu(layer(h))
        return h

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(self.features(x, c_noise, labels))

    def forward_and_features(self, x, c_noise, labels=None):
        """(F, features) from one pass."""
        h = self.features(x, c_noise, labels)
        return self.out(h), h

    def arch(self) -> dict:
        """Constructor arguments (for checkpoints)."""
        return {"dim": self.dim, "width": self.width, "depth": self.depth, "emb_dim": self.emb_dim, "label_dim": self.label_dim}
