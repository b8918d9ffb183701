"""Data already in Python: arrays or tensors (``from_tensors``) and map-style torch datasets
(``from_torch``), checked and normalised into a ``Dataset``.

Pixels: uint8 images are 0..255 and uint16 images 0..65535 (scaled to [0, 1] by that full range);
float images must already be pixels in [0, 1], and values outside (or nan) are refused in one line:
``mean``/``std`` say how to normalise the pixels, never that the images are normalised already (undo a
normalisation before passing them). Other dtypes (int64, bool...) are refused with the conversion to
make. Without ``mean``/``std`` the per-channel mean and std of the images themselves are used.

Layout (``from_tensors``): N x C x H x W or N x H x W x C, or N x H x W for grey images. With
``layout="auto"`` a 4-D array whose axis 1 has 1 or 3 entries is N x C x H x W, else one whose axis 3
has 1 or 3 is N x H x W x C, else it is refused (pass ``layout="NCHW"`` or ``"NHWC"``, e.g. for 2 or 4
channels).

Labels: integers 0..K-1, one per image (floats with integral values are taken as those integers);
negative, non-integral, 2-D or string labels, a count that is not N and labels beyond the given
``classes`` are refused. ``classes`` defaults to "0".."K-1" for the K = max label + 1 classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from gradmatch.data.images import FULL_SCALE, pixels, stack
from gradmatch.data.registry import Dataset, channel_stats, check_dataset, to_unit
from gradmatch.errors import GradmatchError

LAYOUTS = ("auto", "NCHW", "NHWC")


def _numpy(value, what: str, who: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided or value.device.type == "meta":
            kind = "meta (shapes without values)" if value.device.type == "meta" else str(value.layout)
            raise GradmatchError(f"{who}: {what} are a {kind.replace('torch.', '')} tensor; pass an ordinary (dense) "
                                 f"tensor with values (.to_dense())")
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    if isinstance(value, np.ndarray):
        return value
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
                             f"float images must be pixels in [0, 1] (divide 0..255 values by 255, and undo any "
                             f"normalisation: mean/std say how to normalise, not how the images were)")
    return 1.0


def _to_nchw(array: np.ndarray, layout: str, who: str) -> np.ndarray:
    if layout not in LAYOUTS:
        raise GradmatchError(f"{who}: layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if array.ndim == 3 and layout == "auto":
        return array[:, None]  # N x H x W grey
    if array.ndim != 4:
        raise GradmatchError(f"{who}: images must be 4-D (N x C x H x W or N x H x W x C) or 3-D (N x H x W grey); "
                             f"got shape {tuple(array.shape)}")
    if layout == "auto":
        if array.shape[1] in (1, 3):
            layout = "NCHW"
        elif array.shape[3] in (1, 3):
            layout = "NHWC"
        else:
            raise GradmatchError(f"{who}: cannot tell the channel axis of images of shape {tuple(array.shape)} "
                                 f"(neither axis 1 nor axis 3 has 1 or 3 entries); pass layout=\"NCHW\" (N x C x H "
                                 f"x W) or layout=\"NHWC\"")
    return array if layout == "NCHW" else array.transpose(0, 3, 1, 2)


def _labels(labels, n: int, who: str) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    try:
        array = np.asarray(labels)
    except (TypeError, ValueError) as e:
        raise GradmatchError(f"{who}: labels must be integers 0..K-1, one per image ({e})") from None
    if array.ndim != 1:
        raise GradmatchError(f"{who}: labels must be 1-D, one per image; got shape {tuple(array.shape)}"
                             f"{' (flatten them with .reshape(-1))' if array.size == n else ''}")
    if len(array) != n:
        raise GradmatchError(f"{who}: {len(array)} labels for {n} images; pass one label per image")
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise GradmatchError(f"{who}: labels must be integers 0..K-1; got {array.dtype} (map class names to "
                             f"integers, and pass the names as classes)")
    if np.issubdtype(array.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(array) | (array != np.round(array)))
        if len(bad):
            raise GradmatchError(f"{who}: labels must be integers 0..K-1; label {bad[0]} is {array[bad[0]].item()!r}")
    if len(array) and (np.abs(array.astype(np.float64)).max() >= 2.0**62):  # int64 would wrap them
        big = int(np.argmax(np.abs(array.astype(np.float64))))
        raise GradmatchError(f"{who}: labels must be integers 0..K-1; label {big} is {array[big].item()!r}")
    array = array.astype(np.int64)
    if len(array) and array.min() < 0:
        raise GradmatchError(f"{who}: labels must be integers 0..K-1; label {int(np.argmin(array))} is "
                             f"{int(array.min())}")
    return array


MAX_UNNAMED_CLASSES = 100_000  # classes named "0".."K-1" for a caller who gave no names: beyond, a typo


def _classes(classes, labels: np.ndarray, who: str) -> list[str]:
    count = int(labels.max()) + 1 if len(labels) else 0
    if classes is None:
        if count > max(len(labels), MAX_UNNAMED_CLASSES):
            raise GradmatchError(f"{who}: labels go up to {count - 1} for {len(labels)} images, which would make "
                                 f"{count} classes; number the classes 0..K-1 (np.unique(labels, "
                                 f"return_inverse=True)) or pass their names as classes")
        return [str(i) for i in range(count)]
    if isinstance(classes, np.ndarray):
        classes = classes.tolist()
    if isinstance(classes, str) or not isinstance(classes, Sequence) or not all(isinstance(c, str) for c in classes):
        raise GradmatchError(f"{who}: classes must be a list of str (the class names, in label order); got "
                             f"{type(classes).__name__} {list(classes)[:5] if isinstance(classes, Sequence) else ''}")
    if count > len(classes):
        raise GradmatchError(f"{who}: label {count - 1} needs {count} classes but {len(classes)} are named; name "
                             f"every class (classes[i] for label i)")
    return [str(c) for c in classes]


def _stats(values, channels: int, field: str, who: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if len(out) != channels or not all(np.isfinite(out)) or (field == "std" and min(out) <= 0):
        positive = " positive" if field == "std" else ""
        raise GradmatchError(f"{who}: {field} must be {channels} finite{positive} numbers, one per channel; got "
                             f"{values!r}")
    return out


def _dataset(images: torch.Tensor, labels: np.ndarray, classes, mean, std, name, who: str) -> Dataset:
    """Wrap float32 N x C x H x W pixels in [0, 1] (owned: normalised in place)."""
    if not isinstance(name, str):
        raise GradmatchError(f"{who}: name must be a str, not {name!r}")
    classes = _classes(classes, labels, who)
    channels = images.shape[1]
    if mean is None or std is None:
        data_mean, data_std = channel_stats(images)
    mean = data_mean if mean is None else _stats(mean, channels, "mean", who)
    std = data_std if std is None else _stats(std, channels, "std", who)
    images.sub_(torch.tensor(mean).view(1, -1, 1, 1)).div_(torch.tensor(std).view(1, -1, 1, 1))
    dataset = Dataset(images=images, labels=torch.from_numpy(labels), classes=classes, mean=mean, std=std, name=name)
    return check_dataset(dataset, who)


def from_tensors(images, labels, classes: Sequence[str] | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, name: str = "tensors", layout: str = "auto") -> Dataset:
    """A ``Dataset`` of ``images`` (numpy array or torch tensor, see the module docstring for dtypes and
    layouts) and integer ``labels``; ``classes`` names the labels in order; ``mean``/``std`` (one per
    channel) normalise, computed from the images when not given. The inputs are copied, never changed."""
    who = "from_tensors"
    array = _to_nchw(_numpy(images, "images", who), layout, who)
    if array.shape[0] < 1 or min(array.shape[1:]) < 1:
        raise GradmatchError(f"{who}: images of shape {tuple(array.shape)} hold no pixels; pass at least one image")
    scale = _unit_scale(array, who)
    label_array = _labels(labels, array.shape[0], who)
    return _dataset(to_unit(array, scale), label_array, classes, mean, std, name, who)


def _item_pixels(image, index: int, who: str) -> np.ndarray:
    """One item's image as H x W x C values (uint8, uint16 or float32 in [0, 1])."""
    if isinstance(image, Image.Image):
        return pixels(image, f"item {index} of the dataset")
    if not isinstance(image, torch.Tensor):
        raise GradmatchError(f"{who}: item {index}'s image is a {type(image).__name__}; the dataset must give a "
                             f"tensor C x H x W (float in [0, 1] or uint8) or a PIL image (e.g. transform "
                             f"torchvision.transforms.ToTensor())")
    array = _numpy(image, "image", who)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise GradmatchError(f"{who}: item {index}'s image has shape {tuple(array.shape)}; expected C x H x W")
    _unit_scale(array, who, f"item {index}'s image values")
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    return array.transpose(1, 2, 0)


