"""Typed, frozen configuration for every part of an experiment.

Each dataclass has paper defaults, a one-line comment per field, ``validate()`` raising
``ValueError("<Class>.<field>: <value> not in <allowed range>")``, ``to_dict()`` (JSON-able:
non-finite floats are written as the strings "inf"/"-inf") and ``from_dict(d)`` (unknown keys
raise ``ValueError`` naming them). Construction validates, so an instance is always valid.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

DATASETS_2D = (
    "8gaussians",
    "25gaussians",
    "moons",
    "rings",
    "swissroll",
    "checkerboard",
    "2spirals",
    "pinwheel",
)
DATASETS_HD = ("mixture", "embedded", "digits", "user")
DATASETS = DATASETS_2D + DATASETS_HD

MAX_DIM = 4096

TEACHER_FAMILIES = ("edm", "fm", "otcfm")
TWIN_DATA = ("same", "disjoint")  # what the independent twin trains on (TeacherConfig.twin_data, dmdcore.twins)
# dmd: DMD/DMD2 (default); cd: consistency distillation; fdistill-*: f-distill with the reverse-KL
# (= DMD), Jensen-Shannon or forward-KL weight; sid: score identity distillation; gan: adversarial
# only; phased: Phased-DMD style few-step student
STUDENT_METHODS = ("dmd", "cd", "fdistill-rkl", "fdistill-js", "fdistill-fkl", "sid", "gan", "phased")


# ----------------------------------------------------------------------------------------------
# Generic helpers: range checks and dict <-> dataclass conversion.


def _fail(obj: Any, name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{type(obj).__name__}.{name}: {value!r} not in {allowed}")


def _check_int(obj: Any, name: str, lo: int | None = None, hi: int | None = None) -> None:
    value = getattr(obj, name)
    allowed = f"integers [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(obj, name, value, allowed)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        _fail(obj, name, value, allowed)


def _check_float(
    obj: Any,
    name: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    allow_inf: bool = False,
) -> None:
    value = getattr(obj, name)
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    allowed = f"{left}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}{right}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(obj, name, value, allowed)
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        _fail(obj, name, value, allowed + " (finite)")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        _fail(obj, name, value, allowed)
    if hi is not None and (value > hi or (hi_open and value == hi)):
        _fail(obj, name, value, allowed)


def _check_choice(obj: Any, name: str, choices: tuple) -> None:
    value = getattr(obj, name)
    if value not in choices:
        _fail(obj, name, value, "{" + ", ".join(map(str, choices)) + "}")


def _check_bool(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if not isinstance(value, bool):
        _fail(obj, name, value, "{True, False}")


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return value.to_dict()
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    return value


def _coerce(cls_name: str, name: str, annotation: Any, value: Any) -> Any:
    """Convert a JSON value to the field's declared type (ints for int, floats for float...)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _coerce(cls_name, name, inner[0], value) if len(inner) == 1 else value
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ValueError(f"{cls_name}.{name}: {value!r} not in mappings of {annotation.__name__} fields")
        return annotation.from_dict(value)
    if annotation is float:
        if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", "-inf", "infinity", "-infinity"):
            return float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return value  # validate() reports it
    if annotation is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value
    if origin is tuple:
        if isinstance(value, (list, tuple)):
            elem = args[0] if args else None
            return tuple(_coerce(cls_name, name, elem, v) if elem not in (None, Ellipsis) else v for v in value)
        return value
    return value


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


