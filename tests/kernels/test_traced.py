"""deploy.simulate runs a graph function traced once per model and emulation state (kernels/traced.py):
the same bits as eager calls, for every kernel-set emulation and with none, and a new trace when the
state changes (the emulation is chosen while tracing)."""
import numpy as np

from qresearch import kernels, models, quantize
from qresearch._compat import keras, tf
from qresearch.hardware import deploy
from qresearch.kernels import traced


def test_simulate_equals_eager_calls_in_every_emulation_state():
    rng = np.random.default_rng(0)
    x = rng.random((21, 28, 28, 1), dtype=np.float32)
    keras.utils.set_random_seed(0)
    q = quantize(models.build_model({"name": "lenet5"}, (28, 28, 1), 10), "tflite_int8", hardware="tflite_int8",
                 calibration_data=x[:16])
    outputs = {}
    for emulation in (None, "none", *deploy.EMULATIONS.values()):
        with kernels.emulated_kernels(emulation):
            sim = deploy.simulate(q, x, batch_size=8)   # batches of 8, 8, 5: one trace for every size
            eager = np.concatenate([q(tf.constant(x[i:i + 8]), training=False).numpy() for i in range(0, 21, 8)])
        np.testing.assert_array_equal(sim.view(np.uint32), eager.view(np.uint32))
        outputs[emulation] = sim
    assert len(traced._FUNCTIONS[q]) == len(outputs)   # one function per state
    # the states really differ: the float simulation is not the integer emulation
    assert not np.array_equal(outputs["none"], outputs["tflite_builtin"])
