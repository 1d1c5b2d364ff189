"""The claim board (dmdcore.claims): status words from results tables, converged cells only."""

import re

import numpy as np
import pandas as pd
import pytest

from dmdcore import claims


def _table(axis, levels, delta, *, seeds=(0, 1, 2), converged=1, extra=None, noise=0.005):
    rng = np.random.default_rng(0)
    rows = []
    for lv in levels:
        for s in seeds:
            de = delta(lv) + noise * rng.normal()
            r = {"cell": f"{lv}-{s}", axis: lv, "distill.seed": s, "status": "finished", "message": "",
                 "step": 100, "n_eval": 256, "wall_s": 1.0, "delta_e": de, "delta_e_lo": de - 0.05,
                 "delta_e_hi": de + 0.05, "converged": converged, "delta_e_twin": 0.3, "resolution": 0.02,
                 "w2_teacher_data": 0.12, "w2_data_floor": 0.1}
            r.update((extra or {}).get(lv, {}))
            rows.append(r)
    return pd.DataFrame(rows)


def _status(tables):
    return {r.preset: (r.status, r.reason) for r in claims.claim_board(tables)}


def test_unrun_and_old_runs_are_inconclusive():
    board = claims.claim_board({})
    assert len(board) == 5 and all(r.status == "inconclusive" and r.reason == claims.NOT_RUN for r in board)
    old = _table("data.dim", [2, 64], lambda d: 0.1).drop(columns=["converged"])
    assert "predate" in _status({"dimension": old})["dimension"][1]
    md = claims.board_markdown(board)
    assert md.count("**inconclusive**") == 5 and md.splitlines()[0].startswith("| claim |")


def test_dimension_status_follows_the_intervals_and_skips_unconverged_cells():
    down = _table("data.dim", [2, 16, 128], lambda d: 0.5 / np.log2(2 * d))
    up = _table("data.dim", [2, 16, 128], lambda d: 0.05 * np.log2(d))
    assert _status({"dimension": down})["dimension"][0] == "supported"
    assert _status({"dimension": up})["dimension"][0] == "contradicted"
    # the same contradicting cells, none converged: not read at all
    st = _status({"dimension": up.assign(converged=0)})["dimension"]
    assert st[0] == "inconclusive" and "no converged cell" in st[1]


def test_dimension_claim_needs_teachers_at_the_quality_target():
    """High-d teachers far from the data (W₂²(T,data) 9x the data floor) confound the axis."""
    poor = {128: {"w2_teacher_data": 39.0, "w2_data_floor": 4.3}}
    down = _table("data.dim", [2, 16, 128], lambda d: 0.5 / np.log2(2 * d), extra=poor)
    row = {r.preset: r for r in claims.claim_board({"dimension": down})}["dimension"]
    # d=128 is left out (named, with its ratio); the claim is read between d=2 and d=16
    assert row.status == "supported" and "left out: d=128 (9.1×)" in row.reason
    assert "at d=16:" in row.answer and "d=128" not in row.answer
    assert "d=2: 1.2×" in row.controls and "d=128: 9.1×" in row.controls
    # with fewer than two dimensions at the target, the axis is confounded: inconclusive
    both = _table("data.dim", [2, 128], lambda d: 0.5 / d, extra={**poor, 2: poor[128]})
    row = {r.preset: r for r in claims.claim_board({"dimension": both})}["dimension"]
    assert row.status == "inconclusive" and "d=2 (9.1×), d=128 (9.1×)" in row.reason and "confounded" in row.reason
    unknown = _table("data.dim", [2, 128], lambda d: 0.5 / d).drop(columns=["w2_data_floor"])
    assert "not recorded" in _status({"dimension": unknown})["dimension"][1]


