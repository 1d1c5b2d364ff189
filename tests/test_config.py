"""Config validation and dict round trips."""

import json
import math

import pytest

from dmdcore.config import (
    DATASETS,
    DataConfig,
    DistillConfig,
    EvalConfig,
    ExperimentConfig,
    SamplerConfig,
    TeacherConfig,
)


def test_defaults_match_papers():
    t, s, d = TeacherConfig(), SamplerConfig(), DistillConfig()
    assert (t.P_mean, t.P_std) == (-1.2, 1.2)
    assert (s.sigma_min, s.sigma_max, s.rho, s.steps) == (0.002, 80.0, 7.0, 18)
    assert (d.ratio, d.reg_weight, d.gan_d_weight, d.gan_g_weight) == (5, 0.25, 1e-2, 3e-3)
    assert (d.regression, d.gan, d.init) == (False, False, "teacher")


def test_experiment_round_trip_through_json():
    cfg = ExperimentConfig(
        data=DataConfig(dataset="mixture", dim=8, n_modes=3, weights=(1.0, 2.0, 3.0)),
        teacher=TeacherConfig(sigma_data=0.7, conditional=True),
        sampler=SamplerConfig(S_churn=10.0, S_max=50.0),
        distill=DistillConfig(betas=(0.5, 0.99), gan=True),
        eval=EvalConfig(every=7),
        name="x",
    )
    text = json.dumps(cfg.to_dict(), allow_nan=False)  # strict JSON: inf is written as a string
    back = ExperimentConfig.from_dict(json.loads(text))
    assert back == cfg
    assert isinstance(back.distill.betas, tuple) and isinstance(back.data.weights, tuple)
    # the default S_max = inf survives strict JSON too
    d = json.loads(json.dumps(ExperimentConfig().to_dict(), allow_nan=False))
    assert d["sampler"]["S_max"] == "inf"
    assert math.isinf(ExperimentConfig.from_dict(d).sampler.S_max)


def test_from_dict_coerces_json_numbers():
    t = TeacherConfig.from_dict({"lr": 1, "steps": 10.0})
    assert isinstance(t.lr, float) and t.lr == 1.0
    assert isinstance(t.steps, int) and t.steps == 10


@pytest.mark.parametrize(
    "cls,kwargs,field",
    [
        (DataConfig, {"dim": 0}, "DataConfig.dim"),
        (DataConfig, {"dataset": "mnist"}, "DataConfig.dataset"),
        (DataConfig, {"dataset": "8gaussians", "dim": 3}, "DataConfig.dim"),
        (DataConfig, {"dataset": "digits", "dim": 10}, "DataConfig.dim"),
        (DataConfig, {"dataset": "mixture", "dim": 5000}, "DataConfig.dim"),
        (DataConfig, {"dataset": "mixture", "n_modes": 2, "weights": (1.0,)}, "DataConfig.weights"),
        (DataConfig, {"dataset": "mixture", "n_modes": 2, "weights": (1.0, -1.0)}, "DataConfig.weights"),
        (DataConfig, {"dataset": "user"}, "DataConfig.path"),
        (DataConfig, {"n_samples": 99}, "DataConfig.n_samples"),
        (DataConfig, {"spread": 0.0}, "DataConfig.spread"),
        (TeacherConfig, {"steps": 0}, "TeacherConfig.steps"),
        (TeacherConfig, {"lr": 0.0}, "TeacherConfig.lr"),
        (TeacherConfig, {"lr": -1e-3}, "TeacherConfig.lr"),
        (TeacherConfig, {"lr": float("nan")}, "TeacherConfig.lr"),
        (TeacherConfig, {"width": 0}, "TeacherConfig.width"),
        (TeacherConfig, {"ema": 1.0}, "TeacherConfig.ema"),
        (TeacherConfig, {"emb_dim": 7}, "TeacherConfig.emb_dim"),
        (TeacherConfig, {"steps": 2.5}, "TeacherConfig.steps"),
        (TeacherConfig, {"conditional": 1}, "TeacherConfig.conditional"),
        (SamplerConfig, {"steps": 0}, "SamplerConfig.steps"),
        (SamplerConfig, {"sigma_min": 90.0}, "SamplerConfig.sigma_max"),
        (SamplerConfig, {"S_churn": -1.0}, "SamplerConfig.S_churn"),
        (DistillConfig, {"ratio": 0}, "DistillConfig.ratio"),
        (DistillConfig, {"lr_gen": 0.0}, "DistillConfig.lr_gen"),
        (DistillConfig, {"lr_fake": -1.0}, "DistillConfig.lr_fake"),
        (DistillConfig, {"init": "zeros"}, "DistillConfig.init"),
        (DistillConfig, {"student_steps": 5}, "DistillConfig.student_steps"),
        (DistillConfig, {"student_width": 64}, "DistillConfig.init"),
        (DistillConfig, {"betas": (0.9, 1.0)}, "DistillConfig.betas"),
        (DistillConfig, {"fake_sigma": "uniform"}, "DistillConfig.fake_sigma"),
        (EvalConfig, {"every": 0}, "EvalConfig.every"),
    ],
)
def test_bad_values_name_the_field(cls, kwargs, field):
    with pytest.raises(ValueError) as info:
        cls(**kwargs)
    assert str(info.value).startswith(field + ":"), str(info.value)
    assert " not in " in str(info.value)


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match="lr_teacher"):
        TeacherConfig.from_dict({"lr_teacher": 1e-3})
    with pytest.raises(ValueError, match="bogus"):
        ExperimentConfig.from_dict({"data": {"bogus": 1}})


def test_every_dataset_name_has_a_valid_config():
    for name in DATASETS:
        kw = {"dataset": name}
        if name == "digits":
            kw["dim"] = 64
        if name == "user":
            kw["path"] = "x.csv"
        DataConfig(**kw).validate()


def test_random_student_may_change_shape():
    cfg = DistillConfig(init="random", student_width=64, student_depth=2)
    assert (cfg.student_width, cfg.student_depth) == (64, 2)
