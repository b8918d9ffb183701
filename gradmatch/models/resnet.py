"""CIFAR-style ResNet-18 as in DC: instance norm (ResNet18), batch norm (ResNet18BN), and the
average-pooling variant without strided convs (ResNet18BN_AP)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from gradmatch.models.layers import feature_dim, norm2d
from gradmatch.models.registry import register_model


class BasicBlock(nn.Module):
    """conv3x3 -> norm -> ReLU -> conv3x3 -> norm, plus shortcut, then ReLU.  With ``ap=True`` no conv is
    strided: a stride-2 block average-pools (2x2) after the first ReLU, and in its shortcut after the conv1x1."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, norm: str = "instancenorm", ap: bool = False):
        super().__init__()
        self.stride = stride
        self.ap = ap
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=1 if ap else stride, padding=1, bias=False)
        self.bn1 = norm2d(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = norm2d(norm, planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            layers = [nn.Conv2d(in_planes, planes, kernel_size=1, stride=1 if ap else stride, bias=False)]
            if ap and stride != 1:
                layers.append(nn.AvgPool2d(kernel_size=2, stride=2))
            self.shortcut = nn.Sequential(*layers, norm2d(norm, planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        if self.ap and self.stride != 1:
            out = F.avg_pool2d(out, kernel_size=2, stride=2)
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """DC's CIFAR ResNet; ``ap=True`` drops the final ``avg_pool2d(4)``: the classifier takes the whole map."""

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
            self.in_planes = planes
        return nn.Sequential(*layers)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if not self.ap:
            out = F.avg_pool2d(out, 4)
        return torch.flatten(out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


for _name, _options in {"ResNet18": {}, "ResNet18BN": {"norm": "batchnorm"},
                        "ResNet18BN_AP": {"norm": "batchnorm", "ap": True}}.items():
    register_model(partial(ResNet, BasicBlock, [2, 2, 2, 2], name=_name, **_options), name=_name)
