"""The command line (python -m dmdcore): end to end with --quick, bad input, re-running a config,
and a process killed mid-run."""

import contextlib
import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dmdcore.cli import build_parser, main
from dmdcore.runs import RunDir, RunIndex

REPO = Path(__file__).resolve().parents[1]
FAST = ["--quick", "--threads", "1", "--no-progress"]


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "dmdcore", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """The documented example, with --quick, through a real subprocess."""
    root = tmp_path_factory.mktemp("runs")
    t = _cli("teacher", "--dataset", "8gaussians", "--out", root / "t1", *FAST)
    assert t.returncode == 0, t.stderr
    # the second half in-process (same entry point, without a second interpreter start-up)
    with contextlib.redirect_stdout(io.StringIO()) as buf:
        rc = main(["distill", "--teacher", str(root / "t1"), "--out", str(root / "s1"), *FAST])
    assert rc == 0
    return root, t.stdout, buf.getvalue()


def test_example_teacher_then_distill(quick_runs):
    root, t, s = quick_runs
    assert t.startswith(f"finished: {root / 't1'}") and "w2_data=" in t
    assert s.startswith(f"finished: {root / 's1'}") and "delta_e=" in s
    rows = _rows(root / "s1" / "metrics.csv")
    assert [r["step"] for r in rows] == ["0", "15", "30"] and {r["phase"] for r in rows} == {"student"}
    assert all(0 <= float(r["delta_e"]) < 5 for r in rows)  # a delta_e column over steps
    cfg = json.loads((root / "s1" / "config.json").read_text())
    assert cfg["kind"] == "distill" and cfg["teacher_source"] == str((root / "t1").resolve())
    assert cfg["experiment"]["teacher"] == json.loads((root / "t1" / "config.json").read_text())["experiment"]["teacher"] | {
        "sigma_data": cfg["experiment"]["teacher"]["sigma_data"]}
    for role in ("teacher", "student", "fake"):
        assert torch.load(root / "s1" / f"{role}.pt", weights_only=True)["role"] == role
    recs = RunIndex(root).list()  # both share the parent's index
    assert [(r.kind, r.status) for r in recs] == [("teacher", "finished"), ("distill", "finished")]


