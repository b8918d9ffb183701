"""LeNet-5 as in DC (padding 2 on the first conv for 28x28 inputs)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from gradmatch.models.layers import feature_dim, is_mnist_size
from gradmatch.models.registry import register_model


class LeNet(nn.Module):
    def __init__(self, channel: int, num_classes: int, im_size: Sequence[int] = (32, 32)):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channel, 6, kernel_size=5, padding=2 if is_mnist_size(im_size) else 0),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Flatten(),
        )
        n_feat = feature_dim(self.features, self, channel, im_size, "LeNet")  # 16*5*5 for 32x32
        self.fc = nn.Sequential(
            nn.Linear(n_feat, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(84, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@register_model(name="LeNet")
def lenet(channel: int, num_classes: int, im_size=(32, 32), **kwargs) -> LeNet:
    return LeNet(channel, num_classes, im_size, **kwargs)
