"""CIFAR-style ResNet-18 as in DC: instance norm (ResNet18), batch norm (ResNet18BN), and the
average-pooling variant without strided convs (ResNet18BN_AP)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gradmatch.models.layers import feature_dim, norm2d
from gradmatch.models.registry import register_model


class BasicBlock(nn.Module):
    """conv3x3 -> norm -> ReLU -> conv3x3 -> norm, plus shortcut, then ReLU.

    With ``ap=True`` no conv is strided: a stride-2 block average-pools (2x2) after the first
    norm + ReLU, and its shortcut is conv1x1 -> AvgPool2d(2) -> norm.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, norm: str = "instancenorm", ap: bool = False):
        super().__init__()
        self.stride = stride
        self.ap = ap
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=1 if ap else stride, padding=1, bias=False)
        self.bn1 = norm2d(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = norm2d(norm, planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            out = self.expansion * planes
            if ap:
                layers = [nn.Conv2d(in_planes, out, kernel_size=1, stride=1, bias=False)]
                if stride != 1:
                    layers.append(nn.AvgPool2d(kernel_size=2, stride=2))
                layers.append(norm2d(norm, out))
                self.shortcut = nn.Sequential(*layers)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, out, kernel_size=1, stride=stride, bias=False),
                    norm2d(norm, out),
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        if self.ap and self.stride != 1:
            out = F.avg_pool2d(out, kernel_size=2, stride=2)
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    """conv3x3(64) -> norm -> ReLU -> 4 stages -> pool -> flatten -> classifier.

    The final pooling is ``avg_pool2d(4)`` (so Linear(512, K) for 32x32 and 28x28 inputs); with
    ``ap=True`` there is none and the classifier takes the whole 512 x h x w map.
    """

    def __init__(self, block, num_blocks: Sequence[int], channel: int, num_classes: int,
                 im_size: Sequence[int] = (32, 32), norm: str = "instancenorm", ap: bool = False,
                 name: str = "ResNet"):
        super().__init__()
        self.ap = ap
        self.in_planes = 64
        self.conv1 = nn.Conv2d(channel, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = norm2d(norm, 64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], 1, norm, ap)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], 2, norm, ap)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], 2, norm, ap)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], 2, norm, ap)
        self.classifier = nn.Linear(feature_dim(self.embed, self, channel, im_size, name), num_classes)

    def _make_layer(self, block, planes: int, n: int, stride: int, norm: str, ap: bool) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s, norm=norm, ap=ap))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if not self.ap:
            out = F.avg_pool2d(out, 4)
        return torch.flatten(out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@register_model(name="ResNet18")
def resnet18(channel: int, num_classes: int, im_size=(32, 32), **kwargs) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], channel, num_classes, im_size, **{"name": "ResNet18", **kwargs})


@register_model(name="ResNet18BN")
def resnet18_bn(channel: int, num_classes: int, im_size=(32, 32), **kwargs) -> ResNet:
    kwargs = {"norm": "batchnorm", "name": "ResNet18BN", **kwargs}
    return ResNet(BasicBlock, [2, 2, 2, 2], channel, num_classes, im_size, **kwargs)


@register_model(name="ResNet18BN_AP")
def resnet18_bn_ap(channel: int, num_classes: int, im_size=(32, 32), **kwargs) -> ResNet:
    kwargs = {"norm": "batchnorm", "ap": True, "name": "ResNet18BN_AP", **kwargs}
    return ResNet(BasicBlock, [2, 2, 2, 2], channel, num_classes, im_size, **kwargs)
