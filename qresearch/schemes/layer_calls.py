"""Layer calls the TFLite converter can read: how a wrapper runs a layer where the layer's own ``call`` would hide
its quantized weight from the converter (``LayerSpec.call``).

A Keras ``Dense`` on an input of rank > 2 (a sequence, an image) calls ``tf.tensordot``, which reshapes the kernel
before its MatMul. The converter then cannot read the kernel's FakeQuant through that Reshape: it keeps the kernel
float behind a DEQUANTIZE, inside dynamic-shape ops (SHAPE, GATHER, REDUCE_PROD), so an integer-only target is not
integer-only (measured on the digits CNN with a Dense on rank 3 and rank 4 inputs, TF 2.21). ``dense_nd`` computes
what tensordot computes, in the same float operations (the input reshaped to ``[-1, in]``, one MatMul with the
kernel as it is, the result reshaped back), and the converter gives RESHAPE, an int8 FULLY_CONNECTED and RESHAPE,
bit for bit with the integer emulation.

A dilated convolution (``dilation_rate`` > 1: DeepLab's atrous convs, a TCN's dilated causal Conv1D) runs in Keras
through ``tf.nn.convolution``, which wraps the conv in SPACE_TO_BATCH_ND / BATCH_TO_SPACE_ND; with the kernel's
FakeQuant and the bias between them the converter does not fuse them back, and the conv, its bias and activation
deploy in float between a DEQUANTIZE and a QUANTIZE (measured on a digits CNN, TF 2.21). ``dilated_conv`` runs the
one TF op that carries the dilation itself (Conv2D, DepthwiseConv2dNative), which the converter turns into an int8
CONV_2D / DEPTHWISE_CONV_2D with dilation factors.

A preprocessing layer at a model's input computes an affine map in two elementwise ops (Rescaling with an offset:
``x·scale`` then ``+ offset``; Normalization: ``x - mean`` then ``/ std``). With one quantizer after the layer, the
converter has no range for the tensor between the ops and runs both in float, between a DEQUANTIZE and a QUANTIZE
(measured: keras.applications' MobileNetV3 with its default ``include_preprocessing`` was not integer-only).
``RESCALING`` and ``NORMALIZATION`` are their ``LayerSpec.split``: the same float operations, with that tensor
through a quantizer, which the converter turns into an int8 MUL and ADD (or SUB and MUL) with quantized constants.
"""
from __future__ import annotations

from typing import Any, Callable, List, NamedTuple, Tuple

import numpy as np

from qresearch._compat import keras, tf


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


def dilated_conv(layer, inputs, **kwargs):
    """``Conv1D`` / ``Conv2D`` / ``DepthwiseConv1D`` / ``DepthwiseConv2D`` ``call`` for a dilated kernel as one conv
    op; None: the layer's own call (no dilation, groups, channels first, or arguments it does not take)."""
    rate = tuple(getattr(layer, "dilation_rate", ()) or ())
    if kwargs or not tf.is_tensor(inputs) or all(r == 1 for r in rate) or getattr(layer, "groups", 1) != 1 \
            or getattr(layer, "data_format", "channels_last") != "channels_last":
        return None
    x = inputs if inputs.dtype == layer.compute_dtype else tf.cast(inputs, layer.compute_dtype)
    padding = layer.padding.upper()
    if type(layer) is keras.layers.DepthwiseConv2D:   # a subclass may compute something else
        y = _depthwise_dilated(x, tf.convert_to_tensor(layer.depthwise_kernel), layer.strides, padding, rate)
    elif type(layer) is keras.layers.DepthwiseConv1D:   # Keras' own layout: (N, 1, L, C), a (1, k) kernel
        kernel = tf.expand_dims(tf.convert_to_tensor(layer.depthwise_kernel), 0)
        y = tf.squeeze(_depthwise_dilated(tf.expand_dims(x, 1), kernel, (1, layer.strides[0]), padding,
                                          (1, rate[0])), [1])
    elif type(layer) is keras.layers.Conv1D:
        if padding == "CAUSAL":
            x, padding = tf.pad(x, layer._compute_causal_padding(x)), "VALID"
        y = tf.nn.conv1d(x, layer.kernel, stride=layer.strides[0], padding=padding, dilations=rate[0])
    elif type(layer) is keras.layers.Conv2D:
        y = tf.nn.conv2d(x, layer.kernel, strides=layer.strides, padding=padding, dilations=rate)
    else:
        return None
    if layer.use_bias:
        y = tf.nn.bias_add(y, layer.bias)
    return layer.activation(y) if layer.activation is not None else y


