"""The copy verdict (dmdcore.verdict): references, resolution, validity guard, verdict, run files."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dmdcore import verdict as V
from dmdcore.pairing import copy_report, pairing_inefficiency

N = 512


def _mixture(n, d, rng, k=8, spread=0.1):
    c = rng.standard_normal((k, d))
    c *= 2.0 / np.linalg.norm(c, axis=1, keepdims=True)
    lab = rng.integers(0, k, n)
    return c[lab] + spread * rng.standard_normal((n, d)), c, lab


def test_population_formula_matches_the_issue_example():
    # s = t + 0.5 ξ, t ~ N(0, I): (0.25 − W)/(2.25 − W) with W = (√1.25 − 1)² per dimension
    for d in (2, 64):
        assert V.noisy_copy_population(np.ones(d), 0.5) == pytest.approx(0.1056, abs=1e-3)
    eig = np.array([4.0, 1.0, 0.01])
    for target in V.LADDER:
        assert V.noisy_copy_population(eig, V._sigma_for(eig, target)) == pytest.approx(target, rel=1e-6)


@pytest.mark.parametrize("d", [2, 64])
def test_noisy_copy_ladder_and_verdict(d):
    rng = np.random.default_rng(1)
    t = rng.standard_normal((N, d))
    s = t + 0.5 * rng.standard_normal((N, d))
    r = copy_report(s, t, seed=0)
    assert r.valid and r.n == N and r.d == d
    pops = [p for p, _, _ in r.ladder]
    assert pops == list(V.LADDER)
    if d == 2:
        # low d: every rung reads close to its population value, ΔE ≈ 0.106
        assert r.resolution == 0.0
        for pop, meas, _ in r.ladder:
            assert meas == pytest.approx(pop, rel=0.35)
        assert r.delta_e == pytest.approx(0.106, abs=0.03)
        assert r.verdict == "partial"
    else:
        # d = 64: the estimator saturates, every rung (up to 0.25) reads 0, so ΔE ≈ 0 is not a copy
        assert r.delta_e < 0.01 and all(meas < 0.01 for _, meas, _ in r.ladder)
        assert math.isinf(r.resolution)
        assert r.verdict == "unresolved"
        assert r.reference_population["noisy_copy"] == pytest.approx(0.106, abs=0.02)


@pytest.mark.parametrize("d", [2, 64])
def test_within_mode_remap_is_never_a_copy(d):
    rng = np.random.default_rng(2)
    spread = 0.35 if d == 2 else 0.11
    t, c, lab = _mixture(N, d, rng, spread=spread)
    s = c[lab] + spread * rng.standard_normal((N, d))  # same mode, new position
    r = copy_report(s, t, seed=0, centers=c)
    assert r.valid
    pop = r.reference_population["within_mode"]
    if d == 2:
        assert r.delta_e == pytest.approx(pop, abs=0.03)
        assert r.verdict == "partial"
    else:
        # reads far below its population value (≈ 0.17), but above a noisy copy at the same error
        assert pop == pytest.approx(0.17, abs=0.03) and r.delta_e < 0.5 * pop
        assert r.references["within_mode"] < 0.5 * pop
        assert r.delta_e > r.references["noisy_copy"] + V.EXCESS_MIN
        assert r.verdict == "partial"
    assert r.verdict not in ("copies", "same_map")


def test_copy_same_map_and_remap_with_a_twin():
    rng = np.random.default_rng(3)
    t, c, lab = _mixture(N, 2, rng, spread=0.3)
    twin = t + 0.15 * rng.standard_normal(t.shape)  # an independent model: close, not identical
    copy = t + 0.01 * rng.standard_normal(t.shape)
    r = copy_report(copy, t, twin=twin, seed=0)
    assert r.verdict == "copies" and r.delta_e_twin > 2 * r.delta_e and r.delta_e_cross is not None
    r = copy_report(twin, t, twin=twin, seed=0)
    assert r.delta_e == pytest.approx(r.delta_e_twin) and r.verdict == "same_map"
    r = copy_report(t[rng.permutation(N)], t, twin=twin, seed=0)
    assert r.verdict == "remaps" and r.references["permutation"] == pytest.approx(1.0, abs=0.1)


def test_collapsed_student_is_invalid_not_zero():
    rng = np.random.default_rng(4)
    t = rng.standard_normal((N, 8))
    r = copy_report(np.ones((N, 8)), t, seed=0)
    assert r.verdict == "invalid" and not r.valid and r.delta_e is None
    assert any("undefined" in x for x in r.reasons)
    # nearly collapsed: ΔE is a number (≈ 0) but the denominator is degenerate
    r = copy_report(1e-3 * rng.standard_normal((N, 8)) + 5.0, t, seed=0)
    assert r.delta_e is not None and r.verdict == "invalid"
    assert any("degenerate denominator" in x for x in r.reasons)


def test_guard_thresholds():
    rng = np.random.default_rng(5)
    t = rng.standard_normal((N, 2))
    twin = t + 0.1 * rng.standard_normal(t.shape)
    # W₂²(S,T) just under / over W2_RATIO_MAX × W₂²(T′,T): a scaled copy moves W₂² only
    w2_twin = pairing_inefficiency(twin, t).e_ot
    ok = copy_report(t * 1.1, t, twin=twin, seed=0)
    far = copy_report(t * 3.0, t, twin=twin, seed=0)
    assert ok.w2 < V.W2_RATIO_MAX * w2_twin and ok.valid
    assert far.w2 > V.W2_RATIO_MAX * w2_twin and not far.valid
    assert any("distribution not matched" in x for x in far.reasons)
    # CI too wide at tiny n
    small = copy_report(rng.standard_normal((12, 2)), rng.standard_normal((12, 2)), seed=0, bootstrap=200)
    assert not small.valid and any("CI" in x or "bootstrap" in x for x in small.reasons)
    # block approximation: refused as a reading
    blk = copy_report(t + 0.3 * rng.standard_normal(t.shape), t, seed=0, max_exact=200, bootstrap=0)
    assert not blk.valid and any("block approximation" in x for x in blk.reasons)


def test_delta_e_invariant_to_scaling_or_shifting_the_student():
    rng = np.random.default_rng(6)
    t = rng.standard_normal((256, 4))
    s = t + 0.5 * rng.standard_normal(t.shape)
    base = pairing_inefficiency(s, t).delta_e
    assert pairing_inefficiency(3.0 * s + 7.0, t).delta_e == pytest.approx(base, abs=1e-9)


def test_report_row_and_metrics_roundtrip(tmp_path):
    from dmdcore.runs import METRIC_COLUMNS, RunDir

    rng = np.random.default_rng(7)
    t = rng.standard_normal((128, 2))
    r = copy_report(t + 0.2 * rng.standard_normal(t.shape), t, twin=t + 0.1, seed=0, bootstrap=50)
    row = V.report_row(r)
    assert set(row) <= set(METRIC_COLUMNS)
    run = RunDir.create(tmp_path / "r", kind="distill", experiment={})
    run.append_metrics({"step": 0, "phase": "student", **row})
    back = run.read_metrics()[0]
    assert back["n_eval"] == 128 and back["dim"] == 2 and back["verdict"] == r.verdict
    assert back["delta_e_valid"] == int(r.valid) and back["delta_e_twin"] == r.delta_e_twin


def test_old_metrics_without_controls_still_open(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    (run / "metrics.csv").write_text("step,phase,delta_e,delta_e_lo,delta_e_hi\n5,student,0.25,0.2,0.3\n")
    from dmdcore.runs import RunDir

    rows = RunDir(run).read_metrics()
    assert rows == [{"step": 5, "phase": "student", "delta_e": 0.25, "delta_e_lo": 0.2, "delta_e_hi": 0.3}]
