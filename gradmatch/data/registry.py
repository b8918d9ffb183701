"""The ``Dataset`` container, the registry of readers, ``load`` and the helpers every reader shares.

A reader is a function ``reader(root: Path, split: str, download: bool, size: (H, W) or None) -> Dataset``
registered under a canonical name with ``@register_dataset(name, splits=...)``; ``options`` names the
keyword arguments of ``load`` it also takes (``test_fraction``...). ``load`` resolves the name (case,
``-`` and ``_`` ignored), checks the split, the size and the options, calls the reader and checks what
it returns with ``check_dataset``. A name ``hf:PATH_OR_NAME`` is read with the Hugging Face ``datasets``
library (``gradmatch.data.hf``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from gradmatch.errors import GradmatchError, is_out_of_memory, out_of_memory, unknown_name, warn

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
    note: Optional[str] = None  # one line the run prints once, e.g. how the test images were chosen

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


# ----------------------------------------------------------------------------------------- registry

_READERS: dict[str, tuple[Reader, tuple[str, ...]]] = {}
_OPTIONS: dict[str, tuple[str, ...]] = {}  # the keyword arguments of ``load`` each reader takes
OPTIONS = ("test_fraction", "image_column", "label_column")


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def register_dataset(name: str, splits: Sequence[str] = ("train", "test"), options: Sequence[str] = ()):
    """Decorator: register ``reader`` under the canonical ``name`` with its valid ``splits`` and the
    ``options`` (keyword arguments of ``load``, see ``OPTIONS``) it takes as keyword arguments."""

    def decorate(reader: Reader) -> Reader:
        _READERS[name] = (reader, tuple(splits))
        _OPTIONS[name] = tuple(options)
        return reader

    return decorate


def list_datasets() -> list[str]:
    """Canonical names of the registered datasets, sorted (ignoring case)."""
    return sorted(_READERS, key=str.lower)


def load(name: str, root: str | os.PathLike = ".", split: str = "train", download: bool = False,
         size: int | Sequence[int] | None = None, *, test_fraction: float | None = None,
         image_column: str | None = None, label_column: str | None = None) -> Dataset:
    """Read dataset ``name`` (``list_datasets()``) from ``root``; ``split`` is "train" or "test"
    ("all" too for digits). If ``name`` is not registered but is an existing directory, it is read as
    an image ``folder`` (``root`` is then unused); ``hf:PATH_OR_NAME`` reads a Hugging Face dataset
    (``gradmatch.data.hf``; ``root`` unused). ``download=True`` fetches missing official files into
    ``root`` (digits and folders have nothing to fetch and ignore it). ``size`` (int or (H, W))
    resizes the images bilinearly (antialiased) before they are normalised.

    ``test_fraction`` (default 0.2) is the share of each class held out for testing where a dataset
    has no test split of its own (a folder without train/ and test/, an hf: dataset without a test
    split); 0 tests on the training images. ``image_column`` and ``label_column`` pick the columns of
    an hf: dataset. An option the dataset does not use is said in one warning line and ignored.
    The returned dataset's ``note`` says how its test images were chosen where that is not obvious.
    Raises ``GradmatchError`` for unknown names or splits and missing or corrupt files."""
    given = {k: v for k, v in (("test_fraction", test_fraction), ("image_column", image_column),
                               ("label_column", label_column)) if v is not None}
    if "test_fraction" in given:
        from gradmatch.data.splits import check_fraction

        given["test_fraction"] = check_fraction(given["test_fraction"])
    for option in ("image_column", "label_column"):
        if option in given and not isinstance(given[option], str):
            raise GradmatchError(f"{option} must be a column name (str), not {given[option]!r}")
    if not isinstance(root, (str, os.PathLike)):
        raise GradmatchError(f"load: root must be a folder's path (str or pathlib.Path), not {root!r}")
    if isinstance(name, os.PathLike):  # an image folder given as a pathlib.Path
        name = os.fspath(name)
    if not isinstance(name, str) or not name.strip():
        raise GradmatchError(f"load: name must be a dataset's name ({', '.join(list_datasets())}), an image "
                             f"folder's path or hf:NAME; got {name!r}")
    root = Path(os.path.expanduser(os.fspath(root)))
    if isinstance(name, str) and name.startswith("hf:"):
        from gradmatch.data.hf import read_hf

        if split not in ("train", "test"):
            raise unknown_name("hf: split", str(split), ("train", "test"))
        dataset = read_hf(name[3:], split, bool(download), parse_size(size), **given)
        return check_dataset(dataset, f"{name} {split}")
    canonical = {_key(n): n for n in _READERS}.get(_key(str(name)))
    if canonical is None:
        path = Path(os.path.expanduser(str(name)))
        if not path.is_dir():
            valid = list_datasets()
            error = unknown_name("dataset", str(name), valid)
            raise GradmatchError(f"{error} (or the path of an image folder, or hf:NAME for a Hugging Face "
                                 f"dataset)")
        canonical, root = "folder", path
    reader, splits = _READERS[canonical]
    if split not in splits:
        raise unknown_name(f"{canonical} split", str(split), splits)
    unused = [k for k in given if k not in _OPTIONS.get(canonical, ())]
    if "test_fraction" in unused:
        warn(f"{canonical} has its own test split: test_fraction ignored")
    columns = [k for k in unused if k != "test_fraction"]
    if columns:
        warn(f"{canonical} is not an hf: dataset: {' and '.join(columns)} ignored")
    options = {k: v for k, v in given.items() if k not in unused}
    dataset = reader(root, split, bool(download), parse_size(size), **options)
    return check_dataset(dataset, f"{canonical} {split}")  # e.g. nan pixels: said now, not as a diverging loss


# ----------------------------------------------------------------------------------------- checking

def _what(obj) -> str:
    """What ``obj`` is, for an error, with the way to a Dataset where one is obvious."""
    kind = type(obj).__name__
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return f"{kind} (images: wrap them and their labels with gradmatch.data.from_tensors)"
    if isinstance(obj, torch.utils.data.Dataset):
        return f"{kind} (a torch dataset: wrap it with gradmatch.data.from_torch)"
    return kind


def _numbers(values, count: int) -> bool:
    return (isinstance(values, (tuple, list)) and len(values) == count
            and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                    and math.isfinite(v) for v in values))


def _non_finite(images: torch.Tensor) -> int:
    """How many images hold nan or inf. A nan or inf makes the sum non-finite, so one pass without a
    mask settles the usual case; only a non-finite sum (or an overflowing one) counts image by image."""
    if math.isfinite(float(images.sum())):
        return 0
    return int((~torch.isfinite(images)).flatten(1).any(1).sum())


def check_dataset(obj, argument: str = "real") -> Dataset:
    """``obj`` itself if it is a well-formed ``Dataset``, else one ``GradmatchError`` line naming
    ``argument`` (e.g. "condense: real") and what is wrong: images a finite float32 N x C x H x W tensor
    with N >= 1; labels an int64 tensor of N values in 0..len(classes)-1; classes a list of unique str;
    mean and std tuples of C finite numbers, std > 0."""
    if not isinstance(obj, Dataset):
        raise GradmatchError(f"{argument} must be a gradmatch.data.Dataset (from gradmatch.data.load, "
                             f"from_tensors or from_torch); got {_what(obj)}")
    images, labels, classes = obj.images, obj.labels, obj.classes
    dtype = torch.get_default_dtype()  # what the networks are built in: float32 unless set otherwise
    if not isinstance(images, torch.Tensor) or images.dtype != dtype or images.dim() != 4 \
            or min(images.shape) < 1:
        got = (f"{images.dtype} of shape {tuple(images.shape)}" if isinstance(images, torch.Tensor)
               else type(images).__name__)
        raise GradmatchError(f"{argument}: images must be a {str(dtype).replace('torch.', '')} tensor N x C x H x W "
                             f"with N >= 1 (torch's default dtype, the networks'); got {got}")
    bad = _non_finite(images)
    if bad:
        raise GradmatchError(f"{argument}: {bad} image(s) hold non-finite (nan or inf) values; fix or remove them")
    n, channels = images.shape[:2]
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.dim() != 1 \
            or len(labels) != n:
        got = (f"{labels.dtype} of shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor)
               else type(labels).__name__)
        raise GradmatchError(f"{argument}: labels must be an int64 tensor of {n} values (one per image); got {got}")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise GradmatchError(f"{argument}: classes must be a non-empty list of str (class names); got "
                             f"{type(classes).__name__} {reprlib.repr(classes)}")
    if len(set(classes)) != len(classes):
        twice = sorted({c for c in classes if classes.count(c) > 1})
        raise GradmatchError(f"{argument}: class names must be unique; {', '.join(map(repr, twice))} appear more "
                             f"than once")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= len(classes):
        raise GradmatchError(f"{argument}: labels run {low}..{high} but there are {len(classes)} classes (labels "
                             f"0..{len(classes) - 1})")
    for field in ("mean", "std"):
        values = getattr(obj, field)
        if not _numbers(values, channels):
            raise GradmatchError(f"{argument}: {field} must be a tuple of {channels} finite numbers (one per "
                                 f"channel); got {reprlib.repr(values)}")
    if min(obj.std) <= 0:
        raise GradmatchError(f"{argument}: std must be positive in every channel; got {tuple(obj.std)}")
    return obj


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
    try:
        out = F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
        n, c = images.shape[:2]
        gib = n * c * size[0] * size[1] * 4 / 2**30
        raise out_of_memory(f"{n} images of {c}x{size[0]}x{size[1]} ({gib:.3g} GiB)",
                            "choose a smaller --size (size=(H, W) from Python)") from None
    return out.clamp_(0.0, 1.0)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of N x C x H x W images."""
    var, mean = torch.var_mean(images, dim=(0, 2, 3), correction=0)
    std = var.sqrt().clamp_min(1e-8)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def make_dataset(name: str, images: torch.Tensor, labels, classes: Sequence[str],
                 mean: Sequence[float], std: Sequence[float], size: Size = None, note: str | None = None) -> Dataset:
    """Resize ``images`` (in [0, 1], modified in place) to ``size``, normalise with mean/std, and wrap."""
    images = resize(images, size)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    images.sub_(m).div_(s)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
    return Dataset(images=images, labels=labels, classes=list(classes), mean=tuple(float(v) for v in mean),
                   std=tuple(float(v) for v in std), name=name, note=note)
