"""A user's own images, one subfolder per class (class names are the sorted subfolder names):

    root/<class>/*.png|jpg|jpeg|bmp                       one set of images, or
    root/train/<class>/...  and  root/test/<class>/...    separate splits.

The split layout is used when ``root/train`` or ``root/test`` holds subfolders. Without split folders
the same images serve as both "train" and "test" (there is nothing else to test on). Files are found
recursively under each class folder; names starting with "." are skipped.

The training split decides everything the two splits must share: the classes (test class folders
must be among them; a test split may lack some), the channels (3 if any training image is in
colour, else 1; images are converted with Pillow to "RGB" or "L"), the image size (``size``, else
the first training image's size in sorted order; others are resized bilinearly) and the per-channel
mean/std used to normalise both splits. So loading "test" reads the training images too.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gradmatch.data.registry import (
    Dataset,
    Size,
    channel_stats,
    make_dataset,
    register_dataset,
    resize,
    to_unit,
)
from gradmatch.errors import GradmatchError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
GRAY_MODES = ("1", "L", "LA", "La", "I", "F")
Files = list[tuple[Path, int]]


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _has_split_folders(root: Path) -> bool:
    return any((root / s).is_dir() and _subfolders(root / s) for s in ("train", "test"))


def _images_under(folder: Path) -> list[Path]:
    found = [p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _scan(folder: Path, classes: list[str], every_class: bool) -> Files:
    files: Files = []
    for label, name in enumerate(classes):
        if not (folder / name).is_dir():
            continue
        images = _images_under(folder / name)
        if every_class and not images:
            raise GradmatchError(f"folder: class folder {folder / name} holds no images "
                                 f"({'/'.join(EXTENSIONS)}); add some or remove the folder")
        files += [(p, label) for p in images]
    if not files:
        raise GradmatchError(f"folder: no images ({'/'.join(EXTENSIONS)}) under {folder}; expected "
                             f"{folder}/<class>/<image>")
    return files


def _open(path: Path):
    try:
        return Image.open(path)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise GradmatchError(f"folder: cannot read image {path} ({e}); remove or replace the file") from None


def _is_colour(path: Path) -> bool:
    with _open(path) as im:
        return not (im.mode in GRAY_MODES or im.mode.startswith("I;"))


def _read(files: Files, mode: str, size: tuple[int, int]) -> torch.Tensor:
    """Decode ``files`` with Pillow in ``mode`` ("RGB" or "L") -> N x C x H x W in [0, 1] at ``size``."""
    channels = 3 if mode == "RGB" else 1
    out = torch.empty(len(files), channels, *size)
    by_shape = defaultdict(list)  # decode all, then convert and resize one batch per source size
    arrays = []
    for i, (path, _) in enumerate(files):
        with _open(path) as im:
            try:
                arr = np.asarray(im.convert(mode), dtype=np.uint8)
            except (OSError, ValueError, SyntaxError) as e:
                raise GradmatchError(f"folder: cannot read image {path} ({e}); remove or replace the file") \
                    from None
        arrays.append(arr.reshape(arr.shape[0], arr.shape[1], channels))
        by_shape[arrays[-1].shape].append(i)
    for idx in by_shape.values():
        batch = to_unit(np.stack([arrays[i] for i in idx]).transpose(0, 3, 1, 2))
        out[torch.as_tensor(idx)] = resize(batch, size)
    return out


@register_dataset("folder")
def read_folder(root: Path, split: str, download: bool, size: Size) -> Dataset:
    if not root.is_dir():
        raise GradmatchError(f"folder: {root} is not a directory; point --data_path at a folder holding "
                             f"<class>/ subfolders of images")
    split_layout = _has_split_folders(root)
    train_dir = root / "train" if split_layout else root
    if split_layout and not train_dir.is_dir():
        raise GradmatchError(f"folder: {root} has test/ but no train/ folder; expected {train_dir}/<class>/")
    classes = _subfolders(train_dir)
    if not classes:
        raise GradmatchError(f"folder: no class subfolders in {train_dir}; expected "
                             f"{train_dir}/<class>/<image>")
    train_files = _scan(train_dir, classes, every_class=True)
    mode = "RGB" if any(_is_colour(p) for p, _ in train_files) else "L"
    if size is None:
        with _open(train_files[0][0]) as im:
            size = (im.height, im.width)
    train = _read(train_files, mode, size)
    mean, std = channel_stats(train)
    if split == "test" and split_layout:
        test_dir = root / "test"
        if not test_dir.is_dir():
            raise GradmatchError(f"folder: expected {test_dir}/<class>/ for the test split "
                                 f"(beside {train_dir})")
        extra = sorted(set(_subfolders(test_dir)) - set(classes))
        if extra:
            raise GradmatchError(f"folder: test class folders {', '.join(extra)} in {test_dir} have no "
                                 f"training folder in {train_dir}; rename or remove them")
        files = _scan(test_dir, classes, every_class=False)
        images = _read(files, mode, size)
    else:
        files, images = train_files, train
    return make_dataset("folder", images, [label for _, label in files], classes, mean, std, size)
