"""The plateau criterion (dmdcore.convergence) and its use by the pipeline: metrics.csv's
``converged`` column, early stop up to the step cap, status.json's stop reason."""

import csv
import json

import numpy as np
import pytest
import torch

from dmdcore import convergence
from dmdcore.config import DataConfig, DistillConfig, EvalConfig, ExperimentConfig, SamplerConfig, TeacherConfig
from dmdcore.pipeline import Experiment


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _rows(de, w2):
    return [{"step": 10 * i, "delta_e": a, "w2": b} for i, (a, b) in enumerate(zip(de, w2))]


def test_student_criterion_stability_and_floor():
    crit = convergence.Plateau(window=3, tol_delta_e=0.02, tol_w2=0.1, floor_tol=0.5)
    assert convergence.student_converged(_rows([0.5, 0.1, 0.11, 0.1], [2.0, 1.0, 1.02, 0.99]), crit)
    # too few evaluations, drifting ΔE, drifting W₂², an undefined value: not converged
    assert not convergence.student_converged(_rows([0.1, 0.1], [1.0, 1.0]), crit)
    assert not convergence.student_converged(_rows([0.1, 0.15, 0.2], [1.0, 1.0, 1.0]), crit)
    assert not convergence.student_converged(_rows([0.1, 0.1, 0.1], [1.5, 1.2, 1.0]), crit)
    assert not convergence.student_converged(_rows([0.1, None, 0.1], [1.0, 1.0, 1.0]), crit)
    # with a twin floor, a stable W₂² far above the floor is not converged; near it, it is
    flat = _rows([0.1, 0.1, 0.1], [1.0, 1.0, 1.0])
    assert not convergence.student_converged(flat, crit, floor_w2=0.2)
    assert convergence.student_converged(flat, crit, floor_w2=0.8)


def test_teacher_criterion():
    crit = convergence.Plateau(window=3, tol_w2=0.1)
    assert convergence.teacher_converged([{"w2_data": v} for v in (3.0, 0.5, 0.51, 0.5)], crit)
    assert not convergence.teacher_converged([{"w2_data": v} for v in (3.0, 2.0, 1.0)], crit)
    # with the data floor: a slow decay far above it (the d = 256 teacher: 40 against 4.3) is not
    # converged although it changes by < 10 % over the window; near the floor it is
    slow = [{"w2_data": v} for v in (43.2, 41.5, 40.1)]
    assert convergence.teacher_converged(slow, crit) and not convergence.teacher_converged(slow, crit, floor_w2=4.3)
    near = [{"w2_data": v} for v in (4.6, 4.5, 4.5)]
    assert convergence.teacher_converged(near, crit, floor_w2=4.3)
    assert convergence.phase_converged("teacher", slow, crit, floor_w2=4.3) is False
    with pytest.raises(ValueError, match="stop_when_converged"):
        convergence.should_stop("sometimes", "student")


def test_eval_config_plateau_fields_validated_and_omitted_at_default():
    assert "stop_when_converged" not in EvalConfig().to_dict()
    ev = EvalConfig(stop_when_converged="student", plateau_window=3)
    assert EvalConfig.from_dict(ev.to_dict()) == ev
    with pytest.raises(ValueError, match="EvalConfig.stop_when_converged"):
        EvalConfig(stop_when_converged="yes")
    with pytest.raises(ValueError, match="EvalConfig.plateau_window"):
        EvalConfig(plateau_window=1)


def _cfg(lr_gen, init="teacher", steps=40, twin=False, warmup=0, **ev):
    return ExperimentConfig(
        data=DataConfig(dataset="8gaussians", n_samples=600),
        teacher=TeacherConfig(width=32, depth=2, emb_dim=16, steps=40, batch=128, twin=twin),
        sampler=SamplerConfig(steps=6),
        distill=DistillConfig(steps=steps, batch=64, ratio=1, lr_gen=lr_gen, init=init, warmup=warmup),
        eval=EvalConfig(every=4, n=128, bootstrap=0, stop_when_converged="student", plateau_window=3,
                        plateau_tol_delta_e=0.02, plateau_tol_w2=0.05, **ev),
    )


def _read(run):
    with open(run / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["phase"] == "student"]
    return rows, json.loads((run / "status.json").read_text())


def test_run_stops_when_converged(tmp_path):
    # a teacher-initialised student with a vanishing learning rate does not move: ΔE and W₂²(S, T)
    # are flat from the start, so the plateau holds at the 3rd evaluation (step 8 of a 40-step cap)
    # (the W₂² floor is set out of reach here: this test is about the stopping mechanics; the
    # 40-step teacher's one-step copy is far from its ODE samples, so the run's own floor
    # max(W₂²(T′,T), W₂²(T(z),T(z′))) would rightly call it unconverged — next test)
    exp = Experiment(_cfg(lr_gen=1e-9, twin_floor_w2=1e6), run_dir=tmp_path / "conv", device="cpu")
    exp.run()
    rows, status = _read(tmp_path / "conv")
    assert [int(r["step"]) for r in rows] == [0, 4, 8]
    assert [r["converged"] for r in rows] == ["0", "0", "1"]
    assert status["status"] == "finished" and status["stop"]["student"] == "converged" and status["converged"] is True
    assert status["stop"]["teacher"] == "cap"  # "student" mode never ends the teacher early
    assert exp.total_steps == 40 + 8
    # config.json records the σ_data the run used (estimated from the data here)
    cfg = json.loads((tmp_path / "conv" / "config.json").read_text())
    assert cfg["precond"]["sigma_data"] == pytest.approx(exp.teacher.sigma_data) and cfg["precond"]["sigma_data"] > 0


