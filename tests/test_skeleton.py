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