class _ConfigMixin:
    """to_dict/from_dict shared by all config dataclasses."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; each config dataclass overrides this (the mixin has no fields)."""

    # Fields added after runs, checkpoints and sweep keys were first written: left out of
    # ``to_dict`` while they hold their default, so a config that does not use them serialises
    # (and hashes) exactly as before they existed; ``from_dict`` fills the default back in.
    _OMIT_DEFAULT: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """JSON-able dict of all fields (nested configs as dicts, inf as "inf"); fields named in
        ``_OMIT_DEFAULT`` are left out while they equal their default."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in self._OMIT_DEFAULT and value == _field_default(f):
                continue
            out[f.name] = _encode(value)
        return out

    @classmethod
    def from_dict(cls, d: dict):
        """Build from a dict as written by ``to_dict``; unknown keys raise ValueError."""
        if not isinstance(d, dict):
            raise ValueError(f"{cls.__name__}: expected a mapping of fields, got {type(d).__name__}")
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; allowed: {sorted(names)}")
        hints = typing.get_type_hints(cls)
        kwargs = {k: _coerce(cls.__name__, k, hints[k], v) for k, v in d.items()}
        return cls(**kwargs)

    def replace(self, **changes):
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig(_ConfigMixin):
    """Which data set to build (see ``dmdcore.data.make_dataset``)."""

    dataset: str = "8gaussians"          # one of DATASETS
    dim: int = 2                         # ambient dimension d (2 for 2-D sets, 64 for digits)
    n_samples: int = 20000               # number of training points (digits/user: at most all rows)
    n_modes: int = 8                     # mixture: number of modes K
    mode_scale: float = 2.0              # 8/25gaussians + mixture: distance of mode means from 0
    spread: float = 0.1                  # 8/25gaussians + mixture: per-coordinate std of a mode
    weights: tuple[float, ...] | None = None  # mixture: mode weights (K positive numbers) or uniform
    base: str = "8gaussians"             # embedded: the 2-D data set embedded in R^dim
    off_plane_noise: float = 0.0         # embedded: std of Gaussian noise orthogonal to the plane
    path: str | None = None              # user: path of a .csv / .npy file holding an (n, d) array
    seed: int = 0                        # data seed (sampling, mode means, embedding frame)

    def validate(self) -> None:
        _check_choice(self, "dataset", DATASETS)
        _check_int(self, "dim", 1, MAX_DIM)
        _check_int(self, "n_samples", 100, 10_000_000)
        _check_int(self, "n_modes", 1, 1000)
        _check_float(self, "mode_scale", 0.0, 1e4, lo_open=True)
        _check_float(self, "spread", 0.0, 1e4, lo_open=True)
        _check_float(self, "off_plane_noise", 0.0, 1e4)
        _check_int(self, "seed", 0, 2**63 - 1)
        _check_choice(self, "base", DATASETS_2D)
        if self.dataset in DATASETS_2D and self.dim != 2:
            _fail(self, "dim", self.dim, f"{{2}} for the 2-D data set {self.dataset!r}")
        if self.dataset == "digits" and self.dim != 64:
            _fail(self, "dim", self.dim, "{64} for 'digits' (8x8 images)")
        if self.dataset == "embedded" and self.dim < 2:
            _fail(self, "dim", self.dim, "integers [2, 4096] for 'embedded'")
        if self.weights is not None:
            w = self.weights
            if not isinstance(w, tuple) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in w):
                _fail(self, "weights", w, "None or a tuple of n_modes positive numbers")
            if self.dataset == "mixture" and len(w) != self.n_modes:
                _fail(self, "weights", w, f"tuples of length n_modes={self.n_modes}")
            if any(not (math.isfinite(v) and v > 0) for v in w):
                _fail(self, "weights", w, "tuples of positive finite numbers")
        if self.dataset == "user" and not (isinstance(self.path, str) and self.path):
            _fail(self, "path", self.path, "paths of a .csv or .npy file (required for 'user')")


@dataclass(frozen=True)
class TeacherConfig(_ConfigMixin):
    """EDM teacher: MLP backbone, EDM loss and optimiser (Karras et al. 2022, Table 1)."""

    width: int = 256                     # hidden width of the MLP backbone
    depth: int = 3                       # number of hidden layers
    emb_dim: int = 32                    # width of the Fourier embedding of c_noise
    steps: int = 3000                    # training steps
    batch: int = 512                     # batch size
    lr: float = 1e-3                     # Adam learning rate
    ema: float = 0.999                   # EMA decay per step (0 = no averaging)
    sigma_data: float | None = None      # data std; None = estimate from the data
    P_mean: float = -1.2                 # EDM: mean of ln(sigma) during training
    P_std: float = 1.2                   # EDM: std of ln(sigma) during training
    conditional: bool = False            # condition on the data set's integer labels
    seed: int = 0                        # init + training seed
    twin: bool = True                    # also train an independent twin (seed + 1, same data) for the ΔE controls; False = faster, controls absent
    twin_data: str = "same"              # "same": the twin sees the teacher's data; "disjoint": teacher and twin each train on one of two disjoint halves
    family: str = "edm"                  # teacher family: "edm" (denoiser), "fm" (flow matching / rectified flow), "otcfm" (minibatch-OT CFM)

    _OMIT_DEFAULT = ("family", "twin_data")

    def validate(self) -> None:
        _check_choice(self, "family", TEACHER_FAMILIES)
        _check_int(self, "width", 1, 8192)
        _check_int(self, "depth", 1, 64)
        _check_int(self, "emb_dim", 2, 4096)
        if self.emb_dim % 2:
            _fail(self, "emb_dim", self.emb_dim, "even integers [2, 4096]")
        _check_int(self, "steps", 1, 10_000_000)
        _check_int(self, "batch", 1, 1_000_000)
        _check_float(self, "lr", 0.0, 10.0**7, lo_open=True)
        _check_float(self, "ema", 0.0, 1.0, hi_open=True)
        if self.sigma_data is not None:
            _check_float(self, "sigma_data", 0.0, 1e4, lo_open=True)
        _check_float(self, "P_mean", -20.0, 20.0)
        _check_float(self, "P_std", 0.0, 20.0, lo_open=True)
        _check_bool(self, "conditional")
        _check_bool(self, "twin")
        _check_choice(self, "twin_data", TWIN_DATA)
        _check_int(self, "seed", 0, 2**63 - 1)


@dataclass(frozen=True)
class SamplerConfig(_ConfigMixin):
    """EDM Algorithm 2 (deterministic Heun when S_churn = 0)."""

    steps: int = 18                      # N, number of noise levels (2N-1 network evaluations)
    sigma_min: float = 0.002             # smallest noise level of the Karras schedule
    sigma_max: float = 80.0              # largest noise level (x_0 = sigma_max * z)
    rho: float = 7.0                     # Karras schedule exponent
    S_churn: float = 0.0                 # stochasticity; 0 = deterministic ODE map
    S_min: float = 0.0                   # churn only for sigma in [S_min, S_max]
    S_max: float = math.inf              # (see above)
    S_noise: float = 1.0                 # noise inflation of the churn
    solver: str = "heun"                 # ODE solver of a flow teacher: "heun" or "euler" (EDM teachers: heun only)

    _OMIT_DEFAULT = ("solver",)

    def validate(self) -> None:
        _check_choice(self, "solver", ("heun", "euler"))
        _check_int(self, "steps", 1, 10_000)
        _check_float(self, "sigma_min", 0.0, 1e5, lo_open=True)
        _check_float(self, "sigma_max", 0.0, 1e5, lo_open=True)
        if self.sigma_max <= self.sigma_min:
            _fail(self, "sigma_max", self.sigma_max, f"(sigma_min={self.sigma_min}, 1e5]")
        _check_float(self, "rho", 0.0, 1000.0, lo_open=True)
        _check_float(self, "S_churn", 0.0, 1e6)
        _check_float(self, "S_min", 0.0, None, allow_inf=True)
        _check_float(self, "S_max", 0.0, None, allow_inf=True)
        _check_float(self, "S_noise", 0.0, 10.0)


@dataclass(frozen=True)
class DistillConfig(_ConfigMixin):
    """DMD / DMD2 student training (Yin et al. 2023, 2024)."""

    init: str = "teacher"                # generator init: "teacher" (copy), "random" (zero output layer: S(z) = c_skip*sigma_max*z at step 0) or "random_full" (output layer randomly initialised too)
    ratio: int = 5                       # fake-score steps per generator step (TTUR 1:ratio)
    steps: int = 1000                    # generator steps
    batch: int = 256                     # batch size (generator and fake score)
    lr_gen: float = 1e-4                 # AdamW learning rate of the generator
    lr_fake: float = 1e-4                # AdamW learning rate of the fake score (DMD2: equal to lr_gen; 10x = the older "fast critic" option)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas (both optimisers)
    weight_decay: float = 0.01           # AdamW weight decay
    grad_clip: float = 10.0              # max gradient norm (0 = no clipping)
    warmup: int = 50                     # linear learning-rate warm-up steps (both optimisers; DMD2 warms up, 0 = none)
    fake_sigma: str = "karras"           # fake-score sigma: "karras" (uniform over 1000 levels, DMD2) or "lognormal" (EDM)
    regression: bool = False             # add the DMD regression loss on teacher pairs
    reg_weight: float = 0.25             # lambda_reg of the regression loss
    n_reg_pairs: int = 2048              # number of precomputed (z, T(z)) pairs
    reg_batch: int = 256                 # pairs per generator step for the regression loss
    gan: bool = False                    # add the DMD2 GAN head on the fake score's features
    gan_d_weight: float = 1e-2           # weight of the discriminator loss (fake-score step)
    gan_g_weight: float = 3e-3           # weight of the generator GAN loss
    student_steps: int = 1               # 1 = one-step student; 2..4 = few-step (DMD2 multistep)
    student_width: int | None = None     # student width if different from the teacher (init must be "random")
    student_depth: int | None = None     # student depth if different from the teacher (init must be "random")
    seed: int = 0                        # noise / sigma seed of the distillation
    method: str = "dmd"                  # student method (STUDENT_METHODS); its own section holds its settings

    _OMIT_DEFAULT = ("method",)

    def validate(self) -> None:
        _check_choice(self, "method", STUDENT_METHODS)
        _check_choice(self, "init", ("teacher", "random", "random_full"))
        _check_int(self, "ratio", 1, 1000)
        _check_int(self, "steps", 1, 10_000_000)
        _check_int(self, "batch", 1, 1_000_000)
        _check_float(self, "lr_gen", 0.0, 10.0**7, lo_open=True)
        _check_float(self, "lr_fake", 0.0, 10.0**7, lo_open=True)
        b = self.betas
        if (
            not isinstance(b, tuple)
            or len(b) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 <= v < 1.0) for v in b)
        ):
            _fail(self, "betas", b, "pairs (beta1, beta2) with each in [0, 1)")
        _check_float(self, "weight_decay", 0.0, 10.0)
        _check_float(self, "grad_clip", 0.0, 1e9)
        _check_int(self, "warmup", 0, 10_000_000)
        _check_choice(self, "fake_sigma", ("karras", "lognormal"))
        _check_bool(self, "regression")
        _check_float(self, "reg_weight", 0.0, 1e6)
        _check_int(self, "n_reg_pairs", 1, 10_000_000)
        _check_int(self, "reg_batch", 1, 1_000_000)
        _check_bool(self, "gan")
        _check_float(self, "gan_d_weight", 0.0, 1e6)
        _check_float(self, "gan_g_weight", 0.0, 1e6)
        _check_int(self, "student_steps", 1, 4)
        if self.student_width is not None:
            _check_int(self, "student_width", 1, 8192)
        if self.student_depth is not None:
            _check_int(self, "student_depth", 1, 64)
        if (self.student_width is not None or self.student_depth is not None) and self.init == "teacher":
            _fail(
                self,
                "init",
                self.init,
                "{'random', 'random_full'} when student_width/student_depth are set (a teacher copy has the teacher's shape)",
            )
        _check_int(self, "seed", 0, 2**63 - 1)


@dataclass(frozen=True)
class ConsistencyConfig(_ConfigMixin):
    """Consistency distillation (Song et al. 2023, EDM-teacher variant; ``method="cd"``)."""

    n_levels: int = 18                   # N: Karras levels of the CD discretisation (sigma_min..sigma_max, rho 7)
    ema_target: float = 0.95             # mu: EMA decay of the target network theta^- (CD paper, EDM CIFAR-10)
    solver: str = "heun"                 # one teacher ODE step from t_{n+1} to t_n: "heun" or "euler"

    def validate(self) -> None:
        _check_int(self, "n_levels", 2, 10_000)
        _check_float(self, "ema_target", 0.0, 1.0, hi_open=True)
        _check_choice(self, "solver", ("heun", "euler"))


@dataclass(frozen=True)
class FDistillConfig(_ConfigMixin):
    """f-distill (Xu et al. 2025; ``method="fdistill-{rkl,js,fkl}"``): DMD's gradient weighted per
    sample by h(r) = f''(r) r^2 with r = p/q from a discriminator on the fake score's features."""

    d_weight: float = 1.0                # weight of the discriminator loss in each fake-score step
    gan_g_weight: float = 0.0            # optional generator GAN loss (f-distill adds one; 0 isolates the weighting)
    max_weight: float = 10.0             # clip h(r) / mean h(r) to [0, max_weight] (0 = no clip)

    def validate(self) -> None:
        _check_float(self, "d_weight", 0.0, 1e6, lo_open=True)
        _check_float(self, "gan_g_weight", 0.0, 1e6)
        _check_float(self, "max_weight", 0.0, 1e6)


