"""The ``Dataset`` container, the registry of readers, ``load`` and the helpers every reader shares.

A reader is a function ``reader(root: Path, split: str, download: bool, size: (H, W) or None) -> Dataset``
registered under a canonical name with ``@register_dataset(name, splits=...)``. ``load`` resolves the
name (case, ``-`` and ``_`` ignored), checks the split and the size, and calls the reader.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from gradmatch.errors import GradmatchError, unknown_name

Size = Optional[tuple[int, int]]
Reader = Callable[[Path, str, bool, Size], "Dataset"]


@dataclass(repr=False)
class Dataset:
    """Images held in memory: ``images`` float32 N x C x H x W, normalised so that
    ``images * std + mean`` (per channel) gives the pixels scaled to [0, 1]; ``labels`` int64 N."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str

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
        if self.images.device == torch.device(device) and self.labels.device == torch.device(device):
            return self
        return dataclasses.replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, n={len(self)}, channel={self.channel}, "
                f"im_size={self.im_size}, num_classes={self.num_classes})")


# ----------------------------------------------------------------------------------------- registry

_READERS: dict[str, tuple[Reader, tuple[str, ...]]] = {}


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def register_dataset(name: str, splits: Sequence[str] = ("train", "test")):
    """Decorator: register ``reader`` under the canonical ``name`` with its valid ``splits``."""

    def decorate(reader: Reader) -> Reader:
        _READERS[name] = (reader, tuple(splits))
        return reader

    return decorate


def list_datasets() -> list[str]:
    """Canonical names of the registered datasets, sorted (ignoring case)."""
    return sorted(_READERS, key=str.lower)


def load(name: str, root: str | os.PathLike = ".", split: str = "train", download: bool = False,
         size: int | Sequence[int] | None = None) -> Dataset:
    """Read dataset ``name`` (``list_datasets()``) from ``root``; ``split`` is "train" or "test"
    ("all" too for digits). If ``name`` is not registered but is an existing directory, it is read as
    an image ``folder`` (``root`` is then unused). ``download=True`` fetches missing official files
    into ``root`` (digits and folders have nothing to fetch and ignore it). ``size`` (int or (H, W))
    resizes the images bilinearly (antialiased) before they are normalised.
    Raises ``GradmatchError`` for unknown names or splits and missing or corrupt files."""
    canonical = {_key(n): n for n in _READERS}.get(_key(str(name)))
    root = Path(os.path.expanduser(os.fspath(root)))
    if canonical is None:
        path = Path(os.path.expanduser(str(name)))
        if not path.is_dir():
            valid = list_datasets()
            error = unknown_name("dataset", str(name), valid)
            raise GradmatchError(f"{error} (or the path of an image folder)")
        canonical, root = "folder", path
    reader, splits = _READERS[canonical]
    if split not in splits:
        raise unknown_name(f"{canonical} split", str(split), splits)
    dataset = reader(root, split, bool(download), parse_size(size))
    if not bool(torch.isfinite(dataset.images).all()):  # said here, not later as a diverging loss
        bad = int((~torch.isfinite(dataset.images)).flatten(1).any(1).sum())
        raise GradmatchError(f"{canonical} {split}: {bad} image(s) hold non-finite (nan or inf) values after "
                             f"normalisation; fix or remove those files")
    return dataset


# ------------------------------------------------------------------------------------------ helpers

def parse_size(size: int | Sequence[int] | None) -> Size:
    """``None``, an int or an (H, W) pair of positive ints -> ``None`` or (H, W)."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        pair = (int(size), int(size))
    else:
        try:
            pair = tuple(int(s) for s in size)
        except (TypeError, ValueError):
            pair = ()
        if len(pair) != 2:
            raise GradmatchError(f"image size must be an int or a pair (H, W) of ints, not {size!r}")
    if min(pair) < 1:
        raise GradmatchError(f"image size must be positive, not {size!r}")
    return pair


def missing(dataset: str, path: Path, holds: str) -> GradmatchError:
    """Error for an expected file that is not there."""
    return GradmatchError(f"{dataset}: expected {path}; pass --download (download=True from Python) or point "
                          f"--data_path at a folder holding {holds}")


def corrupt(dataset: str, path: Path, detail: str) -> GradmatchError:
    """Error for a file that exists but cannot be parsed."""
    return GradmatchError(f"{dataset}: {path} is truncated or corrupt ({detail}); delete it and "
                          f"re-download it (pass --download; download=True from Python)")


def first_existing(paths: Sequence[Path]) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def to_unit(pixels: np.ndarray | Sequence[np.ndarray], scale: float = 255.0) -> torch.Tensor:
    """Pixel array N x C x H x W (values 0..scale), or a list of them to stack along N, -> float32
    tensor in [0, 1]. Parts are converted straight into one preallocated tensor (no uint8 concat)."""
    parts = [pixels] if isinstance(pixels, np.ndarray) else list(pixels)
    out = torch.empty((sum(len(p) for p in parts), *parts[0].shape[1:]), dtype=torch.float32)
    start = 0
    for part in parts:
        arr = np.ascontiguousarray(part)
        if not arr.flags.writeable:
            arr = arr.copy()
        out[start:start + len(arr)].copy_(torch.from_numpy(arr))
        start += len(arr)
    return out.div_(scale)


def resize(images: torch.Tensor, size: Size) -> torch.Tensor:
    """Bilinear resize of N x C x H x W images in [0, 1] to ``size``; unchanged when already that size."""
    if size is None or tuple(images.shape[-2:]) == tuple(size) or images.shape[0] == 0:
        return images
    out = F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of N x C x H x W images."""
    var, mean = torch.var_mean(images, dim=(0, 2, 3), correction=0)
    std = var.sqrt().clamp_min(1e-8)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def make_dataset(name: str, images: torch.Tensor, labels, classes: Sequence[str],
                 mean: Sequence[float], std: Sequence[float], size: Size = None) -> Dataset:
    """Resize ``images`` (in [0, 1], modified in place) to ``size``, normalise with mean/std, and wrap."""
    images = resize(images, size)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    images.sub_(m).div_(s)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
    return Dataset(images=images, labels=labels, classes=list(classes), mean=tuple(float(v) for v in mean),
                   std=tuple(float(v) for v in std), name=name)
