"""The built-in layer configs: Keras' layers, registered with ``register_layer`` as a user's layer is.

Each line says everything qresearch knows about a kind: its weights and their channel axes, the kind
a hardware target constrains, how BN folds into it, and the TFLite op the integer emulation runs it as.
"""
from __future__ import annotations

from qresearch._compat import keras
from qresearch.schemes.folding import scale_depthwise, scale_last_axis, scale_transposed
from qresearch.schemes.layer_calls import NORMALIZATION, RESCALING, dense_nd, dilated_conv
from qresearch.schemes.layers import (ACTIVATION_OPS, CONSTANT_OPS, FIXED_ACTIVATIONS, FUSABLE_ACTIVATIONS, RELU_OPS,
                                      activation_name, fused_relu, op_name, register_layer)

L = keras.layers


def _activation_layer_kind(layer) -> str:
    name = activation_name(getattr(layer, "activation", None))
    if name in FUSABLE_ACTIVATIONS:
        return "activation"
    if name in FIXED_ACTIVATIONS:
        return "fixed"
    return "output"


def _relu_kind(layer) -> str:
    return "activation" if fused_relu(layer) else "output"


def _activation_op(layer):
    return RELU_OPS.get(fused_relu(layer)) or ACTIVATION_OPS.get(activation_name(layer.activation))


_OP_KINDS = {
    "passthrough": ("reshape", "transpose", "squeeze", "expand_dims", "getitem", "strided_slice", "slice",
                    "gather", "gather_nd", "pad", "identity", "split", "unstack", "tile", "reverse",
                    "depth_to_space", "space_to_depth", "reduce_max", "reduce_min", "flatten", "max_pool2d",
                    "cast", "stop_gradient", "broadcast_to", "ensure_shape"),
    "concat": ("concat", "stack"),
    "activation": ("relu", "relu6"),
    "fixed": FIXED_ACTIVATIONS,
    "merge": ("add", "add_v2", "multiply", "subtract", "truediv", "divide", "maximum", "minimum", "matmul",
              "add_n", "multiply_no_nan", "squared_difference"),
}


def _op_kind(layer) -> str:
    name = op_name(layer)
    for kind, ops in _OP_KINDS.items():
        if name in ops:
            return kind
    return "output"


# ------------------------------------------------------------------ compute layers
# Depthwise kernels are (k.., in, multiplier): every in·multiplier pair is an output channel (TFLite
# quantized_dimension 3 of [1, H, W, in·mult]); transposed convs are (k.., out, in).
_KERNEL = ("kernel", scale_last_axis)


def _compute(cls, weights=("kernel",), **facts):
    register_layer(cls, weights=weights, activations=["activation"], kind="compute", **facts)


# Order within a target kind is the order constrain() lists (and adds overrides for) that kind's classes.
_compute(L.Conv2D, target_kind="conv", fold=_KERNEL, integer_op="CONV_2D", call=dilated_conv)
_compute(L.DepthwiseConv2D, weights=("depthwise_kernel",), channel_axes={"depthwise_kernel": (2, 3)},
         target_kind="conv", fold=("depthwise_kernel", scale_depthwise), integer_op="DEPTHWISE_CONV_2D",
         call=dilated_conv)
_compute(L.SeparableConv2D, weights=("depthwise_kernel", "pointwise_kernel"),
         channel_axes={"depthwise_kernel": (2, 3)}, target_kind="conv",
         fold=("pointwise_kernel", scale_last_axis), integer_op=None)  # split in two ops by graph.py
_compute(L.Conv3D, target_kind="conv", fold=_KERNEL, integer_op=None)
_compute(L.Conv1D, target_kind="conv1d", fold=_KERNEL, integer_op="CONV_2D", call=dilated_conv)
_compute(L.SeparableConv1D, weights=("depthwise_kernel", "pointwise_kernel"),
         channel_axes={"depthwise_kernel": (1, 2)}, target_kind="conv1d",
         fold=("pointwise_kernel", scale_last_axis), integer_op=None)
_compute(L.DepthwiseConv1D, weights=("depthwise_kernel",), channel_axes={"depthwise_kernel": (1, 2)},
         target_kind=None, fold=("depthwise_kernel", scale_depthwise), integer_op="DEPTHWISE_CONV_2D",
         call=dilated_conv)
