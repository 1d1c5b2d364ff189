"""Sweeps: spec validation, grid expansion, presets, aggregation/summary, and end-to-end runs
(process pool, resume, a failing cell, results table + CSV, the CLI)."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmdcore import sweep as sw
from dmdcore.config import ExperimentConfig

REPO = Path(__file__).resolve().parents[1]

# A tiny but real experiment: mixture data, small nets, a few steps (seconds per cell).
TINY_BASE = {
    "data": {"dataset": "mixture", "n_modes": 4, "n_samples": 500},
    "teacher": {"width": 16, "depth": 2, "emb_dim": 8, "steps": 30, "batch": 64, "ema": 0.9},
    "sampler": {"steps": 4},
    "distill": {"steps": 6, "ratio": 2, "batch": 32, "n_reg_pairs": 16, "reg_batch": 16},
    "eval": {"every": 3, "n": 48, "bootstrap": 10},
}


YAML_TINY = """
name: tiny
base:
  data: {dataset: mixture, n_modes: 4, n_samples: 500}
  teacher: {width: 16, depth: 2, emb_dim: 8, steps: 30, batch: 64, ema: 0.9}
  sampler: {steps: 4}
  distill: {steps: 6, ratio: 2, batch: 32, n_reg_pairs: 16, reg_batch: 16}
  eval: {every: 3, n: 48, bootstrap: 10}
grid:
  data.dim: [2, 3]
  distill.gan: [false, true]
