"""AppTest of the Image models page with the shipped demo pair: generation in the background,
grids, metrics equal to an independent computation, the demo student's regression-loss note,
pair zoom, exports, error handling, uploads replaced by content (sha256)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dmdcore.checkpoints import entry_path, load_checkpoint, read_manifest
from dmdcore.config import SamplerConfig
from dmdcore.images import pair_metrics, sample_student, sample_teacher

APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.fixture(autouse=True)
def _runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DMD_RUNS_DIR", str(tmp_path / "runs"))


def _demo_entries(student: str = "demo-digits16-student"):
    es = {e["name"]: e for e in read_manifest()["entries"] if e.get("kind") == "image" and e.get("url") is None}
    return es["demo-digits16-teacher"], es[student]


def test_demo_pair_is_shipped_small_and_loads():
    t, s = _demo_entries()
    _, f = _demo_entries("demo-digits16-student-free")
    for e in (t, s, f):
        p = entry_path(e)
        assert p.exists(), p
        assert p.stat().st_size <= 10 * 10**6  # each shipped file <= 10 MB
        ck = load_checkpoint(p, device="cpu")
        assert ck.config["label_dim"] == 10 and ck.config["img_resolution"] == 16
        assert ck.sha256 == e["sha256"] and p.stat().st_size == e["size"]


def _page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("pages/images.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _wait_done(at: AppTest, timeout=120.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        time.sleep(0.5)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        prog = [p.proto.text for p in at.get("progress")]
        if prog and "Teacher" in prog[0]:
            parts = prog[0].split("Teacher ")[1].split(" ")[0].split("/")
            if parts[0] == parts[1] and len(at.metric) == 4:
                return prog[0]
    raise AssertionError("generation did not finish")


def test_page_generates_demo_grids_and_metrics():
    at = _page()
    # defaults: the shipped demo teacher/student from the manifest, all 10 digit classes
    assert at.selectbox(key="img_teacher_entry").value.startswith("demo")
    assert len(at.multiselect(key="img_classes").value) == 10
    at.number_input(key="img_per_class").set_value(1)
    at.number_input(key="img_seed0").set_value(3)
    at.number_input(key="img_steps").set_value(6)
    at.number_input(key="img_boot").set_value(50)
    at.button(key="FormSubmitter:img_settings-Generate").click()
    at.run()
    text = _wait_done(at)
    assert "Student 10/10" in text and "11 NFE" in text
    assert not at.error, [e.value for e in at.error]
    captions = [c for el in at.get("image") for c in el.captions]
    assert captions[:2] == ["Teacher T(z, c)", "Student S(z, c) = G(80·z; c)"]  # the grids
    assert captions[2].startswith("|S − T|")

    # metrics shown equal an independent computation with the same checkpoints
    t, s = _demo_entries()
    T = load_checkpoint(entry_path(t), device="cpu").model
    S_ = load_checkpoint(entry_path(s), device="cpu").model
    classes, seeds = list(range(10)), [3] * 10
    ti = sample_teacher(T, classes, seeds, sampler=SamplerConfig(steps=6))
    si = sample_student(S_, classes, seeds)
    m = pair_metrics(ti, si, bootstrap=50, seed=0)
    shown = {x.label: x.value for x in at.metric}
    assert shown["ΔE (pairing inefficiency)"] == f"{m.delta_e:.3f}"
    assert shown["Pair retrieval (top-1)"] == f"{m.retrieval:.1%}"
    assert shown["Mean per-pair L2"] == f"{m.l2.mean():.3f}"
    assert shown["Pairs"] == "10/10"
    # the demo student was distilled WITH the regression loss: said next to ΔE
    notes = [c.value for c in at.caption if c.value.startswith("⚠") and "regression loss" in c.value]
    assert len(notes) == 1 and "expected by construction" in notes[0] and "0.005" in notes[0]
    assert "Regression control" in notes[0]

    # the per-pair table holds the same L2 values
    table = at.dataframe[0].value
    assert np.allclose(table["l2"].to_numpy(), m.l2, atol=1e-4)

    # pair zoom
    at.selectbox(key="img_pick").set_value(4)
    at.run()
    captions = [c for el in at.get("image") for c in el.captions]
    assert "Teacher #4" in captions and "Student #4" in captions

    # exports offered
    dl = {b.proto.label: b for b in at.get("download_button")}
    assert set(dl) == {"Download grid PNG (teacher | student | difference)", "Download metrics CSV"}


def test_cached_regeneration_and_bad_path_keeps_last_good():
    at = _page()
    at.number_input(key="img_per_class").set_value(1)
    at.number_input(key="img_steps").set_value(4)
    at.button(key="FormSubmitter:img_settings-Generate").click()
    at.run()
    _wait_done(at)
    first = {x.label: x.value for x in at.metric}
    # second time: every image from the on-disk cache
    t0 = time.time()
    at.button(key="FormSubmitter:img_settings-Generate").click()
    at.run()
    _wait_done(at, timeout=30)
    assert time.time() - t0 < 30
    assert {x.label: x.value for x in at.metric} == first

    at.radio(key="img_teacher_src").set_value("Path on disk")
    at.run()
    at.text_input(key="img_teacher_path").set_value("/nonexistent/teacher.pt")
    at.run()
    assert not at.exception
    assert any("not an existing file" in e.value for e in at.error)
    assert any("Keeping the last good teacher" in c.value for c in at.caption)


def test_page_refuses_hostile_upload(tmp_path):
    from tests.helpers_edm_pickle import write_hostile_pickle

    flag = tmp_path / "pwned"
    p = tmp_path / "evil.pkl"
    write_hostile_pickle(p, f"touch {flag}")
    at = _page()
    at.radio(key="img_student_src").set_value("Path on disk")
    at.run()
    at.text_input(key="img_student_path").set_value(str(p))
    at.run()
    assert not at.exception
    assert any("refusing global" in e.value for e in at.error)
    assert not flag.exists()


def test_upload_with_same_name_and_size_but_new_content_is_replaced(tmp_path):
    import hashlib

    import torch

    from dmdcore.checkpoints import save_checkpoint
    from dmdcore.networks import EDMPrecond

    cfg = dict(img_resolution=8, img_channels=1, label_dim=4, model_channels=16, channel_mult=[1, 2],
               num_blocks=1, attn_resolutions=[], dropout=0.0)
    blobs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        blobs.append(save_checkpoint(EDMPrecond(**cfg), tmp_path / f"n{seed}.pt").read_bytes())
    assert len(blobs[0]) == len(blobs[1]) and blobs[0] != blobs[1]
    at = _page()
    at.radio(key="img_teacher_src").set_value("Upload")
    at.run()
    for data in blobs:
        at.get("file_uploader")[0].set_value(("same-name.pt", data, "application/octet-stream"))
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        sha = hashlib.sha256(data).hexdigest()
        assert any("same-name.pt" in c.value and f"sha256 {sha[:12]}" in c.value for c in at.caption), \
            [c.value for c in at.caption]
    # both files are kept, named by content: sessions share the upload folder, so a same-named
    # upload from another session can never overwrite a model this one loaded
    import os

    kept = sorted(p.name for p in (Path(os.environ["DMD_RUNS_DIR"]) / "uploads").glob("teacher-*-same-name.pt"))
    assert kept == sorted(f"teacher-{hashlib.sha256(b).hexdigest()[:16]}-same-name.pt" for b in blobs)


def test_page_offers_both_shipped_students_and_labels_the_regression_control():
    """The free student (DMD loss alone) is selectable next to the regression one; which is the
    regression control comes from each training record, and both go through the same copy report."""
    at = _page()
    sb = at.selectbox(key="img_student_entry")
    assert {"demo-digits16-student", "demo-digits16-student-free"} <= set(sb.options)
    seen = {}
    for name in ("demo-digits16-student", "demo-digits16-student-free"):
        at.selectbox(key="img_student_entry").set_value(name)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        labels = [m.value for m in at.markdown if "Regression control" in m.value or "Free student" in m.value]
        assert len(labels) == 1 and name in labels[0], labels
        seen[name] = labels[0]
        at.number_input(key="img_per_class").set_value(1)
        at.number_input(key="img_steps").set_value(4)
        at.number_input(key="img_boot").set_value(0)
        at.button(key="FormSubmitter:img_settings-Generate").click()
        at.run()
        _wait_done(at)
        shown = {x.label: x.value for x in at.metric}
        t, s = _demo_entries(name)
        T = load_checkpoint(entry_path(t), device="cpu").model
        S_ = load_checkpoint(entry_path(s), device="cpu").model
        ti = sample_teacher(T, list(range(10)), [0] * 10, sampler=SamplerConfig(steps=4))
        m = pair_metrics(ti, sample_student(S_, list(range(10)), [0] * 10), bootstrap=0, seed=0)
        assert shown["ΔE (pairing inefficiency)"] == f"{m.delta_e:.3f}"
        free_note = [c.value for c in at.caption if c.value.startswith("Free student")]
        assert len(free_note) == (1 if name.endswith("-free") else 0)
    assert seen["demo-digits16-student"].startswith("**Regression control**")
    assert seen["demo-digits16-student-free"].startswith("**Free student**")