for _cls, _op in ((L.Conv1DTranspose, None), (L.Conv2DTranspose, "TRANSPOSE_CONV"), (L.Conv3DTranspose, None)):
    # no fused ReLU: TRANSPOSE_CONV then RELU (measured, TF 2.21; fused, the conv had no grid and ran in float)
    _compute(_cls, channel_axes={"kernel": (-2,)}, target_kind="conv_transpose",
             fold=("kernel", scale_transposed), integer_op=_op, fuses_relu=False)
_compute(L.Dense, target_kind="dense", fold=_KERNEL, integer_op="FULLY_CONNECTED", call=dense_nd)  # rank > 2
if hasattr(L, "EinsumDense"):
    _compute(L.EinsumDense, target_kind="dense")
# Attention: the four projections' kernels (EinsumDense sublayers) are quantized, per output channel (a
# query/key/value kernel is (d, heads, key_dim): every head's every dimension is a channel); the scores, their
# softmax and the weighted sum stay float (on TFLite: float islands that ``verify`` lists).
_ATTENTION = ("_query_dense.kernel", "_key_dense.kernel", "_value_dense.kernel", "_output_dense.kernel")
register_layer(L.MultiHeadAttention, weights=list(_ATTENTION), kind="compute", target_kind="dense",
               channel_axes={w: ((-1,) if w.startswith("_output") else (-2, -1)) for w in _ATTENTION})

# Recurrent layers: the cell's kernels are quantized (dotted paths); gate math stays float (TFLite's
# fully-int8 LSTM kernel, with a 16-bit cell state, is not simulated).
_RNN_WEIGHTS = ["cell.kernel", "cell.recurrent_kernel"]
for _cls in (L.LSTM, L.GRU, L.SimpleRNN, getattr(L, "ConvLSTM2D", None)):
    if _cls is not None:
        register_layer(_cls, weights=_RNN_WEIGHTS, kind="compute")
register_layer(L.Bidirectional, weights=[f"{d}_layer.{w}" for d in ("forward", "backward") for w in _RNN_WEIGHTS],
               kind="compute")
register_layer(L.Embedding, weights=["embeddings"], quantize_output=False, kind="compute", quantized_input=False,
               output_grid="embeddings")

# ------------------------------------------------------------------ everything else
register_layer(L.BatchNormalization, kind="bn")
register_layer(L.ReLU, kind=_relu_kind, integer_op=lambda layer: RELU_OPS.get(fused_relu(layer)))
register_layer(L.Activation, kind=_activation_layer_kind, integer_op=_activation_op)
register_layer(L.Softmax, kind="fixed", integer_op="SOFTMAX")
register_layer(L.LeakyReLU, kind="output", integer_op="LEAKY_RELU")
register_layer(L.PReLU, kind="output", integer_op="PRELU")
for _cls in (L.ELU, L.ThresholdedReLU, L.LayerNormalization):
    register_layer(_cls, kind="output")


def unit_norm_over_last_axis(layer) -> bool:
    """A UnitNormalization over the last axis only: the converter makes it one L2_NORMALIZATION (fixed output grid)."""
    axes = list(layer.axis) if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    rank = len(layer.input_shape) if getattr(layer, "_inbound_nodes", None) else None
    return len(axes) == 1 and (axes[0] == -1 or (rank is not None and axes[0] == rank - 1))


register_layer(L.UnitNormalization, kind=lambda layer: "fixed" if unit_norm_over_last_axis(layer) else "output",
               integer_op=lambda layer: "L2_NORMALIZATION" if unit_norm_over_last_axis(layer) else None)
register_layer(L.Rescaling, kind="output", split=RESCALING, integer_op=CONSTANT_OPS)
register_layer(L.Normalization, kind="output", split=NORMALIZATION, integer_op=CONSTANT_OPS)
for _cls, _op in ((L.GlobalAveragePooling1D, "MEAN"), (L.GlobalAveragePooling2D, "MEAN"),
                  (L.GlobalAveragePooling3D, None)):
    register_layer(_cls, kind="output", keeps_sign=True, integer_op=_op)
