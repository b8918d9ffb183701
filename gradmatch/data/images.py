"""Pillow images to pixels, for every mode Pillow opens, each scaled by its real range.

``pixels(image, source)`` gives an H x W x C array, C = 1 (grey) or 3 (colour), of uint8 (0..255),
uint16 (0..65535) or float32 (0..1) values; ``stack`` divides each by its dtype's full scale, so a
16-bit image keeps its 65,536 levels, their order and its full range. Per Pillow mode:

    1                          black or white: 0 or 255
    L                          8-bit grey
    LA, La                     8-bit grey, alpha dropped (La, premultiplied, is un-premultiplied first)
    I;16, I;16B, I;16L, I;16N  16-bit grey, scaled by 65535
    I                          32-bit integer grey, read as 16-bit (what 16-bit PNG and TIFF files give):
                               values outside 0..65535 are refused
    F                          32-bit float grey, taken as given when every pixel is within [0, 1] (a float
                               file's range is its author's to say); otherwise refused
    RGB, RGBX                  8-bit colour
    RGBA, RGBa                 colour, alpha dropped (RGBa, premultiplied, is un-premultiplied first)
    P, PA                      palette colours looked up (P and PA images count as colour), transparency dropped
    CMYK                       R = 255 (1 - C)(1 - K), likewise G and B (Pillow's, no colour profile)
    YCbCr                      JPEG's full-range ITU-R BT.601 conversion (Pillow's)
    HSV                        the standard HSV to RGB conversion (Pillow's, as ``colorsys``)
    LAB and any other mode     refused in one line naming the file and its mode

Alpha is dropped, not composited: the colour values are kept as stored, as Pillow's ``convert("RGB")``
and torchvision do (compositing would have to invent a background colour).

Where the training images are grey, a colour image is made grey with Pillow's ``convert("L")`` of its
RGB values (ITU-R 601-2 luma, 8-bit); where they are in colour, a grey image is repeated over the three
channels (what Pillow's "L" to "RGB" does). A multi-frame file (GIF, TIFF) gives its first frame.
"""

from __future__ import annotations

import io
import os
from collections import defaultdict
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
    """``image`` as H x W x C values (see the module docstring); ``grey=True`` makes a colour image grey.
    ``source`` names the image in errors (a path, or a dataset and row)."""
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
    """Open an image file (a path or the file's bytes) and return its ``pixels``; a file Pillow cannot
    decode is refused in one line naming ``source``."""
    try:
        with Image.open(io.BytesIO(file) if isinstance(file, bytes) else file) as image:
            return pixels(image, source, grey)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise GradmatchError(f"cannot read image {source} ({e}); remove or replace it") from None


def channels_of(arrays: Sequence[np.ndarray]) -> int:
    """3 if any of the arrays is in colour, else 1."""
    return 3 if any(a.shape[2] == 3 for a in arrays) else 1


def stack(arrays: Sequence[np.ndarray], channels: int, size: tuple[int, int]) -> torch.Tensor:
    """H x W x (1 or 3) arrays -> N x channels x H x W float32 in [0, 1], each source size resized as one
    batch. Grey arrays are repeated to 3 channels when ``channels`` is 3."""
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


def image_sizes(arrays: Sequence[np.ndarray]) -> dict[tuple[int, int], int]:
    """How many arrays have each (H, W), in order of first appearance."""
    counts: dict[tuple[int, int], int] = {}
    for array in arrays:
        counts[array.shape[:2]] = counts.get(array.shape[:2], 0) + 1
    return counts


def check_one_size(sizes: dict[tuple[int, int], int], what: str, size: Size) -> None:
    """Refuse images of several sizes unless ``size`` says what to resize them to."""
    if size is None and len(sizes) > 1:
        listed = ", ".join(f"{h}x{w} ({n})" for (h, w), n in list(sizes.items())[:4])
        raise GradmatchError(f"{what}: images differ in size ({listed}{', ...' if len(sizes) > 4 else ''}); "
                             f"pass --size H,W (size=(H, W) from Python) to resize them all to one size")
