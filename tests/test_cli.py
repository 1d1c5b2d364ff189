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
    # byte for byte: metrics.csv holds no clock (timings are in timing.csv)
    assert (root / "t1" / "metrics.csv").read_bytes() == (tmp_path / "again" / "metrics.csv").read_bytes()
    assert len(_rows(tmp_path / "again" / "metrics.csv")) == 120 // 15
    timing = RunDir(tmp_path / "again").read_timing()
    assert [r["step"] for r in timing] == [15 * (i + 1) for i in range(8)] and timing[-1]["wall_s"] > 0


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
    # nothing is created for rejected input: no run directory, no index.sqlite in the runs root
    assert list(tmp_path.iterdir()) == []


def test_rejected_config_leaves_no_files_in_runs_root(tmp_path, capsys):
    root = tmp_path / "root"
    assert main(["teacher", "--bootstrap", "5", "--out", str(tmp_path / "r"), "--runs-root", str(root), *FAST]) == 2
    assert "EvalConfig.bootstrap" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _exit_code(argv):
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize(
    "argv, field",
    [
        (["teacher", "--steps", "0"], "--steps"),
        (["experiment", "--distill-steps", "-3"], "--distill-steps"),
        (["distill", "--teacher", "moons", "--ratio", "0"], "--ratio"),
        (["teacher", "--dim", "0"], "--dim"),
        (["teacher", "--dim", "-2"], "--dim"),
        (["teacher", "--dataset", "nope"], "--dataset"),
        (["teacher", "--lr", "0"], "lr"),
        (["teacher", "--lr", "-1e-3"], "lr"),
        (["distill", "--teacher", "moons", "--lr-gen", "0"], "lr_gen"),
        (["runs", "list", "--status", "bogus"], "--status"),
    ],
)
def test_argument_errors_exit_2_with_exactly_one_stderr_line(argv, field, tmp_path, capsys):
    out_args = [] if argv[0] == "runs" else ["--out", str(tmp_path / "r"), *FAST]
    assert _exit_code([*argv, *out_args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and captured.err.endswith("\n"), captured.err  # no usage block
    assert "error: " in lines[0] and field in lines[0]
    assert "usage:" not in captured.err and captured.out == ""
    assert list(tmp_path.iterdir()) == []


def test_usage_error_line_names_the_reason_and_help():
    r = _cli("teacher", "--steps", "0", "--out", "never-created", timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == "python -m dmdcore teacher: error: argument --steps: 0 is not >= 1 (see --help)\n"
    assert not (REPO / "never-created").exists()


def test_value_error_during_the_run_is_a_failed_run_exit_1(tmp_path, capsys, monkeypatch):
    """A ValueError raised after the run started is not bad input: exit 1, status failed."""
    from dmdcore import distill

    orig, calls = distill.TeacherTrainer.step, {"n": 0}

    def step(self):
        calls["n"] += 1
        if calls["n"] == 20:
            raise ValueError("boom: something inside training")
        return orig(self)

    monkeypatch.setattr(distill.TeacherTrainer, "step", step)
    out = tmp_path / "t"
    # --no-twin: the twin teacher trains in the same loop and would share the patched step count
    assert main(["teacher", "--out", str(out), *FAST, "--no-twin", "--steps", "60"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: run failed") and "boom" in err
    run = RunDir(out)
    st = run.read_status()
    assert st["status"] == "failed" and "boom" in st["message"] and st["step"] == 19
    assert [r["step"] for r in run.read_metrics()] == [15]
    assert RunIndex(tmp_path).get(out).status == "failed"


def test_diverged_run_exits_1_and_keeps_last_good_checkpoint(tmp_path, capsys):
    from dmdcore.toy import load_toy_model

    out = tmp_path / "s"
    rc = main(["distill", "--teacher", "moons", "--out", str(out), *FAST, "--lr-gen", "1e6", "--lr-fake", "1e6"])
    assert rc == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: diverged") and captured.out.startswith(f"diverged: {out}")
    run = RunDir(out)
    st = run.read_status()
    assert st["status"] == "diverged" and "not finite" in st["message"]
    rows = run.read_metrics()
    assert rows and all(r["delta_e"] is not None for r in rows)  # only good evaluations were written
    for role in ("student", "fake"):
        den, meta = load_toy_model(run.checkpoint_path(role), device="cpu")
        assert meta["role"] == role and meta["step"] == rows[-1]["step"]
        assert all(torch.isfinite(v).all() for v in den.state_dict().values())
    assert RunIndex(tmp_path).get(out).status == "diverged"


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
