"""Sweeps: spec validation, grid expansion, presets, aggregation/summary, and end-to-end runs
(process pool, resume, a failing cell, results table + CSV, the CLI)."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
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
    y = tmp_path / "s.yaml"
    yaml = pytest.importorskip("yaml")  # PyYAML is optional; JSON specs always work
    y.write_text(yaml.safe_dump(tiny_spec()))
    assert sw.load_spec(str(y)).to_dict() == sw.load_spec(p).to_dict()
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
    assert dim.grid["data.dim"] == [2, 4, 8, 16, 32, 64, 128, 256] and len(dim.grid["seed"]) == 3
    for n in names:
        spec = sw.load_preset(n)
        assert spec.claim and spec.description
        assert sw.load_preset(f"{n}:full").n_cells >= spec.n_cells
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
