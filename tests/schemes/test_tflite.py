"""The rewrite is what TFLite runs: tflite_int8 QAT models convert to integer-only models whose outputs
match the simulation (BN folded, ReLU fused, no requantize ops)."""
import pytest

import qresearch

from . import models as M

hardware = pytest.importorskip("qresearch.hardware")


@pytest.mark.parametrize("model_name", ["mobilenet_like", "sequential"])
def test_tflite_int8_converts_integer_only_and_matches(model_name):
    if not hasattr(hardware, "verify"):
        pytest.skip("qresearch.hardware.verify not available")
    x, y = M.data(64)
    q = qresearch.quantize(M.BUILDERS[model_name](), "tflite_int8", hardware="tflite_int8", calibration_data=x)
    M.compile_model(q)
    q.run_eagerly = True
    q.fit(x, y, batch_size=16, epochs=1, verbose=0)
    r = hardware.verify(q, "tflite_int8", x, y)
    assert r["integer_only"], r["structural_issues"]
    assert not r["structural_issues"]
    # the integer-kernel emulation (tflite_int8's kernels) makes the simulation compute the deployed integers
    assert r["max_abs_diff_lsb"] < 1e-3, r
    assert r["argmax_agreement"] == 1.0
