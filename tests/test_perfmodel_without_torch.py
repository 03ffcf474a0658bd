"""perfmodel predicts from layer specs without importing torch (STYLE.md: the house shape)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
import perfmodel
from perfmodel.onnx_import import layers_from_onnx  # imports onnx lazily, never torch
spec = perfmodel.Conv2dSpec(name="conv5", in_channels=384, out_channels=256, in_height=13,
                            in_width=13, kernel=3, padding=1, groups=2)
even = perfmodel.Conv2dSpec(name="even", in_channels=64, out_channels=64, in_height=9,
                            in_width=9, kernel=4, padding=1, padding_end=2)  # PyTorch 'same'
result = perfmodel.predict_network([spec, even], perfmodel.get_profile("xeon-e5-2697v4"))
assert result.layers[0].recommendation == "sparse"
assert result.layers[1].to_dict()["spec"]["padding_end"] == [2, 2]
assert "torch" not in sys.modules, "perfmodel imported torch"
print("ok")
"""


def test_predicting_from_specs_never_imports_torch():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
