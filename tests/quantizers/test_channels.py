"""Per-channel parameters on every kernel layout (Dense, Conv1D/2D, depthwise, transposed).

A per-channel quantizer must act on each output channel exactly as a per-tensor
quantizer acts on that channel alone; the check is layout-independent.
"""
import itertools

import numpy as np
import pytest

from .conftest import build, built_in_quantizers, run
from qresearch._compat import keras
from qresearch.quantizers import create

LAYERS = {
    "dense": (lambda: keras.layers.Dense(3), (None, 4), "kernel", (1,)),
    "conv1d": (lambda: keras.layers.Conv1D(3, 2), (None, 6, 4), "kernel", (2,)),
    "conv2d": (lambda: keras.layers.Conv2D(3, 2), (None, 5, 5, 4), "kernel", (3,)),
    "depthwise": (lambda: keras.layers.DepthwiseConv2D(2, depth_multiplier=2), (None, 5, 5, 4),
                  "depthwise_kernel", (2, 3)),  # channels = in · multiplier
    "conv2d_transpose": (lambda: keras.layers.Conv2DTranspose(3, 2), (None, 5, 5, 4), "kernel", (2,)),  # (kh,kw,out,in)
}
SPECS = {
    "minmax": ({"name": "minmax", "bits": 4}, "min"),
    "lsq": ({"name": "lsq", "bits": 4}, "step"),
    "lsq_plus": ({"name": "lsq_plus", "bits": 4}, "step"),
    "lsq_plus_asym": ({"name": "lsq_plus", "bits": 4, "symmetric": False}, "offset"),
    "pact": ({"name": "pact", "bits": 4, "alpha_init": 0.3}, "alpha"),
    "dorefa": ({"name": "dorefa", "bits": 3}, None),
    "pot": ({"name": "pot", "bits": 4}, "min"),
    "a2q": ({"name": "a2q", "bits": 4, "accumulator_bits": 12}, "log2_step"),
}
#: Quantizers whose per-tensor form still has output channels (A2Q's l1 norm is per dot product): one channel
#: alone is the slice with a trailing channel axis of size 1.
ONE_CHANNEL_AXIS = {"a2q"}


def test_every_built_in_has_a_spec():
    assert {spec["name"] for spec, _ in SPECS.values()} == set(built_in_quantizers())


@pytest.mark.parametrize("layer_name", list(LAYERS))
@pytest.mark.parametrize("spec_name", list(SPECS))
def test_per_channel_equals_per_tensor_on_each_channel(layer_name, spec_name):
    make, input_shape, attr, axes = LAYERS[layer_name]
    spec, param = SPECS[spec_name]
    layer = make()
    layer.build(input_shape)
    kernel = getattr(layer, attr)
    x = kernel.numpy() * np.random.RandomState(0).uniform(0.2, 5.0, size=kernel.shape).astype("float32")
    q = create({**spec, "per_channel": True}, role="weights")
    w = q.build(kernel.shape, attr, layer)
    assert w["channel_axes"] == axes
    expected_shape = tuple(kernel.shape[a] for a in axes)
    if param is not None:
        assert tuple(w[param].shape) == expected_shape
    for training in (True, False):
        y = run(q, x, w, training=training)
        assert y.shape == x.shape
        for idx in itertools.product(*(range(n) for n in expected_shape)):
            where = [slice(None)] * x.ndim
            for a, i in zip(axes, idx):
                where[a] = i
            where = tuple(where)
            single = create(spec, role="weights")
            alone = x[where][..., None] if spec_name in ONE_CHANNEL_AXIS else x[where]
            w1 = build(single, alone.shape)
            if training is False:  # same parameters as the per-channel quantizer learnt
                run(single, alone, w1)
            np.testing.assert_allclose(y[where], run(single, alone, w1, training=training).reshape(x[where].shape),
                                       rtol=1e-5, atol=1e-6, err_msg=str(idx))
