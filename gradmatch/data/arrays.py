"""Data already in Python (arrays, tensors, map-style torch datasets) copied into a ``Dataset``.
Pixels: uint8, uint16, or floats in [0, 1]; mean/std say how to normalise them, never that they are.
Layout: the channel axis is the one with 1 or 3 entries, axis 1 (NCHW) before axis 3 (NHWC), 3-D being
N x H x W grey; other channel counts need ``layout``.  Labels: integers 0..K-1; ``classes`` names them."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from gradmatch import checks
from gradmatch.data.dataset import Dataset, channel_stats, to_unit
from gradmatch.data.images import FULL_SCALE, pixels, stack
from gradmatch.errors import GradmatchError

LAYOUTS = ("auto", "NCHW", "NHWC")
MAX_UNNAMED_CLASSES = 100_000  # classes named "0".."K-1" for a caller who gave no names: beyond, a typo


def _numpy(value, what: str, who: str) -> np.ndarray:
    """``value`` as a numpy array of its own (copied): tensors of any float dtype as float32."""
    if isinstance(value, torch.Tensor):
        if kind := checks._tensor_kind(value):
            raise GradmatchError(f"{who}: {what} are a {kind} tensor; pass an ordinary tensor with values "
                                 f"({'.dequantize()' if value.is_quantized else '.to_dense()'})")
        value = value.detach().cpu()
        value = value.float() if value.is_floating_point() and value.dtype != torch.float64 else value
        return value.numpy().copy()
    if isinstance(value, np.ndarray):
        return value.copy()
    raise GradmatchError(f"{who}: {what} must be a numpy array or a torch tensor; got {type(value).__name__}")


def _unit_scale(array: np.ndarray, who: str, what: str = "images") -> float:
    """The value that stands for white in ``array`` (refusing dtypes and float values that are not pixels)."""
    if array.dtype in (np.uint8, np.uint16):
        return FULL_SCALE[array.dtype]
    if not np.issubdtype(array.dtype, np.floating):
        hint = (" (0..255 values: convert with .astype(np.uint8) or .to(torch.uint8))"
                if np.issubdtype(array.dtype, np.integer) else "")
        raise GradmatchError(f"{who}: {what} are {array.dtype}; pass uint8 (0..255), uint16 (0..65535) or float "
                             f"pixels in [0, 1]{hint}")
    finite = np.isfinite(array)
    if array.size and (not finite.all() or array.min() < 0 or array.max() > 1):
        values = array[finite]
        span = f"[{values.min():g}, {values.max():g}]" if values.size else "no finite value"
        raise GradmatchError(f"{who}: {what} are floats in {span}{'' if finite.all() else ' and nan or inf'}; "
                             "float images must be pixels in [0, 1] (divide 0..255 values by 255, and undo any "
                             "normalisation: mean/std say how to normalise, not how the images were)")
    return 1.0


def _channels_first(array: np.ndarray, layout: str, who: str, first: int) -> np.ndarray:
    """``array`` with its channel axis at ``first`` (1 for N x C x H x W, 0 for one C x H x W item)."""
    layout = checks.choice(layout, f"{who}: layout", LAYOUTS)
    last = first + 2
    if layout == "auto":
        if array.shape[first] in (1, 3):
            layout = "NCHW"
        elif array.shape[last] in (1, 3):
            layout = "NHWC"
        else:
            raise GradmatchError(f"{who}: cannot tell the channel axis of images of shape {tuple(array.shape)} (the "
                                 f"rule: axis {first} if it has 1 or 3 entries, else axis {last}); pass "
                                 "layout=\"NCHW\" (channels first) or layout=\"NHWC\" (channels last)")
    return array if layout == "NCHW" else np.moveaxis(array, last, first)


def _labels(labels, n: int, who: str) -> torch.Tensor:
    if isinstance(labels, torch.Tensor):
        if checks._tensor_kind(labels):
            return checks.labels(labels, n, f"{who}: labels")  # its one line
        labels = labels.detach().cpu()
    else:
        try:
            array = np.asarray(labels)
        except (TypeError, ValueError) as e:
            raise GradmatchError(f"{who}: labels must be integers 0..K-1, one per image ({e})") from None
        if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
            raise GradmatchError(f"{who}: labels must be integers 0..K-1; got {array.dtype} (map class names to "
                                 "integers, and pass the names as classes)")
        labels = torch.from_numpy(array.astype(np.int64) if np.issubdtype(array.dtype, np.integer) else array.copy())
    return checks.labels(labels, n, f"{who}: labels")


def _dataset(images: torch.Tensor, labels: torch.Tensor, classes, mean, std, name, who: str) -> Dataset:
    """Wrap float32 N x C x H x W pixels in [0, 1] (owned: normalised in place)."""
    name = checks.text(name, f"{who}: name")
    count = int(labels.max()) + 1
    if classes is None:
        if count > max(len(labels), MAX_UNNAMED_CLASSES):
            raise GradmatchError(f"{who}: labels go up to {count - 1} for {len(labels)} images, which would make "
                                 f"{count} classes; number the classes 0..K-1 (np.unique(labels, return_inverse=True)) "
                                 "or pass their names as classes")
        classes = [str(i) for i in range(count)]
    classes = checks.class_names(classes, f"{who}: classes", at_least=count)
    if mean is None or std is None:
        own_mean, own_std = channel_stats(images)
        mean, std = own_mean if mean is None else mean, own_std if std is None else std
    mean = checks.per_channel(mean, images.shape[1], f"{who}: mean")
    std = checks.per_channel(std, images.shape[1], f"{who}: std", positive=True)
    images.sub_(torch.tensor(mean).view(1, -1, 1, 1)).div_(torch.tensor(std).view(1, -1, 1, 1))
    return Dataset(images=images, labels=labels, classes=classes, mean=mean, std=std, name=name)


def from_tensors(images, labels, classes: Sequence[str] | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, name: str = "tensors", layout: str = "auto") -> Dataset:
    """A ``Dataset`` of ``images`` (a numpy array or torch tensor) and integer ``labels``."""
    who = "from_tensors"
    array = _numpy(images, "images", who)
    if array.ndim == 3 and layout == "auto":
        array = array[:, None]  # N x H x W grey
    if array.ndim != 4:
        raise GradmatchError(f"{who}: images must be 4-D (N x C x H x W or N x H x W x C) or 3-D (N x H x W grey); "
                             f"got shape {tuple(array.shape)}")
    array = _channels_first(array, layout, who, first=1)
    if array.shape[0] < 1 or min(array.shape[1:]) < 1:
        raise GradmatchError(f"{who}: images of shape {tuple(array.shape)} hold no pixels; pass at least one image")
    scale = _unit_scale(array, who)
    return _dataset(to_unit(array, scale), _labels(labels, array.shape[0], who), classes, mean, std, name, who)


def _item_pixels(image, index: int, who: str, layout: str) -> np.ndarray:
    """One item's image as H x W x C values (uint8, uint16 or float32 in [0, 1]), copied."""
    if isinstance(image, Image.Image):
        return pixels(image, f"item {index} of the dataset")
    if not isinstance(image, (torch.Tensor, np.ndarray)):
        raise GradmatchError(f"{who}: item {index}'s image is a {type(image).__name__}; the dataset must give a "
                             f"tensor C x H x W (float in [0, 1] or uint8) or a PIL image (e.g. transform "
                             f"torchvision.transforms.ToTensor())")
    array = _numpy(image, "image", who)  # a copy: a dataset may refill one tensor for every item
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise GradmatchError(f"{who}: item {index}'s image has shape {tuple(array.shape)}; expected C x H x W")
    array = _channels_first(array, layout, f"{who}: item {index}", first=0)
    _unit_scale(array, who, f"item {index}'s image values")
    return (array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array).transpose(1, 2, 0)


