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


def test_sampling_floor_keeps_a_perfect_remapper_readable():
    # A student with exactly T's distribution but its own pairing: a fresh draw S = T(z′) from the
    # same distribution, independent of z. Against a twin that shares T's noise (T′ ≈ T + tiny
    # error) alone, W₂²(S,T) is far above W₂²(T′,T) and the twin-only guard calls it "distribution
    # not matched" -- a guard only a copier can pass. With the sampling floor W₂²(T(z), T(z′))
    # measured on the teacher's own independent batch, the remapper is readable and remaps.
    rng = np.random.default_rng(11)
    t, c, lab = _mixture(N, 2, rng, spread=0.3)
    twin = t + 0.02 * rng.standard_normal(t.shape)
    # S and T(z′): fresh draws from the same mixture (same centres), independent of T's batch
    student = c[np.random.default_rng(12).integers(0, 8, N)] + 0.3 * np.random.default_rng(14).standard_normal((N, 2))
    indep = c[np.random.default_rng(15).integers(0, 8, N)] + 0.3 * np.random.default_rng(16).standard_normal((N, 2))
    twin_only = copy_report(student, t, twin=twin, seed=0)
    assert not twin_only.valid and any("distribution not matched" in x for x in twin_only.reasons)
    both = copy_report(student, t, twin=twin, seed=0, indep=indep)
    floor = pairing_inefficiency(indep, t).e_ot
    assert both.w2 <= V.W2_FLOOR_RATIO_MAX * floor
    assert both.valid and both.verdict == "remaps", both.reasons
    controls = V.copy_controls(t, twin=twin, seed=0, indep=indep)
    assert controls.w2_sampling_floor == pytest.approx(floor)
    assert controls.w2_floor == pytest.approx(max(floor, controls.twin.e_ot))
    # ... and a student genuinely off the distribution still fails with the floor measured
    far = copy_report(student * 3.0, t, twin=twin, seed=0, indep=indep)
    assert not far.valid and any("sampling floor" in x for x in far.reasons)


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


def _shipped_pairs():
    from dmdcore.checkpoints import read_manifest
    from dmdcore.pipeline import checkpoints_dir

    entries = read_manifest(checkpoints_dir() / "manifest.json")["entries"]
    twins = {e["twin_of"]: e for e in entries if e.get("role") == "twin"}
    return [(e, twins.get(e["name"])) for e in entries if e.get("kind") == "toy" and e.get("role") == "teacher"]


def test_every_shipped_teacher_ships_a_twin_with_its_delta_e_remeasured():
    from dmdcore.pipeline import checkpoints_dir

    pairs = _shipped_pairs()
    assert {t["name"] for t, _ in pairs} == {"8gaussians", "moons", "mixture-d8", "mixture-d32", "mixture-d128",
                                             "fm-8gaussians", "otcfm-8gaussians"}
    for teacher, twin in pairs:
        assert twin is not None, f"{teacher['name']}: no twin in the manifest"
        stored = teacher["twin"]
        assert stored["name"] == twin["name"] and twin["config"]["teacher"]["seed"] != teacher["config"]["teacher"]["seed"]
        assert twin["config"]["data"] == teacher["config"]["data"]
        again = V.twin_control(checkpoints_dir() / teacher["file"], checkpoints_dir() / twin["file"], name=twin["name"],
                               n=stored["n"], eval_seed=stored["eval_seed"])
        assert again["delta_e_twin"] == pytest.approx(stored["delta_e_twin"], abs=1e-6), teacher["name"]
        assert again["w2_twin"] == pytest.approx(stored["w2_twin"], rel=1e-6), teacher["name"]


