"""DC's augmentation for training evaluation networks (SPEC section 7): one random op per image, crop (pad 4
with the channel mean, random shift), scale (+-20%), rotate (+-45 degrees) or noise (std 0.001); the geometric
ones as one batched ``grid_sample`` instead of DC's per-image loop, the border the batch's channel mean."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

CROP, SCALE, ROTATE, NOISE = 4, 0.2, 45, 0.001
STRATEGIES = {"crop_scale_rotate": ("crop", "scale", "rotate"), "crop_noise": ("crop", "noise")}


def strategy_for(dataset: str, eval_model: str) -> Optional[str]:
    """DC's choice of evaluation augmentation: crop/noise for ConvNetBN, crop/scale/rotate on MNIST."""
    if eval_model == "ConvNetBN":
        return "crop_noise"
    return "crop_scale_rotate" if dataset == "MNIST" else None


def augment(images: Tensor, ops, generator: torch.Generator) -> Tensor:
    n, _, h, w = images.shape
    device = images.device

    def uniform(lo, hi):
        return (torch.rand(n, generator=generator) * (hi - lo) + lo).to(device)

    choice = torch.randint(len(ops), (n,), generator=generator).to(device)
    shift_x = torch.randint(-CROP, CROP + 1, (n,), generator=generator).to(device)
    shift_y = torch.randint(-CROP, CROP + 1, (n,), generator=generator).to(device)
    scale_x, scale_y = uniform(1 - SCALE, 1 + SCALE), uniform(1 - SCALE, 1 + SCALE)
    angle = uniform(-ROTATE, ROTATE) * math.pi / 180
    noise = torch.randn(images.shape, generator=generator).to(device) * NOISE

    def is_op(name):
        return (choice == ops.index(name)) if name in ops else torch.zeros_like(choice, dtype=torch.bool)

    crop, scale, rotate = is_op("crop"), is_op("scale"), is_op("rotate")
    # theta maps output coordinates (in [-1, 1]) to input coordinates, per image.
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[crop, 0, 2] = 2 * shift_x[crop].float() / w
    theta[crop, 1, 2] = 2 * shift_y[crop].float() / h
    theta[scale, 0, 0] = 1 / scale_x[scale]
    theta[scale, 1, 1] = 1 / scale_y[scale]
    cos, sin = torch.cos(angle[rotate]), torch.sin(angle[rotate])
    theta[rotate, 0, 0], theta[rotate, 0, 1] = cos, -sin
    theta[rotate, 1, 0], theta[rotate, 1, 1] = sin, cos
    mean = images.mean(dim=(0, 2, 3), keepdim=True)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images - mean, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + mean
    out = torch.where((crop | scale | rotate).view(-1, 1, 1, 1), moved, images)
    return torch.where(is_op("noise").view(-1, 1, 1, 1), out + noise, out)
