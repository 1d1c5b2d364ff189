"""Plateau criterion: has a run's student (or teacher) stopped changing?

A student phase has *converged* at an evaluation when, over the last ``k = EvalConfig.plateau_window``
evaluations of the phase (the current one included):

* ΔE is stable: ``max(ΔE) − min(ΔE) ≤ plateau_tol_delta_e`` (absolute), and
* W₂²(S, T) has reached its floor:
  - with a floor ``f`` (the smallest distance a student could be expected to reach at this n and d
    whatever its pairing: the pipeline passes the larger of the twin distance W₂²(T′, T) and the
    sampling floor W₂²(T(z), T(z′)), since T′ shares T's noise and only a copier can come closer
    than the sampling floor): the current ``W₂²(S, T) ≤ f·(1 + plateau_floor_tol)``;
  - without one: W₂²(S, T) is stable, ``max − min ≤ plateau_tol_w2 · mean`` over the window.

A teacher phase has converged when W₂²(T(z), data) is stable by the same relative rule (no ΔE)
and, with a data floor ``f`` (W₂² between two independent data samples of the same n, metrics.csv
``w2_data_floor``: what a perfect model reaches at this n and d), ``W₂²(T(z), data) ≤ f·(1 +
plateau_floor_tol)``: a teacher whose samples are still far from the data at the end of a slow
decay is not called converged because the decay is slow (measured: a d = 256 teacher at 40 with
a floor of 4.3, changing by 3 % over 4 evaluations).
Fewer than ``k`` evaluations, or an empty (undefined) metric in the window, is "not converged".

The pipeline writes the result as ``converged`` (0/1) in every metrics.csv row and, when
``EvalConfig.stop_when_converged`` asks for it, ends the phase at the first converged evaluation
(the configured step count is then a cap); status.json records per phase whether it stopped
``converged`` or at its ``cap``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

STOP_MODES = ("off", "student", "all")


@dataclass(frozen=True)
class Plateau:
    """Criterion parameters (see the module docstring); built from an EvalConfig by ``from_eval``."""

    window: int = 4
    tol_delta_e: float = 0.02
    tol_w2: float = 0.1
    floor_tol: float = 0.5

    @classmethod
    def from_eval(cls, ev) -> "Plateau":
        return cls(window=ev.plateau_window, tol_delta_e=ev.plateau_tol_delta_e,
                   tol_w2=ev.plateau_tol_w2, floor_tol=ev.plateau_floor_tol)


def _values(rows: Sequence[Mapping], key: str) -> list[float] | None:
    out = []
    for r in rows:
        v = r.get(key)
        if v is None or isinstance(v, bool):
            return None
        v = float(v)
        if not math.isfinite(v):
            return None
        out.append(v)
    return out


def _stable_relative(vals: list[float], tol: float) -> bool:
    mean = sum(vals) / len(vals)
    return (max(vals) - min(vals)) <= tol * max(abs(mean), 1e-12)


def student_converged(rows: Sequence[Mapping], crit: Plateau, floor_w2: float | None = None) -> bool:
    """Rows: the student phase's metrics rows so far (oldest first, current last), each with
    ``delta_e`` and ``w2``. floor_w2: the teacher-twin W₂² floor, or None (stability rule)."""
    if len(rows) < crit.window:
        return False
    win = rows[-crit.window:]
    de, w2 = _values(win, "delta_e"), _values(win, "w2")
    if de is None or w2 is None:
        return False
    if max(de) - min(de) > crit.tol_delta_e:
        return False
    if floor_w2 is not None and math.isfinite(floor_w2) and floor_w2 >= 0:
        return w2[-1] <= floor_w2 * (1.0 + crit.floor_tol)
    return _stable_relative(w2, crit.tol_w2)


def teacher_converged(rows: Sequence[Mapping], crit: Plateau, floor_w2: float | None = None) -> bool:
    """Rows: the teacher phase's metrics rows so far, each with ``w2_data``: stable within
    ``tol_w2`` (relative) over the last ``window`` evaluations, and with a data floor ``floor_w2``
    the current value within ``floor_tol`` of it."""
    if len(rows) < crit.window:
        return False
    w = _values(rows[-crit.window:], "w2_data")
    if w is None or not _stable_relative(w, crit.tol_w2):
        return False
    if floor_w2 is not None and math.isfinite(floor_w2) and floor_w2 >= 0:
        return w[-1] <= floor_w2 * (1.0 + crit.floor_tol)
    return True


def phase_converged(phase: str, rows: Sequence[Mapping], crit: Plateau, floor_w2: float | None = None) -> bool:
    """``student_converged`` (floor: teacher-twin W₂²) or ``teacher_converged`` (floor: the data
    floor) by phase name."""
    if phase == "student":
        return student_converged(rows, crit, floor_w2)
    if phase == "teacher":
        return teacher_converged(rows, crit, floor_w2)
    raise ValueError(f"phase: {phase!r} not in ('teacher', 'student')")


def should_stop(mode: str, phase: str) -> bool:
    """Whether a converged evaluation ends ``phase`` under ``EvalConfig.stop_when_converged``."""
    if mode not in STOP_MODES:
        raise ValueError(f"EvalConfig.stop_when_converged: {mode!r} not in {STOP_MODES}")
    return mode == "all" or (mode == "student" and phase == "student")


def first_converged_step(rows: Sequence[Mapping]) -> int | None:
    """The ``step`` of the first row with ``converged`` = 1 (None when none converged)."""
    for r in rows:
        if r.get("converged") in (1, "1", 1.0, True):
            return int(r["step"])
    return None


@dataclass(frozen=True)
class StudentStatus:
    """Where a run's student phase stands against the plateau criterion (for a headline).

    state: "converged" (a student evaluation met the criterion), "running" (not yet, the phase
    goes on), "cap" (the phase ended at its step cap without reaching the plateau), "stopped"
    (ended before its cap without reaching it: stopped, diverged or failed) or "unknown" (no
    ``converged`` column: a run made before the criterion existed). step: the first converged
    student step; last: the newest evaluated step; cap: the configured student steps."""

    state: str
    step: int | None
    last: int | None
    cap: int | None

    @property
    def converged(self) -> bool:
        return self.state == "converged"

    def text(self) -> str:
        cap = f" {self.cap}" if self.cap is not None else ""
        if self.state == "converged":
            return f"converged at student step {self.step}"
        if self.state == "running":
            return (f"not converged yet (plateau not reached by student step {self.last} of cap{cap})"
                    if self.last is not None else "not converged yet (no student evaluation)")
        if self.state == "cap":
            return f"not converged (plateau not reached by cap{cap}) — kept out of verdicts"
        if self.state == "stopped":
            return (f"not converged (ended at student step {self.last} before the plateau) — "
                    "kept out of verdicts")
        return "convergence not recorded (run made before the plateau criterion)"


def student_status(rows: Sequence[Mapping], *, cap: int | None, finished: bool) -> StudentStatus:
    """The plateau state of a run's student phase from its metrics rows (metrics.csv or a live
    snapshot; rows of other phases are ignored). finished: the run has ended (any reason)."""
    stu = [r for r in rows if r.get("phase", "student") == "student"]
    last = int(stu[-1]["step"]) if stu else None
    step = first_converged_step(stu)
    if step is not None:
        return StudentStatus("converged", step, last, cap)
    if stu and all(r.get("converged") in (None, "") for r in stu):
        return StudentStatus("unknown", None, last, cap)
    if not finished:
        return StudentStatus("running", None, last, cap)
    if cap is not None and last is not None and last >= cap:
        return StudentStatus("cap", None, last, cap)
    return StudentStatus("stopped", None, last, cap)
