"""python -m dmdcore teacher --family / distill --method: every family and method writes the usual
run directory (config.json, metrics.csv with ΔE, checkpoints, samples)."""

from __future__ import annotations

import pytest

from dmdcore.cli import main
from dmdcore.config import STUDENT_METHODS
from dmdcore.runs import RunDir
from dmdcore.toy import ToyTeacher

FAST = ["--quick", "--threads", "1", "--no-progress", "--bootstrap", "0", "--eval-n", "128"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    out = {}
    for family in ("edm", "fm", "otcfm"):
        assert main(["teacher", "--family", family, "--steps", "60", "--width", "32", "--out", str(root / family), *FAST]) == 0
        out[family] = root / family
    return out


@pytest.mark.parametrize("family", ["edm", "fm", "otcfm"])
def test_teacher_family_run_dir(teachers, family):
    rd = RunDir(teachers[family])
    assert ToyTeacher.load(rd.checkpoint_path("teacher")).family == family
    assert rd.read_config()["experiment"]["teacher"].get("family", "edm") == family
    assert rd.read_metrics()[-1]["w2_data"] is not None


@pytest.mark.parametrize("method", STUDENT_METHODS)
def test_distill_method_run_dir(teachers, tmp_path, method):
    family = "fm" if STUDENT_METHODS.index(method) % 2 else "otcfm"
    out = tmp_path / "s"
    assert main(["distill", "--teacher", str(teachers[family]), "--method", method, "--steps", "6",
                 "--eval-every", "3", "--out", str(out), *FAST]) == 0
    rd = RunDir(out)
    cfg = rd.read_config()["experiment"]
    assert cfg["distill"].get("method", "dmd") == method and cfg["teacher"]["family"] == family
    rows = rd.read_metrics()
    assert [r["step"] for r in rows] == [0, 3, 6] and all(r["delta_e"] is not None for r in rows)
    assert rd.checkpoint_path("student").is_file() and (out / "samples.npz").is_file()
    if method == "phased":
        assert (out / "per_step.csv").read_text().splitlines()[0] == "step,sampling_step,sigma_in,delta_e,w2_data"


def test_dmd_config_unchanged_by_method_sections(teachers, tmp_path):
    out = tmp_path / "d"
    assert main(["distill", "--teacher", str(teachers["edm"]), "--steps", "3", "--eval-every", "3", "--out", str(out), *FAST]) == 0
    exp = RunDir(out).read_config()["experiment"]
    assert "method" not in exp["distill"] and "family" not in exp["teacher"]
    assert not {"cd", "fdistill", "sid", "adversarial", "phased"} & set(exp)


def test_toy_lab_selectors_reach_the_config():
    from ui import toylab, urlstate

    values = {**urlstate.defaults(), "teacher_source": "train", "method": "phased", "family": "otcfm"}
    cfg = toylab.build_config(values)
    assert cfg.distill.method == "phased" and cfg.teacher.family == "otcfm"
    assert urlstate.encode(values)["m"] == "phased" and urlstate.decode({"fam": "fm"})[0]["family"] == "fm"
    with pytest.raises(ValueError, match="method"):
        urlstate.check("method", "nope")
