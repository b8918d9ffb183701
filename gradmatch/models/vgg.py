"""VGG11 as in DC: instance norm (VGG11) or batch norm (VGG11BN); padding 3 on the first conv for 28x28."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from gradmatch.models.layers import FeaturesThenLinear, is_mnist_size, norm2d
from gradmatch.models.registry import register_model

CFGS = {
    "VGG11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
}


class VGG(FeaturesThenLinear):
    def __init__(self, cfg: Sequence[int | str], channel: int, num_classes: int,
                 im_size: Sequence[int] = (32, 32), norm: str = "instancenorm", name: str = "VGG"):
        super().__init__()
        layers = []
        in_ch = channel
        for i, v in enumerate(cfg):
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            pad = 3 if i == 0 and is_mnist_size(im_size) else 1
            layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=pad), norm2d(norm, v), nn.ReLU()]
            in_ch = v
        # 512*1*1 for 32x32 (and 28x28) inputs
        self.finish(layers, channel, num_classes, im_size, name)


@register_model(name="VGG11")
def vgg11(channel: int, num_classes: int, im_size=(32, 32), **kwargs) -> VGG:
    return VGG(CFGS["VGG11"], channel, num_classes, im_size, **{"name": "VGG11", **kwargs})


@register_model(name="VGG11BN")
def vgg11_bn(channel: int, num_classes: int, im_size=(32, 32), **kwargs) -> VGG:
    return VGG(CFGS["VGG11"], channel, num_classes, im_size, **{"norm": "batchnorm", "name": "VGG11BN", **kwargs})
