"""A plugin quantizer gets every init rule by declaring its step: nothing else to write."""
import numpy as np
import pytest

from ..conftest import build, run
from qresearch._compat import tf
from qresearch.quantizers import Quantizer, create, parameters, register
from qresearch.quantizers.init import collecting
from qresearch.quantizers.registry import QUANTIZERS


class HalfStep(Quantizer):
    """A user's quantizer: a uniform grid with a learned step, its own "paper" rule max|x|/(2·Qp)."""

    init_params = {"step": "step"}

    def __init__(self, bits=4, symmetric=True, narrow_range=False, per_channel=False, axis=None, signed=True,
                 scale_format="float32", step_init=1.0):
        super().__init__(bits, symmetric, narrow_range, per_channel, axis, signed, scale_format)
        self.step_init = step_init

    def paper_uses_data(self):
        return True

    def paper_init(self, stats):
        step = stats.max_abs / (2 * self.grid[1])
        return {"step": step}, step > 0

    def build_params(self, shape, name, layer):
        return {"step": self.add_variable(layer, f"{name}_step", shape, self.step_init, trainable=True)}

    def quantize(self, x, training, weights, axes):
        qn, qp = self.grid
        s = self.broadcast(weights["step"], x, axes)
        t = tf.clip_by_value(x / s, -qn, qp)
        return (t + tf.stop_gradient(tf.round(t) - t)) * s


@pytest.fixture
def plugin():
    register("ext_halfstep")(HalfStep)
    yield "ext_halfstep"
    QUANTIZERS._items.pop("ext_halfstep", None)


@pytest.mark.parametrize("init", ["paper", "max", "percentile", "mse"])
def test_plugin_gets_every_init(plugin, init):
    assert {"init", "init_percentile"} <= set(parameters(HalfStep))
    x = np.random.RandomState(0).randn(4, 3, 3, 5).astype("float32")
    q = create({"name": plugin, "bits": 4, "per_channel": True, "axis": -1, "init": init})
    assert create(q.to_spec()) == q and q.to_spec()["init"] == init
    v = build(q, x.shape)
    run(q, x, v)
    step = v["step"].numpy()
    m = np.abs(x).reshape(-1, 5).max(0)
    expected = {"paper": m / 14, "max": m / 7}
    if init in expected:
        np.testing.assert_allclose(step, expected[init], rtol=1e-6)
    else:
        assert np.all((step > 0) & (step <= m / 7 + 1e-7)) and np.all(step != 1.0)
    assert float(v["initialized"].numpy()) == 1.0   # the flag the base class added


def test_plugin_activation_init_over_calibration_batches(plugin):
    q = create({"name": plugin, "bits": 4, "init": "max"})
    v = build(q, None)
    with collecting() as c:
        run(q, np.ones((2, 3), "float32"), v)
        run(q, 5 * np.ones((2, 3), "float32"), v)
    c.apply()
    np.testing.assert_allclose(v["step"].numpy(), 5 / 7, rtol=1e-6)
