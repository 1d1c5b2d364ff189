"""Run directories and the SQLite run index (dmdcore.runs)."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dmdcore.runs import METRIC_COLUMNS, TIMING_COLUMNS, RunDir, RunIndex, pid_alive

EXP = {"data": {"dataset": "8gaussians", "dim": 2}, "name": "t"}


def test_create_writes_config_and_running_status(tmp_path):
    run = RunDir.create(tmp_path / "r1", kind="teacher", experiment=EXP, teacher_source=None)
    cfg = json.loads((run.path / "config.json").read_text())
    assert cfg["kind"] == "teacher" and cfg["experiment"] == EXP and cfg["teacher_source"] is None
    assert "dmdcore_version" in cfg
    st = run.read_status()
    assert st["status"] == "running" and st["pid"] == os.getpid() and st["step"] == 0
    with pytest.raises(ValueError, match="already holds a run"):
        RunDir.create(tmp_path / "r1", kind="teacher", experiment=EXP)
    with pytest.raises(ValueError, match="kind"):
        RunDir.create(tmp_path / "r2", kind="banana", experiment=EXP)
    with pytest.raises(ValueError, match="status"):
        run.write_status("exploded")
    # overwrite resets the earlier run's outputs
    run.append_metrics({"step": 0, "phase": "teacher", "loss": 1.0})
    run2 = RunDir.create(tmp_path / "r1", kind="distill", experiment=EXP, overwrite=True)
    assert run2.read_metrics() == [] and run2.read_config()["kind"] == "distill"


def test_metrics_roundtrip_exact_and_torn_row(tmp_path):
    run = RunDir.create(tmp_path / "r", kind="experiment", experiment=EXP)
    vals = [0.1 + 0.2, 1e-17, 123456.789012345678, float("nan")]
    for i, v in enumerate(vals):
        run.append_metrics({"step": i * 10, "phase": "student", "delta_e": v, "w2": 2 * v if i else None})
    header = (run.path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == METRIC_COLUMNS
    rows = run.read_metrics()
    assert [r["step"] for r in rows] == [0, 10, 20, 30]
    assert rows[0]["delta_e"] == 0.1 + 0.2  # repr round-trips floats exactly
    assert rows[2]["delta_e"] == 123456.789012345678
    assert np.isnan(rows[3]["delta_e"])
    assert rows[0]["w2"] is None and rows[0]["loss"] is None and rows[1]["phase"] == "student"
    # a writer killed mid-row leaves a partial last line: it is skipped, earlier rows survive
    with open(run.path / "metrics.csv", "a") as fh:
        fh.write("40,student,1.5,0.3")
    assert [r["step"] for r in run.read_metrics()] == [0, 10, 20, 30]
    with pytest.raises(ValueError, match="unknown columns"):
        run.append_metrics({"step": 1, "phase": "student", "bogus": 1.0})
    with pytest.raises(ValueError, match="phase"):
        run.append_metrics({"step": 1, "phase": "warmup"})


def test_metrics_appended_to_a_run_from_an_older_version_stay_readable(tmp_path):
    # a run directory written before a column existed (its header lacks "copy_k"): resuming it
    # appends rows in its own header's layout, so no row is dropped as malformed
    run = RunDir.create(tmp_path / "r", kind="experiment", experiment=EXP)
    old_columns = [c for c in METRIC_COLUMNS if c != "copy_k"]
    (run.path / "metrics.csv").write_text(",".join(old_columns) + "\n")
    run.append_metrics({"step": 0, "phase": "student", "delta_e": 0.5, "copy_k": 8})
    run.append_metrics({"step": 10, "phase": "student", "delta_e": 0.25})
    rows = run.read_metrics()
    assert [(r["step"], r["delta_e"]) for r in rows] == [(0, 0.5), (10, 0.25)]
    assert "copy_k" not in rows[0]
    assert (run.path / "metrics.csv").read_text().splitlines()[0].split(",") == old_columns


def test_timing_csv_roundtrip_torn_row_and_overwrite(tmp_path):
    run = RunDir.create(tmp_path / "r", kind="experiment", experiment=EXP)
    assert run.read_timing() == []
    for i, w in enumerate([0.0, 0.1 + 0.2, 12.5]):
        run.append_timing({"step": i * 5, "phase": "teacher", "wall_s": w})
    assert (run.path / "timing.csv").read_text().splitlines()[0] == ",".join(TIMING_COLUMNS) == "step,phase,wall_s"
    assert run.read_timing() == [{"step": 0, "phase": "teacher", "wall_s": 0.0},
                                 {"step": 5, "phase": "teacher", "wall_s": 0.1 + 0.2},
                                 {"step": 10, "phase": "teacher", "wall_s": 12.5}]
    with open(run.path / "timing.csv", "a") as fh:
        fh.write("15,teach")  # a writer killed mid-row
    assert [r["step"] for r in run.read_timing()] == [0, 5, 10]
    with pytest.raises(ValueError, match="unknown columns"):
        run.append_timing({"step": 1, "phase": "student", "delta_e": 1.0})
    with pytest.raises(ValueError, match="unknown columns"):
        run.append_metrics({"step": 1, "phase": "student", "wall_s": 1.0})  # no clock in metrics.csv
    with pytest.raises(ValueError, match="phase"):
        run.append_timing({"step": 1, "phase": "warmup", "wall_s": 1.0})
    run2 = RunDir.create(tmp_path / "r", kind="experiment", experiment=EXP, overwrite=True)
    assert run2.read_timing() == [] and not (run2.path / "timing.csv").exists()


def test_save_toy_model_is_atomic_and_fsynced(tmp_path, monkeypatch):
    from dmdcore.config import TeacherConfig
    from dmdcore.toy import build_denoiser, load_toy_model, save_toy_model

    den = build_denoiser(2, 8, 1, 4, 0, 0.5)
    path = tmp_path / "student.pt"
    # a leftover / concurrent writer's "<path>.tmp" must not be reused or clobbered
    (tmp_path / "student.pt.tmp").mkdir()
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    save_toy_model(path, den, role="student", teacher_config=TeacherConfig(), step=3)
    assert synced, "the checkpoint was not fsync'ed before it replaced the old file"
    assert load_toy_model(path, device="cpu")[1]["step"] == 3
    assert (tmp_path / "student.pt.tmp").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.pt", "student.pt.tmp"]  # no temp file left
    # a failing save leaves the previous file intact
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        save_toy_model(path, den, role="student", teacher_config=TeacherConfig(), step=4)
    assert load_toy_model(path, device="cpu")[1]["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.pt", "student.pt.tmp"]


def test_samples_and_checkpoints_roundtrip(tmp_path):
    run = RunDir.create(tmp_path / "r", kind="experiment", experiment=EXP)
    rng = np.random.default_rng(0)
    z, t, s = (rng.standard_normal((50, 2)).astype(np.float32) for _ in range(3))
    hist = np.stack([s, s * 2])
    run.save_samples(z=z, teacher=t, student=s, history_steps=np.array([0, 100]), history_student=hist)
    got = run.load_samples()
    assert set(got) == {"z", "teacher", "student", "history_steps", "history_student", "basin_steps", "basin_student"}
    assert got["basin_steps"].shape == (0,)  # none given: stored empty, same keys
    np.testing.assert_array_equal(got["teacher"], t)
    np.testing.assert_array_equal(got["history_student"], hist)
    assert got["history_steps"].tolist() == [0, 100]
    # teacher-only runs still have every key
    run.save_samples(z=z, teacher=t, student=None)
    got = run.load_samples()
    assert got["student"].shape == (0, 2) and got["history_student"].shape == (0, 50, 2)
    ck = {"format": "dmdcore.toy.v1", "role": "student", "state_dict": {"w": torch.arange(3.0)}, "step": 7}
    run.save_checkpoint("student", ck)
    back = torch.load(run.checkpoint_path("student"), weights_only=True)
    assert back["step"] == 7 and torch.equal(back["state_dict"]["w"], torch.arange(3.0))
    assert not list(run.path.glob(".*.tmp"))  # no temp files left behind
    with pytest.raises(ValueError, match="role"):
        run.checkpoint_path("discriminator")


def test_index_register_update_list_filter(tmp_path):
    idx = RunIndex(tmp_path)
    with sqlite3.connect(idx.path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    a = RunDir.create(tmp_path / "a", kind="teacher", experiment=EXP)
    b = RunDir.create(tmp_path / "b", kind="distill", experiment={"data": {"dataset": "moons", "dim": 2}})
    ra = idx.register(a)
    rb = idx.register(b, sweep="s1")
    assert ra.kind == "teacher" and ra.dataset == "8gaussians" and ra.dim == 2 and ra.name == "t"
    assert rb.dataset == "moons" and rb.sweep == "s1" and ra.id != rb.id
    idx.update(rb.id, status="finished", step=500, delta_e=0.25, summary={"delta_e": 0.25, "w2": float("nan")})
    got = idx.get(b.path)
    assert got.status == "finished" and got.step == 500 and got.delta_e == 0.25
    assert got.summary == {"delta_e": 0.25, "w2": None}
    assert [r.id for r in idx.list(kind="distill")] == [rb.id]
    assert [r.id for r in idx.list(status="running")] == [ra.id]
    assert [r.id for r in idx.list(dataset="moons", sweep="s1")] == [rb.id]
    assert idx.list(sweep="nope") == []
    # registering the same directory again refreshes the row instead of duplicating it
    again = idx.register(b)
    assert again.id == rb.id and again.sweep == "s1" and len(idx.list()) == 2
    with pytest.raises(ValueError, match="status"):
        idx.update(ra.id, status="bogus")
    with pytest.raises(ValueError, match="unknown fields"):
        idx.update(ra.id, colour="red")
    with pytest.raises(ValueError, match="kind"):
        idx.list(kind="nope")
    with pytest.raises(KeyError):
        idx.get(999)


def test_index_scan_rebuilds_after_index_loss(tmp_path):
    for name in ("x", "y"):
        RunDir.create(tmp_path / name, kind="teacher", experiment=EXP)
    idx = RunIndex(tmp_path)
    added = idx.scan()
    assert sorted(Path(r.path).name for r in added) == ["x", "y"]
    assert idx.scan() == []


def _finished_run(path, dataset="moons", **extra_files):
    run = RunDir.create(path, kind="experiment", experiment={"data": {"dataset": dataset, "dim": 2}, "name": path.name})
    run.append_metrics({"step": 0, "phase": "student", "delta_e": 0.5})
    run.write_status("finished", "finished at step 10", step=10)
    for name, obj in extra_files.items():
        (run.path / name).write_text(json.dumps(obj))
    return run


def test_scan_finds_sweep_cells_at_depth_4_with_their_sweep_id(tmp_path, capsys):
    """Default layout: runs/sweeps/<dir>/cells/<key> (depth 4) and runs/sweeps/<dir>/teachers/<key>."""
    from dmdcore.cli import main

    root = tmp_path / "runs"
    _finished_run(root / "t1")
    sweep_dir = root / "sweeps" / "dim"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "sweep.json").write_text(json.dumps({"id": "dim-20260101-000000-abcdef", "cells": []}))
    sid = "dim-20260101-000000-abcdef"
    _finished_run(sweep_dir / "teachers" / "tk")
    for key in ("d2-s0", "d3-s0"):
        _finished_run(sweep_dir / "cells" / key, **{"cell.json": {"key": key, "sweep": sid, "wall_s": 1.0}})
    _finished_run(root / "a" / "b" / "c" / "d" / "e")  # depth 5: beyond the scan
    idx = RunIndex(root)
    added = idx.scan()
    names = sorted(Path(r.path).name for r in added)
    assert names == ["d2-s0", "d3-s0", "t1", "tk"]
    assert sorted(Path(r.path).name for r in idx.list(sweep=sid)) == ["d2-s0", "d3-s0", "tk"]
    assert idx.get(root / "t1").sweep is None
    assert all(r.status == "finished" for r in added)
    assert idx.scan() == []
    # the CLI at that root (it scans first)
    (root / "index.sqlite").unlink()
    assert main(["runs", "list", "--root", str(root), "--sweep", sid, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(Path(r["path"]).name for r in listed) == ["d2-s0", "d3-s0", "tk"]
    assert {r["status"] for r in listed} == {"finished"} and {r["sweep"] for r in listed} == {sid}


def test_scan_fills_in_the_sweep_of_known_runs(tmp_path):
    root = tmp_path / "runs"
    sweep_dir = root / "sweeps" / "s"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "sweep.json").write_text(json.dumps({"id": "s-1"}))
    run = _finished_run(sweep_dir / "cells" / "k")
    idx = RunIndex(root)
    idx.register(run)  # e.g. registered before its sweep was known
    assert idx.get(run.path).sweep is None
    assert idx.scan() == []
    assert idx.get(run.path).sweep == "s-1" and [Path(r.path).name for r in idx.list(sweep="s-1")] == ["k"]


def test_corrupt_index_file_is_a_clear_error(tmp_path):
    (tmp_path / "index.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(ValueError, match="index"):
        RunIndex(tmp_path)


_WRITER = """
import sys
from pathlib import Path
from dmdcore.runs import RunDir, RunIndex
root, k = sys.argv[1], int(sys.argv[2])
idx = RunIndex(root)
for i in range(8):
    run = RunDir.create(Path(root) / f"w{k}_{i}", kind="experiment", experiment={"data": {}})
    rec = idx.register(run, sweep="conc")
    idx.update(rec.id, status="finished", step=i)
