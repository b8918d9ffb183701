"""Pillow images to pixels, for every mode Pillow opens, each scaled by its real range: uint8, uint16 (16-bit
grey, mode I read as 16-bit) or float32 in [0, 1] (mode F), so a 16-bit image keeps its 65,536 levels.  Colour
modes convert as Pillow's ``convert("RGB")`` does, alpha dropped (compositing would invent a background); modes
with no faithful conversion (LAB...) are refused.  A multi-frame file gives its first frame."""

from __future__ import annotations

import io
import os
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from gradmatch.data.dataset import Size, resize, to_unit
from gradmatch.errors import GradmatchError

GREY_8BIT = ("1", "L", "LA", "La")
GREY_16BIT = ("I;16", "I;16B", "I;16L", "I;16N")
COLOUR = ("RGB", "RGBX", "RGBA", "RGBa", "P", "PA", "CMYK", "YCbCr", "HSV")
FULL_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.float32): 1.0}


def pixels(image: Image.Image, source: str, grey: bool = False) -> np.ndarray:
    """``image`` as H x W x C values; ``grey=True`` makes a colour image grey; ``source`` names it in errors."""
    mode = image.mode
    if mode in COLOUR:
        if mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        rgb = image if mode == "RGB" else image.convert("RGB")  # un-premultiplies RGBa; looks palettes up
        array = np.asarray(rgb.convert("L") if grey else rgb)
    elif mode in GREY_8BIT:
        array = np.asarray((image.convert("LA") if mode == "La" else image).convert("L"))
    elif mode in GREY_16BIT:
        array = np.asarray(image).astype(np.uint16)  # I;16B is big-endian: to the native order
    elif mode == "I":
        array = np.asarray(image)
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise GradmatchError(f"image {source} has mode I (32-bit integers) with values {low}..{high}; "
                                 f"mode I is read as 16-bit (0..65535): save it as 16-bit or 8-bit")
        array = array.astype(np.uint16)
    elif mode == "F":
        array = np.asarray(image, dtype=np.float32)
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise GradmatchError(f"image {source} has mode F (32-bit float) with values in "
                                 f"[{np.nanmin(array):g}, {np.nanmax(array):g}]; float images must hold pixels "
                                 f"in [0, 1]: rescale it, or save it as 8-bit or 16-bit")
    else:
        raise GradmatchError(f"image {source} has mode {mode}, which gradmatch does not read (no faithful "
                             f"conversion to RGB); save it as RGB, L (8-bit grey) or I;16 (16-bit grey)")
    return array.reshape(array.shape[0], array.shape[1], -1)


def read_image(file: str | os.PathLike | bytes, source: str, grey: bool = False) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(file) if isinstance(file, bytes) else file) as image:
            return pixels(image, source, grey)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise GradmatchError(f"cannot read image {source} ({e}); remove or replace it") from None


def channels_of(arrays: Sequence[np.ndarray]) -> int:
    return 3 if any(a.shape[2] == 3 for a in arrays) else 1


def stack(arrays: Sequence[np.ndarray], channels: int, size: tuple[int, int]) -> torch.Tensor:
    """H x W x (1 or 3) arrays -> N x channels x H x W float32 in [0, 1], each source size resized as one batch."""
    groups = defaultdict(list)  # by size, channels and dtype, so each group stacks
    for i, array in enumerate(arrays):
        groups[array.shape, array.dtype].append(i)
    out = None if len(groups) == 1 else torch.empty(len(arrays), channels, *size)
    for (_, dtype), idx in groups.items():
        batch = np.stack([arrays[i] for i in idx])
        if batch.shape[3] < channels:
            batch = np.repeat(batch, channels, axis=3)
        images = resize(to_unit(batch.transpose(0, 3, 1, 2), FULL_SCALE[dtype]), size)
        if out is None:
            return images
        out.index_copy_(0, torch.as_tensor(idx), images)
    return out


def check_one_size(arrays: Sequence[np.ndarray], what: str, size: Size) -> None:
    """Refuse images of several sizes unless ``size`` says what to resize them to."""
    sizes = Counter(array.shape[:2] for array in arrays)  # in order of first appearance
    if size is None and len(sizes) > 1:
        listed = ", ".join(f"{h}x{w} ({n})" for (h, w), n in list(sizes.items())[:4])
        raise GradmatchError(f"{what}: images differ in size ({listed}{', ...' if len(sizes) > 4 else ''}); "
                             f"pass --size H,W (size=(H, W) from Python) to resize them all to one size")
