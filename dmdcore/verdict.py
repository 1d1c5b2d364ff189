"""Copying verdicts: ΔE of a student with its sample size, its controls and a validity guard.

``copy_report(student, teacher, twin=...)`` (also importable as ``dmdcore.pairing.copy_report``)
measures, on one noise batch of n points in R^d and with the one estimator of
``dmdcore.pairing.pairing_inefficiency``:

* ΔE(S, T) with its bootstrap CI, and the per-pair bound ``E_pair / E_ind`` — an upper bound on
  the *population* ΔE that needs no optimal transport, so it does not saturate (docs/metrics.md);
* the **independent-teacher control** (``twin``: a teacher trained on the same data with another
  seed, evaluated on the same noise): ΔE(T′, T), what "the same map" reads between two models
  that never saw each other's pairing, and ΔE(S, T′);
* **reference students** built from the teacher's samples: exact copy, a noisy copy at the
  student's own per-pair error, a within-mode remap (a new position in the same mode; needs
  ``centers`` or ``n_modes``), a random permutation, and a ladder of noisy copies of known
  population ΔE that gives the **resolution**: the largest population ΔE that still reads as 0
  at this n and d (the smallest remapping this evaluation can see);
* a **validity guard** and a **verdict** in ``VERDICTS`` taken only from these comparisons.

Thresholds are module constants, documented in docs/metrics.md ("What ΔE can and cannot tell")
and tested in tests/test_verdict.py. Population values of the references are exact for Gaussian
data and a Gaussian approximation (the teacher samples' covariance, per-mode covariances)
otherwise. This module never prints and takes its randomness from ``seed``.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from dmdcore import pairing as _p

__all__ = [
    "CopyReport", "CopyControls", "VERDICTS", "STANDARD_EVAL_N", "LADDER", "copy_controls",
    "copy_report", "noisy_copy_population", "report_row", "twin_control",
]

VERDICTS = ("copies", "same_map", "remaps", "partial", "unresolved", "invalid")
STANDARD_EVAL_N = 1024  # one evaluation n for toy runs, presets and sweeps (docs/metrics.md)

# Population ΔE of the noisy-copy rungs whose measured ΔE gives the resolution.
LADDER = (0.02, 0.05, 0.1, 0.25)
READS_ZERO_FRACTION = 0.5  # a rung "reads as 0" when it measures below this fraction of its population ΔE
# Validity guard
DEN_MIN_FRACTION = 0.2   # (E_ind − E_OT)/E_ind below this: the denominator is degenerate
W2_RATIO_MAX = 10.0      # W₂²(S,T) above this many times W₂²(T′,T): the student has not matched T's distribution ...
W2_FLOOR_RATIO_MAX = 3.0  # ... unless it is within this many times the teacher's sampling floor W₂²(T(z), T(z′))
CI_WIDTH_MAX = 0.25      # a bootstrap CI wider than this cannot support a reading
# Verdict
REMAP_MIN = 0.5          # ΔE at or above this: closer to chance (1) than to the teacher's pairing (0)
SAME_MAP_FACTOR = 2.0    # ΔE(S,T) within this factor of the independent-teacher level: "same map"
COPY_MAX_NO_TWIN = 0.05  # without a twin, "copies" needs the population ΔE to be at most this
EXCESS_MIN = 0.02        # a saturated reading this far above the noisy copy at the same error: "partial"
BLOCK_BIAS_NOTE = "measured bias down to −0.18 on remapped students in d ≥ 16 (docs/metrics.md)"


@dataclass(frozen=True)
class CopyControls:
    """What depends only on the teacher (and its twin) at this n and d: reused across the
    evaluations of one run.  ladder: ((population ΔE, measured ΔE, σ), ...)."""

    n: int
    d: int
    seed: int
    eig: Any  # covariance spectrum of the teacher samples (see noisy_copy_population)
    xi: np.ndarray
    ladder: tuple
    resolution: float
    twin: Any = None            # PairingResult ΔE(T′, T) or None
    twin_bound: float | None = None
    twin_samples: np.ndarray | None = None
    references: dict = field(default_factory=dict)
    populations: dict = field(default_factory=dict)
    # W₂²(T(z), T(z′)) with z′ an independent noise batch of the same n: what a student whose
    # distribution equals T's reaches when it pairs the noise differently (None: not measured)
    w2_sampling_floor: float | None = None

    @property
    def w2_floor(self) -> float | None:
        """The smallest W₂²(S, T) a student can be expected to reach at this n and d, whatever its
        pairing: the larger of the teacher-twin distance W₂²(T′,T) and the sampling floor
        W₂²(T(z), T(z′)). The twin floor alone is biased toward copying: T′(z) shares T(z)'s
        noise, so only a student that also pairs like T can come that close (docs/metrics.md)."""
        vals = [v for v in (None if self.twin is None else self.twin.e_ot, self.w2_sampling_floor)
                if v is not None and math.isfinite(v)]
        return max(vals) if vals else None


@dataclass(frozen=True)
class CopyReport:
    """ΔE(S, T) with n, d, its controls, validity and verdict (see the module docstring)."""

    delta_e: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    d: int
    delta_e_twin: float | None
    delta_e_cross: float | None
    resolution: float
    references: dict
    valid: bool
    reasons: list
    verdict: str
    reference_population: dict = field(default_factory=dict)
    ladder: tuple = ()
    e_pair: float | None = None
    e_ot: float | None = None
    e_ind: float | None = None
    w2: float | None = None
    w2_twin: float | None = None
    bound: float | None = None
    twin_bound: float | None = None
    exact: bool = True
    basis: str = ""

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["ladder"] = [list(r) for r in self.ladder]
        d["reasons"] = list(self.reasons)
        return d


# ------------------------------------------------------------------------------ populations

def noisy_copy_population(eig: Any, sigma: float) -> float:
    """Population ΔE of s = t + σξ (ξ ~ N(0, I_d)) for t ~ N(μ, Σ) with eigenvalues ``eig``:
    E_pair = dσ², E_ind = 2 tr Σ + dσ², E_OT = W₂²(N(μ,Σ), N(μ,Σ+σ²I)) = Σ_k (√(λ_k+σ²) − √λ_k)².
    ``eig`` may also be a spectrum ``(tr Σ_total, d, [(w_k, eig_k), ...])`` of a mixture of Gaussian
    modes: then E_OT is taken as Σ_k w_k W₂²(mode k, mode k + noise) — the cost of the coupling
    that keeps every mode, an upper bound on the population E_OT, so the value is a lower bound
    on the population ΔE (exact when the modes are Gaussian and far apart)."""
    if isinstance(eig, tuple):
        tr, d, parts = eig
    else:
        e = np.clip(np.asarray(eig, dtype=np.float64), 0.0, None)
        tr, d, parts = float(e.sum()), e.size, [(1.0, e)]
    s2 = float(sigma) ** 2
    w = sum(wk * float(np.sum((np.sqrt(ek + s2) - np.sqrt(ek)) ** 2)) for wk, ek in parts)
    e_pair = d * s2
    return (e_pair - w) / (2.0 * tr + e_pair - w)


def _sigma_for(eig: Any, target: float) -> float:
    """σ whose noisy copy has population ΔE ``target`` (bisection; the map σ ↦ ΔE is increasing)."""
    mean = eig[0] / eig[1] if isinstance(eig, tuple) else float(np.mean(eig))
    scale = math.sqrt(max(mean, 1e-300))
    lo, hi = 0.0, scale
    while noisy_copy_population(eig, hi) < target:
        hi *= 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if noisy_copy_population(eig, mid) < target else (lo, mid)
    return 0.5 * (lo + hi)


def _spectrum(t: np.ndarray, modes: np.ndarray | None) -> Any:
    """The teacher's covariance spectrum: its eigenvalues, or with modes the mixture spectrum
    (tr Σ_total, d, [(weight, eigenvalues of the mode's covariance), ...]) of noisy_copy_population."""
    eig = _cov_eigenvalues(t)
    if modes is None:
        return eig
    n, d = t.shape
    parts = [(float(np.sum(modes == k)) / n, np.clip(_cov_eigenvalues(t[modes == k]), 0.0, None))
             for k in np.unique(modes) if np.sum(modes == k) >= 2]
    if not parts:
        return eig
    total = sum(w for w, _ in parts)
    return (float(np.clip(eig, 0.0, None).sum()), d, [(w / total, e) for w, e in parts])


def _delta(s: np.ndarray, t: np.ndarray, **kw) -> Any:
    return _p.pairing_inefficiency(s, t, **kw)


def _bound(s: np.ndarray, t: np.ndarray) -> float:
    """E_pair / E_ind: the population ΔE is at most this (E_OT ≥ 0), whatever OT reads at finite n."""
    e_pair = float(np.mean(np.sum((s - t) ** 2, axis=1)))
    e_ind = _p._independent_cost(s, t)
    return e_pair / e_ind if e_ind > 0 else math.inf


# ------------------------------------------------------------------------------ controls

def _modes(t: np.ndarray, centers: Any, n_modes: int | None, seed: int) -> np.ndarray | None:
    if centers is None and n_modes is None:
        return None
    c = None if centers is None else np.asarray(centers, dtype=np.float64).reshape(-1, t.shape[1])
    mt = _p.mode_transition(t, t, centers=c, n_modes=n_modes, seed=seed)
    return mt.teacher_modes


def _within_mode(t: np.ndarray, modes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float] | None:
    """A new position in the same mode for every sample: mode mean + a fresh Gaussian draw with
    the mode's covariance.  Returns (samples, population ΔE = within-mode / total variance)."""
    s = t.copy()
    within = 0.0
    used = 0
    for k in np.unique(modes):
        idx = np.flatnonzero(modes == k)
        if idx.size < 2:
            continue
        x = t[idx]
        mu = x.mean(axis=0)
        xc = x - mu
        # draw from N(mu, cov) through the centred samples themselves (rank ≤ |mode| − 1, no d×d solve)
        g = rng.standard_normal((idx.size, idx.size)) / math.sqrt(idx.size - 1)
        s[idx] = mu + g @ xc
        within += float(np.sum(xc ** 2))
        used += idx.size
    if used == 0:
        return None
    total = float(np.sum((t - t.mean(axis=0)) ** 2))
    return s, (within / total if total > 0 else math.nan)


@dataclass
class _Prep:
    """The teacher side of a report before its OT solves: what the student side also needs."""

    t: np.ndarray
    seed: int
    eig: Any
    xi: np.ndarray
    twin: np.ndarray | None


def _control_jobs(teacher: Any, twin: Any, seed: int, centers: Any, n_modes: int | None,
                  kw: dict, indep: Any = None) -> tuple[_Prep, dict, Callable[[dict], CopyControls]]:
    """The OT solves of ``copy_controls`` as independent jobs (name → callable), with the
    function that assembles their results into a CopyControls."""
    t, _, _ = _p._as_pair(teacher, teacher, "teacher", "teacher")
    n, d = t.shape
    seed = _p._check_int(seed, "seed", 0)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    modes = _modes(t, centers, n_modes, seed)
    eig = _spectrum(t, modes)  # per-mode when the modes are known (population values: docs)
    xi = rng.standard_normal((n, d))
    jobs: dict[str, Callable[[], Any]] = {}
    sigmas = [_sigma_for(eig, pop) for pop in LADDER]
    for i, sigma in enumerate(sigmas):
        jobs[f"rung{i}"] = (lambda sg=sigma: _delta(t + sg * xi, t, **kw).delta_e)
    perm = rng.permutation(n)
    wm = _within_mode(t, modes, rng) if modes is not None else None
    if wm is not None:
        jobs["within_mode"] = lambda: _delta(wm[0], t, **kw).delta_e
    tws = None
    if twin is not None:
        tws, _, _ = _p._as_pair(twin, t, "twin", "teacher")
        jobs["twin"] = lambda: _delta(tws, t, **kw)
    if indep is not None:
        ind, _, _ = _p._as_pair(indep, t, "indep", "teacher")
        jobs["indep"] = lambda: _p.wasserstein2_squared(ind, t, max_exact=kw["max_exact"])

    def assemble(res: dict) -> CopyControls:
        ladder = [(pop, _value(res, f"rung{i}"), sigmas[i]) for i, pop in enumerate(LADDER)]
        refs = {"copy": 0.0}  # s = t: E_pair = E_OT = 0 exactly
        pops = {"copy": 0.0}
        # a permutation of the teacher's own set: its exact OT cost is 0, so ΔE = E_pair / E_ind
        refs["permutation"] = _bound(t[perm], t)
        pops["permutation"] = 1.0
        if wm is not None:
            refs["within_mode"] = _value(res, "within_mode")
            pops["within_mode"] = wm[1]
        tw = _value(res, "twin") if tws is not None else None
        return CopyControls(n=n, d=d, seed=seed, eig=eig, xi=xi, ladder=tuple(ladder),
                            resolution=_resolution(ladder), twin=tw,
                            twin_bound=None if tws is None else _bound(tws, t), twin_samples=tws,
                            references=refs, populations=pops,
                            w2_sampling_floor=_value(res, "indep") if indep is not None else None)

    return _Prep(t=t, seed=seed, eig=eig, xi=xi, twin=tws), jobs, assemble


def _value(res: dict, name: str) -> Any:
    """A job's result, re-raising the exception it ended with."""
    out = res[name]
    if isinstance(out, BaseException):
        raise out
    return out


def _run_jobs(jobs: dict) -> dict:
    """Run independent OT jobs, concurrently on up to torch.get_num_threads() threads (POT's
    network simplex, the KD-tree queries and the GEMMs release the GIL; 1 thread in sweep workers,
    which limit every pool to one thread). Results are independent of the order: each job has
    its own seed. Returns name → result or the exception it raised."""
    import torch

    def call(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - handed back to the caller, which decides
            return exc

    workers = max(1, min(len(jobs), torch.get_num_threads()))
    if workers == 1:
        return {k: call(fn) for k, fn in jobs.items()}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # the usually longest solves first (remapped references need refinement rounds)
        order = sorted(jobs, key=lambda k: k not in ("within_mode", f"rung{len(LADDER) - 1}", "student"))
        futures = {k: pool.submit(call, jobs[k]) for k in order}
        return {k: futures[k].result() for k in jobs}


def copy_controls(teacher: Any, *, twin: Any = None, seed: int = 0, centers: Any = None,
                  n_modes: int | None = None, max_exact: int = 4096, solver: str = "auto",
                  indep: Any = None) -> CopyControls:
    """The teacher-side controls of ``copy_report`` (ladder, resolution, twin ΔE, within-mode and
    permutation references), computed once and reusable for every student on the same noise.
    indep: the teacher's samples T(z′) on an independent noise batch of the same n, for the
    sampling floor W₂²(T(z), T(z′)) (``CopyControls.w2_floor``); None leaves it unmeasured."""
    kw = dict(seed=_p._check_int(seed, "seed", 0), max_exact=max_exact, solver=solver)
    _, jobs, assemble = _control_jobs(teacher, twin, seed, centers, n_modes, kw, indep=indep)
    return assemble(_run_jobs(jobs))


def _cov_eigenvalues(t: np.ndarray) -> np.ndarray:
    """The d eigenvalues of the sample covariance of t (n, d); through the n × n Gram matrix when
    d > n (images: d = 12288), the other d − n + 1 being 0."""
    n, d = t.shape
    xc = t - t.mean(axis=0)
    if d <= n:
        return np.linalg.eigvalsh(xc.T @ xc / (n - 1))
    ev = np.linalg.eigvalsh(xc @ xc.T / (n - 1))
    return np.concatenate([ev, np.zeros(d - n)])


def _resolution(ladder: list) -> float:
    """Largest population ΔE on the ladder that reads as 0 (below READS_ZERO_FRACTION of itself);
    0.0 when every rung is resolved.  Beyond the last rung nothing is known: if the top rung
    reads as 0 the resolution is reported as inf ("worse than the top rung")."""
    blind = [pop for pop, meas, _ in ladder if meas < READS_ZERO_FRACTION * pop]
    if not blind:
        return 0.0
    return math.inf if max(blind) >= ladder[-1][0] else float(max(blind))


# ------------------------------------------------------------------------------ the report

def copy_report(student: Any, teacher: Any, *, twin: Any = None, seed: int = 0, bootstrap: int = 200,
                level: float = 0.95, centers: Any = None, n_modes: int | None = None, max_exact: int = 4096,
                solver: str = "auto", controls: CopyControls | None = None, indep: Any = None) -> CopyReport:
    """ΔE(S, T) with n, d, controls, validity and verdict (module docstring, docs/metrics.md).

    student, teacher, twin: (n, ...) samples S(z), T(z), T′(z) on the same noise batch.
    bootstrap/level: the bootstrap CI of ΔE(S, T).  centers (K, d) or n_modes: the teacher's modes
    for the within-mode reference.  indep: T(z′) on an independent noise batch of the same n (the
    sampling floor of the validity guard; see CopyControls.w2_floor).  controls:
    ``copy_controls(teacher, twin=…, …)`` computed earlier for the same teacher samples (then
    ``twin``, ``centers``, ``n_modes``, ``indep`` are ignored).
    A collapsed or far-off student gives ``valid=False`` and verdict "invalid" (never ΔE = 0);
    bad input (shapes, NaN, a zero-spread teacher) raises ValueError naming it.
    """
    s, t, _ = _p._as_pair(student, teacher, "student", "teacher")
    n, d = t.shape
    kw = dict(seed=seed, max_exact=max_exact, solver=solver)
    if controls is None:  # the teacher-side solves run in the same batch as the student's
        prep, jobs, assemble = _control_jobs(t, twin, seed, centers, n_modes, kw, indep=indep)
        xi, eig, tws = prep.xi, prep.eig, prep.twin
    elif (controls.n, controls.d) != (n, d):
        raise ValueError(f"controls: made for n={controls.n}, d={controls.d}, not n={n}, d={d}")
    else:
        jobs, assemble = {}, None
        xi, eig, tws = controls.xi, controls.eig, controls.twin_samples
    e_pair = float(np.mean(np.sum((s - t) ** 2, axis=1)))
    sigma = math.sqrt(e_pair / d)
    jobs["student"] = lambda: _p.pairing_inefficiency(s, t, bootstrap=bootstrap, level=level, **kw)
    if sigma > 0:  # a noisy copy with the student's own per-pair error E_pair (σ² = E_pair / d)
        jobs["noisy_copy"] = lambda: _delta(t + sigma * xi, t, **kw).delta_e
    if tws is not None:
        jobs["cross"] = lambda: _delta(s, tws, **kw).delta_e
    res = _run_jobs(jobs)
    if assemble is not None:
        controls = assemble(res)
    reasons: list[str] = []
    pr = res["student"]
    if isinstance(pr, ValueError):
        exc, pr = pr, None
        if bootstrap:
            try:  # a degenerate bootstrap resample: ΔE without CI, flagged below
                pr = _p.pairing_inefficiency(s, t, **kw)
                reasons.append(f"no CI: {exc}")
            except ValueError as exc2:
                reasons.append(f"ΔE undefined: {exc2}")
        else:
            reasons.append(f"ΔE undefined: {exc}")
    elif isinstance(pr, BaseException):
        raise pr
    refs = dict(controls.references)
    pops = dict(controls.populations)
    if sigma > 0:
        refs["noisy_copy"] = _value(res, "noisy_copy")
        pops["noisy_copy"] = float(noisy_copy_population(eig, sigma))
    else:
        refs["noisy_copy"], pops["noisy_copy"] = 0.0, 0.0
    cross = None
    if tws is not None and pr is not None and not isinstance(res["cross"], ValueError):
        cross = _value(res, "cross")
    bound = _bound(s, t)
    tw = controls.twin
    reasons += _guard(pr, tw, n, controls.w2_sampling_floor)
    valid = pr is not None and not reasons
    rep = dict(
        delta_e=None if pr is None else pr.delta_e, ci_low=None if pr is None else pr.ci_low,
        ci_high=None if pr is None else pr.ci_high, n=n, d=d,
        delta_e_twin=None if tw is None else tw.delta_e, delta_e_cross=cross,
        resolution=controls.resolution, references=refs, reference_population=pops, ladder=controls.ladder,
        e_pair=None if pr is None else pr.e_pair, e_ot=None if pr is None else pr.e_ot,
        e_ind=None if pr is None else pr.e_ind, w2=None if pr is None else pr.e_ot,
        w2_twin=None if tw is None else tw.e_ot, bound=bound, twin_bound=controls.twin_bound,
        exact=True if pr is None else pr.exact, valid=valid, reasons=reasons,
    )
    verdict, basis = decide(rep) if valid else ("invalid", "; ".join(reasons))
    return CopyReport(verdict=verdict, basis=basis, **rep)


def _guard(pr: Any, tw: Any, n: int, sampling_floor: float | None = None) -> list[str]:
    """Reasons why ΔE(S, T) cannot be read (empty list: it can). sampling_floor: W₂²(T(z), T(z′))
    (a student with T's distribution but its own pairing reaches about this, however closely the
    twin agrees with T on the shared noise)."""
    if pr is None:
        return []
    out = []
    frac = (pr.e_ind - pr.e_ot) / pr.e_ind
    if frac < DEN_MIN_FRACTION:
        out.append(f"degenerate denominator: E_ind − E_OT is {frac:.1%} of E_ind (< {DEN_MIN_FRACTION:.0%}): "
                   "the student is collapsed or far from the teacher's distribution")
    floor_ok = (sampling_floor is not None and math.isfinite(sampling_floor)
                and pr.e_ot <= W2_FLOOR_RATIO_MAX * sampling_floor)
    if tw is not None and tw.e_ot > 0 and pr.e_ot > W2_RATIO_MAX * tw.e_ot and not floor_ok:
        extra = "" if sampling_floor is None else (
            f" and {pr.e_ot / sampling_floor:.1f}× the sampling floor W₂²(T(z),T(z′)) = {sampling_floor:.3g}"
            f" (> {W2_FLOOR_RATIO_MAX:g}×)")
        out.append(f"distribution not matched: W₂²(S,T) = {pr.e_ot:.3g} is {pr.e_ot / tw.e_ot:.0f}× "
                   f"W₂²(T′,T) = {tw.e_ot:.3g} (> {W2_RATIO_MAX:g}×){extra}")
    if pr.ci_low is not None and pr.ci_high - pr.ci_low > CI_WIDTH_MAX:
        out.append(f"CI [{pr.ci_low:.2f}, {pr.ci_high:.2f}] wider than {CI_WIDTH_MAX} (n={n} too small)")
    if not pr.exact:
        out.append(f"block approximation ({pr.n_blocks} blocks, n={n} > max_exact): {BLOCK_BIAS_NOTE}")
    return out


def decide(r: dict) -> tuple[str, str]:
    """The verdict and the comparison behind it, from a valid report's numbers (docs/metrics.md)."""
    de, res, bound = r["delta_e"], r["resolution"], r["bound"]
    lo = r["ci_low"] if r["ci_low"] is not None else de
    hi = r["ci_high"] if r["ci_high"] is not None else de
    twin, tbound = r["delta_e_twin"], r["twin_bound"]
    noisy = r["references"]["noisy_copy"]
    res_txt = "< %.2f" % LADDER[0] if res == 0 else ("> %.2f" % LADDER[-1] if math.isinf(res) else "%.2f" % res)
    if de >= REMAP_MIN:
        return "remaps", f"ΔE {de:.3f} ≥ {REMAP_MIN}: closer to a random pairing than to the teacher's"
    if de < res:  # the estimator saturates here: a reading below res may hide a larger ΔE
        if de - noisy >= EXCESS_MIN and lo > noisy:
            return "partial", (f"ΔE {de:.3f} reads above a noisy copy with the same per-pair error ({noisy:.3f}); "
                               f"remappings below {res_txt} read as 0 here, so the true ΔE is likely larger")
        if twin is not None and tbound is not None and bound <= 0.5 * tbound:
            return "copies", (f"E_pair/E_ind = {bound:.3f} (a bound on the population ΔE) is under half the "
                              f"independent teacher's {tbound:.3f}: closer to its own teacher than another model is")
        if twin is None and bound <= COPY_MAX_NO_TWIN:
            return "copies", (f"E_pair/E_ind = {bound:.3f} ≤ {COPY_MAX_NO_TWIN} bounds the population ΔE "
                              "(no twin control: copying this teacher and the map any model learns are not separated)")
        twin_txt = (f", the independent teacher's at most {tbound:.3f}" if tbound is not None else
                    " (no twin to compare with)")
        return "unresolved", (f"ΔE {de:.3f} is below the resolution {res_txt} at n={r['n']}, d={r['d']}: the per-pair "
                              f"bound allows a population ΔE up to E_pair/E_ind = {bound:.3f}{twin_txt}; whether the "
                              "student copies its teacher cannot be told at this n and d")
    if twin is None:
        if hi <= COPY_MAX_NO_TWIN:
            return "copies", (f"ΔE {de:.3f} (CI up to {hi:.3f}) ≤ {COPY_MAX_NO_TWIN} "
                              "(no twin control: copying this teacher and the map any model learns are not separated)")
        return "partial", f"ΔE {de:.3f} between {COPY_MAX_NO_TWIN} and {REMAP_MIN} (no twin control)"
    level = twin if twin >= res else min(tbound, res if not math.isinf(res) else tbound)
    cross = r["delta_e_cross"]
    if hi < level and de < level / SAME_MAP_FACTOR and (cross is None or de < cross):
        return "copies", (f"ΔE(S,T) {de:.3f} (CI up to {hi:.3f}) is under half of what an independent teacher "
                          f"reads, ΔE(T′,T) {level:.3f}; ΔE(S,T′) = {_f(cross)}")
    if de <= SAME_MAP_FACTOR * level:
        return "same_map", (f"ΔE(S,T) {de:.3f} is within {SAME_MAP_FACTOR:g}× of ΔE(T′,T) {level:.3f}: "
                            f"the map any model of this data learns; ΔE(S,T′) = {_f(cross)}")
    return "partial", f"ΔE(S,T) {de:.3f} is above {SAME_MAP_FACTOR:g}× ΔE(T′,T) {level:.3f} and below {REMAP_MIN}"


def _f(x: float | None) -> str:
    return "absent" if x is None else f"{x:.3f}"


# ------------------------------------------------------------------------------ run files

# metrics.csv columns written from a report (docs/architecture.md, runs.METRIC_COLUMNS)
ROW_COLUMNS = ("delta_e", "delta_e_lo", "delta_e_hi", "e_pair", "e_ot", "e_ind", "n_eval", "dim",
               "delta_e_twin", "delta_e_cross", "resolution", "delta_e_valid", "verdict", "verdict_basis")


def report_row(rep: CopyReport) -> dict:
    """The metrics.csv cells of a report (``verdict_basis``: the comparison behind the verdict,
    or the reasons it is invalid)."""
    return {
        "delta_e": rep.delta_e, "delta_e_lo": rep.ci_low, "delta_e_hi": rep.ci_high,
        "e_pair": rep.e_pair, "e_ot": rep.e_ot, "e_ind": rep.e_ind, "n_eval": rep.n, "dim": rep.d,
        "delta_e_twin": rep.delta_e_twin, "delta_e_cross": rep.delta_e_cross, "resolution": rep.resolution,
        "delta_e_valid": int(rep.valid), "verdict": rep.verdict, "verdict_basis": rep.basis,
    }


def twin_control(teacher_path: Any, twin_path: Any, *, name: str | None = None, n: int = STANDARD_EVAL_N,
                 eval_seed: int = 1234) -> dict:
    """ΔE(T′, T) of a toy teacher and its twin (two ``.pt`` files) on the standard evaluation noise
    (``torch.randn(n, d)`` from ``torch.Generator().manual_seed(eval_seed)``, as the pipeline draws
    it), with W₂²(T′, T) and E_pair/E_ind.  What the shipped manifest stores and a test re-measures."""
    _, t, tw = twin_samples(teacher_path, twin_path, n=n, eval_seed=eval_seed)
    pr = _p.pairing_inefficiency(tw, t, seed=0)
    return {"name": name, "delta_e_twin": pr.delta_e, "w2_twin": pr.e_ot, "bound": _bound(tw, t),
            "n": n, "d": int(t.shape[1]), "eval_seed": eval_seed}


def twin_samples(teacher_path: Any, twin_path: Any, *, n: int = STANDARD_EVAL_N, eval_seed: int = 1234):
    """(z, T(z), T′(z)) as float64 numpy arrays on the standard evaluation noise (CPU, 18-step Heun)."""
    import torch

    from dmdcore.config import SamplerConfig
    from dmdcore.toy import ToyTeacher

    teacher = ToyTeacher.load(teacher_path, device="cpu")
    twin = ToyTeacher.load(twin_path, device="cpu")
    if teacher.dim != twin.dim:
        raise ValueError(f"twin: dimension {twin.dim} != teacher dimension {teacher.dim}")
    z = torch.randn(n, teacher.dim, generator=torch.Generator().manual_seed(eval_seed), dtype=torch.float32)
    with torch.no_grad():
        t = teacher.sample(z, SamplerConfig()).double().numpy()
        tw = twin.sample(z, SamplerConfig()).double().numpy()
    return z.double().numpy(), t, tw
