"""A user's own images, one subfolder per class (sorted names): ``root/<class>/...``, or ``root/train/<class>/...``
and ``root/test/<class>/...``; without a test folder a fixed, stratified ``test_fraction`` is held out.  Images
are found recursively; hidden names and symlinked folders (which may loop or lead out of the tree) are skipped,
the latter said.  The training split decides the classes, channels, image size and both splits' mean/std."""

from __future__ import annotations

import os
from pathlib import Path

from gradmatch.data.dataset import Dataset
from gradmatch.data.images import channels_of, read_image, stack
from gradmatch.data.registry import register_dataset
from gradmatch.data.splits import two_splits
from gradmatch.errors import GradmatchError, warn

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
Files = list[tuple[Path, int]]


def _subfolders(folder: Path, linked: list[Path]) -> list[str]:
    """Sorted names of the class folders in ``folder``; symlinked ones are skipped and added to ``linked``."""
    folders = [path for path in folder.iterdir() if not path.name.startswith(".") and path.is_dir()]
    linked += [path for path in folders if path.is_symlink()]
    return sorted(path.name for path in folders if not path.is_symlink())


def _images_under(folder: Path, linked: list[Path]) -> list[Path]:
    """Image files anywhere under ``folder``, sorted by relative path.  Symlinked folders are not followed
    (``a/loop -> ..`` would repeat the tree forever) but added to ``linked``; a linked image file is read."""
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
    split_layout = any((root / s).is_dir() and _subfolders(root / s, []) for s in ("train", "test"))
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
    arrays = [read_image(path, str(path)) for path, _ in files]
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
        test = (stack([read_image(path, str(path), channels == 1) for path, _ in files], channels, size),
                [label for _, label in files])
    _say_skipped(linked)
    return two_splits("folder", classes, pixels, labels, test, config.test_fraction,
                      no_test=f"folder {root} has no test split")