def test_gan_claim_needs_power_then_equivalence():
    same = lambda lv: 0.2
    weak = _table("loss", ["dmd", "dmd+gan"], same, extra={"dmd+gan": {"gan_dm_ratio": 0.01}})
    st = _status({"adversarial": weak})["adversarial"]
    assert st[0] == "inconclusive" and "power" in st[1]
    strong = _table("loss", ["dmd", "dmd+gan x300"], same, extra={"dmd+gan x300": {"gan_dm_ratio": 0.4}}, noise=0.0)
    assert _status({"adversarial": strong})["adversarial"][0] == "supported"
    # the GAN lowers ΔE (students copy more with it): it may cause copying -> contradicted
    copies_more = _table("loss", ["dmd", "dmd+gan x300"], lambda lv: 0.05 if "gan" in lv else 0.2,
                         extra={"dmd+gan x300": {"gan_dm_ratio": 0.4}})
    assert _status({"adversarial": copies_more})["adversarial"][0] == "contradicted"
    # the GAN raises ΔE (students copy less with it): it is not what makes them copy -> supported
    copies_less = _table("loss", ["dmd", "dmd+gan x300"], lambda lv: 0.5 if "gan" in lv else 0.2,
                         extra={"dmd+gan x300": {"gan_dm_ratio": 0.4}})
    st = _status({"adversarial": copies_less})["adversarial"]
    assert st[0] == "supported" and "copy less" in st[1]


def test_memorization_claim_requires_a_memorizing_teacher():
    t = _table("data.n_samples", [100, 20000], lambda n: 0.2,
               extra={100: {"memorization": 0.05}, 20000: {"memorization": 0.04}})
    st = _status({"memorization": t})["memorization"]
    assert st[0] == "inconclusive" and "memorize" in st[1]
    t = _table("data.n_samples", [100, 20000], lambda n: 0.2, noise=0.0,
               extra={100: {"memorization": 0.6}, 20000: {"memorization": 0.04}})
    assert _status({"memorization": t})["memorization"][0] == "supported"


def test_memorization_is_checked_per_dimension_and_says_when_the_memorizing_cells_cannot_be_read():
    # as measured: at d = 2 the 100-sample teacher does not memorize; at d = 64 it does (0.98),
    # but its students' ΔE is below the resolution (verdict unresolved), so nothing can be read
    mem = {(100, 2): 0.02, (20000, 2): 0.06, (100, 64): 0.98, (20000, 64): 0.0}
    rows = []
    for d in (2, 64):
        t = _table("data.n_samples", [100, 20000], lambda n: 0.25)
        t["data.dim"] = d
        t["memorization"] = [mem[(n, d)] for n in t["data.n_samples"]]
        t["verdict"] = "unresolved" if d == 64 else "partial"
        t.loc[(t["data.n_samples"] == 100) & (d == 64), "verdict"] = "unresolved"
        rows.append(t)
    t = pd.concat(rows, ignore_index=True)
    t["cell"] = [f"c{i}" for i in range(len(t))]
    row = {r.preset: r for r in claims.claim_board({"memorization": t})}["memorization"]
    assert "d=2: 0.020 vs 0.060" in row.controls and "d=64: 0.980 vs 0.000" in row.controls
    assert row.status == "inconclusive" and "memorize at d=64" in row.reason and "readable" in row.reason
    # the same cells with readable verdicts at d = 64: the d = 64 pairs are read
    t["verdict"] = "partial"
    row = {r.preset: r for r in claims.claim_board({"memorization": t})}["memorization"]
    assert "at d=64" in row.answer and "n = 3 pairs" in row.answer


