"""Trainers: the EDM teacher (``TeacherTrainer``) and the DMD / DMD2 student (``DMDTrainer``).

Both are plain objects whose ``step()`` performs one optimisation step and returns a metrics dict of
Python floats; all randomness comes from a ``torch.Generator`` seeded by the config. A non-finite
loss or gradient raises ``DivergenceError`` *before* the optimiser update is applied.

The DMD trainer is written against the denoiser call D(x, sigma, labels) only, so it runs unchanged
on a toy ``EDMDenoiser(MLPBackbone)`` or an image ``EDMPrecond``.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .config import DataConfig, DistillConfig, TeacherConfig
from .device import pick_device, tune_allocator
from .losses import denoising_loss, dmd_loss, edm_sigma, gan_d_loss, gan_g_loss, regression_loss
from .nets import MLPBackbone
from .precond import EDMDenoiser
from .samplers import few_step, karras_sigmas, student_sigmas
from .toy import ToyTeacher, build_denoiser

N_KARRAS_LEVELS = 1000          # DMD2: number of Karras training levels
DM_INDEX_RANGE = (20, 980)      # DMD2: levels used by the distribution-matching loss (2%..98%)
ROLLBACK_MAX_PARAMS = 50_000_000  # atomic step() (fake-score rollback) for models up to this size


class DivergenceError(RuntimeError):
    """A loss or gradient became NaN/Inf; the update was not applied (weights unchanged)."""


def _seeded(seed: int, fn: Callable):
    """Run ``fn()`` (typically a module constructor) with torch's CPU RNG seeded, restoring it after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


def _make_adam(params, lr, *, betas=(0.9, 0.999), weight_decay=0.0, adamw=False):
    """Adam / AdamW, fused where this torch build supports it for the parameters' device, else foreach."""
    cls = torch.optim.AdamW if adamw else torch.optim.Adam
    kwargs = dict(lr=lr, betas=betas, weight_decay=weight_decay)
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, ValueError, TypeError):
        return cls(params, foreach=True, **kwargs)