def test_run_floor_is_the_larger_of_twin_and_sampling_floor(tmp_path):
    # without an explicit floor the run measures its own: W₂²(T(z), T(z′)) on an independent noise
    # batch (and the twin's W₂²(T′,T) when it has one); every student row records it, and a student
    # whose W₂²(S,T) stays far above it is not converged however flat its curves are
    exp = Experiment(_cfg(lr_gen=1e-9, steps=12), run_dir=tmp_path / "floor", device="cpu")
    exp.run()
    rows, status = _read(tmp_path / "floor")
    floors = {float(r["w2_floor"]) for r in rows}
    assert len(floors) == 1 and next(iter(floors)) > 0
    indep = exp.teacher_indep_samples
    assert indep.shape == exp.teacher_samples.shape and not np.allclose(indep, exp.teacher_samples)
    from dmdcore import pairing
    assert next(iter(floors)) == pytest.approx(pairing.wasserstein2_squared(indep, exp.teacher_samples))
    assert all(float(r["w2"]) > 1.5 * next(iter(floors)) for r in rows)
    assert [r["converged"] for r in rows] == ["0"] * len(rows) and status["stop"]["student"] == "cap"


def test_run_that_has_not_converged_is_flagged_and_runs_to_its_cap(tmp_path):
    # a random-initialised student at a high learning rate moves fast: no plateau in 12 steps
    exp = Experiment(_cfg(lr_gen=3e-3, init="random", steps=12), run_dir=tmp_path / "nc", device="cpu")
    exp.run()
    rows, status = _read(tmp_path / "nc")
    assert [int(r["step"]) for r in rows] == [0, 4, 8, 12]
    assert all(r["converged"] == "0" for r in rows)
    assert status["stop"]["student"] == "cap" and status["converged"] is False


def test_twin_floor_decides_when_given(tmp_path):
    # the same motionless student: stable, but far above a tiny floor → never converged (runs to
    # its cap); under a generous floor → converged at the first full window
    far = Experiment(_cfg(lr_gen=1e-9, steps=12, twin_floor_w2=1e-9), device="cpu")
    far.run()
    assert [r["converged"] for r in far.metrics if r["phase"] == "student"] == [0, 0, 0, 0]
    assert far.stop_reasons["student"] == "cap"
    near = Experiment(_cfg(lr_gen=1e-9, steps=12, twin_floor_w2=1e3), device="cpu")
    near.run()
    assert [r["converged"] for r in near.metrics if r["phase"] == "student"] == [0, 0, 1]


def test_run_with_a_twin_uses_its_twin_floor():
    exp = Experiment(_cfg(lr_gen=1e-9, steps=8, twin=True), device="cpu")
    exp.run()
    floor = exp._controls.twin.e_ot
    rows = [r for r in exp.metrics if r["phase"] == "student"]
    crit = convergence.Plateau.from_eval(exp.cfg.eval)
    expected = [int(convergence.student_converged(rows[: i + 1], crit, floor_w2=floor)) for i in range(len(rows))]
    assert [r["converged"] for r in rows] == expected
    # and the floor matters here: W₂²(S, T) is compared with it, not with its own stability
    assert expected[-1] == int(rows[-1]["w2"] <= floor * 1.5)


def test_every_row_carries_the_data_floor_and_the_teacher_phase_uses_it():
    """w2_data_floor: W₂² between two independent data samples of the eval n, the same in every
    row; the teacher's converged flag is the criterion with that floor."""
    from dmdcore import pairing

    exp = Experiment(_cfg(lr_gen=1e-9, steps=8), device="cpu")
    exp.run()
    floors = {r["w2_data_floor"] for r in exp.metrics}
    assert len(floors) == 1 and next(iter(floors)) > 0
    assert next(iter(floors)) == pytest.approx(pairing.wasserstein2_squared(exp._data_floor_sample, exp.data_eval))
    teacher = [r for r in exp.metrics if r["phase"] == "teacher"]
    crit = convergence.Plateau.from_eval(exp.cfg.eval)
    assert [r["converged"] for r in teacher] == [
        int(convergence.teacher_converged(teacher[: i + 1], crit, floor_w2=r["w2_data_floor"])) for i, r in enumerate(teacher)]


def test_student_status_names_the_converged_step_or_why_not():
    rows = [{"step": s, "phase": "student", "converged": c} for s, c in ((0, 0), (50, 0), (100, 1), (150, 1))]
    teacher_rows = [{"step": 0, "phase": "teacher", "converged": 1}]
    st = convergence.student_status(teacher_rows + rows, cap=1000, finished=True)
    assert st.converged and st.step == 100 and st.text() == "converged at student step 100"
    not_yet = [dict(r, converged=0) for r in rows]
    running = convergence.student_status(not_yet, cap=1000, finished=False)
    assert running.state == "running" and "step 150 of cap 1000" in running.text()
    capped = convergence.student_status(not_yet + [{"step": 1000, "phase": "student", "converged": 0}],
                                        cap=1000, finished=True)
    assert capped.state == "cap"
    assert capped.text() == "not converged (plateau not reached by cap 1000) — kept out of verdicts"
    stopped = convergence.student_status(not_yet, cap=1000, finished=True)
    assert stopped.state == "stopped" and "student step 150" in stopped.text()
    # metrics.csv of a run made before the criterion: no converged column
    old = convergence.student_status([{"step": 0, "phase": "student", "converged": ""}], cap=10, finished=True)
    assert old.state == "unknown" and not old.converged