quick: {distill.steps: 4, teacher.steps: 20}
"""


def tiny_spec(**grid) -> dict:
    return {"name": "tiny", "base": TINY_BASE, "grid": grid or {"data.dim": [2, 3]},
            "quick": {"distill.steps": 4, "teacher.steps": 20}}


# ---------------------------------------------------------------------------- spec validation

def test_unknown_grid_key_names_it_and_lists_valid_keys():
    with pytest.raises(sw.SweepSpecError) as e:
        sw.SweepSpec.from_dict(tiny_spec(**{"data.dimm": [2]}))
    msg = str(e.value)
    assert "'data.dimm'" in msg and "data.dim" in msg and "distill.gan" in msg and "seed" in msg


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ({"name": "x", "grid": {}}, "spec.grid"),
        ({"name": "x", "grid": {"data.dim": []}}, "non-empty list"),
        ({"name": "x", "grid": {"data.dim": [2, 2]}}, "repeated"),
        ({"name": "bad name!", "grid": {"seed": [0]}}, "spec.name"),
        ({"name": "x", "grid": {"seed": [0]}, "bogus": 1}, "bogus"),
        ({"name": "x", "grid": {"seed": [0], "data.seed": [1]}}, "seed"),
        ({"name": "x", "grid": {"seed": [0]}, "base": {"teacher": {"widht": 3}}}, "teacher.widht"),
        ({"name": "x", "grid": {"seed": [0]}, "plot": {"x": "data.dim"}}, "spec.plot.x"),
        ({"name": "x", "grid": {"data.dim": {"a": {}}}}, "free label"),
    ],
)
def test_spec_errors(spec, fragment):
    with pytest.raises(sw.SweepSpecError, match=None) as e:
        sw.SweepSpec.from_dict(spec)
    assert fragment in str(e.value)


def test_out_of_range_value_names_cell_and_field():
    # 8gaussians is 2-D only; dim 3 is a config error reported for that cell.
    with pytest.raises(ValueError) as e:
        sw.SweepSpec.from_dict({"name": "x", "grid": {"data.dim": [2, 3]}})
    assert "data.dim=3" in str(e.value) and "DataConfig.dim" in str(e.value)
    with pytest.raises(ValueError, match="TeacherConfig.steps"):
        sw.SweepSpec.from_dict(tiny_spec(**{"teacher.steps": [10, -1]}))


def test_load_spec_json_yaml_preset_and_errors(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps(tiny_spec()))
    assert sw.load_spec(p).n_cells == 2
    # PyYAML is in requirements.txt: a YAML spec loads like the JSON one (its absence is
    # simulated in test_yaml_spec_without_pyyaml_gives_clear_error).
    import yaml  # noqa: F401

    y = tmp_path / "s.yaml"
    y.write_text(YAML_TINY)
    assert sw.load_spec(str(y)).to_dict() == sw.SweepSpec.from_dict(
        {**tiny_spec(), "grid": {"data.dim": [2, 3], "distill.gan": [False, True]}}).to_dict()
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("grid: [unclosed")
    with pytest.raises(sw.SweepSpecError, match="not valid YAML"):
        sw.load_spec(bad_yaml)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(sw.SweepSpecError, match="not valid JSON"):
        sw.load_spec(bad)
    with pytest.raises(sw.SweepSpecError, match="does not exist"):
        sw.load_spec(tmp_path / "missing.json")
    with pytest.raises(sw.SweepSpecError, match="available presets"):
        sw.load_spec("no-such-preset")


# ---------------------------------------------------------------------------- grid expansion

def test_expand_product_order_seed_axis_and_quick():
    spec = sw.SweepSpec.from_dict(tiny_spec(**{"data.dim": [2, 5], "distill.gan": [False, True], "seed": [0, 7]}))
    cells = sw.expand(spec)
    assert len(cells) == spec.n_cells == 8
    assert [c.overrides for c in cells[:3]] == [
        {"data.dim": 2, "distill.gan": False, "seed": 0},
        {"data.dim": 2, "distill.gan": False, "seed": 7},
        {"data.dim": 2, "distill.gan": True, "seed": 0},
    ]
    c = cells[1]
    assert (c.config.data.seed, c.config.teacher.seed, c.config.distill.seed) == (7, 7, 7)
    assert c.config.data.dim == 2 and c.config.teacher.width == 16
    # Teachers are shared between cells that differ only in student settings.
    assert cells[0].teacher_key == cells[2].teacher_key != cells[1].teacher_key
    assert len({c.teacher_key for c in cells}) == 4
    # Keys are deterministic and unique; quick gives different (shorter) configs and keys.
    assert [c.key for c in sw.expand(spec)] == [c.key for c in cells]
    quick = sw.expand(spec, quick=True)
    assert quick[0].config.distill.steps == 4 and cells[0].config.distill.steps == 6
    assert quick[0].key != cells[0].key
    # Full config round-trips through the dataclasses.
    assert ExperimentConfig.from_dict(c.config.to_dict()) == c.config


def test_named_level_axis_sets_linked_fields():
    spec = sw.SweepSpec.from_dict(tiny_spec(loss={"dmd": {}, "gan": {"distill.gan": True},
                                                  "reg": {"distill": {"regression": True}}}))
    cells = sw.expand(spec)
    got = {c.overrides["loss"]: (c.config.distill.gan, c.config.distill.regression) for c in cells}
    assert got == {"dmd": (False, False), "gan": (True, False), "reg": (False, True)}
    assert len({c.teacher_key for c in cells}) == 1
    assert sw.SweepSpec.from_dict(spec.to_dict()) == spec


def test_presets_parse_and_have_full_variants():
    names = sw.list_presets()
    assert {"dimension", "adversarial", "memorization", "convergence", "freedom"} <= set(names)
    dim = sw.load_preset("dimension")
    # the default spans two decades of d with 3 replicates; the full variant the whole 2..256 grid
    assert dim.grid["data.dim"] == [2, 16, 128] and len(dim.grid["distill.seed"]) == 3
    full = sw.load_preset("dimension:full")
    assert "distill.seed" not in full.grid and len(full.grid["seed"]) == 3  # null drops an axis
    assert full.grid["data.dim"] == [2, 4, 8, 16, 32, 64, 128, 256]
    for n in names:
        spec = sw.load_preset(n)
        assert spec.claim and spec.description
        full_spec = sw.load_preset(f"{n}:full")
        assert full_spec.n_cells >= spec.n_cells
        # the full variant trains at least as long as the default (its step caps are not lower)
        base, fb = sw.expand(spec)[0].config, sw.expand(full_spec)[0].config
        assert fb.distill.steps >= base.distill.steps and fb.teacher.steps >= base.teacher.steps
        assert sw.expand(spec, quick=True)


# ---------------------------------------------------------------------------- aggregation / summary

def _table(effect_dim: float, effect_gan: float, seeds=(0, 1, 2), noise=0.01, rng_seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(rng_seed)
    rows = []
    for d in (2, 8, 32, 128):
        for gan in (False, True):
            for s in seeds:
                de = 0.9 + effect_dim * math.log2(d) / 7 + effect_gan * gan + noise * rng.normal()
                rows.append({"cell": f"{d}-{gan}-{s}", "data.dim": d, "distill.gan": gan, "seed": s,
                             "status": "finished", "message": "", "step": 10, "n_eval": 256, "wall_s": 1.0,
                             "delta_e": de, "delta_e_lo": de - 0.05, "delta_e_hi": de + 0.05, "run_dir": ""})
    return pd.DataFrame(rows)


def test_mean_ci_matches_t_interval_and_single_value_bootstrap():
    from scipy import stats

    v = np.array([0.2, 0.5, 0.3, 0.4])
    m, lo, hi, n = sw.mean_ci(v)
    half = stats.t.ppf(0.975, 3) * v.std(ddof=1) / 2.0
    assert n == 4 and m == pytest.approx(0.35) and lo == pytest.approx(0.35 - half) and hi == pytest.approx(0.35 + half)
    assert sw.mean_ci([0.7], [0.6], [0.8]) == (0.7, 0.6, 0.8, 1)
    assert sw.mean_ci([np.nan])[3] == 0


def test_aggregate_groups_over_seeds():
    t = _table(-0.7, 0.0)
    agg = sw.aggregate(t, "data.dim", ["distill.gan"])
    assert len(agg) == 8 and set(agg["n"]) == {3}
    row = agg[(agg["data.dim"] == 2) & (~agg["distill.gan"])].iloc[0]
    vals = t[(t["data.dim"] == 2) & (~t["distill.gan"])]["delta_e"]
    assert row["mean"] == pytest.approx(vals.mean())


def test_summary_is_computed_from_the_data():
    falling = sw.summarize(_table(-0.7, 0.0), ["data.dim", "distill.gan", "seed"])
    rising = sw.summarize(_table(+0.3, 0.2), ["data.dim", "distill.gan", "seed"])
    assert falling != rising
    assert "ΔE fell" in falling and "ΔE rose" in rising
    t = _table(-0.7, 0.0)
    a = t[(t["data.dim"] == 2) & (~t["distill.gan"])]["delta_e"].mean()
    b = t[(t["data.dim"] == 128) & (~t["distill.gan"])]["delta_e"].mean()
    assert f"{a:.3f}" in falling and f"{b:.3f}" in falling
    # GAN effect: none in `falling` (CI contains 0), +0.2 in `rising` (CI excludes 0).
    assert "contains 0" in falling and "excludes 0" in rising
    r = _table(+0.3, 0.2)
    on = r[r["distill.gan"]].set_index(["data.dim", "seed"])["delta_e"]
    off = r[~r["distill.gan"]].set_index(["data.dim", "seed"])["delta_e"]
    assert f"by {(on - off).mean():+.3f} on average" in rising and "n = 12 matched pairs" in rising
    assert "24 of 24 cells finished" in falling
    # Unfinished cells are excluded and reported.
    t.loc[0, "status"] = "failed"
    t.loc[0, "delta_e"] = np.nan
    assert "23 of 24 cells finished" in sw.summarize(t) and "1 cell(s) did not finish" in sw.summarize(t)
    empty = t.assign(status="pending", delta_e=np.nan)
    assert sw.summarize(empty).startswith("No cell has finished yet")


def _paired_table(effects: dict, seeds=(0, 1, 2), noise=0.005, axis="data.n_samples", levels=(100, 20000),
                  other="data.dim", rng_seed=1) -> pd.DataFrame:
    """Synthetic results: switching ``axis`` from levels[0] to levels[1] adds effects[other level]."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for lv in levels:
        for o, eff in effects.items():
            for s in seeds:
                de = 0.3 + (eff if lv == levels[1] else 0.0) + noise * rng.normal()
                rows.append({"cell": f"{lv}-{o}-{s}", axis: lv, other: o, "seed": s, "status": "finished",
                             "message": "", "step": 10, "n_eval": 100, "wall_s": 1.0, "delta_e": de,
                             "delta_e_lo": de - 0.05, "delta_e_hi": de + 0.05, "run_dir": ""})
    return pd.DataFrame(rows)


