"""Layer calls the TFLite converter can read: how a wrapper runs a layer where the layer's own ``call`` would hide
its quantized weight from the converter (``LayerSpec.call``).

A Keras ``Dense`` on an input of rank > 2 (a sequence, an image) calls ``tf.tensordot``, which reshapes the kernel
before its MatMul. The converter then cannot read the kernel's FakeQuant through that Reshape: it keeps the kernel
float behind a DEQUANTIZE, inside dynamic-shape ops (SHAPE, GATHER, REDUCE_PROD), so an integer-only target is not
integer-only (measured on the digits CNN with a Dense on rank 3 and rank 4 inputs, TF 2.21). ``dense_nd`` computes
what tensordot computes, in the same float operations (the input reshaped to ``[-1, in]``, one MatMul with the
kernel as it is, the result reshaped back), and the converter gives RESHAPE, an int8 FULLY_CONNECTED and RESHAPE,
bit for bit with the integer emulation.
"""
from __future__ import annotations

from qresearch._compat import tf


def dense_nd(layer, inputs, **kwargs):
    """``Dense.call`` for a dense input of rank > 2 without reshaping the kernel; None: the layer's own call."""
    if kwargs or not tf.is_tensor(inputs) or isinstance(inputs, (tf.SparseTensor, tf.RaggedTensor)) \
            or inputs.shape.rank is None or inputs.shape.rank <= 2:
        return None
    x = inputs if inputs.dtype == layer.compute_dtype else tf.cast(inputs, layer.compute_dtype)
    inner = x.shape[1:-1]
    y = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), layer.kernel)
    if layer.use_bias:
        y = tf.nn.bias_add(y, layer.bias)
    if inner.is_fully_defined():
        y = tf.reshape(y, [-1] + inner.as_list() + [layer.units])
    else:
        y = tf.reshape(y, tf.concat([tf.shape(x)[:-1], [layer.units]], axis=0))
    return layer.activation(y) if layer.activation is not None else y
