"""The ``ray`` sweep backend on a real local Ray cluster (2 CPUs, loopback only, no dashboard):
same run files as the local pool, a killed worker's task re-run, a stop cancelling pending tasks.

One cluster serves the whole module (starting one takes seconds); the fixture shuts it down and
checks that none of its processes is left."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray

from dmdcore import sweep as sw

# The job stand-ins below travel to the Ray workers by value (the workers cannot import this file).
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

TINY_BASE = {
    "data": {"dataset": "mixture", "n_modes": 4, "n_samples": 400},
    "teacher": {"width": 16, "depth": 2, "emb_dim": 8, "steps": 20, "batch": 64, "ema": 0.9},
    "sampler": {"steps": 4},
    "distill": {"steps": 4, "ratio": 2, "batch": 32, "n_reg_pairs": 16, "reg_batch": 16},
    "eval": {"every": 2, "n": 48, "bootstrap": 10},
}


def tiny_spec(**grid) -> dict:
    return {"name": "tinyray", "base": TINY_BASE, "grid": grid or {"data.dim": [2, 3]}}


def _ray_descendants(pid: int) -> set[int]:
    """Every live Ray process (raylet, GCS, workers …) below ``pid`` (from /proc; zombies count as gone)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = dict(line.split(":\t", 1) for line in (d / "status").read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("State", "").startswith("Z"):
            continue
        children.setdefault(int(fields["PPid"]), []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return {p for p in out if _is_ray(p)}


def _is_ray(pid: int) -> bool:
    try:
        return b"ray" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _wait_for(cond, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1")  # "local": a new cluster, never another one running here
    try:
        yield ray
    finally:
        started = _ray_descendants(os.getpid())
        ray.shutdown()
    assert started and not ray.is_initialized()
    _wait_for(lambda: not (started & _ray_descendants(os.getpid())), 60, "the Ray processes to exit")


def test_ray_backend_writes_the_same_metrics_as_the_local_pool(cluster, tmp_path):
    spec = tiny_spec(**{"distill.ratio": [1, 2], "data.dim": [2, 3]})   # 2 teachers, 4 cells
    local = sw.run_sweep(spec, tmp_path / "local", workers=2)
    events = []
    res = sw.run_sweep(spec, tmp_path / "ray", backend="ray", callback=events.append)
    assert local.failures == [] and res.failures == []
    assert (res.table["status"] == "finished").all() and res.n_cells == 4
    files = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").glob("*/*/metrics.csv"))
    assert len(files) == 6  # two teachers (each trained once, shared by two cells), four cells
    for rel in files:
        assert (tmp_path / "ray" / rel).read_bytes() == (tmp_path / "local" / rel).read_bytes(), rel
    np.testing.assert_array_equal(res.table["delta_e"].to_numpy(), local.table["delta_e"].to_numpy())
    assert events[-1].finished and events[-1].done_teachers == 2 and events[-1].done_cells == 4
    assert sum(e.last.startswith("teacher ") for e in events) == 2
    # resume: every cell is finished, nothing is submitted again
    again = sw.run_sweep(spec, tmp_path / "ray", backend="ray")
    assert (again.n_skipped, again.n_run, again.failures) == (4, 0, [])


def _cell_killed(**kw):
    """Stands in for sweep._run_cell in the Ray workers: the attempts of cell distill.ratio=2 wait
    to be killed (the test kills their worker process) until DIR/kills says how many were; then
    the real cell runs."""
    out, key = Path(kw["index_root"]), kw["cell_key"]
    n = len(list(out.glob(f"attempt-{key}-*")))
    if kw["overrides"]["distill.ratio"] == 2 and n < int((out / "kills").read_text()):
        (out / f"attempt-{key}-{n}").write_text(str(os.getpid()))
        _wait_for(lambda: False, 500, "this worker to be killed")
    return sw.jobs._run_cell(**kw)


def _kill_attempts(out: Path, n: int, killed: list) -> threading.Thread:
    """A thread that kills the worker process of the next ``n`` attempts written under ``out``."""
    def killer():
        for _ in range(n):
            _wait_for(lambda: any(p.name not in killed for p in out.glob("attempt-*")), 500, "an attempt")
            p = next(p for p in out.glob("attempt-*") if p.name not in killed)
            os.kill(int(p.read_text()), signal.SIGKILL)
            killed.append(p.name)
    t = threading.Thread(target=killer, daemon=True)
    t.start()
    return t


def test_a_killed_worker_task_is_retried_a_bounded_number_of_times(cluster, tmp_path, monkeypatch):
    monkeypatch.setattr(sw, "_run_cell", _cell_killed)
    out, killed = tmp_path / "s", []
    spec = tiny_spec(**{"distill.ratio": [1, 2]})    # one shared teacher, two cells
    # no retries: the killed cell fails (its worker died), the other cell finishes
    out.mkdir()
    (out / "kills").write_text("1")
    _kill_attempts(out, 1, killed)
    res = sw.run_sweep(spec, out, backend="ray", max_retries=0)
    t = res.table.set_index("distill.ratio")
    assert t.loc[1, "status"] == "finished" and t.loc[2, "status"] == "failed", res.failures
    assert [k for k, _ in res.failures] == [t.loc[2, "cell"]]
    assert "worker process died" in res.failures[0][1] and "0 retries used" in res.failures[0][1]
    # resume with one retry: the failed cell runs again, is killed once more, re-run by Ray: finished
    (out / "kills").write_text("2")
    _kill_attempts(out, 1, killed)
    again = sw.run_sweep(spec, out, backend="ray", max_retries=1)
    assert len(killed) == 2 and again.n_skipped == 1 and again.n_run == 1
    assert again.failures == [] and (again.table["status"] == "finished").all()
    assert np.isfinite(again.table["delta_e"]).all()


def _cell_waiting_for_stop(**kw):
    """The first cell to start waits until the sweep's stop file exists, then runs (and stops at
    its first step); no other cell may start before the stop."""
    _wait_for(lambda: os.path.exists(kw["stop_file"]), 500, "the stop request")
    return sw.jobs._run_cell(**kw)


def test_stop_cancels_the_pending_tasks(cluster, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sw, "_run_cell", _cell_waiting_for_stop)
    out = tmp_path / "s"
    stop = threading.Event()
    events = []

    def stopper():
        _wait_for(lambda: any((out / sw.RUNNING_DIR).glob("cell-*")), 500, "a cell to start")
        stop.set()

    threading.Thread(target=stopper, daemon=True).start()
    # one shared teacher, four cells; 2 CPUs per cell on a 2-CPU cluster: one task at a time
    spec = tiny_spec(**{"distill.ratio": [1, 2, 3, 4]})
    res = sw.run_sweep(spec, out, backend="ray", cpus_per_cell=2, stop_event=stop, callback=events.append)
    assert res.stopped
    assert sorted(res.table["status"]) == ["pending", "pending", "pending", "stopped"]
    assert [r.split(":")[0] for _, r in res.failures] == ["stopped"]     # the running cell only
    assert any(e.last == "stop requested: cancelled 3 pending task(s), waiting for running ones" for e in events)
    assert len(list((out / "cells").glob("*/status.json"))) == 1       # the 3 others never started
    # resume through the command line: the stopped and the cancelled cells run now
    monkeypatch.setattr(sw, "_run_cell", sw.jobs._run_cell)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    parser = argparse.ArgumentParser()
    sw.register_cli(parser.add_subparsers())
    args = parser.parse_args(["sweep", str(spec_file), "--out", str(out), "--backend", "ray", "--cpus-per-cell", "1"])
    assert args.func(args) == 0
    assert "(4 cells, 0 resumed, 0 failed" in capsys.readouterr().out
    assert (pd.read_csv(out / "results.csv")["status"] == "finished").all()


def test_backend_options_are_checked_before_anything_runs(tmp_path, capsys):
    with pytest.raises(ValueError, match="backend"):
        sw.run_sweep(tiny_spec(), tmp_path / "a", backend="slurm")
    with pytest.raises(ValueError, match="address"):
        sw.run_sweep(tiny_spec(), tmp_path / "b", backend="local", address="auto")
    with pytest.raises(ValueError, match="cpus_per_cell"):
        sw.run_sweep(tiny_spec(), tmp_path / "c", backend="ray", cpus_per_cell=0)
    with pytest.raises(ValueError, match="spec.resources.gpus_per_cell"):
        sw.SweepSpec.from_dict({**tiny_spec(), "resources": {"gpus_per_cell": -1}})
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
    spec = sw.SweepSpec.from_dict({**tiny_spec(), "resources": {"cpus_per_cell": 2, "max_retries": 0}})
    ex = sw.make_executor("ray", resources=spec.resources, gpus_per_cell=1)
    assert (ex.cpus_per_cell, ex.gpus_per_cell, ex.max_retries) == (2, 1, 0)
    assert sw.SweepSpec.from_dict(spec.to_dict()) == spec
    parser = argparse.ArgumentParser()
    sw.register_cli(parser.add_subparsers())
    for argv, fragment in ((["--address", "auto"], "address"), (["--backend", "ray", "--max-retries", "-1"], "max_retries")):
        args = parser.parse_args(["sweep", "dimension", "--out", str(tmp_path / "d"), *argv])
        with pytest.raises(SystemExit) as e:
            args.func(args)
        assert e.value.code == 2 and fragment in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_a_task_larger_than_the_cluster_is_refused(cluster, tmp_path):
    with pytest.raises(ValueError, match="cpus_per_cell: 3 but the Ray cluster has 2 CPUs"):
        sw.run_sweep(tiny_spec(), tmp_path / "big", backend="ray", cpus_per_cell=3)