def _pairs(t, axis, ref, lv, where=None):
    sub = t if where is None else t[t[where[0]] == where[1]]
    keys = [c for c in ("data.dim", "data.n_samples", "loss", "seed") if c in t and c != axis]
    a = sub[sub[axis] == ref].set_index(keys)["delta_e"]
    b = sub[sub[axis] == lv].set_index(keys)["delta_e"]
    return (b - a).dropna().to_numpy()


def test_summary_reports_opposite_effects_per_level_not_only_pooled():
    # Memorization-like: more samples lower ΔE at d = 2 and raise it at d = 64 (same size).
    t = _paired_table({2: -0.15, 64: +0.15})
    text = sw.summarize(t, ["data.n_samples", "data.dim", "seed"])
    pooled = _pairs(t, "data.n_samples", 100, 20000)
    m, lo, hi, n = sw.mean_ci(pooled)
    assert lo < 0 < hi and n == 6
    assert (f"Switching data.n_samples from 100 to 20000 changed ΔE by {m:+.3f} on average "
            f"(95% CI {lo:+.3f} to {hi:+.3f}, n = 6 matched pairs") in text
    assert "lower in 3 of 6 pairs (higher in 3" in text
    for d, sign in ((2, -1), (64, +1)):
        dd = _pairs(t, "data.n_samples", 100, 20000, ("data.dim", d))
        m, lo, hi, n = sw.mean_ci(dd)
        assert np.sign(m) == sign and n == 3 and (hi < 0 if sign < 0 else lo > 0)
        line = next(x for x in text.splitlines()
                    if x.startswith(f"At data.dim={d}: switching data.n_samples from 100 to 20000"))
        assert f"changed ΔE by {m:+.3f} (95% CI {lo:+.3f} to {hi:+.3f}, n = 3 matched pairs)" in line
        assert "excludes 0" in line
        assert ("lower in 3 of 3 pairs" if sign < 0 else "lower in 0 of 3 pairs (higher in 3") in line
    assert "reverses sign across data.dim" in text
    # The numbers follow the table: flip the effects and every per-level sign flips.
    flipped = sw.summarize(_paired_table({2: +0.15, 64: -0.15}), ["data.n_samples", "data.dim", "seed"])
    at2 = next(x for x in flipped.splitlines() if x.startswith("At data.dim=2: switching data.n_samples"))
    assert "changed ΔE by +0.1" in at2 and "lower in 0 of 3 pairs" in at2


