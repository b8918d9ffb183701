"""The evaluation augmentations of other tools, drawn from a run's generator (their sources: docs/protocols.md).

* ``idc``: IDC's ``single_aug``: flip and colour, then one of crop, scale and rotate per batch (DSA's ops).
* DC-BENCH's ``--aug`` choices: on the un-normalised batch truncated to 8 bits, one draw for the whole batch.
* ``cutmix``: IDC's CutMix, the loss mixed by the box's true area (soft targets)."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import dsa

DCBENCH = ("autoaug", "randaug", "cifar_aug", "imagenet_aug")
CUTOUT = 16  # DC-BENCH's cifar_aug Cutout side


def idc(x: Tensor, generator: torch.Generator) -> Tensor:
    for ops in ("flip", "color", "crop_scale_rotate"):
        x = dsa.augment_batch(x, ops, generator)
    return x


def _kornia(name: str, size) -> torch.nn.Module:
    import kornia.augmentation as K
    from kornia.augmentation.auto import AutoAugment, RandAugment

    crop = [K.RandomCrop(tuple(size), padding=4), K.RandomHorizontalFlip()]
    module = {"autoaug": lambda: AutoAugment("cifar10"), "randaug": lambda: RandAugment(n=1, m=9),
              "cifar_aug": lambda: K.AugmentationSequential(*crop),
              "imagenet_aug": lambda: K.AugmentationSequential(*crop, K.ColorJitter(0.4, 0.4, 0.4, 0.2))}[name]()
    for part in module.modules():  # torchvision on a batch draws once for it
        if hasattr(part, "same_on_batch"):
            part.same_on_batch = True
    return module


def dcbench(name: str, mean: Sequence[float], std: Sequence[float], size) -> Callable:
    module = _kornia(name, size)
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)

    def augment(x: Tensor, generator: torch.Generator) -> Tensor:
        m_, s_ = m.to(x.device), s.to(x.device)
        pixels = torch.floor((x * s_ + m_).clamp(0, 1) * 255) / 255  # DC-BENCH's .to(torch.uint8): truncation
        seed = int(torch.randint(2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):  # kornia draws from the global stream: seeded from ours
            torch.manual_seed(seed)
            out = (module(pixels) - m_) / s_
            if name == "cifar_aug":  # Cutout(16) after normalising, one square for the batch
                h, w = out.shape[-2:]
                cy, cx = (int(torch.randint(n, (1,))) for n in (h, w))
                out[..., max(cy - CUTOUT // 2, 0):cy + CUTOUT // 2, max(cx - CUTOUT // 2, 0):cx + CUTOUT // 2] = 0
        return out
    return augment


def cutmix(probability: float, num_classes: int) -> Callable:
    def mix(x: Tensor, y: Tensor, generator: torch.Generator):
        target = F.one_hot(y, num_classes).to(x.dtype)
        if float(torch.rand(1, generator=generator)) >= probability:
            return x, target
        lam = float(torch.rand(1, generator=generator))
        perm = torch.randperm(len(x), generator=generator).to(x.device)
        h, w = x.shape[-2:]
        cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(h, (1,), generator=generator)), int(torch.randint(w, (1,), generator=generator))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
        kept = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the box's true area, clipped at the border
        return x, kept * target + (1 - kept) * target[perm]
    return mix