@pytest.mark.parametrize("name", ["8gaussians", "mixture-d32"])
def test_identity_student_is_not_a_copy_of_a_shipped_teacher(name):
    from dmdcore.pipeline import checkpoints_dir

    teacher, twin = next(p for p in _shipped_pairs() if p[0]["name"] == name)
    z, t, tw = V.twin_samples(checkpoints_dir() / teacher["file"], checkpoints_dir() / twin["file"], n=512)
    r = copy_report(z, t, twin=tw, seed=0)
    # S(z) = z reads ΔE ≈ 0 (the teacher's ODE map is already an OT map on the batch) ...
    assert r.delta_e < 0.02
    # ... but it is not a copy: it has not matched the teacher's distribution
    assert r.verdict != "copies" and r.verdict == "invalid"


def test_verdict_text_for_old_and_new_rows():
    from dmdcore import verdict_text as vt

    old = {"step": 5, "phase": "student", "delta_e": 0.25, "delta_e_lo": 0.2, "delta_e_hi": 0.3}
    assert "n = unknown" in vt.headline(old) and "controls absent" in vt.verdict_label(old)
    assert any("controls absent" in x for x in vt.control_lines(old))
    new = {**old, "n_eval": 1024, "dim": 64, "verdict": "partial", "delta_e_valid": 1, "resolution": math.inf,
           "delta_e_twin": None, "copy_rate": 0.98, "retrieval": 0.9}
    assert "n = 1024 · d = 64" in vt.headline(new) and vt.verdict_label(new) == "partially remaps"
    lines = vt.control_lines(new)
    assert "independent teacher: absent" in lines[0] and "even a remapping with population ΔE 0.25 reads as 0" in lines[1]
    assert vt.verdict_label({**new, "verdict": "copies"}).startswith("copies (no twin")
    comp = vt.companion_lines(new, n_modes=8)
    assert comp[0] == "copy rate 0.980 (chance 0.125 with 8 equal modes)"
    assert "chance 0.0010" in comp[1] and "within the mode" in comp[2]  # high copy rate, ΔE not small
    # a sweep cell's row carries the K its run scored the copy rate on: the chance level is a number
    assert vt.companion_lines({**new, "copy_k": 8})[0] == comp[0]
    assert vt.companion_lines(new)[0] == "copy rate 0.980 (chance 1/K for K equal modes)"  # K unknown: said so


def test_sweep_summary_refuses_to_pool_and_drops_unreadable_cells():
    import pandas as pd

    from dmdcore import sweep as sw

    base = dict(status="finished", message="", step=10, wall_s=1.0, run_dir="x", delta_e_lo=None, delta_e_hi=None)
    rows = [
        {**base, "cell": "a", "seed": 0, "n_eval": 1024, "dim": 2, "delta_e": 0.30, "verdict": "partial", "resolution": 0.0},
        {**base, "cell": "b", "seed": 1, "n_eval": 1024, "dim": 2, "delta_e": 0.34, "verdict": "partial", "resolution": 0.0},
        {**base, "cell": "c", "seed": 2, "n_eval": 256, "dim": 2, "delta_e": 0.10, "verdict": "partial", "resolution": 0.05},
        {**base, "cell": "d", "seed": 3, "n_eval": 1024, "dim": 2, "delta_e": 0.00, "verdict": "invalid", "resolution": 0.0},
        {**base, "cell": "e", "seed": 4, "n_eval": 1024, "dim": 2, "delta_e": 0.01, "verdict": "unresolved",
         "resolution": math.inf},
    ]
    text = sw.summarize(pd.DataFrame(rows), ["seed"])
    assert "2 cell(s) left out" in text and "d (ΔE 0.000, not meaningful yet)" in text and "below its resolution > 0.25" in text
    assert "measured at different n" in text
    assert "[n = 256] 1 of 5 cells finished with a readable ΔE" in text
    assert "[n = 1024] 2 of 5 cells finished with a readable ΔE; ΔE ranges from 0.300 to 0.340" in text