def _depthwise_dilated(x, kernel, strides, padding, rate):
    """DepthwiseConv2dNative with its dilations, differentiated as ``tf.nn.depthwise_conv2d`` (Keras' own call): TF
    2.21's CPU backprop of the native op ignores the dilations (measured: the input gradient of one output lands on
    the undilated 3x3 neighbourhood)."""
    @tf.custom_gradient
    def run(x, kernel):
        y = tf.raw_ops.DepthwiseConv2dNative(input=x, filter=kernel, strides=[1, *strides, 1], padding=padding,
                                             dilations=[1, *rate, 1])

        def grad(dy):
            with tf.GradientTape() as tape:
                tape.watch([x, kernel])
                ref = tf.nn.depthwise_conv2d(x, kernel, [1, *strides, 1], padding, dilations=rate)
            return tape.gradient(ref, [x, kernel], output_gradients=dy)
        return y, grad
    return run(x, kernel)


class Split(NamedTuple):
    """A layer call the converter makes two ops of: whether it does for this layer (``applies``: neither op is the
    identity, decided once on the float layer), the call with the tensor between them through a quantizer, and
    the two ops with their constant operands as the converter gets them (``steps``: the integer emulation's)."""
    applies: Callable[[Any], bool]
    run: Callable[[Any, Any, Callable], Any]   # (layer, inputs, quantize_inner) -> outputs
    steps: Callable[[Any], List[Tuple[str, Any]]]   # layer -> [(TFLite op, its constant operand)], in order


def _rescaling(layer, inputs, quantize_inner):
    dtype = layer.compute_dtype
    x = tf.cast(inputs, dtype)
    return quantize_inner(x * tf.cast(layer.scale, dtype)) + tf.cast(layer.offset, dtype)


def _std(layer):
    """A Normalization's divisor, as its call computes it."""
    return tf.maximum(tf.sqrt(layer.variance), keras.backend.epsilon())


def _normalization(layer, inputs, quantize_inner):
    x = tf.cast(layer._standardize_inputs(inputs), layer.compute_dtype)
    std = _std(layer)
    if layer.invert:
        return layer.mean + quantize_inner(x * std)
    return quantize_inner(x - layer.mean) / std


def _rescaling_steps(layer):
    return [("MUL", layer.scale), ("ADD", layer.offset)]


def _normalization_steps(layer):
    """The constants the converter folds: ``std`` as the call computes it, and the division by it as a MUL by
    ``1/std`` (float32; measured: a division by a constant deploys as MUL by its reciprocal)."""
    std = _std(layer)
    if layer.invert:
        return [("MUL", std), ("ADD", layer.mean)]
    return [("SUB", layer.mean), ("MUL", 1.0 / std)]


def rescaling_op(layer):
    """A Rescaling that is one op (its offset 0 or its scale 1; Python numbers): that op and its constant, else
    None (two ops: ``RESCALING``, or none)."""
    scale_is_one, offset_is_zero = np.all(np.asarray(layer.scale) == 1), np.all(np.asarray(layer.offset) == 0)
    if scale_is_one == offset_is_zero:
        return None
    return ("ADD", layer.offset) if scale_is_one else ("MUL", layer.scale)


def _neither_is(a, identity_a, b, identity_b) -> bool:
    return not (np.all(np.asarray(a) == identity_a) or np.all(np.asarray(b) == identity_b))


#: ``Rescaling.call`` as MUL then ADD
RESCALING = Split(lambda layer: _neither_is(layer.scale, 1, layer.offset, 0), _rescaling, _rescaling_steps)
#: ``Normalization.call`` as SUB then DIV (``invert``: MUL then ADD)
NORMALIZATION = Split(lambda layer: _neither_is(layer.mean, 0, layer.variance, 1), _normalization,
                      _normalization_steps)
