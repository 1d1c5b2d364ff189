"""The experiment pipeline (dmdcore.pipeline): saved runs are complete and reproducible, every
saved number can be recomputed from the saved samples/checkpoints, jobs drive it, faults are kept."""

import csv
import json

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from dmdcore import pairing, pipeline
from dmdcore.config import DataConfig, DistillConfig, EvalConfig, ExperimentConfig, SamplerConfig, TeacherConfig
from dmdcore.jobs import JobManager, TrainingJob
from dmdcore.pipeline import Experiment, load_teacher, resolve_teacher
from dmdcore.runs import METRIC_COLUMNS, RunDir, RunIndex
from dmdcore.toy import ToyTeacher, load_toy_model


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run fastest on one thread (and the CI box is shared); restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_cfg(dataset="8gaussians", dim=2, **distill):
    return ExperimentConfig(
        data=DataConfig(dataset=dataset, dim=dim, n_samples=600, n_modes=4 if dataset == "mixture" else 8),
        teacher=TeacherConfig(width=32, depth=2, emb_dim=16, steps=40, batch=128),
        sampler=SamplerConfig(steps=6),
        distill=DistillConfig(**{"steps": 12, "batch": 64, "ratio": 2, "lr_gen": 1e-3, **distill}),
        eval=EvalConfig(every=6, n=128, bootstrap=20),
        name="tiny",
    )


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A finished tiny teacher-only run, shared by the tests below."""
    root = tmp_path_factory.mktemp("runs")
    exp = Experiment(tiny_cfg(), run_dir=root / "t", index=RunIndex(root), device="cpu", phases=("teacher",))
    exp.run()
    assert exp.status == "finished"
    return root / "t"


def _metrics(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _assignment_cost(a, b):
    c = ((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1)
    r, k = linear_sum_assignment(c)
    return c[r, k].mean()


def test_same_config_same_seed_identical_run(tmp_path):
    cfg = tiny_cfg()
    for name in ("a", "b"):
        Experiment(cfg, run_dir=tmp_path / name, device="cpu").run()
    # metrics.csv byte for byte (no clock in it: timings are in timing.csv)
    assert (tmp_path / "a" / "metrics.csv").read_bytes() == (tmp_path / "b" / "metrics.csv").read_bytes()
    ma = _metrics(tmp_path / "a" / "metrics.csv")
    ta, tb = RunDir(tmp_path / "a").read_timing(), RunDir(tmp_path / "b").read_timing()
    assert [(r["step"], r["phase"]) for r in ta] == [(r["step"], r["phase"]) for r in tb] == [
        (int(r["step"]), r["phase"]) for r in ma]
    assert all(r["wall_s"] >= 0 for r in ta) and ta[-1]["wall_s"] > ta[0]["wall_s"]
    assert [r["phase"] for r in ma].count("teacher") == 40 // 6 + 1
    assert [r["step"] for r in ma if r["phase"] == "student"] == ["0", "6", "12"]
    sa, sb = RunDir(tmp_path / "a").load_samples(), RunDir(tmp_path / "b").load_samples()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])
    # another seed gives another run
    Experiment(cfg.replace(distill=cfg.distill.replace(seed=1)), run_dir=tmp_path / "c", device="cpu").run()
    mc = _metrics(tmp_path / "c" / "metrics.csv")
    assert [r for r in mc if r["phase"] == "teacher"] == [r for r in ma if r["phase"] == "teacher"]
    assert [r["delta_e"] for r in mc if r["phase"] == "student"][-1] != [r["delta_e"] for r in ma if r["phase"] == "student"][-1]


def test_run_directory_is_complete_and_numbers_recompute(tmp_path):
    cfg = tiny_cfg()
    index = RunIndex(tmp_path)
    exp = Experiment(cfg, run_dir=tmp_path / "e", index=index, device="cpu")
    last = exp.run()
    run = RunDir(tmp_path / "e")
    # config.json reproduces the run's config exactly
    saved = run.read_config()
    assert saved["kind"] == "experiment" and saved["teacher_source"] is None
    assert ExperimentConfig.from_dict(saved["experiment"]) == cfg
    assert tuple(open(run.path / "metrics.csv").readline().strip().split(",")) == METRIC_COLUMNS
    assert "wall_s" not in METRIC_COLUMNS and all("wall_s" not in r for r in exp.metrics)
    assert open(run.path / "timing.csv").readline().strip() == "step,phase,wall_s"
    assert run.read_timing() == exp.timing and len(exp.timing) == len(exp.metrics)
    st = run.read_status()
    assert st["status"] == "finished" and st["step"] == 40 + 12
    rec = index.get(run.path)
    assert rec.status == "finished" and rec.delta_e == pytest.approx(last["delta_e"]) and rec.dataset == "8gaussians"

    s = run.load_samples()
    z, t, x = s["z"], s["teacher"], s["student"]
    assert z.shape == t.shape == x.shape == (128, 2)
    # z is the seeded evaluation noise
    np.testing.assert_array_equal(z, torch.randn(128, 2, generator=torch.Generator().manual_seed(cfg.eval.seed)).numpy())
    # the saved teacher reproduces T(z); the saved student reproduces S(z) = D_G(80 z; 80)
    teacher = ToyTeacher.load(run.checkpoint_path("teacher"), device="cpu")
    np.testing.assert_allclose(teacher.sample(torch.from_numpy(z), cfg.sampler).numpy(), t, rtol=1e-5, atol=1e-5)
    G, meta = load_toy_model(run.checkpoint_path("student"), device="cpu")
    assert meta["role"] == "student" and meta["step"] == 12
    with torch.no_grad():
        np.testing.assert_allclose(G(80.0 * torch.from_numpy(z), 80.0).numpy(), x, rtol=1e-5, atol=1e-5)
    _, fmeta = load_toy_model(run.checkpoint_path("fake"), device="cpu")
    assert fmeta["role"] == "fake"
    # ΔE, W₂² and retrieval of the last row, recomputed independently (scipy assignment)
    e_pair = ((x.astype(np.float64) - t) ** 2).sum(1).mean()
    e_ot = _assignment_cost(x, t)
    e_ind = ((x[:, None, :].astype(np.float64) - t[None, :, :]) ** 2).sum(-1).mean()
    assert last["e_pair"] == pytest.approx(e_pair, rel=1e-6)
    assert last["e_ot"] == pytest.approx(e_ot, rel=1e-6) and last["w2"] == pytest.approx(e_ot, rel=1e-6)
    assert last["delta_e"] == pytest.approx((e_pair - e_ot) / (e_ind - e_ot), rel=1e-6)
    # the CI is the pairing module's bootstrap on these samples (empty when it is undefined,
    # e.g. a resample of a still-collapsed student has no spread)
    try:
        ref = pairing.pairing_inefficiency(x, t, bootstrap=cfg.eval.bootstrap, seed=cfg.eval.seed)
        assert (last["delta_e_lo"], last["delta_e_hi"]) == pytest.approx((ref.ci_low, ref.ci_high), rel=1e-6)
    except ValueError:
        assert last["delta_e_lo"] is None and last["delta_e_hi"] is None
    d2 = ((x[:, None, :].astype(np.float64) - t[None, :, :]) ** 2).sum(-1)
    assert last["retrieval"] == pytest.approx(np.mean(d2.argmin(1) == np.arange(128)))
    # copy rate with the true 8gaussians centres
    angles = np.arange(8) * 2 * np.pi / 8
    centers = 2.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
    mode = lambda a: ((a[:, None, :] - centers[None]) ** 2).sum(-1).argmin(1)  # noqa: E731
    assert last["copy_rate"] == pytest.approx(np.mean(mode(x) == mode(t)))
    assert last["copy_k"] == 8  # the K of the copy rate's chance level 1/K
    # η(S) = E‖S(z) − z‖² / W₂²(z, S(z)) − 1
    eta_s = ((x.astype(np.float64) - z) ** 2).sum(1).mean() / _assignment_cost(x, z) - 1
    assert last["eta_student"] == pytest.approx(eta_s, rel=1e-5, abs=1e-9)
    # history: one student snapshot per student evaluation
    assert s["history_steps"].tolist() == [0, 6, 12]
    np.testing.assert_array_equal(s["history_student"][-1], x)


def test_distill_from_teacher_sources(teacher_run, tmp_path):
    pt, canon = resolve_teacher(teacher_run)
    assert pt == teacher_run / "teacher.pt" and canon == str(teacher_run.resolve())
    teacher = load_teacher(teacher_run, device="cpu")
    assert teacher.dim == 2 and teacher.data_config == tiny_cfg().data
    cfg = tiny_cfg()
    exp = Experiment(cfg, run_dir=tmp_path / "s", teacher=str(teacher_run / "teacher.pt"), device="cpu")
    assert exp.phases == ("student",) and exp.total_steps == 12
    exp.run()
    run = RunDir(tmp_path / "s")
    assert run.read_config()["teacher_source"] == str((teacher_run / "teacher.pt").resolve())
    assert {r["phase"] for r in run.read_metrics()} == {"student"}
    # the run holds a copy of its teacher, so it can itself serve as a teacher source
    assert load_teacher(run.path, device="cpu").step == teacher.step
    with pytest.raises(ValueError, match="data"):
        Experiment(cfg.replace(data=cfg.data.replace(seed=5)), teacher=teacher, device="cpu")
    with pytest.raises(ValueError, match="teacher"):
        load_teacher(tmp_path / "nope", device="cpu")
    with pytest.raises(ValueError, match="shipped teacher"):
        load_teacher("manifest:no-such-teacher")
    with pytest.raises(ValueError, match="phases"):
        Experiment(cfg, teacher=teacher, device="cpu", phases=("teacher",))


def test_bad_configs_name_the_field(tmp_path):
    cfg = tiny_cfg()
    with pytest.raises(ValueError, match="EvalConfig.bootstrap"):
        Experiment(cfg.replace(eval=cfg.eval.replace(bootstrap=5)), device="cpu")
    with pytest.raises(ValueError, match="EvalConfig.n"):
        Experiment(cfg.replace(eval=cfg.eval.replace(n=5000)), device="cpu")
    with pytest.raises(ValueError, match="cfg"):
        Experiment({"data": {}}, device="cpu")
    Experiment(cfg, run_dir=tmp_path / "x", device="cpu")
    with pytest.raises(ValueError, match="already holds a run"):
        Experiment(cfg, run_dir=tmp_path / "x", device="cpu")


def test_job_runs_experiment_and_snapshot(teacher_run, tmp_path):
    mgr = JobManager(max_concurrent=1)
    exp = Experiment(tiny_cfg(), run_dir=tmp_path / "j", teacher=load_teacher(teacher_run, device="cpu"), device="cpu")
    job = mgr.submit(exp)  # default phases ("teacher", "student"): the given teacher is not retrained
    assert job.wait(120)
    snap = job.snapshot()
    assert snap.state == "finished" and snap.phase is None and snap.step == snap.total_steps == 12
    assert snap.z.shape == snap.teacher_samples.shape == snap.student_samples.shape == (128, 2)
    assert [h[0] for h in snap.history] == [0, 6, 12]
    np.testing.assert_array_equal(snap.history[-1][1], snap.student_samples)
    assert [m["step"] for m in snap.metrics] == [0, 6, 12] and snap.modes.matrix.shape == (8, 8)
    assert snap.run_dir == str(tmp_path / "j")
    assert len(snap.train_log) == 12 and "loss_dm" in snap.train_log[0]
    assert RunDir(tmp_path / "j").read_status()["status"] == "finished"


def test_divergence_keeps_last_good_checkpoint(teacher_run, tmp_path):
    index = RunIndex(tmp_path)
    exp = Experiment(tiny_cfg(), run_dir=tmp_path / "d", index=index, teacher=load_teacher(teacher_run, device="cpu"),
                     device="cpu")
    job = TrainingJob(exp)
    job.step_n(7)  # evaluations at student steps 0 and 6 have written checkpoints
    assert job.wait_paused(120) and exp.phase_step == 7
    good = torch.load(RunDir(tmp_path / "d").checkpoint_path("student"), weights_only=True)
    assert good["step"] == 6
    with torch.no_grad():  # fault injection: the generator's weights become NaN
        next(exp._dmd.generator.parameters()).fill_(float("nan"))
    job.resume()
    assert job.wait(60)
    snap = job.snapshot()
    assert snap.state == "diverged" and "not finite" in snap.message
    st = RunDir(tmp_path / "d").read_status()
    assert st["status"] == "diverged" and "not finite" in st["message"]
    assert index.get(tmp_path / "d").status == "diverged"
    kept = torch.load(RunDir(tmp_path / "d").checkpoint_path("student"), weights_only=True)
    assert kept["step"] == 6
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values())
    for k, v in good["state_dict"].items():
        assert torch.equal(v, kept["state_dict"][k])
    G, _ = load_toy_model(RunDir(tmp_path / "d").checkpoint_path("student"), device="cpu")
    assert torch.isfinite(G(torch.randn(4, 2) * 80, 80.0)).all()


def test_nonfinite_weights_at_stop_evaluation_are_a_divergence(teacher_run, tmp_path):
    exp = Experiment(tiny_cfg(), run_dir=tmp_path / "n", teacher=load_teacher(teacher_run, device="cpu"), device="cpu")
    for _ in range(3):
        exp.step()
    with torch.no_grad():
        for p in exp._dmd.generator.parameters():
            p.fill_(float("inf"))
    exp.finalize("stopped", "stopped by user")
    run = RunDir(tmp_path / "n")
    assert exp.status == "diverged" and run.read_status()["status"] == "diverged"
    assert "student samples S(z) not finite" in run.read_status()["message"]
    assert [r["step"] for r in run.read_metrics()] == [0]  # nothing from the bad weights was written
    assert torch.load(run.checkpoint_path("student"), weights_only=True)["step"] == 0


def test_stop_evaluates_and_saves(teacher_run, tmp_path):
    exp = Experiment(tiny_cfg(), run_dir=tmp_path / "st", teacher=load_teacher(teacher_run, device="cpu"), device="cpu")
    job = TrainingJob(exp)
    job.step_n(4)
    assert job.wait_paused(120)
    job.stop()
    assert job.wait(60) and job.state == "stopped"
    run = RunDir(tmp_path / "st")
    assert run.read_status()["status"] == "stopped"
    assert [r["step"] for r in run.read_metrics()] == [0, 4]  # the stop step was evaluated
    assert torch.load(run.checkpoint_path("student"), weights_only=True)["step"] == 4


def test_in_memory_run_and_basin_maps(teacher_run):
    teacher = load_teacher(teacher_run, device="cpu")
    exp = Experiment(tiny_cfg(), teacher=teacher, device="cpu")
    before = exp.basin_maps(grid_n=8, extent=2.0)
    assert before.student_modes is None and before.teacher_modes.shape == (8, 8)
    row = exp.run()
    assert row["phase"] == "student" and row["step"] == 12 and exp.run_dir is None
    bm = exp.basin_maps(grid_n=8, extent=2.0)
    # independent recomputation: mode of T(z) and S(z) at grid point (xs[j], ys[i])
    gx, gy = np.meshgrid(bm.xs, bm.ys)
    zg = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32))
    t = teacher.sample(zg, exp.cfg.sampler).numpy()
    s = exp._dmd.student(zg).numpy()
    mode = lambda a: ((a[:, None, :] - bm.centers[None]) ** 2).sum(-1).argmin(1).reshape(8, 8)  # noqa: E731
    np.testing.assert_array_equal(bm.teacher_modes, mode(t))
    np.testing.assert_array_equal(bm.student_modes, mode(s))
    assert bm.agreement == pytest.approx(np.mean(mode(t) == mode(s))) and bm.step == 12
    with pytest.raises(ValueError, match="grid_n"):
        exp.basin_maps(grid_n=1)
    # the fixed teacher's grid map is sampled once per grid; the student side every call
    calls = []
    sample = teacher.sample
    teacher.sample = lambda *a, **k: calls.append(1) or sample(*a, **k)
    again = exp.basin_maps(grid_n=8, extent=2.0)
    np.testing.assert_array_equal(again.teacher_modes, bm.teacher_modes)
    assert calls == []
    exp.basin_maps(grid_n=6, extent=2.0)
    assert calls == [1]


def test_high_dim_mixture_and_no_basin_maps():
    exp = Experiment(tiny_cfg("mixture", 8), device="cpu")
    exp.run()
    row = exp.metrics[-1]
    assert row["phase"] == "student" and row["delta_e"] is not None and 0 <= row["copy_rate"] <= 1
    assert exp.student_samples.shape == (128, 8)
    with pytest.raises(ValueError, match="2-D"):
        exp.basin_maps()


def test_history_is_thinned(teacher_run, monkeypatch):
    monkeypatch.setattr(pipeline, "_HISTORY_MAX", 4)
    cfg = tiny_cfg()
    exp = Experiment(cfg.replace(eval=cfg.eval.replace(every=1, bootstrap=0)), teacher=load_teacher(teacher_run, device="cpu"),
                     device="cpu")
    exp.run()
    steps = [h[0] for h in exp.history]
    assert len(steps) <= 4 and steps[0] == 0 and steps[-1] == 12 and steps == sorted(steps)
    assert len(exp.metrics) == 13  # thinning affects the in-memory history only


def test_shipped_teachers_are_listed_small_and_load():
    entries = {e["name"]: e for e in pipeline.shipped_teachers()}
    assert {"8gaussians", "moons"} <= set(entries)
    assert any(e["dataset"] == "mixture" and e["dim"] > 2 for e in entries.values())
    for name, e in entries.items():
        path, canon = resolve_teacher(f"manifest:{name}")  # checks size and sha256
        assert canon == f"manifest:{name}" and path.stat().st_size < 1_000_000
        cfg = ExperimentConfig.from_dict(e["config"])
        assert cfg.data.dataset == e["dataset"] and cfg.data.dim == e["dim"]
    t = load_teacher("8gaussians", device="cpu")  # a bare manifest name works too
    assert t.dim == 2 and t.data_config.dataset == "8gaussians"
    # a trained teacher: its samples land near the 8 modes (radius 2)
    x = t.sample(torch.randn(256, 2, generator=torch.Generator().manual_seed(0)))
    assert abs(float(x.norm(dim=1).median()) - 2.0) < 0.2


@pytest.mark.parametrize(
    "change, columns",
    [
        ({"teacher": {"conditional": True}}, ("loss_dm", "loss_fake")),
        ({"distill": {"gan": True}}, ("loss_dm", "loss_fake", "loss_gan_g", "loss_gan_d")),
        ({"distill": {"regression": True, "n_reg_pairs": 64, "reg_batch": 32}}, ("loss_dm", "loss_fake", "loss_reg")),
        ({"distill": {"student_steps": 2}}, ("loss_dm", "loss_fake")),
    ],
)
def test_optional_terms_are_plumbed_through(change, columns):
    cfg = tiny_cfg()
    cfg = cfg.replace(**{sec: getattr(cfg, sec).replace(**kw) for sec, kw in change.items()})
    exp = Experiment(cfg, device="cpu")
    row = exp.run()
    assert exp.status == "finished" and row["phase"] == "student" and row["step"] == 12
    logged = {k for k in METRIC_COLUMNS if k.startswith("loss") and row.get(k) is not None}
    assert logged == set(columns)
    assert all(np.isfinite(row[k]) for k in columns) and 0 <= row["copy_rate"] <= 1
    if cfg.teacher.conditional:
        assert exp.teacher.label_dim == 8 and exp.eval_labels.shape == (128,)


def test_evaluation_runs_off_the_training_thread_and_changes_no_number(tmp_path, monkeypatch):
    """The OT-heavy metrics are computed by the evaluation worker while training goes on; the
    files are the same to the byte as with the metrics computed inside step()."""
    import threading

    cfg = tiny_cfg()
    threads: set[str] = set()
    real = pairing.pair_retrieval_accuracy  # computed at every student evaluation, and only there

    def spy(*args, **kw):
        threads.add(threading.current_thread().name)
        return real(*args, **kw)

    monkeypatch.setattr(pairing, "pair_retrieval_accuracy", spy)
    exp = Experiment(cfg, run_dir=tmp_path / "async", device="cpu")
    exp.run()
    assert threads and not threads & {threading.current_thread().name}, threads
    assert exp.status == "finished" and [r["step"] for r in exp.metrics if r["phase"] == "student"] == [0, 6, 12]
    threads.clear()
    Experiment(cfg, run_dir=tmp_path / "sync", device="cpu", async_eval=False).run()
    assert threads == {threading.current_thread().name}
    for name in ("metrics.csv", "samples.npz"):
        assert (tmp_path / "async" / name).read_bytes() == (tmp_path / "sync" / name).read_bytes(), name
    a = torch.load(tmp_path / "async" / "student.pt", weights_only=True)
    b = torch.load(tmp_path / "sync" / "student.pt", weights_only=True)
    assert a["step"] == b["step"] == 12
    for k in b["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


def test_an_evaluation_error_off_the_training_thread_fails_the_run(tmp_path, monkeypatch, teacher_run):
    def broken(*args, **kw):
        raise RuntimeError("solver broke")

    monkeypatch.setattr(pairing, "pair_retrieval_accuracy", broken)
    exp = Experiment(tiny_cfg(), run_dir=tmp_path / "e", teacher=load_teacher(teacher_run, device="cpu"), device="cpu")
    with pytest.raises(RuntimeError, match="solver broke"):
        exp.run()
    assert exp.status == "failed" and RunDir(tmp_path / "e").read_status()["status"] == "failed"


def test_basin_maps_are_kept_per_evaluation_for_time_travel(teacher_run):
    teacher = load_teacher(teacher_run, device="cpu")
    exp = Experiment(tiny_cfg(), teacher=teacher, device="cpu")
    exp.run()
    assert exp.basin_steps() == [0, 6, 12]
    now, last = exp.basin_maps(), exp.basin_maps(step=12)
    assert last.step == 12 and last.agreement == now.agreement
    np.testing.assert_array_equal(now.student_modes, last.student_modes)
    # step 0: the teacher-initialised one-step student G(z) = D(σ_max z, σ_max), recomputed here
    first = exp.basin_maps(step=0)
    xs = first.xs
    gx, gy = np.meshgrid(xs, xs)
    zg = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], axis=1))
    with torch.no_grad():
        g0 = teacher.denoiser(80.0 * zg, torch.tensor(80.0)).numpy().astype(np.float64)
    d2 = ((g0[:, None, :] - first.centers[None, :, :]) ** 2).sum(-1)
    assert (d2.argmin(1).reshape(first.student_modes.shape) == first.student_modes).mean() > 0.999
    with pytest.raises(ValueError, match="step 5"):
        exp.basin_maps(step=5)