def _item_label(label, index: int, who: str) -> int:
    if isinstance(label, torch.Tensor) and (kind := checks._tensor_kind(label)):
        raise GradmatchError(f"{who}: item {index}'s label is a {kind} tensor; the dataset must "
                             "give integer labels 0..K-1")
    if isinstance(label, (torch.Tensor, np.ndarray)) and np.prod(label.shape) == 1:
        label = label.reshape(()).item()
    if not checks.is_whole(label):
        raise GradmatchError(f"{who}: item {index}'s label is {type(label).__name__} {label!r}; the dataset must "
                             "give integer labels 0..K-1")
    return int(label)


def from_torch(dataset, classes: Sequence[str] | None = None, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, name: str | None = None, layout: str = "auto") -> Dataset:
    """Every ``(image, label)`` item of a map-style torch dataset: image a C x H x W tensor or a PIL image
    of one size for all; ``classes`` defaults to the dataset's ``classes`` list, ``name`` to its type's name."""
    who = "from_torch"
    try:
        count = len(dataset)
        getter = dataset.__getitem__
    except Exception as err:  # noqa: BLE001 - no __len__, or the dataset's own one failing in any way
        raise GradmatchError(f"{who}: the dataset must be map-style with a working __len__ and __getitem__; got "
                             f"{type(dataset).__name__} ({type(err).__name__}: {err}) (for an iterable one, collect "
                             "its images and labels into tensors and use from_tensors)") from None
    if count < 1:
        raise GradmatchError(f"{who}: the dataset is empty; it must hold at least one (image, label)")
    arrays, labels = [], []
    for index in range(count):
        try:
            item = getter(index)
        except Exception as err:  # noqa: BLE001 - the dataset's own code, which can fail in any way
            raise GradmatchError(f"{who}: reading item {index} of the dataset failed ({type(err).__name__}: "
                                 f"{str(err).splitlines()[0] if str(err) else ''}); fix the dataset") from None
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise GradmatchError(f"{who}: item {index} is {type(item).__name__}"
                                 f"{f' of {len(item)}' if isinstance(item, (tuple, list)) else ''}; the dataset "
                                 "must give (image, label) pairs")
        arrays.append(_item_pixels(item[0], index, who, layout))
        labels.append(_item_label(item[1], index, who))
        if arrays[-1].shape[:2] != arrays[0].shape[:2]:
            raise GradmatchError(f"{who}: item 0's image is {'x'.join(map(str, arrays[0].shape[:2]))} but item "
                                 f"{index}'s is {'x'.join(map(str, arrays[-1].shape[:2]))}; give every image one "
                                 "size (e.g. resize in the dataset's transform)")
    found = sorted({a.shape[2] for a in arrays})
    if len(found) > 1 and found != [1, 3]:
        raise GradmatchError(f"{who}: the images have {' and '.join(map(str, found))} channels; give every image "
                             "the same number of channels")
    if classes is None:
        own = getattr(dataset, "classes", None)
        if isinstance(own, (list, tuple)) and own and all(isinstance(c, str) for c in own):
            classes = list(own)
    images = stack(arrays, found[-1], arrays[0].shape[:2])
    return _dataset(images, _labels(labels, count, who), classes, mean, std,
                    type(dataset).__name__ if name is None else name, who)
