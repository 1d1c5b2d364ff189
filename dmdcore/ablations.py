"""Measurements that give the presets' ablations their power: how strong the GAN term is next to
the distribution-matching term, and whether a teacher memorizes its training set.

* ``gan_dm_grad_ratio(trainer)``: ‖∇_θ (w_gan · L_GAN)‖ / ‖∇_θ L_DM‖ over the generator's
  parameters θ on one fresh batch (its own seeded generator: training randomness untouched).
  The DM loss is a mean over coordinates and the GAN loss a mean over samples, so at DMD2's
  weights the GAN term is tiny in low d; a GAN ablation only has power at weights where this
  ratio is not small. Undefined (None) without a GAN head or when the DM gradient is zero (a
  teacher-initialised student at step 0, whose fake score is still the teacher).
* ``memorization(samples, train, heldout)``: the fraction of generated samples closer to a
  training point than a threshold τ, where τ is the ``quantile`` (default 5 %) of the distances
  from held-out data to their nearest training point (Carlini et al. 2023 / Gu et al. 2023 use
  nearest-neighbour distances the same way). A generator of fresh samples from the data
  distribution scores about ``quantile``; one that reproduces training points scores near 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dmdcore.config import DataConfig


# ----------------------------------------------------------------------------- GAN power

def _norm(grads) -> torch.Tensor:
    parts = [g.detach().double().square().sum() for g in grads if g is not None]
    return torch.stack(parts).sum().sqrt() if parts else torch.zeros((), dtype=torch.float64)


def gan_dm_grad_ratio(trainer, *, batch: int | None = None, seed: int = 0) -> float | None:
    """GAN/DM gradient-norm ratio of a ``DMDTrainer`` with a GAN head (see module docstring)."""
    from dmdcore.distill import DM_INDEX_RANGE, N_KARRAS_LEVELS
    from dmdcore.losses import dmd_loss, edm_sigma, gan_g_loss

    head = getattr(trainer, "gan_head", None)
    if head is None:
        return None
    cfg, dev = trainer.cfg, trainer.device
    b = int(batch or cfg.batch)
    shape = tuple(trainer.sample_shape)
    g = torch.Generator(device=dev).manual_seed(seed)
    lab = None
    if trainer.label_dim > 0:
        cls = torch.randint(0, trainer.label_dim, (b,), generator=g, device=dev)
        lab = torch.nn.functional.one_hot(cls, trainer.label_dim).float()
    view = (-1,) + (1,) * len(shape)
    params = [p for p in trainer.gen_params if p.requires_grad]
    z = torch.randn((b, *shape), generator=g, device=dev)
    x = trainer._generate(z, lab, 0)
    idx = torch.randint(DM_INDEX_RANGE[0], DM_INDEX_RANGE[1], (b,), generator=g, device=dev)
    sigma = trainer.karras[idx]
    with torch.no_grad():
        x_noisy = x.detach() + sigma.view(view) * torch.randn(x.shape, generator=g, device=dev)
        d_real, d_fake = trainer.real(x_noisy, sigma, lab), trainer.fake(x_noisy, sigma, lab)
    g_dm = torch.autograd.grad(dmd_loss(x, d_real, d_fake), params, retain_graph=True, allow_unused=True)
    if cfg.fake_sigma == "karras":
        s_gan = trainer.karras[torch.randint(0, N_KARRAS_LEVELS, (b,), generator=g, device=dev)]
    else:
        s_gan = edm_sigma(torch.randn((b,), generator=g, device=dev))
    x_gan = x + s_gan.view(view) * torch.randn(x.shape, generator=g, device=dev)
    loss_g = cfg.gan_g_weight * gan_g_loss(head(trainer.fake.features(x_gan, s_gan, lab)))
    g_gan = torch.autograd.grad(loss_g, params, allow_unused=True)
    n_dm, n_gan = float(_norm(g_dm)), float(_norm(g_gan))
    if not (n_dm > 0 and np.isfinite(n_dm) and np.isfinite(n_gan)):
        return None
    return n_gan / n_dm


# ----------------------------------------------------------------------------- memorization

@dataclass(frozen=True)
class Memorization:
    """fraction: share of samples with nearest-training-point distance < threshold; threshold: τ;
    quantile: the held-out quantile τ was set at (the score of a non-memorizing generator);
    n: number of samples scored."""

    fraction: float
    threshold: float
    quantile: float
    n: int


class MemorizationProbe:
    """Fits the nearest-neighbour index of ``train`` and τ from ``heldout`` once; ``score(samples)``
    then costs one query per sample (the pipeline scores every teacher evaluation)."""

    def __init__(self, train, heldout, *, quantile: float = 0.05):
        from sklearn.neighbors import NearestNeighbors

        if isinstance(quantile, bool) or not (isinstance(quantile, (int, float)) and 0 < quantile < 1):
            raise ValueError(f"quantile: {quantile!r} not in (0, 1)")
        train, heldout = _check_array("train", train), _check_array("heldout", heldout)
        if train.shape[1] != heldout.shape[1]:
            raise ValueError(f"train/heldout: dimensions differ ({train.shape[1]} vs {heldout.shape[1]})")
        self.dim, self.quantile = train.shape[1], float(quantile)
        self._nn = NearestNeighbors(n_neighbors=1).fit(train)
        self.threshold = float(np.quantile(self._nearest(heldout), self.quantile))

    def _nearest(self, a: np.ndarray) -> np.ndarray:
        return self._nn.kneighbors(a, return_distance=True)[0][:, 0]

    def score(self, samples) -> Memorization:
        a = _check_array("samples", samples)
        if a.shape[1] != self.dim:
            raise ValueError(f"samples: dimension {a.shape[1]} != the training set's {self.dim}")
        frac = float((self._nearest(a) < self.threshold).mean())
        return Memorization(fraction=frac, threshold=self.threshold, quantile=self.quantile, n=a.shape[0])


def _check_array(name: str, a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 1 or not np.isfinite(a).all():
        raise ValueError(f"{name}: expected a finite (n, d) array with n >= 1, got shape {a.shape}")
    return a


def memorization(samples, train, heldout, *, quantile: float = 0.05) -> Memorization:
    """Memorization score of ``samples`` against the ``train`` set, τ from ``heldout`` (all (n, d)
    arrays of one dimension). ValueError naming the argument for bad shapes or quantile."""
    return MemorizationProbe(train, heldout, quantile=quantile).score(samples)


def heldout_data(cfg: DataConfig, n: int, seed: int = 0) -> np.ndarray | None:
    """n fresh points from the distribution of ``make_dataset(cfg)`` that are not its training
    points (same mode centres, own generator): for "mixture" and the Gaussian 2-D sets. None for
    data sets whose distribution cannot be redrawn (digits, user files, embedded, other shapes)."""
    from dmdcore.data import make_dataset, sample_2d

    g = torch.Generator().manual_seed(10_007 + seed)
    if cfg.dataset in ("8gaussians", "25gaussians", "moons", "rings", "swissroll", "checkerboard", "2spirals", "pinwheel"):
        x, _, _ = sample_2d(cfg.dataset, n, g, mode_scale=cfg.mode_scale, spread=cfg.spread)
        return x.numpy().astype(np.float64)
    if cfg.dataset == "mixture":
        ds = make_dataset(cfg.replace(n_samples=100))  # centres are drawn first: same as training
        w = torch.full((cfg.n_modes,), 1.0 / cfg.n_modes, dtype=torch.float64) if cfg.weights is None else \
            torch.tensor(cfg.weights, dtype=torch.float64)
        labels = torch.multinomial(w / w.sum(), n, replacement=True, generator=g)
        x = ds.centers[labels] + cfg.spread * torch.randn(n, cfg.dim, generator=g)
        return x.numpy().astype(np.float64)
    return None