def test_freedom_and_convergence_claims():
    f = _table("student", ["teacher-init", "random-full"], lambda s: 0.1 if s == "teacher-init" else 0.8)
    assert _status({"freedom": f})["freedom"][0] == "supported"
    # real results tables carry each cell's verdict words, which differ between the levels
    # compared: pairing must match cells on the sweep axes only (it matched none before)
    f["verdict"] = np.where(f["student"] == "teacher-init", "partial", "remaps")
    f["verdict_basis"] = f["verdict"] + " because …"
    row = {r.preset: r for r in claims.claim_board({"freedom": f})}["freedom"]
    assert row.status == "supported" and "n = 3 pairs" in row.answer
    assert "pairs only" not in row.reason  # one dimension, all paired: nothing to add
    # as measured in freedom:full: pairs only at d = 2; at d = 64 the random-full students did not
    # converge (2) or converged with a ΔE that cannot be read (1) — the reason says so
    lo = f.assign(**{"data.dim": 2})
    hi = f.assign(**{"data.dim": 64}, cell=f["cell"] + "-64")
    rf = hi["student"] == "random-full"
    hi.loc[rf, "converged"] = [0, 0, 1]
    hi.loc[rf, "verdict"] = "invalid"
    row = {r.preset: r for r in claims.claim_board({"freedom": pd.concat([lo, hi], ignore_index=True)})}["freedom"]
    assert row.status == "supported" and "n = 3 pairs" in row.answer
    assert row.reason.endswith("pairs only at d=2; no converged random-full student with a readable ΔE at d=64 "
                               "(2 not converged, 1 converged with ΔE not readable)")
    c = _table("teacher.steps", [50, 200, 800], lambda s: 1.0 / np.log(s), extra={})
    c["w2_teacher_data"] = 1.0
    assert _status({"convergence": c})["convergence"][0] == "supported"
    # as measured: up from 200 to 800 steps, then a dip to 2000 that stays within the CIs
    dip = _table("teacher.steps", [200, 800, 2000], {200: 0.09, 800: 0.28, 2000: 0.26}.get, noise=0.01)
    dip["w2_teacher_data"] = 1.0
    st = _status({"convergence": dip})["convergence"]
    assert st[0] == "inconclusive" and "800→2000" in st[1]
    # a reversal whose CIs separate contradicts monotonicity
    rev = _table("teacher.steps", [200, 800, 2000], {200: 0.09, 800: 0.40, 2000: 0.25}.get, noise=0.005)
    rev["w2_teacher_data"] = 1.0
    st = _status({"convergence": rev})["convergence"]
    assert st[0] == "contradicted" and "800→2000" in st[1]
    flat = _table("teacher.steps", [50, 200, 800], lambda s: 0.3, noise=0.05)
    flat["w2_teacher_data"] = 1.0
    assert _status({"convergence": flat})["convergence"][0] == "inconclusive"


@pytest.mark.slow
def test_board_reads_the_newest_full_size_sweep_of_a_preset(tmp_path):
    from dmdcore import sweep as sw

    spec = {
        "name": "dimension",
        "base": {"data": {"dataset": "mixture", "n_modes": 4, "n_samples": 400},
                 "teacher": {"width": 16, "depth": 2, "emb_dim": 8, "steps": 10, "batch": 64, "twin": False},
                 "sampler": {"steps": 4}, "distill": {"steps": 4, "ratio": 1, "batch": 32},
                 "eval": {"every": 2, "n": 48, "bootstrap": 0}},
        "grid": {"data.dim": [2, 3]},
    }
    sw.run_sweep(spec, tmp_path / "dim", workers=0)
    sw.run_sweep(dict(spec, name="freedom"), tmp_path / "quick", workers=0, quick=True)
    tables = claims.tables_from_sweeps(tmp_path)
    assert set(tables) == {"dimension"}  # the quick sweep is a smoke test, not evidence
    assert len(tables["dimension"]) == 2 and tables["dimension"]["converged"].notna().all()
    row = {r.preset: r for r in claims.claim_board(tables)}["dimension"]
    assert row.reason != claims.NOT_RUN and row.status in claims.STATUSES
    # the docs' per-preset table of the same sweep: one row per d with its converged count,
    # controls and verdicts read from the run directories
    mod = _preset_report()
    text = mod.report(tmp_path / "dim")
    rows = [line for line in text.splitlines() if line.startswith("| 2 |") or line.startswith("| 3 |")]
    assert len(rows) == 2
    t = tables["dimension"].set_index("data.dim")
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        d = int(cells[0])
        assert cells[1] == f"{int(t.loc[d, 'converged'])}/1"
        assert cells[2] == str(int(t.loc[d, "step"]))
        assert cells[-2] == f"{t.loc[d, 'verdict']} 1"
    # shipped: the same table written by `preset_report.py --export` and read back gives the same
    # board; a fresh install (no sweeps of its own) shows it with where it came from
    (tmp_path / "time.txt").write_text("700.5 16.5 581.25\n")
    ship = tmp_path / "ship"
    assert mod.main(["--export", str(ship / "dimension.json"), "--time", str(tmp_path / "time.txt"),
                     str(tmp_path / "dim")]) == 0
    from dmdcore import shipped_results as sr

    loaded, meta = sr.load(ship / "dimension.json")
    assert meta["preset"] == "dimension" and meta["cells"] == 2 and meta["wall_s"] == 581.25
    assert meta["cpu_s"] == 717.0 and "run_dir" not in loaded
    assert claims.claim_board({"dimension": loaded}) == claims.claim_board(tables)
    # a resumed sweep: its segments' times add up; a segment without CPU time leaves CPU unknown
    (tmp_path / "time2.txt").write_text("100.0 0.5 90.0\n")
    both = ["--time", str(tmp_path / "time.txt"), "--time", str(tmp_path / "time2.txt")]
    assert mod.main(["--export", str(tmp_path / "two.json"), *both, str(tmp_path / "dim")]) == 0
    meta2 = sr.load(tmp_path / "two.json")[1]
    assert meta2["wall_s"] == 671.25 and meta2["cpu_s"] == 817.5
    assert mod.main(["--export", str(tmp_path / "three.json"), *both, "--wall-only", "300",
                     "--note", "resumed twice", str(tmp_path / "dim")]) == 0
    meta3 = sr.load(tmp_path / "three.json")[1]
    assert meta3["wall_s"] == 971.25 and meta3["cpu_s"] is None and meta3["note"] == "resumed twice"
    assert "971 s wall" in sr.describe(meta3) and sr.describe(meta3).endswith(", resumed twice")
    with pytest.raises(SystemExit):
        mod.main(["--export", str(tmp_path / "four.json"), "--wall-only", "-1", str(tmp_path / "dim")])
    fresh, sources = claims.tables_with_sources(tmp_path / "nothing-here", ship)
    assert set(fresh) == {"dimension"} and sources["dimension"].startswith("shipped run of `dimension`")
    assert "581 s wall" in sources["dimension"]
    mine, sources = claims.tables_with_sources(tmp_path, ship)  # the user's own sweep wins
    assert sources["dimension"].startswith("your sweep `dimension`") and len(mine["dimension"]) == 2
    frame = claims.board_frame(claims.claim_board(fresh), sources)
    assert list(frame["source"])[1:] == ["not run"] * 4