def test_cli_distill_and_runs_show_print_the_verdict(tmp_path, capsys):
    from dmdcore.cli import main
    from dmdcore.runs import RunDir

    out = tmp_path / "s"
    assert main(["distill", "--teacher", "8gaussians", "--init", "random", "--quick", "--steps", "2",
                 "--eval-every", "2", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "copy verdict (last student evaluation):" in printed and "verdict: ΔE not meaningful yet" in printed
    assert "independent teacher: ΔE(T′,T) = " in printed and "n = 256 · d = 2" in printed
    rows = [r for r in RunDir(out).read_metrics() if r["phase"] == "student"]
    assert rows[0]["step"] == 0 and all(r["verdict"] == "invalid" and r["delta_e_valid"] == 0 for r in rows)
    assert all(r["delta_e_twin"] is not None and r["n_eval"] == 256 and r["dim"] == 2 for r in rows)
    assert main(["runs", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "verdict=invalid" in shown and "degenerate denominator" in shown


def test_twin_trained_in_the_teacher_phase_and_opt_out(tmp_path):
    from dmdcore.config import DataConfig, DistillConfig, EvalConfig, ExperimentConfig, TeacherConfig
    from dmdcore.pipeline import Experiment, load_teacher

    cfg = ExperimentConfig(data=DataConfig(n_samples=500), teacher=TeacherConfig(width=16, depth=1, steps=4, batch=64),
                           distill=DistillConfig(steps=1, batch=16), eval=EvalConfig(every=4, n=64, bootstrap=0))
    exp = Experiment(cfg, run_dir=tmp_path / "t", device="cpu", phases=("teacher",))
    exp.run()
    assert (tmp_path / "t" / "twin.pt").is_file() and exp.twin.teacher_config.seed == cfg.teacher.seed + 1
    assert load_teacher(tmp_path / "t").twin is not None  # a later distillation finds the twin
    off = Experiment(cfg.replace(teacher=cfg.teacher.replace(twin=False)), device="cpu")
    off.run()
    assert off.twin is None and off.metrics[-1]["delta_e_twin"] is None and off.metrics[-1]["n_eval"] == 64


def test_disjoint_half_twin_trains_on_the_other_half(tmp_path, monkeypatch):
    """twin_data="disjoint": teacher and twin are trained on two disjoint halves covering the data."""
    from dmdcore.config import DataConfig, DistillConfig, EvalConfig, ExperimentConfig, TeacherConfig
    from dmdcore.pipeline import Experiment
    from dmdcore.teachers import training
    from dmdcore.twins import split_halves

    seen = []
    real = training.make_teacher_trainer

    def spy(cfg, data, *a, **kw):
        seen.append((cfg.seed, data.clone()))
        return real(cfg, data, *a, **kw)

    monkeypatch.setattr(training, "make_teacher_trainer", spy)
    tc = TeacherConfig(width=16, depth=1, steps=2, batch=64, twin_data="disjoint", seed=3)
    cfg = ExperimentConfig(data=DataConfig(n_samples=501), teacher=tc, distill=DistillConfig(steps=1, batch=16),
                           eval=EvalConfig(every=2, n=64, bootstrap=0))
    exp = Experiment(cfg, run_dir=tmp_path / "t", device="cpu", phases=("teacher",))
    exp.run()
    (s0, a), (s1, b) = seen
    assert (s0, s1) == (3, 4) and a.shape[0] == 251 and b.shape[0] == 250
    rows = {tuple(r) for r in a.tolist()} | {tuple(r) for r in b.tolist()}
    full = {tuple(r) for r in exp.dataset.x.tolist()}
    assert not ({tuple(r) for r in a.tolist()} & {tuple(r) for r in b.tolist()}) and rows == full
    ia, ib = split_halves(501, 3)
    assert np.array_equal(np.sort(np.concatenate([ia, ib])), np.arange(501))
    assert np.array_equal(split_halves(501, 3)[0], ia)  # seeded: the same halves every time
    with pytest.raises(ValueError, match="twin_data"):
        TeacherConfig(twin_data="half")
    with pytest.raises(ValueError, match="twin_data"):
        split_halves(3, 0)
    # the default stays out of config.json (older runs' files unchanged)
    assert "twin_data" not in TeacherConfig().to_dict() and TeacherConfig(twin_data="disjoint").to_dict()["twin_data"] == "disjoint"
