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
