"""ImageNet-class models for the model registry: ResNet-18/50 and MobileNetV2, our own builders (Keras 2,
functional, logits out), any input size and width.

- ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, Table 1): a 7x7/2 stem
  conv + 3x3/2 max pool, four stages of basic (ResNet-18: 2-2-2-2) or bottleneck (ResNet-50: 3-4-6-3,
  expansion 4) blocks with widths 64-128-256-512, stride 2 at the first block of stages 2-4 (on the 3x3
  conv of a bottleneck, as torchvision's "v1.5"), projection shortcuts (1x1 conv + BN, option B) where the
  shape changes, global average pooling, a dense layer. 11,689,512 / 25,557,032 trainable parameters at
  1000 classes (any input size), as the published models.
- MobileNetV2 (Sandler et al., CVPR 2018, Table 2): a 3x3/2 stem of 32, inverted residual blocks (t, c, n, s)
  = (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1) with ReLU6 and linear
  bottlenecks, a residual Add where stride is 1 and widths match, a 1x1 conv to 1280, pooling, a dense
  layer; channels scaled by ``width_multiplier`` and rounded to multiples of 8. 3,504,872 trainable
  parameters at 1000 classes and width 1.0.

``stem="auto"`` keeps the ImageNet stem for inputs of at least 64 pixels a side and uses a CIFAR-style stem
below (ResNet: 3x3/1 conv, no pooling; MobileNetV2: stride 1), so the same models run on 32x32 data;
``stem="imagenet"`` / ``"cifar"`` force one. BN momentum 0.9 (``models.registry.BN_MOMENTUM``).
"""
from __future__ import annotations

from typing import Sequence, Tuple

from qresearch._compat import keras
from qresearch.errors import ConfigError
from qresearch.models.registry import BN_MOMENTUM, register_model

layers = keras.layers
STEMS = ("auto", "imagenet", "cifar")
MIN_IMAGENET_SIDE = 64
MOBILENET_V2_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1))


def _stem(input_shape, stem: str) -> str:
    if stem not in STEMS:
        raise ConfigError(f"model stem must be one of {STEMS}, got {stem!r}")
    if stem != "auto":
        return stem
    return "imagenet" if min(input_shape[0], input_shape[1]) >= MIN_IMAGENET_SIDE else "cifar"


def _conv_bn(x, filters, kernel, stride, name, relu=True, weight_decay=0.0):
    reg = keras.regularizers.l2(weight_decay) if weight_decay else None
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                      kernel_initializer="he_normal", kernel_regularizer=reg, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=1e-5, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _basic(x, filters, stride, name, wd):
    y = _conv_bn(x, filters, 3, stride, f"{name}_1", weight_decay=wd)
    y = _conv_bn(y, filters, 3, 1, f"{name}_2", relu=False, weight_decay=wd)
    return y, filters


def _bottleneck(x, filters, stride, name, wd):
    y = _conv_bn(x, filters, 1, 1, f"{name}_1", weight_decay=wd)
    y = _conv_bn(y, filters, 3, stride, f"{name}_2", weight_decay=wd)
    y = _conv_bn(y, 4 * filters, 1, 1, f"{name}_3", relu=False, weight_decay=wd)
    return y, 4 * filters


def _resnet(input_shape, num_classes, blocks: Sequence[int], block, name, width=64, stem="auto",
            weight_decay=0.0):
    inp = keras.Input(input_shape, name="input")
    width = int(width)
    if _stem(input_shape, stem) == "imagenet":
        x = _conv_bn(inp, width, 7, 2, "stem", weight_decay=weight_decay)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    else:
        x = _conv_bn(inp, width, 3, 1, "stem", weight_decay=weight_decay)
    for stage, n in enumerate(blocks):
        filters = width * 2 ** stage
        for b in range(int(n)):
            stride = 2 if stage > 0 and b == 0 else 1
            tag = f"s{stage + 1}b{b + 1}"
            y, out = block(x, filters, stride, tag, weight_decay)
            shortcut = x
            if stride != 1 or x.shape[-1] != out:
                shortcut = _conv_bn(x, out, 1, stride, f"{tag}_short", relu=False, weight_decay=weight_decay)
            x = layers.ReLU(name=f"{tag}_out")(layers.Add(name=f"{tag}_add")([shortcut, y]))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    reg = keras.regularizers.l2(weight_decay) if weight_decay else None
    out = layers.Dense(num_classes, kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inp, out, name=name)


@register_model("resnet18")
def resnet18(input_shape: Tuple[int, ...], num_classes: int, width: int = 64, stem: str = "auto",
             weight_decay: float = 0.0):
    """ResNet-18 (basic blocks 2-2-2-2); ``width``: the first stage's channels (64 in the paper)."""
    return _resnet(input_shape, num_classes, (2, 2, 2, 2), _basic, "resnet18", width, stem, weight_decay)


@register_model("resnet50")
def resnet50(input_shape: Tuple[int, ...], num_classes: int, width: int = 64, stem: str = "auto",
             weight_decay: float = 0.0):
    """ResNet-50 (bottleneck blocks 3-4-6-3, expansion 4); ``width``: the first stage's bottleneck channels."""
    return _resnet(input_shape, num_classes, (3, 4, 6, 3), _bottleneck, "resnet50", width, stem, weight_decay)


def _divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor``, never below 90% of ``value`` (MobileNetV2's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@register_model("mobilenet_v2")
def mobilenet_v2(input_shape: Tuple[int, ...], num_classes: int, width_multiplier: float = 1.0,
                 stem: str = "auto", dropout: float = 0.0):
    """MobileNetV2 (module doc); ``width_multiplier`` scales every layer but the last 1x1 conv below 1.0."""
    def conv_bn(x, filters, kernel, stride, name, act=True):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=1e-3, name=f"{name}_bn")(x)
        return layers.ReLU(6.0, name=f"{name}_relu6")(x) if act else x

    wm = float(width_multiplier)
    inp = keras.Input(input_shape, name="input")
    x = conv_bn(inp, _divisible(32 * wm), 3, 2 if _stem(input_shape, stem) == "imagenet" else 1, "stem")
    channels = x.shape[-1]
    index = 0
    for t, c, n, s in MOBILENET_V2_BLOCKS:
        out = _divisible(c * wm)
        for i in range(n):
            stride = s if i == 0 else 1
            name = f"block{index}"
            y = x
            if t != 1:
                y = conv_bn(y, channels * t, 1, 1, f"{name}_expand")
            y = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(y)
            y = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=1e-3, name=f"{name}_dw_bn")(y)
            y = layers.ReLU(6.0, name=f"{name}_dw_relu6")(y)
            y = conv_bn(y, out, 1, 1, f"{name}_project", act=False)
            if stride == 1 and channels == out:
                y = layers.Add(name=f"{name}_add")([x, y])
            x, channels, index = y, out, index + 1
    x = conv_bn(x, _divisible(1280 * wm) if wm > 1.0 else 1280, 1, 1, "head")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = layers.Dropout(float(dropout), name="dropout")(x)
    return keras.Model(inp, layers.Dense(num_classes, name="logits")(x), name="mobilenet_v2")
