"""DC's plain (non-residual) networks: ConvNet, its default, with its width/depth/activation/pooling/norm
variants, and LeNet, AlexNet, VGG11 and the MLP.  For 28x28 inputs the first conv pads more, so the maps
are those of a 32x32 input."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from gradmatch import checks
from gradmatch.errors import unknown_name
from gradmatch.models.layers import FeaturesThenLinear, feature_dim, is_mnist_size, norm2d
from gradmatch.models.registry import register_model

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "leakyrelu": partial(nn.LeakyReLU, negative_slope=0.01)}
NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
POOLINGS = {"avgpooling": nn.AvgPool2d, "maxpooling": nn.MaxPool2d, "none": None}


class ConvNet(FeaturesThenLinear):
    """``depth`` x [conv3x3 -> norm -> act -> pool 2x2], then ``classifier = Linear(width*h*w, K)``."""

    def __init__(self, channel: int, num_classes: int, im_size: Sequence[int] = (32, 32), width: int = 128,
                 depth: int = 3, act: str = "relu", norm: str = "instancenorm", pooling: str = "avgpooling",
                 name: str = "ConvNet"):
        super().__init__()
        checks.whole(width, "ConvNet width", minimum=1)
        checks.whole(depth, "ConvNet depth", minimum=1)
        for kind, value, valid in (("activation", act, ACTIVATIONS), ("norm", norm, NORMS),
                                   ("pooling", pooling, POOLINGS)):
            if value not in tuple(valid):
                raise unknown_name(kind, value, valid)

        h, w = im_size
        layers = []
        for d in range(depth):
            pad = 3 if d == 0 and is_mnist_size(im_size) else 1
            layers.append(nn.Conv2d(channel if d == 0 else width, width, kernel_size=3, padding=pad))
            h, w = h + 2 * pad - 2, w + 2 * pad - 2
            if norm == "layernorm":
                layers.append(nn.LayerNorm([width, h, w], elementwise_affine=True))
            elif norm != "none":
                layers.append(norm2d(norm, width))
            layers.append(ACTIVATIONS[act]())
            if pooling != "none":
                layers.append(POOLINGS[pooling](kernel_size=2, stride=2))
                h, w = h // 2, w // 2
        self.finish(layers, channel, num_classes, im_size, name)


# name -> ConvNet keyword arguments (everything else at its default)
VARIANTS = {
    "ConvNet": {},
    **{f"ConvNetW{w}": {"width": w} for w in (32, 64, 128, 256)},
    **{f"ConvNetD{d}": {"depth": d} for d in (1, 2, 3, 4)},
    "ConvNetAS": {"act": "sigmoid"}, "ConvNetAR": {"act": "relu"}, "ConvNetAL": {"act": "leakyrelu"},
    "ConvNetNP": {"pooling": "none"}, "ConvNetMP": {"pooling": "maxpooling"}, "ConvNetAP": {"pooling": "avgpooling"},
    "ConvNetNN": {"norm": "none"}, "ConvNetBN": {"norm": "batchnorm"}, "ConvNetLN": {"norm": "layernorm"},
    "ConvNetIN": {"norm": "instancenorm"}, "ConvNetGN": {"norm": "groupnorm"},
}

for _name, _defaults in VARIANTS.items():
    register_model(partial(ConvNet, name=_name, **_defaults), name=_name)


class LeNet(nn.Module):
    """LeNet-5 as in DC."""

    def __init__(self, channel: int, num_classes: int, im_size: Sequence[int] = (32, 32)):
        super().__init__()
        pad = 2 if is_mnist_size(im_size) else 0
        self.features = nn.Sequential(
            nn.Conv2d(channel, 6, kernel_size=5, padding=pad), nn.ReLU(), nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5), nn.ReLU(), nn.MaxPool2d(kernel_size=2, stride=2), nn.Flatten())
        n_feat = feature_dim(self.features, self, channel, im_size, "LeNet")  # 16*5*5 for 32x32
        self.fc = nn.Sequential(nn.Linear(n_feat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
        self.classifier = nn.Linear(84, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class AlexNet(FeaturesThenLinear):
    """DC's small CIFAR AlexNet; ``norm="batchnorm"`` puts a BatchNorm2d after every conv (AlexNetBN)."""

    def __init__(self, channel: int, num_classes: int, im_size: Sequence[int] = (32, 32), norm: str = "none",
                 name: str = "AlexNet"):
        super().__init__()
        first_pad = 4 if is_mnist_size(im_size) else 2
        # (in, out, kernel, padding, pool after) of each conv
        spec = [(channel, 128, 5, first_pad, True), (128, 192, 5, 2, True), (192, 256, 3, 1, False),
                (256, 192, 3, 1, False), (192, 192, 3, 1, True)]
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


VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG(FeaturesThenLinear):
    """VGG as in DC, instance norm by default."""

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


class MLP(FeaturesThenLinear):
    """flatten -> width -> ReLU -> width -> ReLU -> classifier."""

    def __init__(self, channel: int, num_classes: int, im_size: Sequence[int] = (32, 32), width: int = 128):
        super().__init__()
        h, w = im_size
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(channel * h * w, width), nn.ReLU(),
                                      nn.Linear(width, width), nn.ReLU())
        self.classifier = nn.Linear(width, num_classes)


register_model(LeNet, name="LeNet")
register_model(AlexNet, name="AlexNet")
register_model(partial(AlexNet, norm="batchnorm", name="AlexNetBN"), name="AlexNetBN")
register_model(partial(VGG, VGG11, name="VGG11"), name="VGG11")
register_model(partial(VGG, VGG11, norm="batchnorm", name="VGG11BN"), name="VGG11BN")
register_model(MLP, name="MLP")
