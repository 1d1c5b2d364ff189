"""EDM-compatible image networks: ``EDMPrecond`` (Karras et al. 2022 preconditioning) around a
``DhariwalUNet`` (the ADM architecture of Dhariwal & Nichol 2021, as configured by EDM).

Written from the documented facts in ``docs/images.md`` / the design note ``edm-format.md``: the
module tree, attribute names and tensor shapes are chosen so that ``state_dict()`` keys and shapes
are *identical* to EDM's ``training/networks.py`` for any configuration, which lets the real EDM
ImageNet-64 teacher and DMD2 students load with ``strict=True``. No EDM code was copied.

Shapes: images are (B, C, H, W) float32 in [-1, 1] (data scale), sigma is in the same units
(EDM's VE noise level), class labels are one-hot (B, label_dim).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Linear",
    "Conv2d",
    "GroupNorm",
    "PositionalEmbedding",
    "UNetBlock",
    "DhariwalUNet",
    "EDMPrecond",
    "IMAGENET64_KWARGS",
    "DEMO_KWARGS",
    "set_fast_attention",
    "count_parameters",
]

# EDM's ImageNet-64 network configuration (EDMPrecond kwargs), cf. edm-format.md.
IMAGENET64_KWARGS: dict = dict(
    img_resolution=64,
    img_channels=3,
    label_dim=1000,
    model_type="DhariwalUNet",
    model_channels=192,
    channel_mult=[1, 2, 3, 4],
    channel_mult_emb=4,
    num_blocks=3,
    attn_resolutions=[32, 16, 8],
    dropout=0.0,
)

# The tiny configuration of the shipped demo pair (16x16 grey digits, 10 classes; 64 channels
# with one attention head at 8x8).
DEMO_KWARGS: dict = dict(
    img_resolution=16,
    img_channels=1,
    label_dim=10,
    model_type="DhariwalUNet",
    model_channels=16,
    channel_mult=[1, 4],
    channel_mult_emb=4,
    num_blocks=1,
    attn_resolutions=[8],
    dropout=0.0,
)


def _weight_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """EDM-style variance-scaling initialisation (only used for fresh, untrained weights)."""
    if torch.empty(0).is_meta:  # a shape probe (dmdcore.limits, checkpoint loading): no values,
        return torch.empty(*shape)  # and no slow meta-tensor arithmetic (seconds for a large config)
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"init_mode: {mode!r} not in xavier_uniform|xavier_normal|kaiming_uniform|kaiming_normal")


class Linear(nn.Module):
    """y = x·Wᵀ + b with W of shape (out_features, in_features); keys ``weight``, ``bias``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init_mode: str = "kaiming_normal", init_weight: float = 1.0, init_bias: float = 0.0):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        fan = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(_weight_init([out_features, in_features], **fan) * init_weight)
        self.bias = nn.Parameter(_weight_init([out_features], **fan) * init_bias) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x @ self.weight.to(x.dtype).t()
        if self.bias is not None:
            x = x + self.bias.to(x.dtype)
        return x