def _grad_norm_and_clip(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Total L2 norm of the gradients (a 0-d tensor), clipping them to ``max_norm`` when > 0."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if max_norm > 0:
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        torch._foreach_mul_(grads, coef)
    return total


def _check_finite(what: str, step: int, *values: torch.Tensor) -> list[float]:
    out = [float(v.detach()) if torch.is_tensor(v) else float(v) for v in values]
    if not all(math.isfinite(v) for v in out):
        raise DivergenceError(f"{what} is not finite at step {step} ({', '.join(f'{v:.4g}' for v in out)}); update not applied")
    return out


def _one_hot(labels: torch.Tensor | None, label_dim: int) -> torch.Tensor | None:
    if labels is None or label_dim == 0:
        return None
    if labels.ndim == 2:
        return labels.float()
    return F.one_hot(labels.long(), label_dim).float()


# ----------------------------------------------------------------------------------------------


class TeacherTrainer:
    """EDM training of an ``EDMDenoiser(MLPBackbone)`` on a fixed (n, d) data tensor.

    Per step: a minibatch (uniform with replacement), ln sigma ~ N(P_mean, P_std^2), the EDM-weighted
    denoising loss, Adam, and an EMA of the weights with warm-up decay min(ema, (1+t)/(10+t)).
    sigma_data: ``cfg.sigma_data`` or, when None, the std of the data over all coordinates (recorded in
    ``self.config`` and thus in the saved teacher's config).
    Labels: with ``cfg.conditional`` the integer labels (n,) are required; ``label_dim`` defaults to
    labels.max() + 1.
    """

    def __init__(
        self,
        cfg: TeacherConfig,
        data: torch.Tensor,
        labels: torch.Tensor | None = None,
        device=None,
        *,
        label_dim: int | None = None,
        data_config: DataConfig | None = None,
    ):
        if not isinstance(cfg, TeacherConfig):
            raise ValueError(f"cfg: expected a TeacherConfig, got {type(cfg).__name__}")
        cfg.validate()
        data = torch.as_tensor(data)
        if data.ndim != 2 or data.shape[0] < 2 or data.shape[1] < 1:
            raise ValueError(f"data: shape {tuple(data.shape)} not (n >= 2, d >= 1)")
        if not torch.isfinite(data).all():
            raise ValueError("data: contains NaN or Inf values")
        self.device = pick_device(device or "auto")
        if self.device.type == "cpu":
            tune_allocator()
        self.data = data.to(self.device, torch.float32).contiguous()
        n, dim = self.data.shape
        if cfg.conditional:
            if labels is None:
                raise ValueError("labels: required when TeacherConfig.conditional is True")
            labels = torch.as_tensor(labels).long()
            if labels.shape != (n,) or int(labels.min()) < 0:
                raise ValueError(f"labels: expected (n,) = ({n},) non-negative integers, got shape {tuple(labels.shape)}")
            self.label_dim = int(label_dim) if label_dim is not None else int(labels.max()) + 1
            if int(labels.max()) >= self.label_dim:
                raise ValueError(f"labels: max {int(labels.max())} not in [0, label_dim={self.label_dim})")
            self.labels = labels.to(self.device)
        else:
            self.label_dim = 0
            self.labels = None
        sigma_data = cfg.sigma_data if cfg.sigma_data is not None else float(self.data.double().std())
        if not sigma_data > 0:
            raise ValueError(f"data: std {sigma_data} is zero; cannot estimate sigma_data (set TeacherConfig.sigma_data)")
        self.config = cfg.replace(sigma_data=float(sigma_data))
        self.data_config = data_config
        self.sigma_data = float(sigma_data)
        self.dim = dim
        self.net = _seeded(
            cfg.seed, lambda: build_denoiser(dim, cfg.width, cfg.depth, cfg.emb_dim, self.label_dim, self.sigma_data)
        ).to(self.device)
        self.ema = copy.deepcopy(self.net).requires_grad_(False).eval()
        self.params = list(self.net.parameters())
        self.ema_params = list(self.ema.parameters())
        self.opt = _make_adam(self.params, cfg.lr)
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.step_count = 0

    def step(self) -> dict:
        """One EDM training step -> {"step", "loss", "grad_norm"} (floats; step counts from 1)."""
        cfg = self.config
        n, d = self.data.shape
        b = cfg.batch
        idx = torch.randint(0, n, (b,), generator=self.gen, device=self.device)
        rnd = torch.randn(b, generator=self.gen, device=self.device)
        eps = torch.randn(b, d, generator=self.gen, device=self.device)
        x = self.data[idx]
        labels = _one_hot(self.labels[idx], self.label_dim) if self.labels is not None else None
        # EDM Table 1: ln(sigma) ~ N(P_mean, P_std^2); loss weight lambda(sigma)
        sigma = edm_sigma(rnd, cfg.P_mean, cfg.P_std)
        loss = denoising_loss(self.net, x, sigma, eps, self.sigma_data, labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = _grad_norm_and_clip(self.params, 0.0)
        loss_v, gnorm_v = _check_finite("teacher loss / gradient", self.step_count + 1, loss, gnorm)
        self.opt.step()
        # EMA with warm-up (decay min(ema, (1+t)/(10+t)), t = completed steps)
        decay = min(cfg.ema, (1 + self.step_count) / (10 + self.step_count))
        torch._foreach_lerp_(self.ema_params, self.params, 1.0 - decay)
        self.step_count += 1
        return {"step": self.step_count, "loss": loss_v, "grad_norm": gnorm_v}

    def teacher(self) -> ToyTeacher:
        """A ``ToyTeacher`` holding a copy of the EMA weights (frozen, eval mode)."""
        den = copy.deepcopy(self.ema).requires_grad_(False).eval()
        return ToyTeacher(den, self.sigma_data, self.dim, self.label_dim, self.config, self.data_config, self.step_count)

    def state_dict(self) -> dict:
        """Everything needed to resume bit-exactly (weights, EMA, optimiser, RNG, step)."""
        return {
            "net": self.net.state_dict(),
            "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(),
            "rng": self.gen.get_state(),
            "step": self.step_count,
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["rng"])
        self.step_count = int(state["step"])


# ----------------------------------------------------------------------------------------------


class GANHead(nn.Module):
    """DMD2 classifier on the fake score's features -> logit (B,).

    Vector features (toy MLPs, (B, feature_dim)): Linear -> SiLU -> Linear. Spatial features
    (image U-Nets, (B, C, H, W), ``spatial=True``): DMD2's convolutional branch — Conv 4×4 stride 2
    -> GroupNorm -> SiLU -> Conv 1×1 to one logit per location, averaged over locations — so the
    head sees where things are, not only a spatial mean of the bottleneck."""

    def __init__(self, feature_dim: int, width: int = 256, *, spatial: bool = False):
        super().__init__()
        self.spatial = bool(spatial)
        if self.spatial:
            groups = next(g for g in (32, 16, 8, 4, 2, 1) if feature_dim % g == 0)
            self.net = nn.Sequential(
                nn.Conv2d(feature_dim, feature_dim, kernel_size=4, stride=2, padding=1),
                nn.GroupNorm(groups, feature_dim), nn.SiLU(),
                nn.Conv2d(feature_dim, 1, kernel_size=1),
            )
        else:
            self.net = nn.Sequential(nn.Linear(feature_dim, width), nn.SiLU(), nn.Linear(width, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.spatial:
            if h.ndim != 4:
                raise ValueError(f"GANHead: spatial head needs (B, C, H, W) features, got shape {tuple(h.shape)}")
            return self.net(h).mean(dim=(1, 2, 3))
        return self.net(h.flatten(1)).squeeze(1)


def _reinit(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if hasattr(m, "reset_parameters") and m is not module:
            m.reset_parameters()
    return module


def _randomize_output(module: nn.Module) -> nn.Module:
    """Give a toy denoiser's zero-initialised output layer (``nets.MLPBackbone.out``) PyTorch's
    default random init, so an untrained student is not D = c_skip·x (init "random_full")."""
    out = getattr(getattr(module, "model", None), "out", None)
    if not isinstance(out, nn.Linear):
        raise ValueError("DistillConfig.init: 'random_full' needs a toy denoiser with an MLP output layer (model.out)")
    out.reset_parameters()
    return module


class DMDTrainer:
    """DMD / DMD2 distillation of a one-step (or few-step) student from a frozen teacher ``real``.

    real: any denoiser D(x, sigma, labels) (toy ``EDMDenoiser`` or image ``EDMPrecond``).
    sample_shape: shape of one sample (e.g. (d,) or (3, 64, 64)); sigma_data: the teacher's sigma_data
    (used by the fake-score loss weighting); label_dim: number of classes (0 = unconditional; labels
    for generated samples are drawn uniformly). generator / fake: modules to train (default: copies of
    ``real``; ``cfg.init == "random"`` re-initialises the generator, seeded). reg_pairs: (z, T(z),
    labels | None) for the optional regression loss. data_sampler: ``f(n) -> x`` or ``(x, labels)``
    of real samples, required for the GAN head.

    One ``step()`` (TTUR 1:ratio, DMD2): first ``ratio`` fake-score steps, each on a fresh batch of
    the current generator's samples (all ratio batches come from one batched no-grad generator
    forward: the generator does not change between them), then one generator step with the
    distribution-matching loss (+ optional regression / GAN losses). Fake-score sigma: uniform over
    the 1000 Karras levels ("karras", DMD2) or EDM log-normal (P_mean -1.2, P_std 1.2) ("lognormal").
    DM sigma: uniform over Karras levels [20, 980). Levels are indexed in ascending sigma, as DMD2.

    Atomicity: if any loss or gradient of the step is non-finite, ``DivergenceError`` is raised and
    the networks and optimiser states are returned to their values before ``step()`` (fake-score
    steps already applied within the call are rolled back for models up to 50 M parameters; larger
    models keep those finite fake-score updates). The generator update is never applied.
    """

    def __init__(
        self,
        real: nn.Module,
        cfg: DistillConfig,
        *,
        sample_shape: tuple[int, ...],
        sigma_data: float,
        label_dim: int = 0,
        generator: nn.Module | None = None,
        fake: nn.Module | None = None,
        reg_pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None,
        data_sampler: Callable | None = None,
        device=None,
        sigma_max: float = 80.0,
    ):
        if not isinstance(cfg, DistillConfig):
            raise ValueError(f"cfg: expected a DistillConfig, got {type(cfg).__name__}")
        cfg.validate()
        if not (isinstance(sigma_data, (int, float)) and 0 < sigma_data < math.inf):
            raise ValueError(f"sigma_data: {sigma_data!r} not in (0, inf)")
        self.sample_shape = tuple(int(s) for s in sample_shape)
        if not self.sample_shape or any(s < 1 for s in self.sample_shape):
            raise ValueError(f"sample_shape: {sample_shape!r} not a non-empty tuple of positive ints")
        if cfg.gan and data_sampler is None:
            raise ValueError("data_sampler: required when DistillConfig.gan is True (real samples for the discriminator)")
        if cfg.regression and reg_pairs is None:
            raise ValueError("reg_pairs: required when DistillConfig.regression is True")
        if cfg.regression and cfg.student_steps > 1:
            raise ValueError("DistillConfig.regression: True not in {False} when student_steps > 1")
        self.cfg = cfg
        self.sigma_data = float(sigma_data)
        self.label_dim = int(label_dim)
        self.sigma_max = float(sigma_max)
        self.device = pick_device(device or "auto")
        if self.device.type == "cpu":
            tune_allocator()
        self.data_sampler = data_sampler

        self.real = real.to(self.device).requires_grad_(False).eval()
        # Generator G: teacher copy (default) or seeded random init (optionally another MLP shape)
        if generator is None:
            if cfg.init == "teacher":
                generator = copy.deepcopy(real)
            elif cfg.student_width is not None or cfg.student_depth is not None:
                if not (isinstance(real, EDMDenoiser) and isinstance(real.model, MLPBackbone)):
                    raise ValueError("DistillConfig.student_width/student_depth: only for toy EDMDenoiser(MLPBackbone) teachers")
                a = real.model.arch()
                generator = _seeded(
                    cfg.seed + 1,
                    lambda: build_denoiser(
                        a["dim"], cfg.student_width or a["width"], cfg.student_depth or a["depth"], a["emb_dim"], a["label_dim"], real.sigma_data
                    ),
                )
            elif isinstance(real, EDMDenoiser) and isinstance(real.model, MLPBackbone):
                a = real.model.arch()
                generator = _seeded(cfg.seed + 1, lambda: build_denoiser(a["dim"], a["width"], a["depth"], a["emb_dim"], a["label_dim"], real.sigma_data))
            else:
                generator = _seeded(cfg.seed + 1, lambda: _reinit(copy.deepcopy(real)))
            if cfg.init == "random_full":
                _seeded(cfg.seed + 4, lambda: _randomize_output(generator))
        self.generator = generator.to(self.device).requires_grad_(True).train()
        self.fake = (fake if fake is not None else copy.deepcopy(real)).to(self.device).requires_grad_(True).train()
        self.gan_head = None
        if cfg.gan:
            fdim = int(getattr(self.fake, "feature_dim", 0))
            if fdim <= 0 or not hasattr(self.fake, "features"):
                raise ValueError("DistillConfig.gan: the fake score needs features() and feature_dim > 0 for the GAN head")
            spatial = bool(getattr(self.fake, "feature_spatial", False))
            self.gan_head = _seeded(cfg.seed + 2, lambda: GANHead(fdim, spatial=spatial)).to(self.device)

        self.gen_params = list(self.generator.parameters())
        self.fake_params = list(self.fake.parameters()) + (list(self.gan_head.parameters()) if self.gan_head is not None else [])
        betas = tuple(cfg.betas)
        self.opt_gen = _make_adam(self.gen_params, cfg.lr_gen, betas=betas, weight_decay=cfg.weight_decay, adamw=True)
        self.opt_fake = _make_adam(self.fake_params, cfg.lr_fake, betas=betas, weight_decay=cfg.weight_decay, adamw=True)

        # DMD2: Karras grid of 1000 levels, ascending (index 0 = sigma_min)
        self.karras = karras_sigmas(N_KARRAS_LEVELS, 0.002, self.sigma_max, 7.0, dtype=torch.float32, device=self.device).flip(0).contiguous()
        self.student_levels = student_sigmas(cfg.student_steps, self.sigma_max).to(torch.float32)
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed)

        self.reg = None
        if reg_pairs is not None:
            z_r, x_r, l_r = reg_pairs
            if z_r.shape[0] != x_r.shape[0] or tuple(z_r.shape[1:]) != self.sample_shape or tuple(x_r.shape[1:]) != self.sample_shape:
                raise ValueError(f"reg_pairs: z {tuple(z_r.shape)} and T(z) {tuple(x_r.shape)} must both be (n, *{self.sample_shape})")
            self.reg = (z_r.to(self.device, torch.float32), x_r.to(self.device, torch.float32), l_r.to(self.device) if l_r is not None else None)

        n_fake = sum(p.numel() for p in self.fake_params)
        self._rollback = cfg.ratio > 1 and n_fake <= ROLLBACK_MAX_PARAMS
        self._snap_src: list[torch.Tensor] | None = None
        self._snap_buf: list[torch.Tensor] | None = None
        self.step_count = 0

    # -- generation ------------------------------------------------------------------------------
    def _labels(self, b: int) -> torch.Tensor | None:
        if self.label_dim == 0:
            return None
        cls = torch.randint(0, self.label_dim, (b,), generator=self.gen, device=self.device)
        return F.one_hot(cls, self.label_dim).float()

    def _generate(self, z: torch.Tensor, labels, k: int = 0) -> torch.Tensor:
        """Output of student step k (0-based) from noise z: step 0 is G(z) = D_G(sigma_max z; sigma_max);
        for k > 0 the earlier steps run without grad and their output is re-noised to level k."""
        b = z.shape[0]
        levels = self.student_levels
        if k == 0:
            x_in = z * float(levels[0])
        else:
            with torch.no_grad():
                x = self.generator(z * float(levels[0]), z.new_full((b,), float(levels[0])), labels)
                for j in range(1, k + 1):
                    eps = torch.randn(x.shape, generator=self.gen, device=self.device)
                    x_in = x + float(levels[j]) * eps
                    if j < k:
                        x = self.generator(x_in, z.new_full((b,), float(levels[j])), labels)
        return self.generator(x_in, z.new_full((b,), float(levels[k])), labels)

    def student(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Student samples S(z) without grad: z (B, *sample_shape) -> (B, *sample_shape).
        Few-step students draw their re-noising from a generator seeded with cfg.seed (so S is a
        fixed function of z)."""
        z = z.to(self.device)
        labels = _one_hot(labels.to(self.device), self.label_dim) if labels is not None else None
        with torch.no_grad():
            was_training = self.generator.training
            self.generator.eval()
            try:
                if self.cfg.student_steps == 1:
                    return self.generator(z * self.sigma_max, z.new_full((z.shape[0],), self.sigma_max), labels)
                g = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
                return few_step(self.generator, z, labels, sigmas=self.student_levels, generator=g)
            finally:
                self.generator.train(was_training)

    # -- snapshot for atomic steps -------------------------------------------------------------
    def _fake_state_tensors(self) -> list[torch.Tensor]:
        out = [p.data for p in self.fake_params]
        for p in self.fake_params:
            st = self.opt_fake.state.get(p)
            if st:
                out.extend(v for v in st.values() if torch.is_tensor(v))
        return out

    def _snapshot(self) -> None:
        src = self._fake_state_tensors()
        if self._snap_buf is None or len(self._snap_buf) != len(src):
            self._snap_buf = [t.detach().clone() for t in src]
        else:
            torch._foreach_copy_(self._snap_buf, src)
        self._snap_src = src

    def _restore(self) -> None:
        if self._snap_src is not None and len(self._fake_state_tensors()) == len(self._snap_src):
            torch._foreach_copy_(self._snap_src, self._snap_buf)
        else:  # optimiser state was created during this call: drop it and restore the weights
            n = len(self.fake_params)
            torch._foreach_copy_([p.data for p in self.fake_params], self._snap_buf[:n])
            self.opt_fake.state.clear()

    # -- one step --------------------------------------------------------------------------------
    def _set_lr(self) -> None:
        w = self.cfg.warmup
        factor = min(1.0, (self.step_count + 1) / w) if w > 0 else 1.0
        for opt, lr in ((self.opt_gen, self.cfg.lr_gen), (self.opt_fake, self.cfg.lr_fake)):
            for group in opt.param_groups:
                group["lr"] = lr * factor

    def _fake_sigmas(self, shape: tuple[int, ...]) -> torch.Tensor:
        """σ for the fake-score loss and the GAN head: uniform over the 1000 Karras levels
        (DMD2) or EDM's log-normal, per ``cfg.fake_sigma``."""
        if self.cfg.fake_sigma == "karras":
            return self.karras[torch.randint(0, N_KARRAS_LEVELS, shape, generator=self.gen, device=self.device)]
        return edm_sigma(torch.randn(shape, generator=self.gen, device=self.device))

    def _real_batch(self, b: int):
        out = self.data_sampler(b)
        x, lab = out if isinstance(out, tuple) else (out, None)
        return x.to(self.device, torch.float32), _one_hot(lab.to(self.device), self.label_dim) if lab is not None else None

    def step(self) -> dict:
        """One generator step and ``cfg.ratio`` fake-score steps -> {"step", "loss_dm", "loss_fake",
        ["loss_reg"], ["loss_gan_g", "loss_gan_d"], "grad_norm"} (floats; loss_fake and loss_gan_d are
        means over the fake-score steps; grad_norm is the generator's pre-clipping gradient norm)."""
        cfg = self.cfg
        b, r = cfg.batch, cfg.ratio
        shape = self.sample_shape
        step_no = self.step_count + 1
        self._set_lr()
        if self._rollback:
            self._snapshot()

        # ---- fake-score steps (DMD2 guidance loss: EDM-weighted denoising on generated samples)
        k_fake = int(torch.randint(0, cfg.student_steps, (1,), generator=self.gen, device=self.device)) if cfg.student_steps > 1 else 0
        z_all = torch.randn((r * b, *shape), generator=self.gen, device=self.device)
        lab_all = self._labels(r * b)
        with torch.no_grad():
            x_all = self._generate(z_all, lab_all, k_fake)
        sig_all = self._fake_sigmas((r, b))
        eps_all = torch.randn((r, b, *shape), generator=self.gen, device=self.device)
        fake_losses, d_losses = [], []
        try:
            for k in range(r):
                x_k = x_all[k * b : (k + 1) * b]
                lab_k = lab_all[k * b : (k + 1) * b] if lab_all is not None else None
                if self.gan_head is not None:
                    loss_f, h_fake = denoising_loss(self.fake, x_k, sig_all[k], eps_all[k], self.sigma_data, lab_k, return_features=True)
                    x_real, lab_real = self._real_batch(b)
                    # real and generated samples are noised from the same σ distribution (DMD2's
                    # compute_cls_logits), so the head cannot tell them apart by noise level
                    s_real = self._fake_sigmas((b,))
                    eps_real = torch.randn(x_real.shape, generator=self.gen, device=self.device)
                    x_real_noisy = x_real + s_real.view((-1,) + (1,) * len(shape)) * eps_real
                    h_real = self.fake.features(x_real_noisy, s_real, lab_real)
                    # DMD2: discriminator loss softplus(fake) + softplus(-real) on noised samples
                    loss_d = gan_d_loss(self.gan_head(h_fake), self.gan_head(h_real))
                    loss = loss_f + cfg.gan_d_weight * loss_d
                    d_losses.append(loss_d.detach())
                else:
                    loss_f = denoising_loss(self.fake, x_k, sig_all[k], eps_all[k], self.sigma_data, lab_k)
                    loss = loss_f
                self.opt_fake.zero_grad(set_to_none=True)
                loss.backward()
                gn = _grad_norm_and_clip(self.fake_params, cfg.grad_clip)
                _check_finite("fake-score loss / gradient", step_no, loss, gn)
                self.opt_fake.step()
                fake_losses.append(loss_f.detach())

            # ---- generator step (DMD distribution matching, dmd.md steps 1-5)
            k_gen = int(torch.randint(0, cfg.student_steps, (1,), generator=self.gen, device=self.device)) if cfg.student_steps > 1 else 0
            z = torch.randn((b, *shape), generator=self.gen, device=self.device)
            lab = self._labels(b)
            x = self._generate(z, lab, k_gen)
            idx = torch.randint(DM_INDEX_RANGE[0], DM_INDEX_RANGE[1], (b,), generator=self.gen, device=self.device)
            sigma = self.karras[idx]
            eps = torch.randn(x.shape, generator=self.gen, device=self.device)
            view = (-1,) + (1,) * len(shape)
            with torch.no_grad():
                x_noisy = x.detach() + sigma.view(view) * eps
                D_real = self.real(x_noisy, sigma, lab)
                D_fake = self.fake(x_noisy, sigma, lab)
            loss_dm = dmd_loss(x, D_real, D_fake)
            total = loss_dm
            metrics_t = {"loss_dm": loss_dm.detach()}
            if self.reg is not None and cfg.regression:
                z_r, x_r, l_r = self.reg
                ridx = torch.randint(0, z_r.shape[0], (min(cfg.reg_batch, z_r.shape[0]),), generator=self.gen, device=self.device)
                lab_r = _one_hot(l_r[ridx], self.label_dim) if l_r is not None else None
                pred = self.generator(z_r[ridx] * self.sigma_max, z_r.new_full((ridx.shape[0],), self.sigma_max), lab_r)
                # DMD: lambda_reg * ||G(z) - T(z)||^2 on precomputed teacher pairs
                loss_reg = regression_loss(pred, x_r[ridx])
                total = total + cfg.reg_weight * loss_reg
                metrics_t["loss_reg"] = loss_reg.detach()
            if self.gan_head is not None:
                # DMD2: generator GAN loss softplus(-D(G(z))) through the fake score's features,
                # at σ drawn like the discriminator's (not the DM loss's [20, 980) range)
                s_gan = self._fake_sigmas((b,))
                x_noisy_g = x + s_gan.view(view) * torch.randn(x.shape, generator=self.gen, device=self.device)
                loss_g = gan_g_loss(self.gan_head(self.fake.features(x_noisy_g, s_gan, lab)))
                total = total + cfg.gan_g_weight * loss_g
                metrics_t["loss_gan_g"] = loss_g.detach()
            self.opt_gen.zero_grad(set_to_none=True)
            total.backward()
            gnorm = _grad_norm_and_clip(self.gen_params, cfg.grad_clip)
            _check_finite("generator loss / gradient", step_no, total, gnorm)
        except DivergenceError:
            if self._rollback:
                self._restore()
            self.opt_gen.zero_grad(set_to_none=True)
            raise
        self.opt_gen.step()
        self.step_count = step_no

        metrics = {"step": step_no}
        metrics["loss_dm"] = float(metrics_t["loss_dm"])
        metrics["loss_fake"] = float(torch.stack(fake_losses).mean())
        if "loss_reg" in metrics_t:
            metrics["loss_reg"] = float(metrics_t["loss_reg"])
        if self.gan_head is not None:
            metrics["loss_gan_g"] = float(metrics_t["loss_gan_g"])
            metrics["loss_gan_d"] = float(torch.stack(d_losses).mean())
        metrics["grad_norm"] = float(gnorm)
        return metrics

    # -- resuming ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Weights, optimiser states, RNG state and step (for bit-exact resuming)."""
        return {
            "generator": self.generator.state_dict(),
            "fake": self.fake.state_dict(),
            "gan_head": self.gan_head.state_dict() if self.gan_head is not None else None,
            "opt_gen": self.opt_gen.state_dict(),
            "opt_fake": self.opt_fake.state_dict(),
            "rng": self.gen.get_state(),
            "step": self.step_count,
            "config": self.cfg.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.fake.load_state_dict(state["fake"])
        if self.gan_head is not None and state.get("gan_head") is not None:
            self.gan_head.load_state_dict(state["gan_head"])
        self.opt_gen.load_state_dict(state["opt_gen"])
        self.opt_fake.load_state_dict(state["opt_fake"])
        self.gen.set_state(state["rng"])
        self.step_count = int(state["step"])
        self._snap_buf = None
