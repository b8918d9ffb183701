"""ConvNet, DC's default network, and its width/depth/activation/pooling/norm variants."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from gradmatch import checks
from gradmatch.errors import unknown_name
from gradmatch.models.layers import FeaturesThenLinear, is_mnist_size, norm2d
from gradmatch.models.registry import register_model

ACTIVATIONS = ("relu", "sigmoid", "leakyrelu")
NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
POOLINGS = ("avgpooling", "maxpooling", "none")


def _activation(act: str) -> nn.Module:
    if act == "relu":
        return nn.ReLU()
    if act == "sigmoid":
        return nn.Sigmoid()
    if act == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.01)
    raise unknown_name("activation", act, ACTIVATIONS)


def _pooling(pooling: str) -> nn.Module:
    if pooling == "avgpooling":
        return nn.AvgPool2d(kernel_size=2, stride=2)
    if pooling == "maxpooling":
        return nn.MaxPool2d(kernel_size=2, stride=2)
    if pooling == "none":
        return nn.Identity()
    raise unknown_name("pooling", pooling, POOLINGS)


class ConvNet(FeaturesThenLinear):
    """``depth`` x [conv3x3 -> norm -> act -> pool 2x2], then ``classifier = Linear(width*h*w, K)``.

    For 28x28 inputs the first conv pads by 3, so the maps are those of a 32x32 input.
    """

    def __init__(self, channel: int, num_classes: int, im_size: Sequence[int] = (32, 32), width: int = 128,
                 depth: int = 3, act: str = "relu", norm: str = "instancenorm", pooling: str = "avgpooling",
                 name: str = "ConvNet"):
        super().__init__()
        checks.whole(width, "ConvNet width", minimum=1)
        checks.whole(depth, "ConvNet depth", minimum=1)
        if act not in ACTIVATIONS:
            raise unknown_name("activation", act, ACTIVATIONS)
        if norm not in NORMS:
            raise unknown_name("norm", norm, NORMS)
        if pooling not in POOLINGS:
            raise unknown_name("pooling", pooling, POOLINGS)

        h, w = im_size
        layers = []
        in_ch = channel
        for d in range(depth):
            pad = 3 if d == 0 and is_mnist_size(im_size) else 1
            layers.append(nn.Conv2d(in_ch, width, kernel_size=3, padding=pad))
            h, w = h + 2 * pad - 2, w + 2 * pad - 2
            if norm == "layernorm":
                layers.append(nn.LayerNorm([width, h, w], elementwise_affine=True))
            elif norm != "none":
                layers.append(norm2d(norm, width))
            layers.append(_activation(act))
            if pooling != "none":
                layers.append(_pooling(pooling))
                h, w = h // 2, w // 2
            in_ch = width
        self.finish(layers, channel, num_classes, im_size, name)


# name -> ConvNet keyword arguments (everything else at its default)
VARIANTS = {
    "ConvNet": {},
    **{f"ConvNetW{w}": {"width": w} for w in (32, 64, 128, 256)},
    **{f"ConvNetD{d}": {"depth": d} for d in (1, 2, 3, 4)},
    "ConvNetAS": {"act": "sigmoid"},
    "ConvNetAR": {"act": "relu"},
    "ConvNetAL": {"act": "leakyrelu"},
    "ConvNetNP": {"pooling": "none"},
    "ConvNetMP": {"pooling": "maxpooling"},
    "ConvNetAP": {"pooling": "avgpooling"},
    "ConvNetNN": {"norm": "none"},
    "ConvNetBN": {"norm": "batchnorm"},
    "ConvNetLN": {"norm": "layernorm"},
    "ConvNetIN": {"norm": "instancenorm"},
    "ConvNetGN": {"norm": "groupnorm"},
}


def _convnet_builder(variant: str, defaults: dict):
    def builder(channel: int, num_classes: int, im_size=(32, 32), **kwargs) -> ConvNet:
        return ConvNet(channel, num_classes, im_size, name=variant, **{**defaults, **kwargs})

    builder.__name__ = builder.__qualname__ = variant
    builder.__doc__ = f"ConvNet with {defaults or 'default settings'}; keyword args override them."
    return builder


for _name, _defaults in VARIANTS.items():
    register_model(_convnet_builder(_name, _defaults), name=_name)
