"""Background jobs and the concurrency cap (dmdcore.jobs), driven by small stand-in steppers."""

import threading
import time

import numpy as np
import pytest

from dmdcore.jobs import JobManager, Snapshot, TrainingJob


class Counter:
    """A stepper with the full protocol: its published samples are filled with the step number,
    so a snapshot is consistent iff step == samples value."""

    def __init__(self, total=50, sleep=0.0, nan_at=None, raise_at=None, gate=None):
        self.total_steps = total
        self.i = 0
        self.sleep = sleep
        self.nan_at = nan_at
        self.raise_at = raise_at
        self.gate = gate
        self.finalized = []
        self.phases = None
        self._view = {"phase": "teacher", "step": 0, "metrics": [], "history": []}

    @property
    def done(self):
        return self.i >= self.total_steps

    def set_phases(self, phases):
        self.phases = phases

    def step(self):
        if self.gate is not None:
            assert self.gate.wait(20)
        if self.sleep:
            time.sleep(self.sleep)
        if self.raise_at is not None and self.i == self.raise_at:
            raise RuntimeError("boom at step %d" % self.i)
        self.i += 1
        loss = float("nan") if self.nan_at is not None and self.i >= self.nan_at else 1.0 / self.i
        samples = np.full((4, 2), float(self.i), dtype=np.float32)
        hist = list(self._view["history"])
        metrics = list(self._view["metrics"])
        if self.i % 10 == 0:
            samples.setflags(write=False)
            hist.append((self.i, samples))
            metrics.append({"step": self.i, "phase": "student", "delta_e": 1.0 / self.i})
        self._view = {"phase": "student", "step": self.i, "total_steps": self.total_steps,
                      "student_samples": samples, "metrics": metrics, "history": hist, "run_dir": None}
        return {"step": self.i, "loss": loss}

    def view(self):
        return self._view

    def finalize(self, status, message):
        self.finalized.append((status, message))


def test_runs_to_completion_and_finalizes_once():
    exp = Counter(total=37)
    job = TrainingJob(exp, phases=("student",)).start()
    assert job.wait(20)
    snap = job.snapshot()
    assert isinstance(snap, Snapshot)
    assert snap.state == "finished" and snap.step == 37 and exp.i == 37
    assert exp.finalized == [("finished", "finished at step 37")]
    assert exp.phases == ("student",)
    assert [m["step"] for m in snap.metrics] == [10, 20, 30]
    assert [h[0] for h in snap.history] == [10, 20, 30]
    assert snap.train_log[0]["step"] == 1 and snap.train_log[-1]["step"] == 37
    assert snap.eta_s is None and snap.steps_per_s > 0


def test_step_n_then_pause_resume():
    exp = Counter(total=1000, sleep=0.001)
    job = TrainingJob(exp)
    assert job.state == "paused" and job.snapshot().message == "not started"
    job.step_n(5)
    assert job.wait_paused(20)
    assert exp.i == 5 and job.snapshot().step == 5 and job.state == "paused"
    job.step_n(3)
    assert job.wait_paused(20) and exp.i == 8
    time.sleep(0.05)
    assert exp.i == 8  # stays paused
    job.resume()
    time.sleep(0.05)
    job.pause()
    assert job.wait_paused(20)
    n = exp.i
    assert n > 8
    time.sleep(0.05)
    assert exp.i == n
    job.start()  # start() on a paused job resumes it
    assert job.wait(30) and job.state == "finished" and exp.i == 1000


def test_resume_and_step_n_read_running_at_once():
    # A page reruns right after Resume / Step N and decides from the state whether to keep
    # polling: the job must read "running" immediately, not only once its thread wakes up.
    gate = threading.Event()
    gate.set()
    exp = Counter(total=1000, gate=gate)
    job = TrainingJob(exp)
    job.step_n(2)
    assert job.wait_paused(20) and exp.i == 2
    gate.clear()  # the next step blocks until the test releases it
    job.step_n(3)
    assert job.state == "running"
    gate.set()
    assert job.wait_paused(20) and exp.i == 5 and job.state == "paused"
    gate.clear()
    job.resume()
    assert job.state == "running"
    job.pause()
    gate.set()
    assert job.wait_paused(20) and job.state == "paused"
    job.stop()
    assert job.wait(20) and job.state == "stopped"


