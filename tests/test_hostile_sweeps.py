"""Issue 15 for sweeps: orphaned workers take no work, one sweep per directory, and bad
sweep.json / index.sqlite files are listed as unreadable without hiding the other sweeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dmdcore import sweep as sw
from dmdcore.runs import RunBusyError, RunIndex

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
SPEC = {"name": "tiny", "base": {}, "grid": {"distill.steps": [5]}, "quick": {}}


def _good_sweep(root: Path, name: str, updated: float) -> Path:
    d = root / name
    d.mkdir(parents=True)
    RunIndex(d)
    (d / "sweep.json").write_text(json.dumps({"id": name, "spec": {"name": name, "grid": {}}, "cells": [],
                                              "state": "done", "updated": updated}))
    return d


@pytest.fixture()
def sweeps_root(tmp_path):
    root = tmp_path / "sweeps"
    _good_sweep(root, "good", 2.0)
    (root / "listy").mkdir()
    (root / "listy" / "sweep.json").write_text("[]")
    bad_index = _good_sweep(root, "corrupt-index", 1.0)
    (bad_index / "index.sqlite").write_bytes(b"this is not sqlite" * 100)
    for p in bad_index.glob("index.sqlite-*"):
        p.unlink()
    return root


def test_bad_sweeps_are_listed_unreadable_and_do_not_hide_others(sweeps_root):
    found = {Path(s["path"]).name: s for s in sw.list_sweeps(sweeps_root)}
    assert found["good"]["state"] == "done" and found["good"]["error"] == ""
    assert found["listy"]["state"] == "unreadable" and "not an object" in found["listy"]["error"]
    assert found["corrupt-index"]["state"] == "unreadable" and "SQLite" in found["corrupt-index"]["error"]


def test_results_table_of_a_bad_manifest_names_the_file(sweeps_root):
    with pytest.raises(ValueError, match="sweep.json: .* not an object"):
        sw.results_table(sweeps_root / "listy")


def test_experiments_page_with_bad_sweeps(sweeps_root, monkeypatch):
    monkeypatch.setenv("DMD_RUNS_DIR", str(sweeps_root.parent))
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    at.switch_page("pages/experiments.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    warnings = " ".join(w.value for w in at.warning)
    assert "listy" in warnings and "corrupt" in warnings
    ids = [i for df in at.dataframe if "id" in df.value for i in df.value["id"].tolist()]
    assert "good" in ids and "listy" not in ids


def test_run_sweep_refuses_a_bad_manifest_before_writing(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "sweep.json").write_text("[]")
    with pytest.raises(ValueError, match="sweep.json"):
        sw.run_sweep(SPEC, out, workers=0, quick=True)
    assert sorted(p.name for p in out.iterdir()) == ["sweep.json"]


_HOLD = """
import sys, time
from dmdcore.runs import claim_dir
claim_dir(sys.argv[1], "out_dir")
print("claimed", flush=True)
time.sleep(120)
"""


def test_second_sweep_in_one_directory_is_refused(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with pytest.raises(RunBusyError, match=f"out_dir: .* being written by process {holder.pid}"):
            sw.run_sweep(SPEC, out, workers=0, quick=True)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing of the second sweep
    finally:
        holder.kill()
        holder.wait()


def test_orphaned_worker_takes_no_more_work(monkeypatch, tmp_path):
    """A pool worker whose sweep process is gone (getppid no longer the recorded parent) returns
    at once from every queued job without touching its run directory."""
    from dmdcore.sweep import jobs

    called = []
    monkeypatch.setattr(jobs, "_SWEEP_PARENT", os.getppid() + 1_000_000)
    out = jobs._call_safely(lambda **kw: called.append(kw), {"run_dir": str(tmp_path / "cell")},
                            str(tmp_path / "running" / "cell"))
    assert out["status"] == "stopped" and "sweep process gone" in out["message"]
    assert called == [] and not (tmp_path / "cell").exists() and not (tmp_path / "running").exists()
    monkeypatch.setattr(jobs, "_SWEEP_PARENT", os.getppid())  # parent alive: the job runs
    jobs._call_safely(lambda **kw: called.append(kw) or {"status": "finished"}, {"run_dir": "x"})
    assert called == [{"run_dir": "x"}]


def test_worker_started_after_the_sweep_died_exits_at_once():
    """The sweep's pid reaches a worker from the sweep (initargs), not from os.getppid() at
    start-up: a worker spawned just before the sweep was killed used to record init's pid,
    believe its parent alive and wait for work forever."""
    code = ("from dmdcore.sweep.workers import _worker_init\n"
            "_worker_init(1)\n"  # 1 stands for a sweep process that is no longer our parent
            "print('still here')\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "still here" not in p.stdout, (p.returncode, p.stdout, p.stderr[-500:])
