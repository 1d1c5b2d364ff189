"""Toy Lab controls ↔ URL query string.

The full Toy Lab configuration is a flat dict of *control values* (one entry per widget, see
``CONTROLS``). It is stored in the URL as short keys, only for values that differ from the
defaults, so a shared link is compact and opening it restores every control. Pure functions,
no streamlit import: the page calls ``encode``/``decode`` with ``st.query_params`` contents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# The engine's own lists (dmdcore.config is plain Python: no torch import), so a new dataset,
# teacher family or student method appears in the Toy Lab without editing the UI.
from dmdcore.config import DATASETS, DATASETS_2D, STUDENT_METHODS, TEACHER_FAMILIES


@dataclass(frozen=True)
class Control:
    """One Toy Lab control: its session key, URL key, type, default and allowed values."""

    name: str            # session-state / widget key suffix, e.g. "dataset"
    qp: str              # URL query key (short)
    kind: type           # int | float | bool | str
    default: Any
    lo: float | None = None      # inclusive bounds for numbers
    hi: float | None = None
    choices: tuple[str, ...] | None = None   # allowed strings (None = free text)
    label: str = ""
    help: str = ""


# Keep in the order of the sidebar. Defaults are a small config that runs in well under a
# minute on two CPU cores; docs/controls.md explains each one. The student defaults (batch 1024,
# lr 3e-4, a 1000-step cap, stop at the plateau) are the measured starter of ui/toylab.py's
# START_HERE_VALUES (scripts/measure_starter.py).
CONTROLS: tuple[Control, ...] = (
    Control("teacher_source", "t", str, "shipped", choices=("shipped", "train"),
            label="Teacher", help="Use a shipped pre-trained toy teacher or train one now."),
    Control("shipped_name", "tn", str, "", label="Shipped teacher",
            help="Entry of checkpoints/manifest.json (sets the dataset and dimension)."),
    Control("dataset", "ds", str, "8gaussians", choices=DATASETS, label="Dataset",
            help="The data the teacher learns: 2-D toys (8/25 Gaussians, moons, rings, …), a Gaussian "
                 "mixture or an embedded 2-D toy in R^d, sklearn digits (d = 64), or 'user' (your upload)."),
    Control("dim", "d", int, 2, 2, 256, label="Dimension d",
            help="Ambient dimension (2-D datasets are fixed to 2; digits is 64)."),
    Control("n_modes", "k", int, 8, 2, 20, label="Mixture modes",
            help="K, the number of Gaussian components of 'mixture' (and of modes the copy rate counts; "
                 "its chance level is 1/K)."),
    Control("base", "b", str, "8gaussians", choices=DATASETS_2D, label="Embedded 2-D base",
            help="The 2-D toy that 'embedded' places in a random plane of R^d."),
    Control("t_width", "tw", int, 128, 16, 1024, label="Teacher width",
            help="Hidden units per layer of the teacher's MLP denoiser (the student starts as a copy)."),
    Control("t_depth", "td", int, 3, 1, 8, label="Teacher depth",
            help="Hidden layers of the teacher's MLP denoiser."),
    Control("t_steps", "ts", int, 1500, 10, 100000, label="Teacher steps",
            help="Training steps of a teacher trained here (the CLI's default is 3000; shipped teachers "
                 "were trained 2000–24000)."),
    Control("t_lr", "tlr", float, 1e-3, 1e-6, 1e-1, label="Teacher lr",
            help="Adam learning rate of the teacher's EDM denoising loss."),
    Control("t_twin", "tt", bool, True, label="Also train an independent twin",
            help="A second teacher (seed + 1, same data) trained in the same job: the ΔE controls "
                 "ΔE(T′,T) and ΔE(S,T′). Off = faster teacher training, controls shown as absent."),
    Control("family", "fam", str, "edm", choices=TEACHER_FAMILIES, label="Teacher family",
            help="edm: EDM denoiser; fm: flow matching / rectified flow; otcfm: minibatch-OT flow matching "
                 "(a shipped teacher brings its own family)."),
    Control("method", "m", str, "dmd",
            choices=STUDENT_METHODS,
            label="Student method",
            help="dmd: DMD/DMD2; cd: consistency distillation; fdistill-*: f-distill (reverse KL = DMD, "
                 "Jensen-Shannon, forward KL); sid: score identity distillation; gan: adversarial only; "
                 "phased: Phased DMD (2 steps). docs/methods.md"),
    Control("init", "init", str, "teacher", choices=("teacher", "random"),
            label="Student init",
            help="teacher: G starts as the teacher denoiser, G(z) = D(σ_max·z, σ_max) (DMD2's default; "
                 "the study's copying case). random: a freshly initialised G (free to remap)."),
    Control("ratio", "r", int, 5, 1, 50, label="Fake-score steps per generator step",
            help="TTUR: fake-score (denoising) updates per generator update; DMD2 uses 5."),
    Control("lr", "lr", float, 3e-4, 1e-7, 1e-1, label="Generator lr",
            help="Adam learning rate of the generator G (the DMD gradient ∝ s_fake − s_real)."),
    Control("lr_fake", "flr", float, 1e-3, 1e-7, 1e-1, label="Fake-score lr",
            help="Adam learning rate of the fake score, trained by denoising on G's samples."),
    Control("batch", "bs", int, 1024, 8, 8192, label="Student batch",
            help="Noises z per generator step (and per fake-score step)."),
    Control("s_steps", "ss", int, 1000, 1, 100000, label="Student steps",
            help="Generator updates of the student phase (the time cursor counts these); with "
                 "'Stop at the plateau' on, a cap: the phase ends at its first converged evaluation."),
    Control("gan", "gan", bool, False, label="GAN loss",
            help="DMD2's GAN head on the fake score: real data vs G's samples, added to the DMD loss."),
    Control("regression", "reg", bool, False, label="Regression loss",
            help="DMD's regression term λ·E‖G(z_k) − T(z_k)‖² on fixed teacher pairs: forces the "
                 "teacher's pairing (ΔE → 0 by construction)."),
    Control("reg_weight", "lam", float, 0.25, 0.0, 100.0, label="Regression λ",
            help="Weight λ of the regression loss (used only when it is on)."),
    Control("student_steps", "fs", int, 1, 1, 4, label="Student sampling steps",
            help="1 = a one-step student; 2–4 = a few-step student on the Karras σ schedule."),
    Control("seed", "seed", int, 0, 0, 2**31 - 1, label="Seed",
            help="Seeds the data, the teacher (when trained here) and the student's training noise."),
    Control("eval_n", "en", int, 1024, 16, 20000, label="Evaluation batch n",
            help="Noises ΔE is measured on; 1024 is the standard n of toy runs, presets and sweeps "
                 "(ΔE at different n or d is not comparable: its finite-n bias depends on both)."),
    Control("eval_every", "ee", int, 50, 1, 100000, label="Evaluate every",
            help="Steps between evaluations (each is a point on the curves and a stop of the time cursor)."),
    Control("bootstrap", "boot", int, 100, 0, 2000, label="ΔE bootstrap resamples",
            help="Resamples of the n pairs for ΔE's 95% CI (0 = no CI)."),
    Control("stop_plateau", "stop", bool, True, label="Stop at the plateau",
            help="End the student phase at its first converged evaluation (dmdcore.convergence: ΔE "
                 "stable within 0.02 over 4 evaluations and W₂²(S,T) within 1.5× its floor); "
                 "Student steps is then a cap. Off = always run every student step."),
)
BY_NAME = {c.name: c for c in CONTROLS}
BY_QP = {c.qp: c for c in CONTROLS}


def defaults() -> dict[str, Any]:
    """The default control values {name: value}."""
    return {c.name: c.default for c in CONTROLS}


def check(name: str, value: Any) -> Any:
    """Coerce ``value`` to control ``name``'s type and check its range.

    Raises ValueError("<name>: <value> not in <allowed>") for anything out of range.
    """
    if name not in BY_NAME:
        raise ValueError(f"{name}: unknown control (known: {', '.join(BY_NAME)})")
    c = BY_NAME[name]
    try:
        if c.kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false"):
                    raise ValueError
                v = value.lower() in ("1", "true")
            else:
                v = bool(value)
        elif c.kind is int:
            f = float(value)
            if not f.is_integer():
                raise ValueError
            v = int(f)
        elif c.kind is float:
            v = float(value)
            if not math.isfinite(v):
                raise ValueError
        else:
            v = str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: {value!r} is not a valid {c.kind.__name__}") from None
    if c.lo is not None and c.hi is not None and not (c.lo <= v <= c.hi):
        raise ValueError(f"{name}: {v} not in [{c.lo}, {c.hi}]")
    if c.choices is not None and v not in c.choices:
        raise ValueError(f"{name}: {v!r} not in {{{', '.join(c.choices)}}}")
    return v


def _fmt(c: Control, v: Any) -> str:
    if c.kind is bool:
        return "1" if v else "0"
    if c.kind is float:
        return repr(float(v))
    return str(v)


def encode(values: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, str]:
    """Control values → query params {qp: str}, only those that differ from ``base``.

    base defaults to ``defaults()``. Values are checked first (ValueError on bad ones).
    """
    base = defaults() if base is None else base
    out: dict[str, str] = {}
    for c in CONTROLS:
        if c.name not in values:
            continue
        v = check(c.name, values[c.name])
        if c.name in base and check(c.name, base[c.name]) == v:
            continue
        out[c.qp] = _fmt(c, v)
    return out


def decode(params: dict[str, Any], base: dict[str, Any] | None = None,
           ) -> tuple[dict[str, Any], list[str]]:
    """Query params → (control values, errors).

    Starts from ``base`` (default: ``defaults()``) and overrides each known key. Unknown keys
    are ignored (other pages may add their own); invalid values are skipped and reported as
    messages naming the URL key, so a bad link still opens with the valid part applied.
    """
    values = dict(defaults() if base is None else base)
    errors: list[str] = []
    for key, raw in params.items():
        if key not in BY_QP:
            continue
        if isinstance(raw, (list, tuple)):
            raw = raw[-1] if raw else ""
        c = BY_QP[key]
        try:
            values[c.name] = check(c.name, raw)
        except ValueError as exc:
            errors.append(f"URL parameter '{key}': {exc}")
    return values, errors
