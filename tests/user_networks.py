"""A user's own networks, importable as ``tests.user_networks:NAME`` (``--model`` takes them)."""
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
