"""The small zoo: MLP, LeNet-5, a tiny MobileNetV2-style net and the CIFAR ResNets (registered builders)."""
from __future__ import annotations

from typing import Sequence, Tuple

from qresearch._compat import keras
from qresearch.errors import ConfigError
from qresearch.models.registry import BN_MOMENTUM, register_model

layers = keras.layers


# ------------------------------------------------------------------ zoo
@register_model("mlp")
def mlp(input_shape: Tuple[int, ...], num_classes: int, hidden: Sequence[int] = (64, 64),
        activation: str = "relu", dropout: float = 0.0):
    """Flatten, Dense(+activation) per hidden width, Dense logits."""
    inp = keras.Input(input_shape, name="input")
    x = layers.Flatten(name="flatten")(inp)
    for i, units in enumerate(hidden):
        x = layers.Dense(int(units), activation=activation, name=f"dense_{i}")(x)
        if dropout:
            x = layers.Dropout(float(dropout), name=f"dropout_{i}")(x)
    out = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inp, out, name="mlp")


@register_model("lenet5")
def lenet5(input_shape: Tuple[int, ...], num_classes: int, filters: Sequence[int] = (6, 16),
           dense: Sequence[int] = (120, 84), activation: str = "relu"):
    """LeCun et al. (1998): two 5x5 conv + pool stages, then 120-84 dense (``same`` padding, max-pool)."""
    inp = keras.Input(input_shape, name="input")
    x = inp
    for i, f in enumerate(filters):
        x = layers.Conv2D(int(f), 5, padding="same", activation=activation, name=f"conv_{i}")(x)
        if min(x.shape[1], x.shape[2]) >= 2:
            x = layers.MaxPooling2D(2, name=f"pool_{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(dense):
        x = layers.Dense(int(units), activation=activation, name=f"dense_{i}")(x)
    out = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inp, out, name="lenet5")


def _conv_bn(x, filters, kernel, stride, name, act="relu6", depthwise=False):
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    else:
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    if act == "relu6":
        x = layers.ReLU(6.0, name=f"{name}_relu6")(x)
    elif act == "relu":
        x = layers.ReLU(name=f"{name}_relu")(x)
    return x


@register_model("mobilenet_tiny")
def mobilenet_tiny(input_shape: Tuple[int, ...], num_classes: int, width: int = 16, expansion: int = 4,
                   blocks: Sequence[Sequence[int]] = ((16, 1), (24, 2), (24, 1), (32, 2), (32, 1))):
    """A small MobileNetV2: stem conv, inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 linear
    projection, residual Add when shapes match), BN momentum 0.9, ReLU6, global pooling, logits.

    ``blocks`` lists (output channels, stride) per block.
    """
    inp = keras.Input(input_shape, name="input")
    x = _conv_bn(inp, int(width), 3, 1, "stem")
    channels = int(width)
    for i, (out_ch, stride) in enumerate(blocks):
        out_ch, stride = int(out_ch), int(stride)
        if min(x.shape[1], x.shape[2]) < 2:
            stride = 1
        name = f"block{i}"
        y = _conv_bn(x, channels * int(expansion), 1, 1, f"{name}_expand")
        y = _conv_bn(y, None, 3, stride, f"{name}_dw", depthwise=True)
        y = _conv_bn(y, out_ch, 1, 1, f"{name}_project", act=None)
        if stride == 1 and out_ch == channels:
            y = layers.Add(name=f"{name}_add")([x, y])
        x, channels = y, out_ch
    x = _conv_bn(x, max(64, channels * 2), 1, 1, "head")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    out = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inp, out, name="mobilenet_tiny")


@register_model("resnet20")
def resnet20(input_shape: Tuple[int, ...], num_classes: int, depth: int = 20, width: int = 16,
             weight_decay: float = 0.0):
    """He et al. (2016) CIFAR ResNet: 3 stages of n = (depth-2)/6 basic blocks, widths w, 2w, 4w,
    stride 2 at the first block of stages 2 and 3, 1x1 convolution + BN shortcut where shapes
    change (option B), BN momentum 0.9, global average pooling, logits.
    """
    if (int(depth) - 2) % 6:
        raise ConfigError(f"resnet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
    n = (int(depth) - 2) // 6
    reg = keras.regularizers.l2(float(weight_decay)) if weight_decay else None

    def conv(x, filters, kernel, stride, name):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                          kernel_initializer="he_normal", kernel_regularizer=reg, name=f"{name}_conv")(x)
        return layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)

    inp = keras.Input(input_shape, name="input")
    x = layers.ReLU(name="stem_relu")(conv(inp, int(width), 3, 1, "stem"))
    for stage in range(3):
        filters = int(width) * 2 ** stage
        for b in range(n):
            stride = 2 if stage > 0 and b == 0 else 1
            name = f"s{stage}b{b}"
            y = layers.ReLU(name=f"{name}_relu1")(conv(x, filters, 3, stride, f"{name}_1"))
            y = conv(y, filters, 3, 1, f"{name}_2")
            shortcut = x
            if stride != 1 or x.shape[-1] != filters:
                shortcut = conv(x, filters, 1, stride, f"{name}_short")
            x = layers.ReLU(name=f"{name}_relu2")(layers.Add(name=f"{name}_add")([shortcut, y]))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    out = layers.Dense(num_classes, kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inp, out, name=f"resnet{depth}")


def small_cnn(input_shape: Tuple[int, ...], num_classes: int, filters: int = 16):
    """Not registered: an example of a builder used through ``model._target_``."""
    inp = keras.Input(input_shape, name="input")
    x = layers.Conv2D(int(filters), 3, padding="same", activation="relu", name="conv")(inp)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inp, layers.Dense(num_classes, name="logits")(x), name="small_cnn")