def test_summary_counts_signs_when_all_pairs_agree_but_pooled_ci_contains_0():
    # Regression-like positive control: ΔE lower in every pair, by very different amounts per d,
    # so the pooled t-interval contains 0 while the sign count says 6 of 6.
    t = _paired_table({2: -0.20, 16: -0.02, 128: -0.01}, seeds=(0, 1), noise=0.001, axis="loss",
                      levels=("dmd", "dmd+regression"))
    text = sw.summarize(t, ["loss", "data.dim", "seed"])
    pooled = _pairs(t, "loss", "dmd", "dmd+regression")
    assert (pooled < 0).all() and len(pooled) == 6
    m, lo, hi, n = sw.mean_ci(pooled)
    assert lo < 0 < hi
    line = next(x for x in text.splitlines() if x.startswith("Switching loss from dmd to dmd+regression"))
    assert "the interval contains 0" in line
    assert "ΔE lower in 6 of 6 pairs (two-sided sign test p = 0.031)" in line
    for d in (2, 16, 128):
        dd = _pairs(t, "loss", "dmd", "dmd+regression", ("data.dim", d))
        m, lo, hi, n = sw.mean_ci(dd)
        assert (f"At data.dim={d}: switching loss from dmd to dmd+regression changed ΔE by {m:+.3f} "
                f"(95% CI {lo:+.3f} to {hi:+.3f}, n = 2 matched pairs); the interval excludes 0; "
                f"ΔE lower in 2 of 2 pairs") in text
    assert "reverses sign" not in text