@dataclass(frozen=True)
class SiDConfig(_ConfigMixin):
    """Score identity distillation (Zhou et al. 2024; ``method="sid"``)."""

    alpha: float = 1.2                   # alpha of the SiD generator loss (paper default 1.2)

    def validate(self) -> None:
        _check_float(self, "alpha", -100.0, 100.0)


@dataclass(frozen=True)
class AdversarialConfig(_ConfigMixin):
    """Pure adversarial distillation (``method="gan"``): non-saturating GAN loss only, the
    discriminator a teacher-initialised feature network + head on noised samples."""

    lr_disc: float = 1e-4                # AdamW learning rate of the discriminator

    def validate(self) -> None:
        _check_float(self, "lr_disc", 0.0, 10.0, lo_open=True)


@dataclass(frozen=True)
class PhasedConfig(_ConfigMixin):
    """Phased DMD (``method="phased"``): a k-step student; the noise range is split into k phases
    and step j's distribution matching (and fake score) uses sigma only within phase j."""

    phases: int = 2                      # k: sampling steps = phases (2..4)

    def validate(self) -> None:
        _check_int(self, "phases", 2, 4)


@dataclass(frozen=True)
class EvalConfig(_ConfigMixin):
    """How often and on how many fixed noises an experiment is evaluated."""

    every: int = 100                     # evaluate every this many steps
    n: int = 1024                        # number of fixed evaluation noises (the standard n, docs/metrics.md)
    bootstrap: int = 200                 # bootstrap resamples for the Delta-E confidence interval
    seed: int = 1234                     # seed of the fixed evaluation noise
    # plateau criterion (dmdcore.convergence; docs/metrics.md "Convergence"); left out of
    # to_dict() at their defaults, so existing configs and sweep cell keys are unchanged
    stop_when_converged: str = "off"     # end a phase at its first converged evaluation: "off" | "student" | "all"
    plateau_window: int = 4              # k: evaluations the plateau must hold over
    plateau_tol_delta_e: float = 0.02    # max - min of Delta-E over the window (absolute)
    plateau_tol_w2: float = 0.1          # max - min of W2^2 over the window, relative to its mean
    plateau_floor_tol: float = 0.5       # with a twin floor f: W2^2(S, T) <= f * (1 + tol)
    twin_floor_w2: float | None = None   # teacher-twin floor W2^2(T', T); None = use W2^2 stability

    def validate(self) -> None:
        _check_int(self, "every", 1, 10_000_000)
        _check_int(self, "n", 2, 1_000_000)
        _check_int(self, "bootstrap", 0, 100_000)
        _check_int(self, "seed", 0, 2**63 - 1)
        _check_choice(self, "stop_when_converged", ("off", "student", "all"))
        _check_int(self, "plateau_window", 2, 1000)
        _check_float(self, "plateau_tol_delta_e", 0.0, 10.0)
        _check_float(self, "plateau_tol_w2", 0.0, 10.0)
        _check_float(self, "plateau_floor_tol", 0.0, 100.0)
        if self.twin_floor_w2 is not None:
            _check_float(self, "twin_floor_w2", 0.0, 1e9)

    def to_dict(self) -> dict:
        d = super().to_dict()
        for f in dataclasses.fields(self):
            if f.name in _EVAL_OPTIONAL and d[f.name] == _encode(f.default):
                del d[f.name]
        return d


