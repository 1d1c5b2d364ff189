"""Issue 15 on the pages: one error boundary per page (one st.error line, no traceback, no
server path), URL values rendered as text, and the upload path's messages (bad files, full disk)."""

from __future__ import annotations

import errno
import pickle
import re
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DMD_RUNS_DIR", str(tmp_path / "runs"))


def _page(page: str, query: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    at.switch_page(page)
    at.query_params.update(query or {})
    at.run()
    return at


_UNESCAPED = re.compile(r"(?<!\\)[\[\]()!]")


@pytest.mark.parametrize("value", ["![px](http://127.0.0.1:8799/p.png)", "[Login again here](http://127.0.0.1:8799/x)"])
def test_url_values_are_shown_as_text(value):
    at = _page("pages/toy_lab.py", {"tn": value})
    assert not at.exception, [e.value for e in at.exception]
    # a link value that cannot be applied is a warning naming the URL key (ui: pages/toy_lab.py)
    errors = [e.value for e in at.warning if "tn" in e.value or "px" in e.value or "Login" in e.value]
    assert errors, [e.value for e in at.warning]
    for text in errors:
        assert not _UNESCAPED.search(text), text  # no live image / link syntax left
        assert "://" not in text, text  # no bare URL for GFM to autolink (a zero-width space breaks it)
        assert "127\\.0\\.0\\.1" in text  # the value is still shown, literally


def test_page_boundary_turns_any_exception_into_one_line(monkeypatch):
    import ui.toylab

    def boom():
        raise RuntimeError("exploded reading /srv/secret/place/file.json\nsecond line")

    monkeypatch.setattr(ui.toylab, "shipped_teachers", boom)
    at = _page("pages/toy_lab.py")
    assert not at.exception, [e.value for e in at.exception]
    msgs = [e.value for e in at.error]
    assert len(msgs) == 1, msgs
    assert "this page stopped" in msgs[0] and "RuntimeError" in msgs[0]
    assert "/srv/secret" not in msgs[0].replace("\\", "") and "second line" not in msgs[0]
    assert "Traceback" not in msgs[0]


def test_images_page_cyclic_and_list_configs_are_one_line(tmp_path):
    import torch

    from helpers_edm_pickle import _fake_persistence_module, _Persistent

    cyc: list = []
    cyc.append(cyc)
    state = {"_init_args": (), "_init_kwargs": {"img_resolution": 16, "x": cyc}, "_parameters": OrderedDict(),
             "_buffers": OrderedDict(), "_modules": OrderedDict()}
    bad = tmp_path / "cycle.pkl"
    with _fake_persistence_module(), open(bad, "wb") as f:
        pickle.dump({"ema": _Persistent("EDMPrecond", state, "")}, f, protocol=4)
    listcfg = tmp_path / "list.pt"
    torch.save({"format": "dmdcore.image.v1", "config": [1, 2], "state_dict": {"x": torch.zeros(1)}}, listcfg)
    for path, expect in ((bad, "recursive"), (listcfg, "config")):
        at = _page("pages/images.py")
        at.radio(key="img_teacher_src").set_value("Path on disk").run()
        at.text_input(key="img_teacher_path").input(str(path)).run()
        assert not at.exception, [e.value for e in at.exception]
        msgs = [e.value for e in at.error if expect in e.value]
        assert msgs, [e.value for e in at.error]
        assert "Traceback" not in msgs[0] and "\n" not in msgs[0]


def test_upload_bad_files_and_full_disk(tmp_path, monkeypatch):
    from dmdcore.runs import DiskFullError
    from ui import toylab

    with pytest.raises(ValueError, match="row 2"):
        toylab.save_upload(b"x,y\n1," + b"9" * 200_000 + b"\n" + b"1,2\n" * 200, "wide.csv", tmp_path)
    with pytest.raises(ValueError, match="empty"):
        toylab.save_upload(b"", "e.npy", tmp_path)

    import dmdcore.fsutil as fsutil

    def full_open(path, mode="r", *a, **k):
        if "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return open(path, mode, *a, **k)

    monkeypatch.setattr(fsutil, "open", full_open, raising=False)
    with pytest.raises(DiskFullError, match="disk full at .*uploads"):
        toylab.save_upload(b"1,2\n" * 200, "ok.csv", tmp_path)
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "uploads").iterdir()] == []  # no temp file left behind
