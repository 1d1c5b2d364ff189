"""Issue 15, parts 2-4 and 6: one error boundary per CLI command, a runs root that tolerates bad
neighbours, exclusive run directories, and disk-full handling (ENOSPC injected by monkeypatching
the write calls; the real disk is never filled)."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dmdcore.cli import main
from dmdcore.runs import (LOCK_FILE, DiskFullError, RunBusyError, RunDir, RunExistsError, RunIndex,
                          atomic_torch_save, atomic_write_json)

REPO = Path(__file__).resolve().parents[1]
FAST = ["--quick", "--threads", "1", "--no-progress"]
SHIPPED = REPO / "checkpoints" / "toy" / "8gaussians.pt"


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _one_line_error(err: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err


# ------------------------------------------------------------------ CLI error boundary
def _tampered(tmp_path, name, **change):
    obj = torch.load(SHIPPED, weights_only=True)
    for k, v in change.items():
        if v is None:
            obj.pop(k)
        else:
            obj[k] = dict(obj[k], **v)
    p = tmp_path / f"{name}.pt"
    torch.save(obj, p)
    return p


@pytest.mark.parametrize("case", ["passwd", "random", "dim3", "no_arch", "width60000"])
def test_distill_bad_teacher_is_one_line_exit_2(tmp_path, capsys, case):
    teacher = {
        "passwd": lambda: Path("/etc/passwd"),
        "random": lambda: (tmp_path / "r.pt").write_bytes(os.urandom(3000)) and tmp_path / "r.pt",
        "dim3": lambda: _tampered(tmp_path, "d3", arch={"dim": 3}),
        "no_arch": lambda: _tampered(tmp_path, "na", arch=None),
        "width60000": lambda: _tampered(tmp_path, "w", arch={"width": 60000}),
    }[case]()
    rc, _, err = _run(capsys, "distill", "--teacher", teacher, "--out", tmp_path / "s", *FAST)
    assert rc == 2
    _one_line_error(err)
    assert not (tmp_path / "s").exists()  # a rejected run writes nothing


def test_deeply_nested_config_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "deep.json"
    cfg.write_text("[" * 100_000 + "]" * 100_000)
    rc, _, err = _run(capsys, "teacher", "--config", cfg, "--out", tmp_path / "t", *FAST)
    assert rc == 2
    _one_line_error(err)
    assert "--config" in err


def test_unexpected_exception_is_one_line_exit_1(tmp_path, capsys, monkeypatch):
    import dmdcore.cli as cli

    def boom(args):
        raise KeyError("surprise")

    monkeypatch.setattr(cli, "cmd_runs_teachers", boom)
    rc, _, err = _run(capsys, "runs", "teachers")
    assert rc == 1
    _one_line_error(err)
    assert "KeyError" in err


def test_fetch_unknown_name_draws_no_progress_bar():
    p = subprocess.run([sys.executable, "-m", "dmdcore", "fetch", "nosuchckpt"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.startswith("error: "), p.stderr
    assert "0.00" not in p.stderr and "B/s" not in p.stderr and "|" not in p.stderr
    _one_line_error(p.stderr)


def test_existing_run_message_names_the_flag(tmp_path, capsys):
    RunDir.create(tmp_path / "r", kind="teacher", experiment={}).release()
    rc, _, err = _run(capsys, "teacher", "--out", tmp_path / "r", *FAST)
    assert rc == 2
    _one_line_error(err)
    assert "--overwrite" in err and "pass overwrite" not in err.replace("pass --overwrite", "")


def test_user_dataset_without_path_names_the_flag(tmp_path, capsys):
    rc, _, err = _run(capsys, "teacher", "--dataset", "user", "--out", tmp_path / "u", *FAST)
    assert rc == 2
    _one_line_error(err)
    assert "--data-path" in err and "DataConfig.path" not in err
    assert not (tmp_path / "u").exists()


# ------------------------------------------------------------------ runs root with bad neighbours
def _fake_run(root: Path, name: str, status: dict | None = None, config=None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(config if config is not None else
                                              {"kind": "teacher", "experiment": {"data": {"dataset": "moons"}}}))
    if status is not None:
        (d / "status.json").write_text(json.dumps(status))
    return d


@pytest.fixture()
def bad_root(tmp_path):
    root = tmp_path / "runs"
    good = _fake_run(root, "good", {"status": "finished", "message": "", "pid": 1, "step": 5})
    _fake_run(root, "badpid", {"status": "running", "message": "", "pid": "abc", "step": 0})
    _fake_run(root, "listcfg", config=[1, 2])
    bom = _fake_run(root, "bom", {"status": "finished", "message": "", "pid": 1, "step": 5})
    (bom / "metrics.csv").write_bytes("\ufeffstep,phase,loss\n5,teacher,0.5\n".encode("utf-8"))
    idx = RunIndex(root)
    with sqlite3.connect(idx.path) as con:  # a row left "running" by a writer whose status.json is bad
        con.execute("INSERT INTO runs (path, kind, status, created, updated, pid) VALUES (?, 'teacher', "
                    "'running', 0, 0, 12)", (str((root / "badpid").resolve()),))
    return root, good, bom


def test_runs_list_marks_unreadable_and_lists_the_rest(bad_root, capsys):
    root, good, _ = bad_root
    rc, out, err = _run(capsys, "runs", "list", "--root", root)
    assert rc == 0, err
    assert "unreadable" in out and "finished" in out
    recs = {Path(r.path).name: r for r in RunIndex(root).list()}
    assert recs["badpid"].status == "unreadable" and "pid" in recs["badpid"].message
    assert recs["listcfg"].status == "unreadable"
    assert recs["good"].status == "finished"
    rc, out, err = _run(capsys, "runs", "show", good)
    assert rc == 0, err


def test_bom_in_metrics_is_read(bad_root):
    _, _, bom = bad_root
    rows = RunDir(bom).read_metrics()
    assert rows == [{"step": 5, "phase": "teacher", "loss": 0.5}]


def test_new_run_beside_bad_neighbours(bad_root, capsys):
    root, _, _ = bad_root
    rc, out, err = _run(capsys, "teacher", "--out", root / "new", *FAST, "--steps", "20", "--eval-every", "10")
    assert rc == 0, err
    assert RunIndex(root).get(root / "new").status == "finished"


def test_bad_status_fields_name_the_field(tmp_path):
    d = _fake_run(tmp_path, "r", {"status": "running", "pid": "abc"})
    with pytest.raises(ValueError, match="field pid"):
        RunDir(d).read_status()


# ------------------------------------------------------------------ exclusive run directories
_HOLD = """
import sys, time
from dmdcore.runs import RunDir
RunDir(sys.argv[1]).claim()
print("claimed", flush=True)
time.sleep(120)
"""


def test_second_writer_is_refused_while_the_first_lives(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(d)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with pytest.raises(RunBusyError, match=f"process {holder.pid}"):
            RunDir.create(d, kind="teacher", experiment={})
        assert not (d / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its stale lock is taken over
    run = RunDir.create(d, kind="teacher", experiment={})
    assert json.loads((d / LOCK_FILE).read_text())["pid"] == os.getpid()
    run.release()
    assert not (d / LOCK_FILE).exists()


def test_refused_writer_never_removes_the_directory_another_writer_claimed(tmp_path, monkeypatch):
    """The race behind a CI failure: two writers both saw `same` missing; the one refused at
    claim time removed the directory (rmtree) the other had claimed and was writing, whose
    config.json rename then failed. A refused writer may remove the directory only while it is
    empty."""
    out = tmp_path / "same"

    def other_writer_claims_first(self):
        (self.path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
        (self.path / ".config.json.x.tmp").write_text("{}")  # the other writer's file in flight
        raise RunBusyError("run_dir: being written by process 1")

    monkeypatch.setattr(RunDir, "claim", other_writer_claims_first)
    with pytest.raises(RunBusyError):
        RunDir.create(out, kind="teacher", experiment={})
    assert (out / ".config.json.x.tmp").exists() and (out / LOCK_FILE).exists()
    # refused on an empty directory it made itself: that one is cleaned up
    monkeypatch.setattr(RunDir, "claim", lambda self: (_ for _ in ()).throw(RunBusyError("busy")))
    with pytest.raises(RunBusyError):
        RunDir.create(tmp_path / "empty", kind="teacher", experiment={})
    assert not (tmp_path / "empty").exists()


def test_racing_cli_writers_never_mix(tmp_path):
    """Two `teacher --out same` started together: exactly one runs, the other is refused with
    exit 2; metrics.csv holds one seed's rows only, matching config.json."""
    out = tmp_path / "same"
    cmd = [sys.executable, "-m", "dmdcore", "teacher", "--out", str(out), *FAST, "--steps", "40", "--eval-every", "10"]
    procs = [subprocess.Popen(cmd + ["--teacher-seed", str(s)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for s in (0, 7)]
    res = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    rcs = sorted(r[0] for r in res)
    assert rcs == [0, 2], res
    loser = next(err for rc, err in res if rc == 2)
    assert "--overwrite" in loser or "being written by process" in loser
    cfg = json.loads((out / "config.json").read_text())
    winner_seed = cfg["experiment"]["teacher"]["seed"]
    rows = RunDir(out).read_metrics()
    assert [r["step"] for r in rows] == [10, 20, 30, 40]  # one writer's rows, no interleaving
    assert winner_seed in (0, 7)


# ------------------------------------------------------------------ disk full
def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_atomic_writes_report_disk_full_and_leave_no_temp(tmp_path, monkeypatch):
    import dmdcore.runs as runs

    real_open = open

    def full_open(path, mode="r", *a, **k):
        if "w" in mode or "a" in mode:
            fh = real_open(path, mode, *a, **k)

            class Full:
                def __enter__(self):
                    return self

                def __exit__(self, *exc):
                    fh.close()

                def write(self, data):
                    _enospc()

                def flush(self):
                    pass

            return Full()
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr("builtins.open", full_open)
    with pytest.raises(DiskFullError, match=f"disk full at {tmp_path / 'x.pt'}"):
        atomic_torch_save(tmp_path / "x.pt", {"a": torch.zeros(3)})
    monkeypatch.setattr("pathlib.Path.write_text", lambda self, *a, **k: _enospc())
    with pytest.raises(DiskFullError, match="disk full at"):
        atomic_write_json(tmp_path / "s.json", {"a": 1})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temp files
    assert runs.is_disk_full(sqlite3.OperationalError("database or disk is full"))


def test_index_full_disk_is_not_called_corrupt(tmp_path, monkeypatch):
    idx = RunIndex(tmp_path)

    def full_connect(*a, **k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(sqlite3, "connect", full_connect)
    with pytest.raises(DiskFullError, match="disk full at .*index.sqlite"):
        RunIndex(tmp_path / "other")
    with pytest.raises(DiskFullError):
        idx.update(1, step=3)
    monkeypatch.undo()
    assert idx.list() == []  # still readable


def test_run_on_full_disk_is_marked_failed_with_last_checkpoint(tmp_path, capsys, monkeypatch):
    """The student phase hits ENOSPC when saving samples: the run fails with exit 1, one line
    saying "disk full at PATH", status.json "failed" naming the last good checkpoint, no temp files,
    and the index stays readable."""
    import dmdcore.runs as runs

    real = runs.RunDir.save_samples
    calls = {"n": 0}

    def full_after_first(self, **kw):
        calls["n"] += 1
        if calls["n"] > 1:
            raise DiskFullError(self.path / "samples.npz")
        return real(self, **kw)

    monkeypatch.setattr(runs.RunDir, "save_samples", full_after_first)
    out = tmp_path / "e"
    rc, _, err = _run(capsys, "experiment", "--out", out, *FAST, "--teacher-steps", "20", "--distill-steps", "20",
                      "--eval-every", "10")
    assert rc == 1
    _one_line_error(err)
    assert "disk full at" in err
    st = json.loads((out / "status.json").read_text())
    assert st["status"] == "failed" and "teacher.pt" in st["message"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp") or p.name == LOCK_FILE]
    assert RunIndex(tmp_path).get(out).status == "failed"


def test_rejected_existing_run_keeps_its_files(tmp_path):
    run = RunDir.create(tmp_path / "r", kind="teacher", experiment={})
    run.release()
    with pytest.raises(RunExistsError):
        RunDir.create(tmp_path / "r", kind="teacher", experiment={})
    assert (tmp_path / "r" / "config.json").exists() and not (tmp_path / "r" / LOCK_FILE).exists()


def test_sqlite_io_error_on_a_full_device_is_disk_full_and_index_reads_on(tmp_path, monkeypatch):
    """SQLite reports a WAL that cannot grow as "disk I/O error": on a device with < 1 MiB free
    that is disk full; an existing index then opens read-only, so listings keep working."""
    import collections
    import shutil

    import dmdcore.runs as runs

    idx = RunIndex(tmp_path)
    run = RunDir.create(tmp_path / "a", kind="teacher", experiment={})
    idx.register(run)
    run.release()
    real_connect = sqlite3.connect

    def io_error(database, *a, **k):
        if k.get("uri"):
            return real_connect(database, *a, **k)
        raise sqlite3.OperationalError("disk I/O error")

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(sqlite3, "connect", io_error)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(100, 100, 0))
    again = RunIndex(tmp_path)
    assert again.read_only
    assert [r.kind for r in again.list()] == ["teacher"]
    with pytest.raises(DiskFullError, match="disk full at"):
        again.update(1, step=2)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 40, 0, 1 << 40))  # plenty free: a real I/O error
    with pytest.raises(ValueError, match="not a readable SQLite run index"):
        RunIndex(tmp_path)
    assert runs.is_disk_full(sqlite3.OperationalError("database or disk is full"))
