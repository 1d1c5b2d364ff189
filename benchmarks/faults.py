"""Fault drill (issue 15): kill -9, full disk, racing writers and abandoned sessions against the
real CLI / job manager, then checks that every run root is still readable, nothing was mixed
and no Python traceback reached a user.

    python benchmarks/faults.py [--kills 4] [--work DIR]

Prints one line per fault and finally
``RESULT faults=N survived=N data_mixed=0 tracebacks=0``.

- kill -9: a CLI experiment is killed at a random step; ``runs list`` must work, the run must be
  marked failed, and a re-run into the same directory with --overwrite must succeed (its stale
  .lock is taken over); the neighbouring finished run must be byte-identical afterwards.
- full disk: a CLI experiment runs on a tiny tmpfs (when this process may mount one; otherwise
  ENOSPC is injected into the child's writes after a byte budget); it must exit 1 with one line
  "disk full at PATH", leave no temporary file, and the index must stay readable.
- racing writers: two ``teacher --out SAME`` with different seeds start together; exactly one
  may run, the other is refused (exit 2), and metrics.csv must hold one seed's rows only.
- abandoned session: two owned Toy-Lab-style jobs are paused and their session stops beating;
  both must end ``abandoned`` with their files kept, and a queued third job must get a slot.
- sweeps: two ``sweep SPEC --out SAME`` at once (one must be refused, exit 2, and every cell of
  the other must finish), and a sweep process killed while its two workers run: no cell may start
  after the kill.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FAST = ["--quick", "--threads", "1", "--no-progress"]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")

# A child that runs the CLI with ENOSPC injected after DMD_FAULT_BYTES bytes written under a folder.
_ENOSPC_CHILD = r"""
import builtins, errno, os, sys
limit, under = int(os.environ["DMD_FAULT_BYTES"]), os.environ["DMD_FAULT_DIR"]
used = [0]
real_open = builtins.open


class Guard:
    def __init__(self, fh):
        self._fh = fh

    def write(self, data):
        used[0] += len(data)
        if used[0] > limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()

    def __iter__(self):
        return iter(self._fh)


def guarded(file, mode="r", *a, **k):
    fh = real_open(file, mode, *a, **k)
    if isinstance(file, (str, os.PathLike)) and os.fspath(file).startswith(under) and any(c in mode for c in "wa+"):
        return Guard(fh)
    return fh