class Conv2d(nn.Module):
    """k×k convolution (padding k//2) optionally preceded by a fixed 2× up/down resampling.

    Keys: ``weight`` (out, in, k, k) and ``bias`` (out) when kernel > 0, buffer ``resample_filter``
    (1, 1, 2, 2) when up or down. A kernel-0 conv only resamples (used for skips).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True,
                 up: bool = False, down: bool = False, resample_filter: Sequence[int] = (1, 1),
                 fused_resample: bool = False, init_mode: str = "kaiming_normal",
                 init_weight: float = 1.0, init_bias: float = 0.0):
        if up and down:
            raise ValueError("Conv2d: up and down cannot both be True")
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.up = bool(up)
        self.down = bool(down)
        self.fused_resample = bool(fused_resample)
        fan = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = (nn.Parameter(_weight_init([out_channels, in_channels, kernel, kernel], **fan) * init_weight)
                       if kernel else None)
        self.bias = nn.Parameter(_weight_init([out_channels], **fan) * init_bias) if kernel and bias else None
        # Resampling filter: outer product of the 1-D filter, normalised to sum 1 -> (1, 1, k, k).
        f = torch.as_tensor(list(resample_filter), dtype=torch.float32)
        f = torch.outer(f, f).unsqueeze(0).unsqueeze(1) / f.sum().square()
        self.register_buffer("resample_filter", f if up or down else None)
        # Plain attribute (not in the state_dict): use pooling/nearest kernels for the uniform
        # 2x2 filter; enabled by set_fast_attention only after checking the loaded filter.
        self.fast_resample = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) if self.weight is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused_resample and self.up and w is not None:
            x = F.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                   stride=2, padding=max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        elif self.fast_resample:
            # Same math for the uniform 2x2 filter [[.25,.25],[.25,.25]]: the stride-2 transposed
            # conv with 4x the filter is nearest-neighbour 2x upsampling; the stride-2 conv is 2x2
            # average pooling.
            if self.up:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            if self.down:
                x = F.avg_pool2d(x, 2)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        else:
            # up: depthwise stride-2 transposed conv with 4x the filter; down: depthwise stride-2 conv.
            if self.up:
                x = F.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                       stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                             stride=2, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if b is not None:
            x = x + b.reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalisation with groups = min(num_groups, C // min_channels_per_group); keys
    ``weight``, ``bias`` (C,)."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4,
                 eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(int(num_groups), int(num_channels) // int(min_channels_per_group))
        if self.num_groups < 1:
            raise ValueError(f"GroupNorm.num_channels: {num_channels} must be >= {min_channels_per_group}")
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, num_groups=self.num_groups, weight=self.weight.to(x.dtype),
                            bias=self.bias.to(x.dtype), eps=self.eps)


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of a scalar per sample (no parameters).

    freqs f_k = (1/max_positions)^(k / (C/2 - endpoint)), k = 0..C/2-1; output [cos(x·f), sin(x·f)],
    shape (B, C) for input (B,).
    """

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels = int(num_channels)
        self.max_positions = max_positions
        self.endpoint = bool(endpoint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(0, half, dtype=torch.float32, device=x.device)
        freqs = freqs / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class UNetBlock(nn.Module):
    """ADM residual block with adaptive group-norm scale/shift from the embedding and optional
    multi-head self-attention (heads = out_channels // channels_per_head)."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False,
                 down: bool = False, attention: bool = False, num_heads: int | None = None,
                 channels_per_head: int = 64, dropout: float = 0.0, skip_scale: float = 1.0,
                 eps: float = 1e-5, resample_filter: Sequence[int] = (1, 1), resample_proj: bool = False,
                 adaptive_scale: bool = True, init: dict | None = None, init_zero: dict | None = None,
                 init_attn: dict | None = None):
        super().__init__()
        init = init or {}
        init_zero = init_zero if init_zero is not None else dict(init_weight=0)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.emb_channels = int(emb_channels)
        self.num_heads = 0 if not attention else (num_heads if num_heads is not None
                                                   else out_channels // channels_per_head)
        # As in EDM: fewer than channels_per_head channels means 0 heads, i.e. no attention layers.
        self.dropout = float(dropout)
        self.skip_scale = float(skip_scale)
        self.adaptive_scale = bool(adaptive_scale)

        self.norm0 = GroupNorm(num_channels=in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down,
                            resample_filter=resample_filter, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(num_channels=out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down,
                               resample_filter=resample_filter, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(num_channels=out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **(init_attn or init))
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)
        # Plain attribute, not a buffer/parameter, so the state_dict is unchanged: choose the fused
        # scaled_dot_product_attention kernel (same math) instead of the explicit softmax.
        self.fast_attention = False

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        # Adaptive group norm: (scale, shift) = affine(emb); x = SiLU(shift + norm1(x)·(scale + 1)).
        params = self.affine(emb).unsqueeze(2).unsqueeze(3).to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(chunks=2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = x + (self.skip(orig) if self.skip is not None else orig)
        x = x * self.skip_scale

        if self.num_heads:
            B, C, H, W = x.shape
            c = C // self.num_heads
            # q, k, v interleaved per head: (B·heads, C/heads, 3, H·W).
            qkv = self.qkv(self.norm2(x)).reshape(B * self.num_heads, c, 3, H * W)
            q, k, v = qkv.unbind(2)
            if self.fast_attention:
                # softmax(qᵀk / sqrt(c)) v via the fused kernel; inputs as (N, L, c), in float32.
                a = F.scaled_dot_product_attention(
                    q.transpose(1, 2).float(), k.transpose(1, 2).float(), v.transpose(1, 2).float()
                ).transpose(1, 2).to(x.dtype)
            else:
                # w[n, q, k] = softmax_k(Σ_c q[n,c,q] k[n,c,k] / sqrt(c)), computed in float32.
                w = torch.einsum("ncq,nck->nqk", q.float(), (k / math.sqrt(c)).float()).softmax(dim=2).to(q.dtype)
                # a[n, c, q] = Σ_k w[n, q, k] v[n, c, k]
                a = torch.einsum("nqk,nck->ncq", w, v)
            x = self.proj(a.reshape(B, C, H, W)) + x
            x = x * self.skip_scale
        return x


class DhariwalUNet(nn.Module):
    """ADM U-Net F(x, c_noise, class_labels) with EDM's module names.

    x: (B, in_channels, R, R); noise_labels: (B,) or (1,) (c_noise); class_labels: (B, label_dim)
    one-hot or None. Returns (B, out_channels, R, R).
    """

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 192, channel_mult: Sequence[int] = (1, 2, 3, 4),
                 channel_mult_emb: int = 4, num_blocks: int = 3, attn_resolutions: Sequence[int] = (32, 16, 8),
                 dropout: float = 0.10, label_dropout: float = 0.0):
        super().__init__()
        channel_mult = [int(m) for m in channel_mult]
        attn_resolutions = [int(r) for r in attn_resolutions]
        if int(img_resolution) < 1 or int(img_resolution) % (2 ** (len(channel_mult) - 1)):
            raise ValueError(f"DhariwalUNet.img_resolution: {img_resolution} must be a positive multiple of "
                             f"2^(len(channel_mult)-1) = {2 ** (len(channel_mult) - 1)}")
        if not channel_mult:
            raise ValueError("DhariwalUNet.channel_mult: must have at least one level")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"DhariwalUNet.dropout: {dropout} not in [0, 1)")
        self.img_resolution = int(img_resolution)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.label_dim = int(label_dim)
        self.label_dropout = float(label_dropout)
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=np.sqrt(1 / 3), init_bias=np.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        block_kwargs = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout,
                            init=init, init_zero=init_zero)

        # Mapping network: noise embedding -> Linear -> SiLU -> Linear (+ label Linear without bias).
        self.map_noise = PositionalEmbedding(num_channels=model_channels)
        self.map_augment = (Linear(augment_dim, model_channels, bias=False, **init_zero)
                            if augment_dim else None)
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = (Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal",
                                 init_weight=np.sqrt(label_dim)) if label_dim else None)

        # Encoder: per level a conv (level 0) or a down block, then num_blocks blocks.
        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = self.img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=(res in attn_resolutions),
                                                                **block_kwargs)
        skips = [block.out_channels for block in self.enc.values()]

        # Decoder: bottleneck (in0 with attention, in1) or an up block, then num_blocks+1 blocks
        # each consuming one skip.
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = self.img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=(res in attn_resolutions),
                                                                **block_kwargs)
        self.out_norm = GroupNorm(num_channels=cout)
        self.out_conv = Conv2d(cout, out_channels, kernel=3, **init_zero)
        self.bottleneck_channels = model_channels * channel_mult[-1]

    def embed(self, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
              augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mapping network: (B,) c_noise (+ labels) -> (B, emb_channels) embedding (after SiLU)."""
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            if class_labels is None:
                raise ValueError(f"class_labels: required (shape (B, {self.label_dim})) for a conditional net")
            tmp = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([tmp.shape[0], 1], device=tmp.device) >= self.label_dropout
                tmp = tmp * keep.to(tmp.dtype)
            emb = emb + self.map_label(tmp)
        return F.silu(emb)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
                augment_labels: torch.Tensor | None = None, return_bottleneck: bool = False):
        emb = self.embed(noise_labels, class_labels, augment_labels)
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        bottleneck = None
        for name, block in self.dec.items():
            # Concatenate the popped skip when the block expects more channels than we carry.
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
            if name.endswith("_in1"):
                bottleneck = x
        x = self.out_conv(F.silu(self.out_norm(x)))
        return (x, bottleneck) if return_bottleneck else x


