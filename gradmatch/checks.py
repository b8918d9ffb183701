"""One rule per concept, written once: each check returns the value normalised or raises one ``GradmatchError``
line naming the argument (``what``) and the fix.  The edges call them; what they hand inward is trusted."""
from __future__ import annotations

import math
import numbers
import reprlib
from typing import Any, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .errors import GradmatchError, unknown_name, warn

SEED_LIMIT = 2**63  # seeds are signed 64-bit, as torch's and numpy's: a larger one would wrap onto a smaller one
FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # a rate beyond it is inf in the float32 updates
NAME_BYTES = 255  # the longest file name on common file systems (ext4, APFS, NTFS)
SAME_STATISTICS = 1e-4  # two normalisations are one if every mean and std agree this closely (4 decimals)


def show(value: Any) -> str:
    """A value as a message shows it: tensors by dtype and shape, anything else by a short repr."""
    if isinstance(value, (Tensor, np.ndarray)):
        kind = "tensor" if isinstance(value, Tensor) else "array"
        return f"a {str(value.dtype).replace('torch.', '')} {kind} of shape {tuple(value.shape)}"
    return reprlib.repr(value)


def is_whole(value: Any) -> bool:
    """An integer (Python's or numpy's), never a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def whole(value: Any, what: str, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    if not is_whole(value):
        raise GradmatchError(f"{what} takes a whole number, got {show(value)}")
    if minimum is not None and value < minimum:
        raise GradmatchError(f"{what} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise GradmatchError(f"{what} must be at most {maximum}, got {value}")
    return int(value)


def number(value: Any, what: str, minimum: Optional[float] = None, below: Optional[float] = None) -> float:
    if not is_number(value) or not math.isfinite(value):
        raise GradmatchError(f"{what} takes a finite number, got {show(value)}")
    if (minimum is not None and value < minimum) or (below is not None and not value < below):
        span = f"at least {minimum}" if below is None else f"at least {minimum} and below {below}" \
            if minimum is not None else f"below {below}"
        raise GradmatchError(f"{what} must be {span}, got {value}")
    return float(value)


def seed(value: Any, what: str = "seed") -> int:
    if not is_whole(value) or not -SEED_LIMIT <= value < SEED_LIMIT:
        raise GradmatchError(f"{what} takes a whole number from -2**63 to 2**63 - 1 (64 bits), got {show(value)}")
    return int(value)


def fraction(value: Any, what: str = "test_fraction") -> float:
    if not is_number(value) or not math.isfinite(value) or not 0 <= value < 1:
        raise GradmatchError(f"{what} takes a number from 0 to below 1 (the share of each class held out for "
                             f"testing; 0 tests on the training images), got {show(value)}")
    return float(value)


def learning_rate(value: Any, what: str) -> float:
    """A rate >= 0 within float32's range (the updates' arithmetic); 0 learns nothing, which is said."""
    if not is_number(value) or not math.isfinite(value) or value < 0:
        raise GradmatchError(f"{what} must be a positive number, got {show(value)}")
    if value > FLOAT32_MAX:
        raise GradmatchError(f"{what} {value:g} is beyond float32's range ({FLOAT32_MAX:.3g}), the arithmetic of the "
                             "updates; give a (far) smaller rate")
    if value == 0:
        warn(f"{what} 0: nothing will change the images or networks it drives")
    return float(value)


def choice(value: Any, what: str, choices: Iterable, kind: str = "") -> Any:
    """One of ``choices`` (a table's names, read when checked); ``kind`` says what they are."""
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        raise unknown_name(f"{kind} ({what})" if kind else what, str(value), choices)
    return value


def text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise GradmatchError(f"{what} takes a non-empty name, got {show(value)}")
    if "\0" in value:
        raise GradmatchError(f"{what} {value!r} holds a NUL character, which no file name can; remove it")
    return value


def file_name(value: Any, what: str) -> str:
    text(value, what)
    if "/" in value or value.startswith("."):
        raise GradmatchError(f"{what} '{value}' is not a file name; give a name without '/' that does not start "
                             "with '.'")
    return value


def size(value: Any, what: str = "size") -> Tuple[int, int]:
    """An image size: N (N x N), (H, W), or the text "H,W" / "HxW" / "N" of the command line."""
    if isinstance(value, str):
        try:
            value = [int(x) for x in value.replace("x", ",").split(",")]
        except ValueError:
            value = None
    if is_whole(value):
        value = (value, value)
    pair = tuple(value) if isinstance(value, (tuple, list)) and len(value) in (1, 2) else ()
    pair = pair * 2 if len(pair) == 1 else pair
    if len(pair) != 2 or not all(is_whole(v) and v >= 1 for v in pair):
        raise GradmatchError(f"{what} takes H,W or N (positive whole numbers), got {show(value)}")
    return int(pair[0]), int(pair[1])


def whole_list(value: Any, what: str) -> list:
    if isinstance(value, str):
        try:
            value = [int(x) for x in value.split(",")]
        except ValueError:
            raise GradmatchError(f"{what} takes comma-separated whole numbers, got '{value}'") from None
    if not isinstance(value, (list, tuple)) or not all(is_whole(v) for v in value):
        raise GradmatchError(f"{what} takes a list of whole numbers, got {show(value)}")
    return [int(v) for v in value]


def per_channel(values: Any, channels: int, what: str, positive: bool = False) -> Tuple[float, ...]:
    """A per-channel statistic (mean, std): one finite number per channel, positive where asked."""
    if isinstance(values, (Tensor, np.ndarray)) and values.ndim == 1:
        values = values.tolist()
    ok = isinstance(values, (list, tuple)) and len(values) == channels and all(
        is_number(v) and math.isfinite(v) and (not positive or v > 0) for v in values)
    if not ok:
        raise GradmatchError(f"{what} is {show(values)}; expected one finite {'positive ' if positive else ''}"
                             f"number per channel ({channels} for {channels}-channel images)")
    return tuple(float(v) for v in values)


def same_statistics(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two per-channel statistics (means, or stds) are one normalisation's."""
    return len(a) == len(b) and all(abs(float(x) - float(y)) <= SAME_STATISTICS for x, y in zip(a, b))


def class_names(classes: Any, what: str, at_least: int = 1) -> list:
    """Distinct str class names, in label order, at least ``at_least`` of them."""
    if isinstance(classes, np.ndarray):
        classes = classes.tolist()
    listed = isinstance(classes, (list, tuple))
    if not listed or not all(isinstance(c, str) for c in classes):
        odd = next((c for c in classes if not isinstance(c, str)), None) if listed else None
        holds = f" (it holds {show(odd)}, a {type(odd).__name__})" if odd is not None else ""
        raise GradmatchError(f"{what} is {show(classes)}{holds}; expected a list of class names (str), in label order")
    twice = sorted({c for c in classes if list(classes).count(c) > 1})
    if twice:
        raise GradmatchError(f"{what} names {', '.join(map(repr, twice))} more than once; expected one distinct name "
                             "per class")
    if not classes:
        raise GradmatchError(f"{what} is empty; expected a list of class names (str), one per label")
    if len(classes) < at_least:
        raise GradmatchError(f"{what} names {len(classes)} classes but the labels go up to {at_least - 1}; expected at "
                             f"least {at_least} names, one per label")
    return list(classes)


def _tensor_kind(t: Tensor) -> Optional[str]:
    """What makes ``t`` unusable as data (sparse, meta, quantized); None if fine."""
    if t.device.type == "meta":
        return "meta (shapes without values)"
    return str(t.layout).replace("torch.", "") if t.layout != torch.strided else "quantized" if t.is_quantized else None


LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)  # what torch computes on


def images(value: Any, what: str, dtype: Optional[torch.dtype] = None) -> Tensor:
    """Normalised images: a dense, finite float N x C x H x W tensor (of ``dtype``: default torch's)."""
    dtype = dtype or torch.get_default_dtype()
    name = str(dtype).replace("torch.", "")
    expected = f"a {name} tensor N x C x H x W, every size at least 1 (the networks' dtype)"
    if not isinstance(value, Tensor) or _tensor_kind(value):
        got = f"a {_tensor_kind(value)} tensor" if isinstance(value, Tensor) else show(value)
        raise GradmatchError(f"{what} are {got}; expected {expected}, in memory")
    if not value.is_floating_point():
        raise GradmatchError(f"{what} are {show(value)}; expected {expected}: float pixels normalised as the dataset "
                             "is, (pixels / 255 - mean) / std")
    if value.dim() != 4 or 0 in value.shape:
        raise GradmatchError(f"{what} have shape {tuple(value.shape)}; expected {expected}")
    if value.dtype != dtype:
        raise GradmatchError(f"{what} are {show(value)}; expected {expected}: convert with .to(torch.{name})")
    if not math.isfinite(float(value.sum())) and not bool(torch.isfinite(value).all()):  # one pass when finite
        bad = int((~torch.isfinite(value)).flatten(1).any(1).sum())
        raise GradmatchError(f"{what} hold non-finite (nan or inf) values in {bad} image(s); fix or remove them")
    return value


def labels(value: Any, count: int, what: str, num_classes: Optional[int] = None) -> Tensor:
    """Class indices: a dense 1-D integer tensor of ``count`` values in 0..num_classes-1, as int64."""
    if not isinstance(value, Tensor) or _tensor_kind(value):
        got = f"a {_tensor_kind(value)} tensor" if isinstance(value, Tensor) else show(value)
        raise GradmatchError(f"{what} are {got}; expected an integer tensor of class indices 0, 1, ...")
    if value.dtype not in LABEL_DTYPES:
        raise GradmatchError(f"{what} are {show(value)}; expected integer class indices 0, 1, ... (.long())")
    if value.dim() != 1 or len(value) != count:
        raise GradmatchError(f"{what} have shape {tuple(value.shape)} for {count} images; expected one label per "
                             "image")
    value = value.long()
    if count and int(value.min()) < 0:
        raise GradmatchError(f"{what} include {int(value.min())}; expected class indices 0, 1, ...")
    if count and num_classes is not None and int(value.max()) >= num_classes:
        raise GradmatchError(f"{what} go up to {int(value.max())} but there are {num_classes} classes (labels "
                             f"0..{num_classes - 1})")
    return value