# ---------------------------------------------------------------------------- end to end (real runs)

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The 2-cell tiny sweep, --quick, on 2 worker processes."""
    out = tmp_path_factory.mktemp("sweep") / "tiny"
    events: list[sw.SweepProgress] = []
    res = sw.run_sweep(tiny_spec(), out, workers=2, quick=True, callback=events.append)
    return out, res, events


def test_wall_time_of_a_cell_without_cell_json_comes_from_timing_csv(tiny_run, tmp_path):
    # a cell still running (no cell.json yet) reports the training time so far from timing.csv
    import shutil

    from dmdcore.runs import RunDir

    out, _, _ = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    first = sorted((copy / "cells").iterdir())[0]
    (first / "cell.json").unlink()
    t = sw.results_table(copy)
    row = t[t["cell"] == first.name].iloc[0]
    assert row["wall_s"] == pytest.approx(float(RunDir(first).read_timing()[-1]["wall_s"]))
    assert row["wall_s"] > 0


def sw_verdicts():
    from dmdcore.verdict import VERDICTS

    return VERDICTS


def test_tiny_sweep_end_to_end(tiny_run):
    from dmdcore.pairing import pairing_inefficiency
    from dmdcore.runs import RunDir, RunIndex

    out, res, events = tiny_run
    assert res.failures == [] and (res.n_cells, res.n_run, res.n_skipped) == (2, 2, 0)
    t = res.table
    expected = ["cell", "data.dim", "status", "message", "step", "n_eval", "wall_s", *sw.METRIC_COLUMNS,
                *sw.VERDICT_TEXT_COLUMNS, "run_dir"]
    assert list(t.columns) == expected
    assert list(t["data.dim"]) == [2, 3] and set(t["status"]) == {"finished"}
    # every cell carries its copy verdict with n, d and the twin control (teachers train a twin)
    assert list(t["dim"]) == [2, 3] and t["verdict"].isin(sw_verdicts()).all()
    assert t["delta_e_twin"].notna().all() and t["resolution"].notna().all()
    assert (t["wall_s"] > 0).all() and (t["n_eval"] == 48).all()
    for _, row in t.iterrows():
        # The table reports the final evaluation; recompute ΔE from the saved samples.
        run = RunDir(row["run_dir"])
        samples = run.load_samples()
        assert samples["student"].shape == (48, row["data.dim"])
        ref = pairing_inefficiency(samples["student"], samples["teacher"])
        assert row["delta_e"] == pytest.approx(ref.delta_e, abs=1e-9)
        assert row["delta_e_lo"] <= row["delta_e"] + 1e-12 <= row["delta_e_hi"] + 2e-12
        last = [r for r in run.read_metrics() if r["phase"] == "student"][-1]
        assert last["step"] == 4 and row["w2"] == pytest.approx(last["w2"])
    # CSV written and identical to the returned table.
    csv = pd.read_csv(out / "results.csv")
    assert list(csv.columns) == expected
    np.testing.assert_allclose(csv["delta_e"], t["delta_e"])
    # Every cell and every teacher is a normal run in the sweep's index, tagged with the sweep id.
    recs = RunIndex(out).list(sweep=res.sweep_id)
    assert sorted(r.kind for r in recs) == ["experiment", "experiment", "teacher", "teacher"]
    assert all(r.status == "finished" for r in recs)
    # Progress: monotone counts, ETA once a cell is done, final event says finished.
    dones = [e.done_cells for e in events]
    assert dones == sorted(dones) and events[-1].finished and events[-1].done_cells == 2
    assert events[-1].done_teachers == events[-1].total_teachers == 2
    assert any(e.eta_s is not None for e in events)
    curves = sw.training_curves(out)
    assert set(curves["cell"]) == set(t["cell"]) and sorted(set(curves["step"])) == [0, 3, 4]
    listed = sw.list_sweeps(out.parent)
    assert [(s["id"], s["n_cells"], s["finished"]) for s in listed] == [(res.sweep_id, 2, 2)]


def test_resume_skips_finished_and_reruns_failed(tiny_run):
    from dmdcore.runs import RunDir

    out, res, _ = tiny_run
    cells = list(res.table["run_dir"])
    mtimes = {p: (Path(p) / "metrics.csv").stat().st_mtime_ns for p in cells}
    teacher_mtimes = sorted(p.stat().st_mtime_ns for p in (out / "teachers").glob("*/teacher.pt"))
    again = sw.run_sweep(tiny_spec(), out, workers=2, quick=True)
    assert (again.n_skipped, again.n_run, again.failures) == (2, 0, [])
    assert again.sweep_id == res.sweep_id
    assert {p: (Path(p) / "metrics.csv").stat().st_mtime_ns for p in cells} == mtimes
    # Mark the second cell as failed (as a crash would): only it is re-run, from the shared teacher.
    RunDir(cells[1]).write_status("failed", "simulated crash")
    third = sw.run_sweep(tiny_spec(), out, workers=2, quick=True)
    assert (third.n_skipped, third.n_run, third.failures) == (1, 1, [])
    assert (Path(cells[0]) / "metrics.csv").stat().st_mtime_ns == mtimes[cells[0]]
    assert (Path(cells[1]) / "metrics.csv").stat().st_mtime_ns != mtimes[cells[1]]
    assert sorted(p.stat().st_mtime_ns for p in (out / "teachers").glob("*/teacher.pt")) == teacher_mtimes
    assert list(third.table["status"]) == ["finished", "finished"]
    # Same config + seed → same numbers (the re-run cell reproduces its ΔE exactly).
    np.testing.assert_allclose(third.table["delta_e"], res.table["delta_e"], rtol=0, atol=1e-12)


def test_failing_cell_is_reported_and_the_other_finishes(tmp_path):
    missing = tmp_path / "missing.npy"
    spec = tiny_spec(data={"ok": {}, "broken": {"data.dataset": "user", "data.path": str(missing)}})
    events = []
    res = sw.run_sweep(spec, tmp_path / "s", workers=2, quick=True, callback=events.append)
    t = res.table.set_index("data")
    assert t.loc["ok", "status"] == "finished" and np.isfinite(t.loc["ok", "delta_e"])
    assert t.loc["broken", "status"] == "failed" and np.isnan(t.loc["broken", "delta_e"])
    assert "missing.npy" in t.loc["broken", "message"]
    keys = [k for k, _ in res.failures]
    assert t.loc["broken", "cell"] in keys and any(k.startswith("teacher:") for k in keys)
    assert all("missing.npy" in reason for _, reason in res.failures)
    assert events[-1].failed_cells == 1 and events[-1].done_cells == 1
    assert "1 cell(s) did not finish (failed)" in sw.summarize(res.table)


def test_serial_mode_matches_pool(tiny_run, tmp_path):
    _, res, _ = tiny_run
    serial = sw.run_sweep(tiny_spec(), tmp_path / "serial", workers=0, quick=True)
    assert serial.failures == []
    np.testing.assert_allclose(serial.table["delta_e"], res.table["delta_e"], atol=1e-6)


def test_sweep_job_stop_then_resume(tmp_path):
    spec = tiny_spec(**{"data.dim": [2, 3], "seed": [0, 1]})
    job = sw.SweepJob(spec, tmp_path / "s", workers=1, quick=False).start()
    job.stop()
    assert job.wait(timeout=300)
    snap = job.snapshot()
    assert snap.state == "stopped" and snap.progress.stopped
    assert snap.result.table["status"].ne("finished").any()
    res = sw.run_sweep(spec, tmp_path / "s", workers=2)
    assert res.failures == [] and set(res.table["status"]) == {"finished"}
    with pytest.raises(sw.SweepSpecError):
        sw.SweepJob({"name": "x", "grid": {"data.dim": [0]}}, tmp_path / "bad")


def test_sweep_jobs_sharing_a_slot_run_one_at_a_time(tmp_path):
    import threading

    slots = threading.BoundedSemaphore(1)
    first = sw.SweepJob(tiny_spec(), tmp_path / "a", workers=0, quick=True, slots=slots).start()
    t0 = time.monotonic()
    while first.snapshot().state == "queued" and time.monotonic() - t0 < 30:
        time.sleep(0.01)  # the first job's thread holds the slot before the second one starts
    assert first.snapshot().state in ("running", "finished")
    second = sw.SweepJob(tiny_spec(), tmp_path / "b", workers=0, quick=True, slots=slots).start()
    third = sw.SweepJob(tiny_spec(), tmp_path / "c", workers=0, quick=True, slots=slots).start()
    snap = second.snapshot()
    assert snap.state == "queued" and "sweep slot" in snap.message and snap.progress is None
    third.stop()  # stopping a queued sweep ends it without running anything
    assert third.wait(timeout=30) and third.snapshot().state == "stopped"
    assert not (tmp_path / "c").exists()
    assert first.wait(timeout=300) and first.snapshot().state == "finished"
    assert second.wait(timeout=300) and second.snapshot().state == "finished"
    # the second ran after the first: its cells started after the first sweep had ended
    t_first_end = max(p.stat().st_mtime for p in (tmp_path / "a").rglob("status.json"))
    t_second_start = min(p.stat().st_mtime for p in (tmp_path / "b").rglob("config.json"))
    assert t_second_start >= t_first_end - 1e-3
    assert slots.acquire(blocking=False)  # every slot was given back


# ---------------------------------------------------------------------------- command line

def _cli(argv):
    parser = argparse.ArgumentParser(prog="dmdcore")
    sw.register_cli(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_bad_spec_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "grid": {"distill.ganz": [True]}}))
    with pytest.raises(SystemExit) as e:
        _cli(["sweep", str(bad), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "distill.ganz" in err
    assert not (tmp_path / "o").exists()


def test_cli_runs_through_python_m(tmp_path):
    if not (REPO / "dmdcore" / "__main__.py").exists():
        pytest.fail("dmdcore/__main__.py is missing: `python -m dmdcore sweep` cannot run")
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(tiny_spec(**{"data.dim": [2]})))
    proc = subprocess.run([sys.executable, "-m", "dmdcore", "sweep", str(spec), "--out", str(tmp_path / "o"),
                           "--quick", "--workers", "1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "results:" in proc.stdout and "1 of 1 cells finished" in proc.stdout
    assert len(pd.read_csv(tmp_path / "o" / "results.csv")) == 1
    bad = subprocess.run([sys.executable, "-m", "dmdcore", "sweep", "no-such-preset", "--out", str(tmp_path / "p")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no-such-preset" in bad.stderr


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc; Linux)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_killed_sweep_leaves_finished_cells_intact(tmp_path):
    import time

    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(tiny_spec()))
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "dmdcore", "sweep", str(spec), "--out", str(out), "--quick",
                             "--workers", "1"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finished: list[Path] = []
    deadline = time.monotonic() + 300
    while not finished and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        finished = [p.parent for p in out.glob("cells/*/cell.json")]
    workers = _children(proc.pid)
    proc.kill()  # SIGKILL: no cleanup in the sweep process
    proc.wait()
    assert finished, "no cell finished before the deadline"
    assert workers, "the sweep process had no worker processes"

    def alive(pid: int) -> bool:  # an orphaned zombie counts as ended
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
        except (FileNotFoundError, IndexError):
            return False

    # its orphaned workers (an idle one would wait for work forever) exit by themselves
    t_kill = time.monotonic()
    while any(alive(p) for p in workers) and time.monotonic() - t_kill < 90:
        time.sleep(0.2)
    assert not [p for p in workers if alive(p)], "orphaned sweep workers are still running"
    before = {p: (p / "metrics.csv").stat().st_mtime_ns for p in finished}
    res = sw.run_sweep(tiny_spec(), out, workers=1, quick=True)
    assert res.failures == [] and set(res.table["status"]) == {"finished"}
    assert res.n_skipped >= len(finished)
    assert {p: (p / "metrics.csv").stat().st_mtime_ns for p in finished} == before


def test_summary_treats_seed_fields_as_replicates():
    t = _table(-0.7, 0.2).rename(columns={"seed": "distill.seed"})
    text = sw.summarize(t, ["data.dim", "distill.gan", "distill.seed"])
    assert "distill.seed=" not in text and "at distill.seed" not in text
    assert "n = 12 matched pairs" in text  # matched on data.dim × distill.seed


def test_yaml_spec_without_pyyaml_gives_clear_error(tmp_path, monkeypatch):
    y = tmp_path / "s.yml"
    y.write_text(YAML_TINY)
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` now raises ImportError
    with pytest.raises(sw.SweepSpecError, match="PyYAML"):
        sw.load_spec(y)


# ---------------------------------------------------------------------------- dying workers, threads

_REAL_RUN_CELL = sw._run_cell


def _wait_for(cond, timeout: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)


def _cell_that_kills_its_worker(**kw):
    """Stands in for sweep._run_cell (the spawned workers import it from this module). On its
    first attempt cell 'a' waits until 'crash' runs in the other worker; 'crash' waits until
    'a' runs, then ends its worker process at once, as a segfault or an OOM kill would. So the
    dying worker takes the running 'a' with it (the pool kills its other workers)."""
    case = kw["overrides"].get("case")
    out = Path(kw["index_root"])
    running = out / sw.RUNNING_DIR

    def started(name: str) -> bool:
        return any(p.name.startswith(f"cell-case={name}-") for p in running.glob("cell-*"))

    first = out / f"first-attempt-{case}"
    if case in ("a", "crash") and not first.exists():
        first.touch()
        _wait_for(lambda: started("crash" if case == "a" else "a"))
    if case == "crash":
        os._exit(1)
    return _REAL_RUN_CELL(**kw)


def test_dead_worker_fails_only_its_cell_and_the_sweep_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(sw, "_run_cell", _cell_that_kills_its_worker)
    spec = tiny_spec(case={"a": {}, "crash": {"distill.ratio": 3}, "b": {"distill.ratio": 1}})
    events = []
    res = sw.run_sweep(spec, tmp_path / "s", workers=2, quick=True, callback=events.append)
    t = res.table.set_index("case")
    assert t.loc["a", "status"] == "finished" and t.loc["b", "status"] == "finished"
    assert np.isfinite(t.loc["a", "delta_e"]) and np.isfinite(t.loc["b", "delta_e"])
    assert t.loc["crash", "status"] == "failed" and "worker process died" in t.loc["crash", "message"]
    assert [k for k, _ in res.failures] == [t.loc["crash", "cell"]]
    assert "worker process died" in res.failures[0][1]
    csv = pd.read_csv(tmp_path / "s" / "results.csv").set_index("case")
    assert csv["status"].to_dict() == {"a": "finished", "crash": "failed", "b": "finished"}
    assert events[-1].finished and (events[-1].done_cells, events[-1].failed_cells) == (2, 1)
    # First break: 'a' and 'crash' were running (both re-run alone), 'b' had not started (queued
    # again); second break: 'crash' alone, so it is the one that kills its worker.
    breaks = [e.last for e in events if e.last.startswith("a worker process died")]
    assert breaks == ["a worker process died: 2 job(s) were running, 2 to re-run alone, 1 queued again on a new pool",
                      "a worker process died: 1 job(s) were running, 0 to re-run alone, 1 queued again on a new pool"]
    assert not (tmp_path / "s" / sw.RUNNING_DIR).exists()


def _thread_report() -> dict:
    """Thread counts of this process, after loading what the sweep jobs load."""
    import sklearn.cluster  # noqa: F401
    import threadpoolctl
    import torch

    import dmdcore.pipeline  # noqa: F401

    return {"torch": torch.get_num_threads(),
            "pools": [(d["internal_api"], d["filepath"].rsplit("/", 1)[-1], d["num_threads"])
                      for d in threadpoolctl.threadpool_info()]}


def test_worker_processes_use_one_thread_in_every_pool(monkeypatch):
    here = _thread_report()
    assert any(n > 1 for *_, n in here["pools"]), "this machine's default pools have 1 thread: test cannot fail"
    # Spawned workers inherit the environment: without these the pools could start at one thread
    # because of a variable set elsewhere in the test process (app.py sets OMP_NUM_THREADS=1),
    # and the test would pass without the initializer doing anything.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    with sw._make_pool(1) as pool:
        report = pool.submit(_thread_report).result(timeout=300)
    assert report["torch"] == 1
    apis = {api for api, _, _ in report["pools"]}
    assert {"openblas", "openmp"} <= apis
    assert [p for p in report["pools"] if p[2] != 1] == []


def test_serial_threads_per_process_limits_only_while_cells_run(tmp_path, monkeypatch):
    import torch

    seen = []

    def fake_teacher(**kw):
        seen.append(("teacher", _thread_report()))
        return {"status": "finished", "message": "", "wall_s": 0.0}

    def fake_cell(**kw):
        seen.append(("cell", _thread_report()))
        return {"status": "finished", "message": "", "wall_s": 0.0}

    monkeypatch.setattr(sw, "_train_teacher", fake_teacher)
    monkeypatch.setattr(sw, "_run_cell", fake_cell)
    before = _thread_report()
    assert before["torch"] > 1 or any(n > 1 for *_, n in before["pools"])
    sw.run_sweep(tiny_spec(), tmp_path / "one", workers=0, quick=True, threads_per_process=1)
    assert [k for k, _ in seen] == ["teacher", "teacher", "cell", "cell"]
    for _, rep in seen:
        assert rep["torch"] == 1 and [p for p in rep["pools"] if p[2] != 1] == []
    assert _thread_report() == before          # restored afterwards
    seen.clear()
    sw.run_sweep(tiny_spec(), tmp_path / "asis", workers=0, quick=True)  # None: process left as it is
    assert [rep for _, rep in seen] == [before] * 4
    assert torch.get_num_threads() == before["torch"]
    with pytest.raises(ValueError, match="threads_per_process"):
        sw.run_sweep(tiny_spec(), tmp_path / "bad", workers=0, threads_per_process=0)


def test_summary_level_means_are_those_of_the_matched_pairs():
    """The level means printed beside a paired difference come from the matched pairs only, so
    their difference is the mean paired difference; with one pair the line gives that pair's two
    values; with none it says they are not compared. (Means over all cells mixed in cells with no
    counterpart: 'means 0.569 vs 0.522' beside a change of +0.144.)"""
    import re

    t = _paired_table({2: +0.1, 64: +0.1}, noise=0.05)
    # a cell with no counterpart, far from the rest: it must not move the printed means
    t = pd.concat([t, t.iloc[[0]].assign(cell="lonely", seed=99, delta_e=5.0)], ignore_index=True)
    text = sw.summarize(t, ["data.n_samples", "data.dim", "seed"])
    line = next(x for x in text.splitlines() if x.startswith("Switching data.n_samples from 100 to 20000"))
    m = float(re.search(r"changed ΔE by ([+-][0-9.]+)", line).group(1))
    a, b = (float(v) for v in re.search(r"means ([0-9.]+) vs ([0-9.]+) over those pairs", line).groups())
    assert abs((b - a) - m) <= 0.0015  # rounding of three printed numbers
    one = t[(t["seed"] == 0) & (t["data.dim"] == 2)]
    text1 = sw.summarize(one, ["data.n_samples", "data.dim", "seed"])
    ref, lv = (float(one[one["data.n_samples"] == k]["delta_e"].iloc[0]) for k in (100, 20000))
    assert (f"ΔE was {ref:.3f} with data.n_samples=100 and {lv:.3f} with data.n_samples=20000 in the one "
            f"matched pair ({lv - ref:+.3f}): too few for a CI.") in text1
    none = t[((t["data.n_samples"] == 100) & (t["seed"] == 0)) | ((t["data.n_samples"] == 20000) & (t["seed"] == 1))]
    assert "has a counterpart with data.n_samples=100 at the same data.dim, seed: not compared" in \
        sw.summarize(none, ["data.n_samples", "data.dim", "seed"])


def test_summary_states_no_trend_when_one_level_is_left():
    """A condition whose cells are readable at one level of a numeric axis only (the others
    unresolved) gets no 'fell from X at d=2 to X at d=2' trend line and no undefined Spearman ρ."""
    import warnings

    rows = []
    for d in (2, 8, 32):
        for loss, de in (("dmd", 0.1 * d ** 0.5), ("reg", 0.007)):
            for s in (0, 1):
                ok = loss == "dmd" or d == 2
                rows.append({"cell": f"{d}-{loss}-{s}", "data.dim": d, "loss": loss, "seed": s,
                             "status": "finished", "message": "", "step": 10, "n_eval": 100, "wall_s": 1.0,
                             "delta_e": de + 0.001 * s, "delta_e_lo": de - 0.001, "delta_e_hi": de + 0.002,
                             "delta_e_valid": ok, "verdict": "partial" if ok else "unresolved", "run_dir": ""})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = sw.summarize(pd.DataFrame(rows), ["data.dim", "loss", "seed"])
    assert "ΔE is readable only at data.dim=2 [loss=reg]: 0.007" in text and "no trend over data.dim" in text
    assert "[loss=reg]; Spearman" not in text and "ρ = nan" not in text
    assert "at data.dim=32 [loss=dmd]; Spearman ρ = 0.956 over 6 cells" in text