builtins.open = guarded
from dmdcore.cli import main
sys.exit(main(sys.argv[1:]))
"""


class Tally:
    def __init__(self):
        self.faults = self.survived = self.mixed = self.tracebacks = 0

    def record(self, name: str, ok: bool, detail: str, *stderrs: str, mixed: bool = False) -> None:
        self.faults += 1
        self.survived += bool(ok)
        self.mixed += bool(mixed)
        tb = sum("Traceback" in (e or "") for e in stderrs)
        self.tracebacks += tb
        print(f"{'ok  ' if ok and not tb else 'FAIL'} {name}: {detail}", flush=True)
        for e in stderrs:
            if "Traceback" in (e or ""):
                print("     traceback seen: " + " | ".join(e[e.index("Traceback"):].splitlines()[-4:])[:400])


def cli(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dmdcore", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env or ENV)


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def temp_files(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]


# ------------------------------------------------------------------ kill -9
def kill9(t: Tally, work: Path, kills: int, rng: random.Random) -> None:
    root = work / "kill"
    ref = cli("experiment", "--out", root / "done", *FAST, "--teacher-steps", "40", "--distill-steps", "20")
    before = digest(root / "done")
    for i in range(kills):
        out = root / f"k{i}"
        args = [sys.executable, "-m", "dmdcore", "experiment", "--out", str(out), *FAST,
                "--teacher-steps", "200", "--distill-steps", "60"]
        p = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # wait for the run to exist and reach a random step, then SIGKILL it
        target = rng.randint(1, 150)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and p.poll() is None:
            try:
                if json.loads((out / "status.json").read_text()).get("step", 0) >= target:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        p.kill()
        p.wait()
        ls = cli("runs", "list", "--root", root, "--json")
        try:
            recs = {Path(r["path"]).name: r for r in json.loads(ls.stdout)}
        except ValueError:
            recs = {}
        marked = recs.get(out.name, {}).get("status") in ("failed", "finished")
        again = cli("experiment", "--out", out, *FAST, "--teacher-steps", "20", "--distill-steps", "10",
                    "--overwrite")
        same = digest(root / "done") == before
        ok = ls.returncode == 0 and marked and again.returncode == 0 and same and ref.returncode == 0
        t.record(f"kill -9 #{i} at step >= {target}", ok,
                 f"list rc {ls.returncode}, marked {recs.get(out.name, {}).get('status')}, rerun rc "
                 f"{again.returncode}, neighbour intact {same}", p.stderr.read() if p.stderr else "", ls.stderr,
                 again.stderr, mixed=not same)


# ------------------------------------------------------------------ full disk
def _mount_tmpfs(where: Path, size_k: int) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_k}k", "tmpfs", str(where)], capture_output=True)
    return r.returncode == 0


def full_disk(t: Tally, work: Path, mount: bool = True) -> None:
    for size_k in (64, 128, 200):
        where = work / f"full{size_k}"
        mounted = mount and _mount_tmpfs(where, size_k)
        where.mkdir(parents=True, exist_ok=True)
        try:
            out = where / "run"
            args = ["experiment", "--out", out, *FAST, "--teacher-steps", "40", "--distill-steps", "30"]
            if mounted:
                r = cli(*args)
                how = f"tmpfs {size_k} KiB"
            else:
                env = dict(ENV, DMD_FAULT_BYTES=str(size_k * 1024), DMD_FAULT_DIR=str(where))
                r = subprocess.run([sys.executable, "-c", _ENOSPC_CHILD, *map(str, args)], cwd=ROOT, env=env,
                                   capture_output=True, text=True, timeout=600)
                how = f"ENOSPC after {size_k} KiB"
            lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
            ls = cli("runs", "list", "--root", where)
            tmp = temp_files(where)
            if r.returncode == 0:
                ok = not tmp and ls.returncode == 0
                detail = "the run fitted"
            else:
                ok = (r.returncode in (1, 2) and len(lines) == 1 and "disk full at" in lines[0] and not tmp
                      and ls.returncode in (0, 1, 2) and "Traceback" not in ls.stderr)
                detail = f"rc {r.returncode}: {lines[-1][:110] if lines else ''}"
            t.record(f"full disk ({how})", ok, f"{detail}; temp files {len(tmp)}; runs list rc {ls.returncode}",
                     r.stderr, ls.stderr)
        finally:
            if mounted:
                subprocess.run(["umount", str(where)], capture_output=True)


# ------------------------------------------------------------------ racing writers
def racing(t: Tally, work: Path, tries: int = 3) -> None:
    for i in range(tries):
        out = work / "race" / f"same{i}"
        cmd = [sys.executable, "-m", "dmdcore", "teacher", "--out", str(out), *FAST, "--steps", "40",
               "--eval-every", "10"]
        procs = [subprocess.Popen(cmd + ["--teacher-seed", str(s)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for s in (0, 7)]
        res = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
        rcs = sorted(r[0] for r in res)
        from dmdcore.runs import RunDir

        rows = RunDir(out).read_metrics() if (out / "metrics.csv").exists() else []
        steps = [r["step"] for r in rows]
        mixed = rcs == [0, 0] or steps != sorted(set(steps))
        ok = rcs == [0, 2] and not mixed
        t.record(f"racing writers #{i}", ok, f"exit codes {rcs}, metrics steps {steps}",
                 *[r[1] for r in res], mixed=mixed)


# ------------------------------------------------------------------ abandoned sessions
def abandoned(t: Tally, work: Path) -> None:
    from dmdcore.config import DataConfig, DistillConfig, EvalConfig, ExperimentConfig, SamplerConfig, TeacherConfig
    from dmdcore.jobs import JobManager, TrainingJob
    from dmdcore.pipeline import Experiment
    from dmdcore.runs import RunIndex

    cfg = ExperimentConfig(data=DataConfig(n_samples=2000), teacher=TeacherConfig(width=32, depth=2, steps=100000),
                           sampler=SamplerConfig(steps=4), distill=DistillConfig(steps=10, batch=64),
                           eval=EvalConfig(every=50, n=128, bootstrap=0))
    root = work / "sessions"
    index = RunIndex(root)
    mgr = JobManager(max_concurrent=2, session_timeout_s=2.0)
    open_tabs = threading.Event()
    open_tabs.set()

    def beat():
        while open_tabs.is_set():
            mgr.heartbeat("tab-a")
            mgr.heartbeat("tab-b")
            time.sleep(0.1)

    threading.Thread(target=beat, daemon=True).start()
    jobs = [TrainingJob(Experiment(cfg, run_dir=root / n, index=index), manager=mgr, owner=f"tab-{n}").start()
            for n in ("a", "b")]
    for j in jobs:
        j.step_n(60)  # past the first evaluation (every 50): metrics.csv exists
        j.wait_paused(120)
    third = TrainingJob(Experiment(cfg, run_dir=root / "c", index=index), manager=mgr, owner="tab-c")
    third.start()
    queued_msg = third.snapshot().message
    open_tabs.clear()  # tabs a and b close
    deadline = time.monotonic() + 60
    while third.state == "queued" and time.monotonic() < deadline:
        third.heartbeat()
        time.sleep(0.1)
    got_slot = third.state != "queued"
    third.stop()
    for j in (*jobs, third):
        j.wait(120)
    states = [j.state for j in jobs]
    on_disk = [json.loads((root / n / "status.json").read_text())["status"] for n in ("a", "b")]
    kept = all((root / n / "config.json").exists() and (root / n / "metrics.csv").exists() for n in ("a", "b"))
    idx = [index.get(root / n).status for n in ("a", "b")]
    ok = states == ["abandoned"] * 2 and on_disk == ["abandoned"] * 2 and idx == on_disk and kept and got_slot \
        and "held by" in queued_msg
    t.record("abandoned sessions (2 paused jobs, tabs closed)", ok,
             f"job states {states}, status.json {on_disk}, index {idx}, files kept {kept}, third job got a slot "
             f"{got_slot}; queue said: {queued_msg[:100]}")


# ------------------------------------------------------------------ sweeps: racing and orphaned workers
DRILL_SPEC = {
    "name": "drill",
    "base": {"data": {"dataset": "8gaussians", "n_samples": 2000},
             "teacher": {"width": 32, "depth": 2, "steps": 60, "batch": 128},
             "sampler": {"steps": 4},
             "distill": {"steps": 300, "batch": 64, "ratio": 1},
             "eval": {"every": 100, "n": 128, "bootstrap": 0}},
    "grid": {"distill.seed": [0, 1, 2, 3, 4, 5, 6, 7]},
}


def racing_sweeps(t: Tally, work: Path) -> None:
    spec = work / "drill.json"
    spec.write_text(json.dumps(DRILL_SPEC))
    out = work / "sweep-race"
    cmd = [sys.executable, "-m", "dmdcore", "sweep", str(spec), "--out", str(out), "--workers", "1"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    res = [(p.wait(timeout=900), p.stderr.read()) for p in procs]
    rcs = sorted(r[0] for r in res)
    loser = [err for rc, err in res if rc == 2]
    from dmdcore import sweep as sw

    table = sw.results_table(out)
    mixed = rcs == [0, 0] or int((table["status"] == "finished").sum()) != len(table)
    ok = rcs == [0, 2] and not mixed and bool(loser) and "being written by process" in loser[0]
    t.record("two sweeps in one directory", ok, f"exit codes {rcs}; refused with: "
             f"{(loser[0].strip().splitlines() or [''])[-1][:100] if loser else '-'}", *[r[1] for r in res],
             mixed=mixed)


def orphaned_workers(t: Tally, work: Path) -> None:
    spec = work / "drill.json"
    spec.write_text(json.dumps(DRILL_SPEC))
    out = work / "sweep-orphan"
    cmd = [sys.executable, "-m", "dmdcore", "sweep", str(spec), "--out", str(out), "--workers", "2"]
    err = (work / "orphan.stderr").open("w+")  # a file, not a pipe: orphans may hold it open
    p = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=err, text=True)
    cells = out / "cells"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not (cells.is_dir() and any(cells.iterdir())):
        time.sleep(0.05)
    p.kill()  # kill -9 the sweep process while its workers run the first cells
    p.wait()
    at_kill = {c.name for c in cells.iterdir()} if cells.is_dir() else set()
    time.sleep(8)  # long enough for an orphan to pick up a queued cell (it used to for ~20 s)
    later = {c.name for c in cells.iterdir()} if cells.is_dir() else set()
    started_after = sorted(later - at_kill)
    ok = not started_after and len(at_kill) < len(DRILL_SPEC["grid"]["distill.seed"])
    err.seek(0)
    t.record("sweep process killed (orphaned workers)", ok,
             f"cells started before the kill {len(at_kill)}, after it {len(started_after)}", err.read())
    err.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed after)")
    ap.add_argument("--no-mount", action="store_true", help="inject ENOSPC instead of mounting a tmpfs")
    ap.add_argument("--only", default=None,
                    help="comma-separated subset of kill,disk,race,sessions,sweeps (default: all)")
    a = ap.parse_args()
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="dmd-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    t = Tally()
    t0 = time.perf_counter()
    try:
        only = set(a.only.split(",")) if a.only else {"kill", "disk", "race", "sessions", "sweeps"}
        if "kill" in only:
            kill9(t, work, a.kills, random.Random(a.seed))
        if "disk" in only:
            full_disk(t, work, mount=not a.no_mount)
        if "race" in only:
            racing(t, work)
        if "sessions" in only:
            abandoned(t, work)
        if "sweeps" in only:
            racing_sweeps(t, work)
            orphaned_workers(t, work)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"# {time.perf_counter() - t0:.0f} s, load average {load:.1f}")
    print(f"RESULT faults={t.faults} survived={t.survived} data_mixed={t.mixed} tracebacks={t.tracebacks}")
    return 0 if t.faults == t.survived and not t.mixed and not t.tracebacks else 1


if __name__ == "__main__":
    sys.exit(main())