def test_runs_list_and_show(quick_runs, capsys):
    root, _, _ = quick_runs
    assert main(["runs", "list", "--root", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["id", "status", "kind"]
    assert [line.split()[1:3] for line in out[1:]] == [["finished", "teacher"], ["finished", "distill"]]
    assert main(["runs", "list", "--root", str(root), "--kind", "distill", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 1 and listed[0]["path"] == str((root / "s1").resolve())
    assert main(["runs", "show", str(root / "s1")]) == 0
    text = capsys.readouterr().out
    assert "status     finished" in text and "student step 30: delta_e=" in text
    assert main(["runs", "show", "2", "--root", str(root), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"]["status"] == "finished" and shown["metrics"][-1]["step"] == 30


def test_config_json_reproduces_the_run(quick_runs, tmp_path, capsys):
    root, _, _ = quick_runs
    assert main(["teacher", "--config", str(root / "t1" / "config.json"), "--out", str(tmp_path / "again"),
                 "--threads", "1", "--no-progress"]) == 0
    a, b = _rows(root / "t1" / "metrics.csv"), _rows(tmp_path / "again" / "metrics.csv")
    for r in a + b:
        r.pop("wall_s")
    assert a == b and len(a) == 120 // 15


def test_distill_from_shipped_teacher_name(tmp_path, capsys):
    assert main(["distill", "--teacher", "moons", "--out", str(tmp_path / "s"), "--steps", "15", *FAST]) == 0
    cfg = RunDir(tmp_path / "s").read_config()
    assert cfg["teacher_source"] == "manifest:moons" and cfg["experiment"]["data"]["dataset"] == "moons"
    assert [r["step"] for r in RunDir(tmp_path / "s").read_metrics()] == [0, 15]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["teacher", "--dataset", "8gaussians", "--dim", "3"], "DataConfig.dim: 3 not in"),
        (["teacher", "--bootstrap", "5"], "EvalConfig.bootstrap: 5 not in"),
        (["teacher", "--eval-n", "5000"], "EvalConfig.n: 5000 not in"),
        (["teacher", "--lr", "-1"], "TeacherConfig.lr: -1.0 not in"),
        (["distill", "--teacher", "/no/such/run"], "teacher: '/no/such/run' does not exist"),
        (["distill", "--teacher", "no-such-teacher"], "neither an existing path nor a shipped teacher"),
        (["distill"], "--teacher: required"),
        (["teacher", "--config", "/no/such/config.json"], "--config: '/no/such/config.json' is not a file"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, tmp_path, capsys):
    out = tmp_path / "r"
    assert main([*argv, "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()  # nothing is created for rejected input


def test_argparse_errors_and_existing_run(quick_runs, capsys):
    root, _, _ = quick_runs
    for argv in (["teacher", "--dataset", "nope", "--out", "x"], ["teacher", "--steps", "0", "--out", "x"],
                 ["teacher"], ["teacher", "--device", "tpu", "--out", "x"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "error:" in capsys.readouterr().err
    assert main(["teacher", "--out", str(root / "t1"), *FAST]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["runs", "list", "--root", str(root / "nope")]) == 2
    assert main(["runs", "show", "99", "--root", str(root)]) == 2
    assert "id 99 is not in the index" in capsys.readouterr().err


def test_every_command_has_help(capsys):
    for argv in (["--help"], ["teacher", "--help"], ["distill", "--help"], ["experiment", "--help"],
                 ["runs", "list", "--help"], ["runs", "show", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--quick" in text and "--teacher" in text
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"teacher", "distill", "experiment", "runs", "sweep", "fetch"} <= set(commands)


def _start_long_teacher(out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dmdcore", "teacher", "--out", str(out), *FAST, "--steps", "1000000", "--eval-every", "10"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for_rows(run_dir: Path, n: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while len(RunDir(run_dir).read_metrics()) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.2)


def test_killed_mid_run_sigkill_failed_sigterm_stopped(tmp_path, capsys):
    """Two long runs at once: SIGKILL leaves a readable run the index marks failed; SIGTERM stops
    at a step boundary with status stopped (exit 143)."""
    killed, termed = _start_long_teacher(tmp_path / "k"), _start_long_teacher(tmp_path / "t")
    _wait_for_rows(tmp_path / "k", 2, killed)
    killed.send_signal(signal.SIGKILL)
    _wait_for_rows(tmp_path / "t", 1, termed)
    termed.send_signal(signal.SIGTERM)
    killed.wait(30)
    _, err = termed.communicate(timeout=60)

    run = RunDir(tmp_path / "k")
    assert run.read_status()["status"] == "running"  # nobody could write anything else
    rows = run.read_metrics()
    assert len(rows) >= 2 and [r["step"] for r in rows] == [10 * (i + 1) for i in range(len(rows))]
    assert torch.load(run.checkpoint_path("teacher"), weights_only=True)["format"] == "dmdcore.toy.v1"
    assert main(["runs", "list", "--root", str(tmp_path), "--status", "failed"]) == 0  # notices the dead process
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].split()[1] == "failed" and out[1].endswith("k")
    rec = RunIndex(tmp_path).get(run.path)
    assert rec.status == "failed" and "interrupted" in rec.message
    assert run.read_status()["status"] == "failed"
    with sqlite3.connect(tmp_path / "index.sqlite") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    assert termed.returncode == 143, err
    run = RunDir(tmp_path / "t")
    st = run.read_status()
    assert st["status"] == "stopped"
    assert run.read_metrics()[-1]["step"] == st["step"]  # evaluated at the stop step
    assert RunIndex(tmp_path).get(run.path).status == "stopped"