"""


def test_concurrent_writers_from_processes(tmp_path):
    repo = Path(__file__).parents[1]
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), str(k)], cwd=repo) for k in range(3)]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    recs = RunIndex(tmp_path).list(sweep="conc")
    assert len(recs) == 24 and all(r.status == "finished" for r in recs)
    assert sorted(r.step for r in recs) == sorted(list(range(8)) * 3)


def test_mark_interrupted_dead_pid_and_stale_status(tmp_path):
    idx = RunIndex(tmp_path)
    # a run owned by a process that has exited
    child = subprocess.Popen([sys.executable, "-c", "import os; print(os.getpid())"], stdout=subprocess.PIPE)
    dead_pid = int(child.communicate()[0])
    assert not pid_alive(dead_pid)
    dead = RunDir.create(tmp_path / "dead", kind="experiment", experiment=EXP)
    st = dead.read_status()
    st.update(pid=dead_pid, pid_start=None, step=42)
    (dead.path / "status.json").write_text(json.dumps(st))
    idx.register(dead)
    # a run owned by this (live) process
    live = RunDir.create(tmp_path / "live", kind="experiment", experiment=EXP)
    idx.register(live)
    # a run whose status.json moved on while the index still says running
    moved = RunDir.create(tmp_path / "moved", kind="experiment", experiment=EXP)
    idx.register(moved)
    moved.write_status("finished", "done", step=9)
    changed = idx.mark_interrupted()
    assert sorted(Path(r.path).name for r in changed) == ["dead", "moved"]
    assert idx.get(dead.path).status == "failed" and "interrupted" in idx.get(dead.path).message
    assert dead.read_status()["status"] == "failed" and dead.read_status()["step"] == 42
    assert idx.get(live.path).status == "running"
    assert idx.get(moved.path).status == "finished" and idx.get(moved.path).step == 9
    assert pid_alive(os.getpid())


def test_sigkill_mid_write_leaves_readable_run_and_index(tmp_path):
    """A process that keeps appending metrics and rewriting status/checkpoints is SIGKILLed; the
    run stays readable and the index marks it failed."""
    script = textwrap.dedent(
        f"""
        import numpy as np, torch, sys
        from dmdcore.runs import RunDir, RunIndex
        idx = RunIndex({str(tmp_path)!r})
        run = RunDir.create({str(tmp_path / "k")!r}, kind="experiment", experiment={{"data": {{"dataset": "moons"}}}})
        idx.register(run)
        print("ready", flush=True)
        i = 0
        while True:
            run.append_metrics({{"step": i, "phase": "student", "delta_e": i * 0.5}})
            run.write_status("running", "training", step=i)
            run.save_checkpoint("student", {{"step": i, "state_dict": {{"w": torch.full((2000,), float(i))}}}})
            idx.update(str(run.path), step=i)
            i += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=Path(__file__).parents[1])
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    run = RunDir(tmp_path / "k")
    rows = run.read_metrics()
    assert len(rows) > 0 and [r["step"] for r in rows] == list(range(len(rows)))
    assert run.read_status()["status"] == "running"
    ck = torch.load(run.checkpoint_path("student"), weights_only=True)
    assert torch.all(ck["state_dict"]["w"] == ck["step"])
    idx = RunIndex(tmp_path)
    changed = idx.mark_interrupted()
    assert [Path(r.path).name for r in changed] == ["k"]
    assert idx.get(run.path).status == "failed" and run.read_status()["status"] == "failed"
    with sqlite3.connect(idx.path) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_scan_fills_delta_e_of_runs_recorded_elsewhere(tmp_path):
    """A sweep cell is recorded in its sweep's own index; the root index finds it by scanning and
    must show its ΔE (from metrics.csv), not '-'."""
    from dmdcore.runs import RunDir, RunIndex

    cell = tmp_path / "sweeps" / "s1" / "cells" / "c0"
    cell.parent.mkdir(parents=True)
    run = RunDir.create(cell, kind="experiment", experiment={"data": {"dataset": "mixture", "dim": 2}})
    run.append_metrics({"step": 0, "phase": "student", "delta_e": 0.5, "w2": 0.2})
    run.append_metrics({"step": 5, "phase": "student", "delta_e": 0.25, "w2": 0.1})
    run.write_status("finished", "done", step=5)
    idx = RunIndex(tmp_path)
    [rec] = idx.scan()
    assert rec.delta_e == 0.25 and rec.w2 == 0.1 and rec.summary["step"] == 5