def test_stop_finalizes_stopped():
    exp = Counter(total=10**9, sleep=0.001)
    job = TrainingJob(exp).start()
    time.sleep(0.05)
    job.stop()
    assert job.wait(20)
    assert job.state == "stopped" and exp.finalized[0][0] == "stopped"
    assert "stopped by user" in job.snapshot().message
    # control calls on an ended job are harmless
    job.pause(), job.resume(), job.step_n(2), job.stop()
    assert job.state == "stopped"


def test_stop_before_start():
    exp = Counter()
    job = TrainingJob(exp)
    job.stop()
    assert job.state == "stopped" and job.wait(1) and exp.i == 0
    job.start()  # an ended job is not restarted
    assert job.state == "stopped" and exp.i == 0


def test_nonfinite_loss_diverges():
    exp = Counter(total=100, nan_at=7)
    job = TrainingJob(exp).start()
    assert job.wait(20)
    snap = job.snapshot()
    assert snap.state == "diverged" and "non-finite loss" in snap.message and exp.i == 7
    assert exp.finalized[0][0] == "diverged"


def test_exception_fails_with_message_and_traceback():
    exp = Counter(total=100, raise_at=4)
    job = TrainingJob(exp).start()
    assert job.wait(20)
    assert job.state == "failed" and "RuntimeError: boom at step 4" in job.snapshot().message
    assert "Traceback" in job.error and exp.finalized[0][0] == "failed"


def test_snapshot_is_a_consistent_copy_while_running():
    exp = Counter(total=3000)
    job = TrainingJob(exp).start()
    seen = 0
    while not job.done:
        snap = job.snapshot()
        if snap.student_samples is not None:
            # the step and the samples were published together
            assert np.all(snap.student_samples == snap.step)
            snap.student_samples[:] = -1  # mutating the copy must not leak into the job
            seen += 1
        for step, arr in snap.history:
            assert np.all(arr == step)
    assert job.wait(20) and seen > 0
    assert np.all(job.snapshot().student_samples == 3000)


def test_train_log_is_thinned_but_spans_the_run():
    exp = Counter(total=5000)
    job = TrainingJob(exp).start()
    assert job.wait(60)
    log = job.snapshot().train_log
    assert 250 <= len(log) <= 1000
    steps = [r["step"] for r in log]
    assert steps[0] == 1 and steps[-1] > 4000 and steps == sorted(steps)


def test_bare_stepper_with_total_steps():
    class Bare:
        def __init__(self):
            self.n = 0

        def step(self):
            self.n += 1
            return {"loss": 0.5}

    bare = Bare()
    job = TrainingJob(bare, total_steps=12).start()
    assert job.wait(10) and bare.n == 12 and job.state == "finished"
    snap = job.snapshot()
    assert snap.total_steps == 12 and snap.step == 12 and snap.phase is None


def test_manager_cap_queues_and_releases():
    gate = threading.Event()
    mgr = JobManager(max_concurrent=2)
    exps = [Counter(total=3, gate=gate) for _ in range(4)]
    jobs = [mgr.submit(e) for e in exps]
    deadline = time.time() + 10
    while not (jobs[0].state == jobs[1].state == "running" and jobs[3].snapshot().message.startswith("queued: 1")):
        assert time.time() < deadline, [j.snapshot().message for j in jobs]
        time.sleep(0.01)
    assert jobs[2].state == "queued"
    assert jobs[2].snapshot().message.startswith("queued: 0 jobs ahead (2 running, cap 2; held by job-1 (running since ")
    assert jobs[3].snapshot().message.startswith("queued: 1 job ahead (2 running, cap 2; held by job-1")
    assert "job-2 (running since" in jobs[3].snapshot().message
    assert mgr.running_count() == 2 and mgr.queued_count() == 2
    jobs[3].stop()  # leaves the queue without ever stepping
    assert jobs[3].wait(10) and jobs[3].state == "stopped" and exps[3].i == 0
    gate.set()
    assert mgr.wait_all(30)
    assert [j.state for j in jobs] == ["finished", "finished", "finished", "stopped"]
    assert [e.i for e in exps] == [3, 3, 3, 0]  # no cross-talk between jobs
    assert mgr.running_count() == 0
    assert [j.job_id for j in mgr.jobs()] == ["job-1", "job-2", "job-3", "job-4"]
    mgr.remove("job-1")
    assert len(mgr.jobs()) == 3
    with pytest.raises(KeyError):
        mgr.get("job-1")