def _item_label(label, index: int, who: str):
    if isinstance(label, torch.Tensor) and label.numel() == 1:
        label = label.reshape(()).item()
    elif isinstance(label, np.ndarray) and label.size == 1:
        label = label.reshape(()).item()
    if isinstance(label, bool) or not isinstance(label, (int, float, np.integer, np.floating)):
        raise GradmatchError(f"{who}: item {index}'s label is {type(label).__name__} {label!r}; the dataset must "
                             f"give integer labels 0..K-1")
    return label


def from_torch(dataset, classes: Sequence[str] | None = None, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, name: str | None = None) -> Dataset:
    """A ``Dataset`` of every item of a map-style torch dataset (``__len__`` and ``__getitem__``) that
    gives ``(image, label)``: image a tensor C x H x W (float in [0, 1], uint8 or uint16) or a PIL image
    (any mode, as ``gradmatch.data.images`` reads it), label an integer. All images must have one size
    and channel count (grey images among colour ones are repeated to 3 channels). ``classes`` defaults
    to the dataset's own ``classes`` attribute when it is a list of names, else "0".."K-1"; ``name`` to
    the dataset's type name; ``mean``/``std`` as in ``from_tensors``."""
    who = "from_torch"
    try:
        count = len(dataset)
        getter = dataset.__getitem__
    except (TypeError, AttributeError, ValueError, OverflowError):  # no __len__, or one Python refuses (< 0)
        raise GradmatchError(f"{who}: the dataset must be map-style (with __len__ and __getitem__); got "
                             f"{type(dataset).__name__} (for an iterable one, collect its images and labels into "
                             f"tensors and use from_tensors)") from None
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
                                 f"must give (image, label) pairs")
        arrays.append(_item_pixels(item[0], index, who))
        labels.append(_item_label(item[1], index, who))
        if arrays[-1].shape[:2] != arrays[0].shape[:2]:
            raise GradmatchError(f"{who}: item 0's image is {'x'.join(map(str, arrays[0].shape[:2]))} but item "
                                 f"{index}'s is {'x'.join(map(str, arrays[-1].shape[:2]))}; give every image one "
                                 f"size (e.g. resize in the dataset's transform)")
    found = sorted({a.shape[2] for a in arrays})
    if len(found) > 1 and found != [1, 3]:
        raise GradmatchError(f"{who}: the images have {' and '.join(map(str, found))} channels; give every image "
                             f"the same number of channels")
    if classes is None:
        own = getattr(dataset, "classes", None)
        if isinstance(own, (list, tuple)) and own and all(isinstance(c, str) for c in own):
            classes = list(own)
    images = stack(arrays, found[-1], arrays[0].shape[:2])
    label_array = _labels(np.asarray(labels), count, who)
    return _dataset(images, label_array, classes, mean, std, type(dataset).__name__ if name is None else name, who)
