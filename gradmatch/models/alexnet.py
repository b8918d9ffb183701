"""The small CIFAR AlexNet from DC (padding 4 on the first conv for 28x28 inputs)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from gradmatch.models.layers import FeaturesThenLinear, is_mnist_size, norm2d
from gradmatch.models.registry import register_model


class AlexNet(FeaturesThenLinear):
    """conv5(128) pool conv5(192) pool conv3(256) conv3(192) conv3(192) pool -> classifier.

    ``norm="batchnorm"`` puts a BatchNorm2d after every conv (AlexNetBN); default ``"none"``.
    """

    def __init__(self, channel: int, num_classes: int, im_size: Sequence[int] = (32, 32), norm: str = "none",
                 name: str = "AlexNet"):
        super().__init__()
        first_pad = 4 if is_mnist_size(im_size) else 2
        # (in, out, kernel, padding, pool after)
        spec = [
            (channel, 128, 5, first_pad, True),
            (128, 192, 5, 2, True),
            (192, 256, 3, 1, False),
            (256, 192, 3, 1, False),
            (192, 192, 3, 1, True),
        ]
        layers = []
        for c_in, c_out, k, pad, pool in spec:
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=k, padding=pad))
            if norm != "none":
                layers.append(norm2d(norm, c_out))
            layers.append(nn.ReLU())
            if pool:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        # 192*4*4 for 32x32 (and 28x28) inputs
        self.finish(layers, channel, num_classes, im_size, name)


@register_model(name="AlexNet")
def alexnet(channel: int, num_classes: int, im_size=(32, 32), **kwargs) -> AlexNet:
    return AlexNet(channel, num_classes, im_size, **kwargs)


@register_model(name="AlexNetBN")
def alexnet_bn(channel: int, num_classes: int, im_size=(32, 32), **kwargs) -> AlexNet:
    return AlexNet(channel, num_classes, im_size, **{"norm": "batchnorm", "name": "AlexNetBN", **kwargs})
