"""A user's own images, one subfolder per class (class names are the sorted subfolder names):

    root/<class>/*.png|jpg|jpeg|bmp|tif|tiff|gif|webp    one set of images, or
    root/train/<class>/...  and  root/test/<class>/...    separate splits.

The split layout is used when ``root/train`` or ``root/test`` holds subfolders. Without split folders
the same images serve as both "train" and "test" (there is nothing else to test on). Files are found
recursively under each class folder; names starting with "." are skipped.

The training split decides everything the two splits must share: the classes (test class folders
must be among them; a test split may lack some), the channels (3 if any training image is in
colour, else 1), the image size (``size``, else the first training image's size in sorted order;
others are resized bilinearly) and the per-channel mean/std used to normalise both splits. So
loading "test" reads the training images too. Every Pillow mode, 16-bit grey included, becomes
pixels in [0, 1] as ``gradmatch.data.images`` says, or is refused in one line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gradmatch.data.images import channels_of, read_image, stack
from gradmatch.data.registry import (
    Dataset,
    Size,
    channel_stats,
    make_dataset,
    register_dataset,
)
from gradmatch.errors import GradmatchError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
Files = list[tuple[Path, int]]


def _subfolders(folder: Path) -> list[str]:
    # a symlinked folder is skipped: it may lead out of the tree or back into it (a loop)
    return sorted(p.name for p in folder.iterdir()
                  if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))


def _has_split_folders(root: Path) -> bool:
    return any((root / s).is_dir() and _subfolders(root / s) for s in ("train", "test"))


def _images_under(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder`` (hidden names skipped), sorted by relative path.  Symlinked
    folders are not followed (``a/loop -> ..`` would repeat the tree forever, ``a/out -> /`` leave it);
    a symlink to an image file is read like the file."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, folder)
        found += [os.path.normpath(os.path.join(rel, f)) for f in filenames
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in EXTENSIONS]
    return [folder / rel for rel in sorted(found)]


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


def _decode_all(files: Files, grey: bool = False) -> list[np.ndarray]:
    return [read_image(path, str(path), grey) for path, _ in files]


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
    arrays = _decode_all(train_files)
    channels = channels_of(arrays)
    size = size or arrays[0].shape[:2]
    train = stack(arrays, channels, size)
    del arrays
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
        images = stack(_decode_all(files, grey=channels == 1), channels, size)
    else:
        files, images = train_files, train
    return make_dataset("folder", images, [label for _, label in files], classes, mean, std, size)
