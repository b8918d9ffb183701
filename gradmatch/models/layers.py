"""Small pieces shared by the model families: norm layers, the 28x28 rule, feature-size probing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import torch
from torch import nn

from gradmatch.errors import GradmatchError, is_out_of_memory, unknown_name

NORMS_2D = ("instancenorm", "batchnorm", "groupnorm", "none")


class ImageTooSmallError(GradmatchError):
    """The input image is too small for a network (a feature map shrinks to nothing)."""


def is_mnist_size(im_size: Sequence[int]) -> bool:
    """DC's ``channel == 1`` paddings apply to 28x28 inputs (MNIST, FashionMNIST)."""
    return tuple(im_size) == (28, 28)


def norm2d(kind: str, channels: int) -> nn.Module:
    """A norm layer for a (N, channels, H, W) map, as in DC: ``instancenorm`` is ``GroupNorm(channels, channels)``."""
    if kind == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind == "groupnorm":
        if channels % 4:
            raise GradmatchError(f"groupnorm uses 4 groups, so the width must be a multiple of 4 (got {channels})")
        return nn.GroupNorm(4, channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise unknown_name("norm", kind, NORMS_2D)


def feature_dim(fn: Callable[[torch.Tensor], torch.Tensor], module: nn.Module, channel: int,
                im_size: Sequence[int], model_name: str) -> int:
    """Features ``fn`` gives per image (a classifier's ``in_features``), probed on one zero image in eval mode
    (BatchNorm's running stats untouched); ImageTooSmallError where a map shrinks to nothing."""
    h, w = im_size
    too_small = f"images of size {h}x{w} are too small for {model_name}: its feature maps shrink to nothing"
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = fn(torch.zeros(1, channel, h, w))
    except (RuntimeError, ValueError) as e:  # kernel larger than the map; norm over a single value
        if is_out_of_memory(e):  # not a size that is too small: the caller says so
            raise
        raise ImageTooSmallError(too_small) from e
    finally:
        module.train(was_training)
    if out.numel() == 0:
        raise ImageTooSmallError(too_small)
    return int(out.shape[1:].numel())


class FeaturesThenLinear(nn.Module):
    """``features`` (a stack of layers), flattened, then one linear ``classifier``: the shape of DC's ConvNet,
    AlexNet, VGG and MLP.  Subclasses build their layers, then call ``finish`` (the MLP knows its width)."""

    def finish(self, layers: Sequence[nn.Module], channel: int, num_classes: int, im_size: Sequence[int],
               name: str) -> None:
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(feature_dim(self.embed, self, channel, im_size, name), num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.features(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