def _preset_report():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "preset_report.py"
    spec = importlib.util.spec_from_file_location("preset_report", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_experiments_page_shows_the_claim_board(tmp_path, monkeypatch):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DMD_RUNS_DIR", str(tmp_path))
    monkeypatch.setenv("DMD_SHIPPED_RESULTS", str(tmp_path / "none"))  # nothing shipped, nothing run
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "experiments.py"), default_timeout=120)
    at.run()
    assert not at.exception and not at.error
    board = next(d.value for d in at.dataframe if "status" in d.value.columns)
    assert list(board["preset"]) == [c.preset for c in claims.CLAIMS]
    assert set(board["status"]) == {"inconclusive"} and set(board["reason"]) == {claims.NOT_RUN}
    assert set(board["source"]) == {"not run"}


def test_fresh_install_board_is_computed_from_the_shipped_results(tmp_path, monkeypatch):
    """With no sweeps of its own, the page's board is dmdcore.claims on the repository's shipped
    results tables (checkpoints/results/), each row naming its source; each shipped file records
    its wall time and commit."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from dmdcore import shipped_results as sr

    shipped = sr.shipped()
    assert shipped, "checkpoints/results/ ships no results"
    for preset, (table, meta) in shipped.items():
        assert preset in {c.preset for c in claims.CLAIMS} and meta["wall_s"] > 0 and meta["commit"]
        assert meta["cells"] == len(table) and not meta["quick"]
    expect = claims.claim_board({p: t for p, (t, _) in shipped.items()})
    monkeypatch.setenv("DMD_RUNS_DIR", str(tmp_path))
    monkeypatch.delenv("DMD_SHIPPED_RESULTS", raising=False)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "experiments.py"), default_timeout=120)
    at.run()
    assert not at.exception and not at.error
    board = next(d.value for d in at.dataframe if "status" in d.value.columns)
    assert list(board["status"]) == [r.status for r in expect]
    assert list(board["measured answer (95% CI, n)"]) == [r.answer for r in expect]
    for preset, src in zip(board["preset"], board["source"]):
        assert src.startswith("shipped run of") if preset in shipped else src == "not run"
    assert any("results this repository ships" in i.value for i in at.info)
    # what a reader sees first: one block per claim, its status word leading
    heads = [m.value for m in at.markdown if "(preset `" in m.value]
    assert [h.split("</span>")[0].rsplit(">", 1)[-1] for h in heads] == [r.status for r in expect]


def test_shipped_results_loader_refuses_bad_files(tmp_path):
    from dmdcore import shipped_results as sr

    good = {"format": sr.FORMAT, "meta": {"preset": "dimension"}, "columns": ["cell", "status", "delta_e"],
            "rows": [["a", "finished", 0.5]]}
    cases = {
        "not json": ("{oops", "not JSON"),
        "format": ({**good, "format": "pickle"}, "'format'"),
        "meta": ({**good, "meta": []}, "'meta'"),
        "columns": ({**good, "columns": ["cell", "cell", "x"]}, "distinct"),
        "missing": ({**good, "columns": ["cell", "status", "w2"]}, "lacks 'delta_e'"),
        "ragged": ({**good, "rows": [["a", "finished"]]}, "rows[0] must be a list of 3"),
        "nested": ({**good, "rows": [["a", "finished", {"__class__": "os.system"}]]}, "rows[0].delta_e is a dict"),
    }
    for name, (doc, match) in cases.items():
        p = tmp_path / f"{name.replace(' ', '_')}.json"
        p.write_text(doc if isinstance(doc, str) else __import__("json").dumps(doc))
        with pytest.raises(ValueError, match=re.escape(match)) as e:
            sr.load(p)
        assert str(p) in str(e.value)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (sr.MAX_BYTES + 1))
    with pytest.raises(ValueError, match="more than"):
        sr.load(big)
    (tmp_path / "ok.json").write_text(__import__("json").dumps(good))
    table, meta = sr.load(tmp_path / "ok.json")
    assert table.to_dict("records") == [{"cell": "a", "status": "finished", "delta_e": 0.5}]


def test_sweep_summaries_leave_out_unconverged_cells():
    from dmdcore.sweep.verdicts import screen

    t = _table("data.dim", [2, 16], lambda d: 0.2)
    t.loc[t["data.dim"] == 16, "converged"] = 0
    kept, lines = screen(t)
    assert set(kept["data.dim"]) == {2} and any("had not converged" in line and "16-0" in line for line in lines)
    older = t.drop(columns=["converged"])  # runs made before the criterion: nothing to screen on
    assert len(screen(older)[0]) == len(older)


def test_preset_report_script_arguments(capsys, tmp_path):
    """scripts/preset_report.py: --board alone prints the five-row board; a bad directory or no
    argument is a usage error (exit 2) naming what is wrong."""
    mod = _preset_report()
    assert mod.main(["--board"]) == 0
    out = capsys.readouterr().out
    assert out.count("**inconclusive**") == 5 and "not yet run" in out
    for argv in ([], [str(tmp_path)]):
        with pytest.raises(SystemExit) as e:
            mod.main(argv)
        assert e.value.code == 2
    assert "no sweep.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        mod.main(["--shipped"])
    assert e.value.code == 2 and "--shipped goes with --board" in capsys.readouterr().err


def test_board_from_the_shipped_results_is_the_one_docs_print(capsys, monkeypatch):
    """`preset_report.py --board --shipped` reads presets without a directory from
    checkpoints/results/ (as the dashboard does on a fresh install) and prints the board that
    opens docs/experiments.md, row for row."""
    from pathlib import Path

    from dmdcore import shipped_results as sr

    monkeypatch.delenv(sr.ENV, raising=False)
    mod = _preset_report()
    assert mod.main(["--board", "--shipped"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    tables = {k: t for k, (t, _m) in sr.shipped(sr.RESULTS_DIR).items()}
    assert printed == claims.board_markdown(claims.claim_board(tables)).splitlines()
    docs = (Path(__file__).resolve().parents[1] / "docs" / "experiments.md").read_text().splitlines()
    start = docs.index(printed[0])
    assert docs[start:start + len(printed)] == printed


def test_full_variant_sweeps_count_as_their_preset():
    """SweepSpec.variant("full") names the sweep "<preset>-full" in sweep.json; the board must read
    it as its preset (it was "not yet run" for a finished convergence:full sweep)."""
    from dmdcore.sweep.spec import load_preset, preset_of

    for p in ("dimension", "convergence"):
        full = load_preset(p + ":full")
        assert full.name == p + "-full" and preset_of(full.name) == p
        assert preset_of(p + ":full") == p and preset_of(p) == p
    assert preset_of("my-fullness") == "my-fullness"
