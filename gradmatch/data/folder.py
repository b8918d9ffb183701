"""A user's own images, one subfolder per class (class names are the sorted subfolder names):

    root/<class>/*.png|jpg|jpeg|bmp|tif|tiff|gif|webp    one set of images, or
    root/train/<class>/...  and  root/test/<class>/...    separate splits.

The split layout is used when ``root/train`` or ``root/test`` holds subfolders. Without split folders
a fixed, seeded, stratified part of each class (``test_fraction``, 0.2 by default) is held out as the
"test" split and the rest is "train" (``gradmatch.data.splits``); the datasets' ``note`` says so.
Files are found recursively under each class folder; names starting with "." are skipped. Symlinked
folders are skipped (they may loop or lead out of the tree), and said once in a warning line.

The training split decides what the two splits share: the classes (test class folders must be among
them), the channels (3 if any training image is in colour, else 1), the image size (``size``, else the
first training image's; others are resized bilinearly) and the mean/std of both (``splits``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gradmatch.data.dataset import Dataset
from gradmatch.data.images import channels_of, read_image, stack
from gradmatch.data.registry import register_dataset
from gradmatch.data.splits import two_splits
from gradmatch.errors import GradmatchError, warn

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
Files = list[tuple[Path, int]]


def _subfolders(folder: Path, linked: list[Path]) -> list[str]:
    """Sorted names of the class folders in ``folder``. A symlinked folder is skipped (it may lead out of
    the tree or back into it, a loop) and added to ``linked``, to be said."""
    names = []
    for path in folder.iterdir():
        if path.name.startswith(".") or not path.is_dir():
            continue
        if path.is_symlink():
            linked.append(path)
        else:
            names.append(path.name)
    return sorted(names)


def _has_split_folders(root: Path) -> bool:
    return any((root / s).is_dir() and _subfolders(root / s, []) for s in ("train", "test"))


def _images_under(folder: Path, linked: list[Path]) -> list[Path]:
    """Image files anywhere under ``folder`` (hidden names skipped), sorted by relative path.  Symlinked
    folders are not followed (``a/loop -> ..`` would repeat the tree forever, ``a/out -> /`` leave it)
    but added to ``linked``; a symlink to an image file is read like the file."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        linked += [Path(dirpath) / d for d in sorted(dirnames) if os.path.islink(os.path.join(dirpath, d))]
        rel = os.path.relpath(dirpath, folder)
        found += [os.path.normpath(os.path.join(rel, f)) for f in filenames
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in EXTENSIONS]
    return [folder / rel for rel in sorted(found)]


def _scan(folder: Path, classes: list[str], every_class: bool, linked: list[Path]) -> Files:
    files: Files = []
    for label, name in enumerate(classes):
        if not (folder / name).is_dir():
            continue
        images = _images_under(folder / name, linked)
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


def _say_skipped(linked: list[Path]) -> None:
    if linked:
        names = ", ".join(str(p) for p in linked[:5]) + (f" and {len(linked) - 5} more" if len(linked) > 5 else "")
        warn(f"folder: skipped {len(linked)} symlinked folder(s), which may loop or lead out of the tree: "
                  f"{names}; copy or move their images into the tree to use them")


@register_dataset("folder", options=("test_fraction",), both=True)
def read_folder(root: Path, config) -> dict[str, Dataset]:
    if not root.is_dir():
        raise GradmatchError(f"folder: {root} is not a directory; point --data_path at a folder holding "
                             f"<class>/ subfolders of images")
    split_layout = _has_split_folders(root)
    train_dir = root / "train" if split_layout else root
    if split_layout and not train_dir.is_dir():
        raise GradmatchError(f"folder: {root} has test/ but no train/ folder; expected {train_dir}/<class>/")
    if split_layout and config.test_fraction is not None:
        warn(f"folder {root} has its own test split ({root / 'test'}): test_fraction ignored")
    linked: list[Path] = []
    classes = _subfolders(train_dir, linked)
    if not classes:
        _say_skipped(linked)
        raise GradmatchError(f"folder: no class subfolders in {train_dir}; expected {train_dir}/<class>/<image>")
    files = _scan(train_dir, classes, every_class=True, linked=linked)
    arrays = _decode_all(files)
    channels = channels_of(arrays)
    size = config.size or arrays[0].shape[:2]
    pixels = stack(arrays, channels, size)
    del arrays
    labels = [label for _, label in files]
    test = None
    if split_layout:
        test_dir = root / "test"
        if not test_dir.is_dir():
            raise GradmatchError(f"folder: expected {test_dir}/<class>/ for the test split (beside {train_dir})")
        extra = sorted(set(_subfolders(test_dir, linked)) - set(classes))
        if extra:
            raise GradmatchError(f"folder: test class folders {', '.join(extra)} in {test_dir} have no training "
                                 f"folder in {train_dir}; rename or remove them")
        files = _scan(test_dir, classes, every_class=False, linked=linked)
        test = (stack(_decode_all(files, grey=channels == 1), channels, size), [label for _, label in files])
    _say_skipped(linked)
    return two_splits("folder", classes, pixels, labels, test, config.test_fraction,
                      no_test=f"folder {root} has no test split")
