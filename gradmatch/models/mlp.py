"""MLP: flatten -> 128 -> ReLU -> 128 -> ReLU -> classifier."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from gradmatch.models.registry import register_model


class MLP(nn.Module):
    def __init__(self, channel: int, num_classes: int, im_size: Sequence[int] = (32, 32), width: int = 128):
        super().__init__()
        h, w = im_size
        self.features = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channel * h * w, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(width, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@register_model(name="MLP")
def mlp(channel: int, num_classes: int, im_size=(32, 32), **kwargs) -> MLP:
    return MLP(channel, num_classes, im_size, **kwargs)
