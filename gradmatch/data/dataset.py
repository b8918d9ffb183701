"""The ``Dataset`` every reader returns and every layer takes, its one check, and the pixel helpers the
readers share.  Imports nothing else from ``gradmatch.data``."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from gradmatch import checks
from gradmatch.errors import GradmatchError, is_out_of_memory, out_of_memory

Size = Optional[tuple[int, int]]


@dataclass(frozen=True, repr=False)
class Dataset:
    """Images held in memory: ``images`` float32 N x C x H x W, normalised so that ``images * std + mean``
    (per channel) gives the pixels in [0, 1]; ``labels`` int64 N.  ``note``: one line a run says once (how
    the test images were chosen); ``source``: the data settings that read it again (``DataConfig.to_dict``)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    note: Optional[str] = None
    source: Optional[dict] = None

    @property
    def channel(self) -> int:
        return int(self.images.shape[1])

    @property
    def im_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device) -> "Dataset":
        """This dataset with its images and labels on ``device`` (itself if they are there already)."""
        target = torch.device(device)
        if target.type == "cuda" and target.index is None:  # "cuda" is the current GPU: cuda:N
            target = torch.device("cuda", torch.cuda.current_device())
        if self.images.device == target and self.labels.device == target:
            return self
        return dataclasses.replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, n={len(self)}, channel={self.channel}, "
                f"im_size={self.im_size}, num_classes={self.num_classes})")


def check_dataset(obj: Any, what: str = "real") -> Dataset:
    """``obj`` as a well-formed ``Dataset`` (labels as int64), else one line naming ``what``."""
    if not isinstance(obj, Dataset):
        got = type(obj).__name__
        if isinstance(obj, (torch.Tensor, np.ndarray)):
            got += " (images: wrap them and their labels with gradmatch.data.from_tensors)"
        elif isinstance(obj, torch.utils.data.Dataset):
            got += " (a torch dataset: wrap it with gradmatch.data.from_torch)"
        raise GradmatchError(f"{what} must be a gradmatch.data.Dataset (from gradmatch.data.load, from_tensors or "
                             f"from_torch); got {got}")
    images = checks.images(obj.images, f"{what} images")
    classes = checks.class_names(obj.classes, f"{what} classes")
    labels = checks.labels(obj.labels, len(images), f"{what} labels", len(classes))
    mean = checks.per_channel(obj.mean, images.shape[1], f"{what} mean")
    std = checks.per_channel(obj.std, images.shape[1], f"{what} std", positive=True)
    if labels is obj.labels and classes == obj.classes and (mean, std) == (obj.mean, obj.std):
        return obj
    return dataclasses.replace(obj, labels=labels, classes=classes, mean=mean, std=std)


def missing(dataset: str, path, holds: str) -> GradmatchError:
    return GradmatchError(f"{dataset}: expected {path}; pass --download (download=True from Python) or point "
                          f"--data_path at a folder holding {holds}")


def corrupt(dataset: str, path, detail: str) -> GradmatchError:
    return GradmatchError(f"{dataset}: {path} is truncated or corrupt ({detail}); delete it and re-download it (pass "
                          "--download; download=True from Python)")


def first_existing(paths):
    return next((p for p in paths if p.is_file()), None)


def to_unit(pixels: np.ndarray | Sequence[np.ndarray], scale: float = 255.0) -> torch.Tensor:
    """N x C x H x W pixels 0..scale (or a list of them to stack along N) -> one float32 tensor in [0, 1]."""
    parts = [pixels] if isinstance(pixels, np.ndarray) else list(pixels)
    out = torch.empty((sum(len(p) for p in parts), *parts[0].shape[1:]), dtype=torch.float32)
    start = 0
    for part in parts:
        arr = np.array(part, copy=True) if not part.flags.writeable else np.ascontiguousarray(part)
        out[start:start + len(arr)].copy_(torch.from_numpy(arr))
        start += len(arr)
    return out.div_(scale)


def resize(images: torch.Tensor, size: Size) -> torch.Tensor:
    """Bilinear (antialiased) resize of N x C x H x W pixels in [0, 1] to ``size``; unchanged when already so."""
    if size is None or tuple(images.shape[-2:]) == tuple(size) or images.shape[0] == 0:
        return images
    try:
        out = F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
        n, c = images.shape[:2]
        gib = n * c * size[0] * size[1] * 4 / 2**30
        raise out_of_memory(f"{n} images of {c}x{size[0]}x{size[1]} ({gib:.3g} GiB)", "choose a smaller --size") \
            from None
    return out.clamp_(0.0, 1.0)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    var, mean = torch.var_mean(images, dim=(0, 2, 3), correction=0)
    std = var.sqrt().clamp_min(1e-8)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def make_dataset(name: str, pixels: torch.Tensor, labels, classes: Sequence[str], mean: Sequence[float],
                 std: Sequence[float], size: Size = None, note: Optional[str] = None) -> Dataset:
    """Resize ``pixels`` (in [0, 1], changed in place), normalise them with mean/std, and wrap."""
    images = resize(pixels, size)
    images.sub_(torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
    images.div_(torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
    return Dataset(images=images, labels=labels, classes=list(classes), mean=tuple(float(v) for v in mean),
                   std=tuple(float(v) for v in std), name=name, note=note)