_EVAL_OPTIONAL = (
    "stop_when_converged", "plateau_window", "plateau_tol_delta_e", "plateau_tol_w2",
    "plateau_floor_tol", "twin_floor_w2",
)


@dataclass(frozen=True)
class ExperimentConfig(_ConfigMixin):
    """Everything a run needs: data, teacher, teacher sampler, distillation, evaluation."""

    data: DataConfig = field(default_factory=DataConfig)            # data set
    teacher: TeacherConfig = field(default_factory=TeacherConfig)   # teacher network + training
    sampler: SamplerConfig = field(default_factory=SamplerConfig)   # teacher map T (Heun)
    distill: DistillConfig = field(default_factory=DistillConfig)   # DMD student
    eval: EvalConfig = field(default_factory=EvalConfig)            # evaluation schedule
    name: str = ""                                                   # free-text run name
    cd: ConsistencyConfig = field(default_factory=ConsistencyConfig)  # method "cd"
    fdistill: FDistillConfig = field(default_factory=FDistillConfig)  # methods "fdistill-*"
    sid: SiDConfig = field(default_factory=SiDConfig)                 # method "sid"
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)  # method "gan"
    phased: PhasedConfig = field(default_factory=PhasedConfig)        # method "phased"

    _OMIT_DEFAULT = ("cd", "fdistill", "sid", "adversarial", "phased")

    def validate(self) -> None:
        for name, cls in (
            ("data", DataConfig),
            ("teacher", TeacherConfig),
            ("sampler", SamplerConfig),
            ("distill", DistillConfig),
            ("eval", EvalConfig),
            ("cd", ConsistencyConfig),
            ("fdistill", FDistillConfig),
            ("sid", SiDConfig),
            ("adversarial", AdversarialConfig),
            ("phased", PhasedConfig),
        ):
            if not isinstance(getattr(self, name), cls):
                _fail(self, name, getattr(self, name), f"{cls.__name__} instances")
        if not isinstance(self.name, str):
            _fail(self, "name", self.name, "strings")
