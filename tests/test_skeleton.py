import importlib

import pytest
import torch

from dmdcore.device import pick_device


def test_pick_device_auto_and_cpu():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_pick_device_rejects_unknown():
    with pytest.raises(ValueError, match="device"):
        pick_device("tpu-9000")


def test_dmdcore_has_no_streamlit_import():
    import pathlib

    for path in pathlib.Path(importlib.import_module("dmdcore").__file__).parent.rglob("*.py"):
        text = path.read_text()
        assert "import streamlit" not in text and "from streamlit" not in text, path
        assert "import plotly" not in text and "from plotly" not in text, path


def test_tune_allocator_is_idempotent_and_can_be_switched_off():
    import subprocess
    import sys

    code = (
        "from dmdcore.device import tune_allocator as t; a = t(); b = t(); "
        "assert a is b, (a, b); print(a)"
    )
    repo = str(__import__("pathlib").Path(__file__).resolve().parent.parent)
    env = {k: v for k, v in __import__("os").environ.items() if k != "DMD_MALLOC_TUNING"}
    on = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, check=True)
    off = subprocess.run([sys.executable, "-c", code], cwd=repo, env={**env, "DMD_MALLOC_TUNING": "0"},
                         capture_output=True, text=True, check=True)
    # This project's CI and dev machines are glibc Linux: the tuning applies there.
    assert on.stdout.strip() == ("True" if sys.platform.startswith("linux") else "False")
    assert off.stdout.strip() == "False"


def test_pages_and_ui_have_no_method_or_family_specific_code():
    """dmdcore stays layered: the Toy Lab's selectors are the engine's own lists, and no page or
    ui module compares against (or lists) a student method or teacher family by name -- each
    method's behaviour lives in its dmdcore.students / dmdcore.teachers module."""
    import ast
    import pathlib

    from dmdcore.config import STUDENT_METHODS, TEACHER_FAMILIES
    from ui import urlstate

    controls = {c.name: c for c in urlstate.CONTROLS}
    assert controls["method"].choices is STUDENT_METHODS
    assert controls["family"].choices is TEACHER_FAMILIES
    names = (set(STUDENT_METHODS) | set(TEACHER_FAMILIES)) - {"dmd", "edm"}  # the defaults may be named
    root = pathlib.Path(__file__).resolve().parent.parent
    for path in [*(root / "pages").glob("*.py"), *(root / "ui").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                consts = [c for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                consts += [e for c in node.comparators if isinstance(c, (ast.Tuple, ast.List, ast.Set))
                           for e in c.elts if isinstance(e, ast.Constant)]
                hit = {c.value for c in consts if isinstance(c.value, str)} & names
                assert not hit, f"{path.name}:{node.lineno} branches on {sorted(hit)}"
