"""A user's own networks, importable as ``tests.user_networks:NAME`` (``--model`` takes them)."""
import os
import sys

import torch
from torch import nn


def small(channel, num_classes, im_size):
    """One conv block and a classifier: what a user might bring."""
    h, w = im_size
    return nn.Sequential(nn.Conv2d(channel, 8, 3, padding=1), nn.GroupNorm(8, 8), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(8 * (h // 2) * (w // 2), num_classes))


def with_batchnorm(channel, num_classes, im_size):
    h, w = im_size
    return nn.Sequential(nn.Conv2d(channel, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * h * w, num_classes))


def wrong_shape(channel, num_classes, im_size):
    """Wrong: one score too many."""
    h, w = im_size
    return nn.Sequential(nn.Flatten(), nn.Linear(channel * h * w, num_classes + 1))


def not_a_module(channel, num_classes, im_size):
    return 5


def frozen(channel, num_classes, im_size):
    net = small(channel, num_classes, im_size)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


# ---- networks that pass a look at their output shape and fail later (issue #25, class 2) ----------------
class _Spare(nn.Module):
    """A layer built and never called: its parameters take no gradient."""

    def __init__(self, net):
        super().__init__()
        self.net, self.spare = net, nn.Linear(4, 4)

    def forward(self, x):
        return self.net(x)


def unused_parameter(channel, num_classes, im_size):
    return _Spare(small(channel, num_classes, im_size))


def float64(channel, num_classes, im_size):
    return small(channel, num_classes, im_size).double()


class _Scaled(nn.Module):
    """Scores from the image means, one scale and one shift per class: only 1-D parameters."""

    def __init__(self, num_classes):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(num_classes))
        self.shift = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x):
        return x.mean(dim=(1, 2, 3))[:, None] * self.scale + self.shift


def only_1d(channel, num_classes, im_size):
    return _Scaled(num_classes)


def inplace_first_relu(channel, num_classes, im_size):
    """nn.ReLU(inplace=True) first: it zeroes the negative pixels of the images it is given."""
    return nn.Sequential(nn.ReLU(inplace=True), small(channel, num_classes, im_size))


class _BatchOfTwo(nn.Module):
    def __init__(self, channel, num_classes, im_size):
        super().__init__()
        self.fc = nn.Linear(channel * im_size[0] * im_size[1], num_classes)

    def forward(self, x):
        return self.fc(x.view(2, -1))  # the batch size written in


def batch_of_two(channel, num_classes, im_size):
    return _BatchOfTwo(channel, num_classes, im_size)


class _Root(nn.Module):
    """The square root of each pixel first: normalised pixels below 0 become nan."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.sqrt(x))


def nan_scores(channel, num_classes, im_size):
    return _Root(small(channel, num_classes, im_size))


def exits(channel, num_classes, im_size):
    sys.exit(0)


def changes_folder(channel, num_classes, im_size):
    """Works, but moves the working folder to $USER_NETWORK_FOLDER on every call."""
    os.chdir(os.environ["USER_NETWORK_FOLDER"])
    return small(channel, num_classes, im_size)