for _cls, _op in ((L.Add, "ADD"), (L.Subtract, "SUB"), (L.Multiply, "MUL"), (L.Average, None)):
    register_layer(_cls, kind="merge", integer_op=_op, keeps_sign=_cls in (L.Add, L.Multiply, L.Average))


def batch_matmul_adjoints(layer, ranks=None):
    """``(adj_x, adj_y)`` of the BATCH_MATMUL a ``Dot`` of two rank-3 tensors (batch, rows, columns) is, without
    normalisation; a Dot of two vectors (rank 2, one dot product per example) is the BATCH_MATMUL of ``x`` as one row
    and ``y`` as one row transposed (the converter's EXPAND_DIMS, BATCH_MATMUL): ``(False, True)``. None for any
    other Dot (the float simulation stays). ``ranks``: its inputs' ranks, batch axis included (default: read from
    the layer's call)."""
    if ranks is None:
        shapes = getattr(layer, "input_shape", None) if getattr(layer, "_inbound_nodes", None) else None
        ranks = [len(s) for s in shapes] if isinstance(shapes, list) else None
    if layer.normalize or ranks is None or list(ranks) not in ([3, 3], [2, 2]):
        return None
    if list(ranks) == [2, 2]:
        return False, True
    axes = layer.axes if isinstance(layer.axes, (list, tuple)) else (layer.axes, layer.axes)
    axes = [a % 3 for a in axes]
    if any(a not in (1, 2) for a in axes):
        return None
    return axes[0] == 1, axes[1] == 2   # x contracted over its rows: x^T; y over its columns: y^T


# the emulation's matcher takes the Dots that are one (``batch_matmul_adjoints``); the others stay float-simulated
register_layer(L.Dot, kind="merge", keeps_sign=False, integer_op="BATCH_MATMUL")
register_layer(L.Concatenate, kind="concat", integer_op="CONCATENATION")
# TFLite's MAXIMUM/MINIMUM compare integers on one grid, as CONCATENATION keeps one (measured: the converter
# requantizes an input on another grid with a QUANTIZE and computes a sole producer straight onto the output's)
register_layer(L.Maximum, kind="concat", integer_op="MAXIMUM")
register_layer(L.Minimum, kind="concat", integer_op="MINIMUM")
try:  # keras.applications.ConvNeXt*: x·γ per channel (float γ; TFLite: MUL by a quantized constant)
    from tf_keras.src.applications.convnext import LayerScale
    register_layer(LayerScale, kind="output", keeps_sign=False)
except ImportError:  # pragma: no cover - tf_keras layout differs
    pass
def _bilinear(layer) -> bool:
    """RESIZE_BILINEAR keeps its input's (S, Z) and rounds the interpolation onto that grid."""
    return getattr(layer, "interpolation", "nearest") == "bilinear"


register_layer(L.Resizing, quantize_output=False, kind="passthrough", same_grid=_bilinear)
for _name in ("Identity", "CenterCrop", "RandomFlip", "RandomRotation", "RandomZoom",
              "RandomTranslation", "RandomContrast", "RandomCrop", "RandomBrightness", "RandomHeight",
              "RandomWidth"):
    if hasattr(L, _name):  # preprocessing/augmentation: data movement or identity at inference
        register_layer(getattr(L, _name), quantize_output=False, kind="passthrough")
# TF ops applied to Keras tensors (x * 2, tf.nn.relu(x), x[:, 1:], tf.concat): classified by op name.
try:
    from tf_keras.src.layers.core.tf_op_layer import SlicingOpLambda, TFOpLambda
    register_layer(TFOpLambda, kind=_op_kind, wrap=False)
    register_layer(SlicingOpLambda, kind=_op_kind, wrap=False)
except ImportError:  # pragma: no cover - tf_keras layout differs
    pass
for _cls in (L.Flatten, L.Reshape, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
             L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization,
             L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D,
             L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D, L.AveragePooling2D,
             L.AveragePooling3D, L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
             L.Permute, L.RepeatVector, L.UpSampling1D, L.UpSampling2D, L.UpSampling3D, L.Masking):
    register_layer(_cls, quantize_output=False, kind="passthrough",
                   same_grid=(_bilinear if _cls is L.UpSampling2D else
                              _cls in (L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D)))