class EDMPrecond(nn.Module):
    """EDM (VE) preconditioned denoiser D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, c_noise(σ), labels).

    Constructor as EDM's: ``img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0,
    sigma_max=inf, sigma_data=0.5, model_type='DhariwalUNet', **model_kwargs``; the network is the
    child ``model``. Forward ``(x, sigma, class_labels=None)``: x (B, C, R, R), sigma a float, a 0-d
    tensor or (B,) / (B,1,1,1); class_labels one-hot (B, label_dim) or None (zero labels).
    Returns the denoised estimate, float32 (B, C, R, R).
    """

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0, sigma_max: float = float("inf"), sigma_data: float = 0.5,
                 model_type: str = "DhariwalUNet", **model_kwargs):
        super().__init__()
        if model_type != "DhariwalUNet":
            raise ValueError(f"EDMPrecond.model_type: {model_type!r} not supported (only 'DhariwalUNet')")
        if not float(sigma_data) > 0:
            raise ValueError(f"EDMPrecond.sigma_data: {sigma_data} must be > 0")
        self.img_resolution = int(img_resolution)
        self.img_channels = int(img_channels)
        self.label_dim = int(label_dim)
        self.use_fp16 = bool(use_fp16)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.sigma_data = float(sigma_data)
        self.model = DhariwalUNet(img_resolution=img_resolution, in_channels=img_channels,
                                  out_channels=img_channels, label_dim=label_dim, **model_kwargs)
        self.feature_dim = self.model.bottleneck_channels
        self.feature_spatial = True  # features() keep their H×W layout (DMD2's conv GAN head)

    def _prepare(self, x, sigma, class_labels):
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        return x, sigma, class_labels

    def _coefficients(self, sigma):
        # EDM Table 1 (VE preconditioning, Karras et al. 2022), sigma_data = σd:
        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def _dtype(self, x, force_fp32):
        return torch.float16 if (self.use_fp16 and not force_fp32 and x.device.type == "cuda") else torch.float32

    def forward(self, x: torch.Tensor, sigma, class_labels: torch.Tensor | None = None,
                force_fp32: bool = False, **model_kwargs) -> torch.Tensor:
        x, sigma, class_labels = self._prepare(x, sigma, class_labels)
        dtype = self._dtype(x, force_fp32)
        c_skip, c_out, c_in, c_noise = self._coefficients(sigma)
        # D(x; σ) = c_skip·x + c_out·F(c_in·x, c_noise, labels)  (EDM eq. 7)
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        return c_skip * x + c_out * F_x.to(torch.float32)

    def features(self, x: torch.Tensor, sigma, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Bottleneck features for a GAN head: the decoder's ``*_in1`` output with its spatial
        layout, shape (B, feature_dim, H, W) with feature_dim = model_channels·channel_mult[-1]
        (H = W = the lowest resolution)."""
        x, sigma, labels = self._prepare(x, sigma, labels)
        _, _, c_in, c_noise = self._coefficients(sigma)
        _, h = self.model((c_in * x).to(self._dtype(x, False)), c_noise.flatten(), class_labels=labels,
                          return_bottleneck=True)
        return h.to(torch.float32)

    def forward_and_features(self, x: torch.Tensor, sigma, labels: torch.Tensor | None = None):
        """(D(x; σ), features) from one network pass: the denoised output as ``forward`` and the
        bottleneck features as ``features`` (for the DMD2 GAN head)."""
        x, sigma, labels = self._prepare(x, sigma, labels)
        c_skip, c_out, c_in, c_noise = self._coefficients(sigma)
        F_x, h = self.model((c_in * x).to(self._dtype(x, False)), c_noise.flatten(), class_labels=labels,
                            return_bottleneck=True)
        # D(x; σ) = c_skip·x + c_out·F(c_in·x, c_noise, labels)  (EDM eq. 7)
        return c_skip * x + c_out * F_x.to(torch.float32), h.to(torch.float32)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)


def set_fast_attention(module: nn.Module, enabled: bool = True) -> nn.Module:
    """The fast inference path, same math: every attention block uses the fused SDPA kernel and
    every up/down resampling whose (loaded) filter is the uniform 2x2 one uses nearest upsampling
    / 2x2 average pooling instead of depthwise (transposed) convolutions. Returns ``module``."""
    for m in module.modules():
        if isinstance(m, UNetBlock):
            m.fast_attention = bool(enabled)
        elif isinstance(m, Conv2d) and m.resample_filter is not None:
            f = m.resample_filter
            uniform = f.shape == (1, 1, 2, 2) and f.device.type != "meta" and bool(torch.all(f == 0.25))
            m.fast_resample = bool(enabled) and uniform
    return module


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (buffers excluded); works for meta-device modules."""
    return sum(p.numel() for p in module.parameters())