def test_manager_raising_cap_starts_queued_job():
    gate = threading.Event()
    mgr = JobManager(max_concurrent=1)
    a, b = mgr.submit(Counter(total=2, gate=gate)), mgr.submit(Counter(total=2, gate=gate))
    time.sleep(0.1)
    assert b.state == "queued"
    with pytest.raises(ValueError, match="still"):
        mgr.remove(b.job_id)
    mgr.max_concurrent = 2
    deadline = time.time() + 10
    while b.state != "running":
        assert time.time() < deadline
        time.sleep(0.01)
    gate.set()
    assert mgr.wait_all(20) and a.state == b.state == "finished"


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_concurrent"):
        JobManager(max_concurrent=0)
    with pytest.raises(ValueError, match="DMD_MAX_JOBS"):
        JobManager.from_env({"DMD_MAX_JOBS": "lots"})
    with pytest.raises(ValueError, match="DMD_MAX_JOBS"):
        JobManager.from_env({"DMD_MAX_JOBS": "0"})
    assert JobManager.from_env({"DMD_MAX_JOBS": "3"}).max_concurrent == 3
    assert JobManager.from_env({}).max_concurrent == 2
    with pytest.raises(ValueError, match="phases"):
        TrainingJob(Counter(), phases=("teacher", "dessert"))
    with pytest.raises(ValueError, match="step"):
        TrainingJob(object())
    job = TrainingJob(Counter())
    with pytest.raises(ValueError, match="n:"):
        job.step_n(0)


def test_abandoned_sessions_free_their_slots():
    """Two sessions start jobs, pause them and go away (no heartbeat): both end "abandoned"
    after session_timeout_s, their finalize runs, and a third session's queued job starts."""
    gate = threading.Event()
    gate.set()
    mgr = JobManager(max_concurrent=2, session_timeout_s=3.0)
    closed = threading.Event()

    def tabs_open():  # sessions a and b beat until their tabs close
        while not closed.wait(0.05):
            mgr.heartbeat("session-a")
            mgr.heartbeat("session-b")

    beater = threading.Thread(target=tabs_open, daemon=True)
    beater.start()
    exps = [Counter(total=10 ** 9, gate=gate) for _ in range(3)]
    a = TrainingJob(exps[0], manager=mgr, owner="session-a").start()
    b = TrainingJob(exps[1], manager=mgr, owner="session-b").start()
    for j in (a, b):
        j.pause()
        assert j.wait_paused(30)
    c = TrainingJob(exps[2], manager=mgr, owner="session-c").start()
    assert [j.state for j in (a, b, c)] == ["paused", "paused", "queued"]
    assert "held by job-1 (session session-, paused since" in c.snapshot().message
    assert [s["state"] for s in mgr.slots()] == ["paused", "paused"]
    closed.set()
    beater.join()
    deadline = time.time() + 20
    while c.state == "queued":  # c's session keeps beating; a and b do not
        c.heartbeat()
        assert time.time() < deadline, c.snapshot().message
        time.sleep(0.05)
    assert a.wait(10) and b.wait(10)
    assert a.state == b.state == "abandoned"
    assert "session session-" in a.snapshot().message and "no heartbeat" in a.snapshot().message
    assert exps[0].finalized[0][0] == "abandoned"  # finalize saw the status (files kept by Experiment.finalize)
    c.stop()
    assert c.wait(10)


def test_session_timeout_from_env(monkeypatch):
    monkeypatch.setenv("DMD_SESSION_TIMEOUT_S", "7.5")
    assert JobManager(1).session_timeout_s == 7.5
    monkeypatch.setenv("DMD_SESSION_TIMEOUT_S", "soon")
    with pytest.raises(ValueError, match="DMD_SESSION_TIMEOUT_S"):
        JobManager(1)
