"""Tests for dmdcore.pairing: closed forms, independent computations and bad input."""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from dmdcore import pairing as P


def _pair(n: int, d: int, seed: int, noise: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Teacher samples from a 3-mode mixture and a student that is a noisy, partly remapped copy."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((3, d)) * 3.0
    t = means[rng.integers(0, 3, n)] + rng.standard_normal((n, d))
    s = 1.1 * t + noise * rng.standard_normal((n, d)) + 0.3
    return s, t


def _brute(s: np.ndarray, t: np.ndarray) -> tuple[float, float, float]:
    """E_pair, E_OT, E_ind computed independently: cdist + Hungarian algorithm + n^2 mean."""
    c = cdist(s, t, "sqeuclidean")
    r, col = linear_sum_assignment(c)
    return float(np.mean(np.diag(c))), float(c[r, col].mean()), float(c.mean())


# ---------------------------------------------------------------------------------------------
# ΔE: closed forms and reference values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 16])
def test_identity_gives_zero(d):
    _, t = _pair(300, d, seed=d)
    res = P.pairing_inefficiency(t, t.copy(), bootstrap=50)
    assert abs(res.delta_e) <= 1e-12
    assert res.e_pair == 0.0 and abs(res.e_ot) <= 1e-12
    assert abs(res.ci_low) <= 1e-12 and abs(res.ci_high) <= 1e-12


def test_identity_torch_images():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(64, 3, 4, 4, generator=g)
    res = P.pairing_inefficiency(t, t.clone())
    assert abs(res.delta_e) <= 1e-12 and res.n == 64


def test_permuted_noise_gives_one_within_ci():
    rng = np.random.default_rng(1)
    t = rng.standard_normal((1000, 4))
    s = t[rng.permutation(1000)]
    res = P.pairing_inefficiency(s, t, bootstrap=200, seed=3)
    assert res.e_ot == pytest.approx(0.0, abs=1e-12)  # same point set: the OT cost is zero
    assert res.ci_low <= 1.0 <= res.ci_high
    assert res.ci_low <= res.delta_e <= res.ci_high
    assert 0.02 < res.ci_high - res.ci_low < 0.4


def test_matches_bruteforce_and_lsa():
    for seed in range(4):
        s, t = _pair(60, 3, seed)
        e_pair, e_ot, e_ind = _brute(s, t)
        res = P.pairing_inefficiency(s, t)
        assert res.e_pair == pytest.approx(e_pair, rel=1e-12)
        assert res.e_ot == pytest.approx(e_ot, rel=1e-10)
        assert res.e_ind == pytest.approx(e_ind, rel=1e-10)
        assert res.delta_e == pytest.approx((e_pair - e_ot) / (e_ind - e_ot), rel=1e-9)


def test_e_ind_closed_form_unequal_sizes():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((70, 5)) + 2.0
    y = rng.standard_normal((40, 5)) * 3.0
    assert P._independent_cost(x, y) == pytest.approx(cdist(x, y, "sqeuclidean").mean(), rel=1e-12)


def test_solvers_agree():
    s, t = _pair(400, 2, seed=7)
    a = P.pairing_inefficiency(s, t, solver="emd")
    b = P.pairing_inefficiency(s, t, solver="lsa")
    c = P.pairing_inefficiency(s, t, solver="auto")
    e = P.pairing_inefficiency(s, t, solver="sparse")
    assert a.e_ot == pytest.approx(b.e_ot, rel=1e-12)
    assert c.e_ot == pytest.approx(b.e_ot, rel=1e-12)
    assert e.e_ot == pytest.approx(b.e_ot, rel=1e-12)
    assert a.delta_e == pytest.approx(b.delta_e, rel=1e-10)


@pytest.mark.parametrize("d, shift", [(2, 0.0), (2, 1.5), (16, 0.0), (16, 2.0), (300, 0.0)])
def test_certified_sparse_solver_matches_lsa(d, shift):
    # Independent sets (hard: few OT partners among nearest neighbours) and shifted sets
    # (forces refinement rounds); the certified sparse network simplex must find the optimum.
    rng = np.random.default_rng(d)
    x = rng.standard_normal((300, d))
    y = 1.3 * rng.standard_normal((300, d)) + shift
    x, y = P._center(x, y)
    c = P._cost_matrix(x, y)
    r, col = linear_sum_assignment(c)
    ref = c[r, col].sum()
    perm = P._assignment(c, "sparse", d)
    assert np.unique(perm).size == 300
    assert c[np.arange(300), perm].sum() == pytest.approx(ref, rel=1e-12)


def test_certified_sparse_solver_fallback(monkeypatch):
    # With no refinement round allowed, an uncertified sparse solution must fall back to the
    # dense network simplex (warm-started) and still be optimal.
    monkeypatch.setattr(P, "_SPARSE_ROUNDS", 0)
    monkeypatch.setattr(P, "_SPARSE_K", 1)
    monkeypatch.setattr(P, "_SPARSE_K_LOW_D", 1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((250, 2))
    y = rng.standard_normal((250, 2)) + 2.0
    c = P._cost_matrix(*P._center(x, y))
    calls = []
    real = P._emd_plan
    monkeypatch.setattr(P, "_emd_plan", lambda cost, **kw: calls.append(type(cost).__name__) or real(cost, **kw))
    perm = P._assignment(c, "sparse", 2)
    r, col = linear_sum_assignment(c)
    assert c[np.arange(250), perm].sum() == pytest.approx(c[r, col].sum(), rel=1e-12)
    assert calls[-1] == "ndarray" and len(calls) == 2


def test_certified_sparse_solver_low_d_early_fallback(monkeypatch):
    # d < 4 and a global shift: nearest-neighbour candidates are hopeless, so after the first
    # sparse solve the solver goes straight to the dense network simplex — still optimal.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 2))
    y = rng.standard_normal((400, 2)) * 0.5 + np.array([6.0, 0.0])
    c = P._cost_matrix(*P._center(x, y))
    calls = []
    real = P._emd_plan
    monkeypatch.setattr(P, "_emd_plan", lambda cost, **kw: calls.append(type(cost).__name__) or real(cost, **kw))
    perm = P._assignment(c, "auto", 2)
    r, col = linear_sum_assignment(c)
    assert c[np.arange(400), perm].sum() == pytest.approx(c[r, col].sum(), rel=1e-12)
    assert calls == ["coo_matrix", "ndarray"]


@pytest.mark.parametrize(
    "transform",
    ["scale_small", "scale_large", "translate", "rotate", "permute"],
)
def test_invariances(transform):
    d = 6
    s, t = _pair(300, d, seed=11)
    base = P.pairing_inefficiency(s, t)
    rng = np.random.default_rng(12)
    if transform == "scale_small":
        s2, t2 = 1e-3 * s, 1e-3 * t
    elif transform == "scale_large":
        s2, t2 = 1e3 * s, 1e3 * t
    elif transform == "translate":
        shift = rng.standard_normal(d) * 10.0
        s2, t2 = s + shift, t + shift
    elif transform == "rotate":
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        s2, t2 = s @ q, t @ q
    else:
        perm = rng.permutation(300)
        s2, t2 = s[perm], t[perm]
    res = P.pairing_inefficiency(s2, t2)
    assert res.delta_e == pytest.approx(base.delta_e, rel=1e-9)


def test_anti_paired_closed_form():
    # Symmetric teacher set {x, -x}; the student sends every noise to the opposite point:
    # E_OT = 0 (same set), E_pair = 4 mean||t||^2, E_ind = 2 mean||t||^2 (mean 0) => ΔE = 2.
    rng = np.random.default_rng(2)
    x = rng.standard_normal((150, 3))
    t = np.concatenate([x, -x])
    res = P.pairing_inefficiency(-t, t)
    assert res.delta_e == pytest.approx(2.0, rel=1e-12)
    assert res.delta_e > 1.0


def test_partial_copy_expected_value():
    # The student copies the teacher except on a random subset of m of the n noises, which it
    # permutes uniformly among themselves.  For fixed teacher points,
    # E[E_pair] = (m - 1)/(n - 1) * E_ind and E_OT = 0, so E[ΔE] = (m - 1)/(n - 1).
    n, m, reps = 200, 100, 300
    rng = np.random.default_rng(4)
    t = rng.standard_normal((n, 3))
    vals = []
    for _ in range(reps):
        sub = rng.choice(n, m, replace=False)
        idx = np.arange(n)
        idx[sub] = sub[rng.permutation(m)]
        vals.append(P.pairing_inefficiency(t[idx], t).delta_e)
    vals = np.asarray(vals)
    expected = (m - 1) / (n - 1)
    assert abs(vals.mean() - expected) < 4.0 * vals.std(ddof=1) / math.sqrt(reps)
    assert abs(vals.mean() - expected) < 0.02


def test_bootstrap_coverage():
    # Coverage of the 90 % percentile CI in a simulation where the true value is known:
    # student = teacher with the noise indices permuted uniformly at random => E[ΔE] = 1
    # exactly (given the teacher points).  Nominal 0.90; accept [0.82, 0.97] (binomial sd 0.021
    # at 200 replicates).
    rng = np.random.default_rng(8)
    reps, n = 200, 150
    covered = 0
    for r in range(reps):
        t = rng.standard_normal((n, 2)) * np.array([1.0, 3.0])
        s = t[rng.permutation(n)]
        res = P.pairing_inefficiency(s, t, bootstrap=200, seed=r, level=0.90)
        covered += res.ci_low <= 1.0 <= res.ci_high
    coverage = covered / reps
    assert 0.82 <= coverage <= 0.97, coverage


def test_bootstrap_coverage_noisy_copy():
    # A case with E_OT > 0 and an unknown closed form: student = teacher + N(0, 1) jitter.  The
    # true value is E[ΔE] at this n, estimated by the mean over the 200 replicates (its Monte
    # Carlo error, sd/sqrt(200) ~ 0.0007, is small next to the ~0.03 interval width).  The CI is
    # conditional on the solved matching; nominal 0.90, accept [0.82, 0.97] (measured 0.92).
    rng = np.random.default_rng(5)
    reps, n = 200, 150
    results = []
    for r in range(reps):
        t = rng.standard_normal((n, 2)) * np.array([1.0, 3.0])
        s = t + rng.standard_normal((n, 2))
        results.append(P.pairing_inefficiency(s, t, bootstrap=200, seed=r, level=0.90))
    truth = np.mean([res.delta_e for res in results])
    assert 0.03 < truth < 0.15
    coverage = np.mean([res.ci_low <= truth <= res.ci_high for res in results])
    assert 0.82 <= coverage <= 0.97, coverage


def test_bootstrap_reproducible_and_seeded():
    s, t = _pair(200, 3, seed=9)
    a = P.pairing_inefficiency(s, t, bootstrap=100, seed=1)
    b = P.pairing_inefficiency(s, t, bootstrap=100, seed=1)
    c = P.pairing_inefficiency(s, t, bootstrap=100, seed=2)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
    assert a.ci_low <= a.delta_e <= a.ci_high
    assert a.to_dict()["ci_level"] == 0.95 and a.to_dict()["bootstrap"] == 100


@pytest.mark.parametrize("d, permuted", [(2, False), (16, False), (16, True), (64, True)])
def test_block_approximation_bias(d, permuted):
    # n > max_exact: E_OT from random disjoint blocks is a feasible matching of the full
    # problem, so E_OT_block >= E_OT and, since ΔE - 1 = (E_pair - E_ind)/(E_ind - E_OT), the
    # approximation can only push ΔE away from 1.  Measured |bias| for n = 2048 in 4 blocks of
    # 512 is <= 0.003 on these cases; docs/metrics.md states the bound asserted here (0.01).
    s, t = _pair(2048, d, d, noise=1.0)
    if permuted:
        s = t[np.random.default_rng(0).permutation(2048)]
    exact = P.pairing_inefficiency(s, t, max_exact=4096)
    approx = P.pairing_inefficiency(s, t, max_exact=512, seed=1)
    assert exact.exact and exact.n_blocks == 1 and not approx.exact and approx.n_blocks == 4
    assert approx.e_ot >= exact.e_ot - 1e-12
    assert abs(approx.delta_e - 1.0) >= abs(exact.delta_e - 1.0) - 1e-12
    assert (approx.delta_e - 1.0) * (exact.delta_e - 1.0) >= 0.0
    assert abs(approx.delta_e - exact.delta_e) < 0.01, (exact.delta_e, approx.delta_e)
    assert approx.e_pair == exact.e_pair and approx.e_ind == exact.e_ind


# ---------------------------------------------------------------------------------------------
# Companion metrics
# ---------------------------------------------------------------------------------------------


def test_wasserstein_exact_equal_and_unequal_sizes():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((80, 3))
    y = rng.standard_normal((80, 3)) * 2.0 + 1.0
    c = cdist(x, y, "sqeuclidean")
    r, col = linear_sum_assignment(c)
    assert P.wasserstein2_squared(x, y) == pytest.approx(c[r, col].mean(), rel=1e-10)
    y2 = y[:50]
    ref = ot.emd2(np.full(80, 1 / 80), np.full(50, 1 / 50), ot.dist(x, y2))
    assert P.wasserstein2_squared(x, y2) == pytest.approx(ref, rel=1e-9)
    assert P.wasserstein2_squared(x, x[::-1]) == pytest.approx(0.0, abs=1e-12)


def test_wasserstein_1d_sorting_closed_form():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal(300), rng.exponential(size=300)
    assert P.wasserstein2_squared(x, y) == pytest.approx(np.mean((np.sort(x) - np.sort(y)) ** 2), rel=1e-10)


def test_sliced_wasserstein():
    rng = np.random.default_rng(6)
    # d = 1: every direction is ±1, so SW₂ is the exact W₂ (also for unequal n).
    x, y = rng.standard_normal(200), rng.standard_normal(130) * 2.0
    ref = ot.emd2(np.full(200, 1 / 200), np.full(130, 1 / 130), ot.dist(x[:, None], y[:, None]))
    assert P.sliced_wasserstein2(x, y, n_projections=3) == pytest.approx(math.sqrt(ref), rel=1e-9)
    # Translation by m: SW₂² = E_θ <θ, m>² = ||m||² / d for θ uniform on the sphere.
    d = 5
    a = rng.standard_normal((500, d))
    m = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    sw = P.sliced_wasserstein2(a, a + m, n_projections=20000, seed=1)
    assert sw**2 == pytest.approx(m @ m / d, rel=0.03)
    assert P.sliced_wasserstein2(a, a, seed=2) == 0.0


def test_transport_inefficiency():
    rng = np.random.default_rng(7)
    z = rng.standard_normal(400)
    # In 1-D every monotone map is the OT map: η = 0.
    assert P.transport_inefficiency(z, z**3 + 2 * z) == pytest.approx(0.0, abs=1e-12)
    # Anti-monotone map: η = E(M(z) - z)^2 / W₂²(sorted) - 1, computed independently.
    mz = -(z**3)
    w2 = np.mean((np.sort(z) - np.sort(mz)) ** 2)
    assert P.transport_inefficiency(z, mz) == pytest.approx(np.mean((mz - z) ** 2) / w2 - 1.0, rel=1e-10)
    with pytest.raises(ValueError, match="W₂"):
        P.transport_inefficiency(z, z[rng.permutation(400)])


def test_pair_retrieval_accuracy():
    rng = np.random.default_rng(8)
    t = rng.standard_normal((300, 4))
    assert P.pair_retrieval_accuracy(t, t) == 1.0
    derange = np.roll(np.arange(300), 1)
    assert P.pair_retrieval_accuracy(t[derange], t) == 0.0
    s = t + 0.4 * rng.standard_normal(t.shape)
    ref = np.mean(cdist(s, t, "sqeuclidean").argmin(axis=1) == np.arange(300))
    assert P.pair_retrieval_accuracy(s, t, chunk=7) == pytest.approx(ref)


def test_mode_transition_given_centers():
    rng = np.random.default_rng(9)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = np.repeat([0, 1, 2], 100)
    t = centers[labels] + 0.1 * rng.standard_normal((300, 2))
    s_labels = labels.copy()
    s_labels[:40] = 1  # 40 of teacher mode 0's noises go to mode 1
    s_labels[200:210] = 0  # 10 of mode 2's go to mode 0
    s = centers[s_labels] + 0.1 * rng.standard_normal((300, 2))
    mt = P.mode_transition(s, t, centers=centers, n_modes=7)  # centers win over n_modes
    expected = np.array([[0.6, 0.4, 0.0], [0.0, 1.0, 0.0], [0.1, 0.0, 0.9]])
    np.testing.assert_allclose(mt.matrix, expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(mt.matrix.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert mt.copy_rate == pytest.approx(250 / 300)
    assert mt.teacher_counts.tolist() == [100, 100, 100]
    assert mt.to_dict()["centers"] == centers.tolist()


def test_mode_transition_kmeans_identity_and_empty_rows():
    s, t = _pair(400, 3, seed=10)
    mt = P.mode_transition(t, t, n_modes=3, seed=0)
    assert mt.copy_rate == 1.0
    np.testing.assert_allclose(mt.matrix, np.eye(3), atol=0)
    mt2 = P.mode_transition(s, t, n_modes=3, seed=0)
    np.testing.assert_allclose(mt2.matrix.sum(axis=1), 1.0, atol=1e-12)
    assert mt2.centers.shape == (3, 3)
    # A centre with no teacher sample gives an all-zero row (documented), never NaN.
    far = np.vstack([mt.centers, np.full((1, 3), 1e6)])
    mt3 = P.mode_transition(s, t, centers=far)
    assert np.isfinite(mt3.matrix).all() and mt3.matrix[3].sum() == 0.0 and mt3.teacher_counts[3] == 0


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

_GOOD = np.random.default_rng(0).standard_normal((20, 3))


@pytest.mark.parametrize(
    "student, teacher, match",
    [
        (_GOOD, _GOOD[:10], "different n"),
        (_GOOD[:1], _GOOD[:1], "at least 2"),
        (np.where(np.eye(20, 3) > 0, np.nan, _GOOD), _GOOD, "NaN/Inf"),
        (_GOOD, np.where(np.eye(20, 3) > 0, np.inf, _GOOD), "NaN/Inf"),
        (np.full((20, 3), "a"), _GOOD, "not a real numeric"),
        (_GOOD.astype(complex), _GOOD, "not a real numeric"),
        (torch.ones(20, 3, dtype=torch.bool), _GOOD, "not a real numeric"),
        (_GOOD, _GOOD[:, :2], "mismatched feature sizes"),
        (np.ones((20, 3)), _GOOD, "zero spread"),
        (_GOOD, np.zeros((20, 3)), "zero spread"),
        (np.float64(3.0), _GOOD, "scalar"),
        # centred sets orthogonal: every pairing has the same cost, E_ind == E_OT
        (np.array([[1.0, 0], [-1, 0], [2, 0], [-2, 0]]), np.array([[0, 1.0], [0, -1], [0, 3], [0, -3]]),
         "orthogonal"),
    ],
)
def test_bad_input_raises(student, teacher, match):
    with pytest.raises(ValueError, match=match):
        P.pairing_inefficiency(student, teacher)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bootstrap": -1}, "bootstrap"),
        ({"bootstrap": 3}, "bootstrap"),
        ({"bootstrap": 1.5}, "bootstrap"),
        ({"max_exact": 1}, "max_exact"),
        ({"seed": -2}, "seed"),
        ({"level": 1.0}, "level"),
        ({"solver": "sinkhorn"}, "solver"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        P.pairing_inefficiency(_GOOD, _GOOD[::-1], **kwargs)


def test_degenerate_bootstrap_raises_not_nan():
    # n = 2, identity student: a resample that picks the same pair twice has
    # E_ind* = E_OT* = 0, so ΔE* is undefined; that must be an error, not a NaN.
    x = np.array([[0.0], [1.0]])
    assert P.pairing_inefficiency(x, x[::-1]).delta_e == pytest.approx(2.0)
    assert P.pairing_inefficiency(x, x.copy()).delta_e == 0.0
    with pytest.raises(ValueError, match="bootstrap: .* resample"):
        P.pairing_inefficiency(x, x.copy(), bootstrap=10)


def test_huge_finite_input_is_refused_by_magnitude_not_as_nan():
    # Finite values whose squared distances overflow float64: every function says so, by name,
    # instead of returning NaN / a wrong number or failing inside the OT solver.
    x = np.array([[1e308], [1.5e308], [-1e308]])
    fns = (P.pairing_inefficiency, P.wasserstein2_squared, P.sliced_wasserstein2,
           P.transport_inefficiency, P.pair_retrieval_accuracy)
    for fn in fns:
        with pytest.raises(ValueError, match=r"largest \|value\| 1.5e\+308 exceeds 1e\+150"):
            fn(x, x[::-1])
    # just below the limit still works, and ΔE is the same as for the rescaled data
    y = np.random.default_rng(1).standard_normal((30, 2))
    big = P.pairing_inefficiency(y * 1e149, y[::-1] * 1e149).delta_e
    assert big == pytest.approx(P.pairing_inefficiency(y, y[::-1]).delta_e, rel=1e-9)


def test_companions_reject_bad_input():
    nan = _GOOD.copy()
    nan[0, 0] = np.nan
    for fn in (P.wasserstein2_squared, P.sliced_wasserstein2, P.transport_inefficiency, P.pair_retrieval_accuracy):
        with pytest.raises(ValueError, match="NaN"):
            fn(nan, _GOOD)
        with pytest.raises(ValueError, match="mismatched feature sizes"):
            fn(_GOOD, _GOOD[:, :1])
    with pytest.raises(ValueError, match="centers/n_modes"):
        P.mode_transition(_GOOD, _GOOD)
    with pytest.raises(ValueError, match="n_modes"):
        P.mode_transition(_GOOD, _GOOD, n_modes=21)
    with pytest.raises(ValueError, match="centers"):
        P.mode_transition(_GOOD, _GOOD, centers=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="n_projections"):
        P.sliced_wasserstein2(_GOOD, _GOOD, n_projections=0)


def test_solver_not_optimal_raises(monkeypatch):
    def stopped_emd(a, b, m, **kwargs):
        return np.zeros((len(a), len(b))), {"cost": 0.0, "result_code": 3, "warning": "numItermax reached before optimality"}

    monkeypatch.setattr(P.ot, "emd", stopped_emd)
    s, t = _pair(30, 2, seed=0)
    with pytest.raises(P.OTSolverError, match="numItermax"):
        P.pairing_inefficiency(s, t, solver="emd")


def test_metric_help_covers_metrics_csv_columns():
    for key in ("delta_e", "e_pair", "e_ot", "e_ind", "w2", "w2_data", "eta_teacher", "eta_student", "copy_rate", "retrieval"):
        assert isinstance(P.METRIC_HELP[key], str) and len(P.METRIC_HELP[key]) > 20
    assert "Li et al. 2026" in P.METRIC_HELP["delta_e"]


def test_unsigned_torch_integers_and_numpy_scalar_level_are_accepted():
    x = torch.arange(40, dtype=torch.int64).reshape(20, 2)
    ref = P.pairing_inefficiency(x, x.flip(0)).delta_e
    for name in ("uint16", "uint32", "uint64"):
        if hasattr(torch, name):  # torch >= 2.3 has them
            t = x.to(getattr(torch, name))
            assert P.pairing_inefficiency(t, t.flip(0)).delta_e == ref
    a = P.pairing_inefficiency(_GOOD, _GOOD[::-1], bootstrap=20, level=np.float32(0.9))
    b = P.pairing_inefficiency(_GOOD, _GOOD[::-1], bootstrap=20, level=0.9)
    assert (a.ci_low, a.ci_high) == pytest.approx((b.ci_low, b.ci_high))
    with pytest.raises(ValueError, match="level"):
        P.pairing_inefficiency(_GOOD, _GOOD[::-1], bootstrap=20, level=np.bool_(True))


def test_gaussian_ot_map_moves_candidates_to_the_exact_partners(monkeypatch):
    """d = 2, a large-noise copy (its OT map contracts): with the Gaussian OT pre-alignment the
    first sparse solve is already certified optimal, and it matches scipy's assignment."""
    rng = np.random.default_rng(7)
    t = rng.standard_normal((1200, 2)) * np.array([2.0, 0.7])
    x, y = P._center(t + 1.8 * rng.standard_normal(t.shape), t)
    moved = P._gaussian_ot_map(x, y)
    assert np.allclose(moved.mean(0), y.mean(0)) and np.allclose(np.cov(moved.T), np.cov(y.T), rtol=1e-9)
    assert np.array_equal(P._gaussian_ot_map(np.ones((5, 2)), y[:5]), np.ones((5, 2)))
    c = P._cost_matrix(x, y)
    calls = []
    real = P._emd_plan
    monkeypatch.setattr(P, "_emd_plan", lambda cost, **kw: calls.append(type(cost).__name__) or real(cost, **kw))
    perm = P._assignment(c, "sparse", 2, (x, y))
    r, col = linear_sum_assignment(c)
    assert c[np.arange(1200), perm].sum() == pytest.approx(c[r, col].sum(), rel=1e-12)
    assert calls == ["coo_matrix"]


def test_blocked_cost_matrix_matches_the_plain_formula_to_rounding():
    # not bit-identical in general: BLAS may pick a different kernel for a row block than for the
    # whole matrix (seen with a newer numpy); the blocked result must agree to rounding and be
    # the same on every call
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((700, 5)), rng.standard_normal((900, 5))
    plain = np.maximum(-2.0 * (x @ y.T) + P._sq_norms(x)[:, None] + P._sq_norms(y)[None, :], 0.0)
    blocked = P._cost_matrix(x, y)
    assert np.abs(blocked - plain).max() <= 1e-12 * np.abs(plain).max()
    assert np.array_equal(P._cost_matrix(x, y), blocked)


def test_copy_report_is_the_same_on_one_thread_and_on_several():
    import torch

    from dmdcore.verdict import copy_report

    rng = np.random.default_rng(4)
    t = rng.standard_normal((300, 2))
    s = t + 0.3 * rng.standard_normal(t.shape)
    twin = t + 0.1 * rng.standard_normal(t.shape)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = copy_report(s, t, twin=twin, n_modes=4, bootstrap=20).to_dict()
        torch.set_num_threads(2)
        two = copy_report(s, t, twin=twin, n_modes=4, bootstrap=20).to_dict()
    finally:
        torch.set_num_threads(threads)
    assert one == two
