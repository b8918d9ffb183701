"""Hugging Face datasets: ``load("hf:PATH_OR_NAME")`` with the optional ``datasets`` library (gradmatch[hf]).
PATH_OR_NAME: a ``save_to_disk`` folder, data files, or a hub name read from the local cache unless ``download=True``.
Columns: the one ``Image`` and ``ClassLabel`` feature unless named (a named label column of integers or strings).
"test" is the "test" split, else "validation", else a held-out part of "train"; the ``note`` says which."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from gradmatch.data.dataset import Dataset
from gradmatch.data.images import channels_of, check_one_size, read_image, stack
from gradmatch.data.registry import register_dataset
from gradmatch.data.splits import two_splits
from gradmatch.errors import GradmatchError, warn

FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}


def library():
    try:
        import datasets
    except ImportError:
        raise GradmatchError("hf: datasets are read with the Hugging Face datasets library, which is not installed; "
                             "pip install gradmatch[hf]") from None
    return datasets


@contextlib.contextmanager
def quiet(datasets, offline: bool = False):
    """No progress bars and no log lines from ``datasets`` (its errors become gradmatch's one line); no network
    while ``offline``.  Both the library's flags (read at call time) and the environment are set, then restored."""
    import huggingface_hub.constants as hub

    saved_flags = (datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE)
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    bars_were_off = datasets.are_progress_bars_disabled()
    verbosity = datasets.logging.get_verbosity()
    if offline:
        datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
        os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datasets.disable_progress_bars()
    datasets.logging.set_verbosity(logging.CRITICAL + 1)  # above every record the library writes
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = saved_flags
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        datasets.logging.set_verbosity(verbosity)
        if not bars_were_off:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                datasets.enable_progress_bars()


def open_splits(spec: str, download: bool) -> dict:
    """The dataset's splits, {name: datasets.Dataset}."""
    datasets = library()
    what = f"hf:{spec}"
    path = Path(os.path.expanduser(spec))
    hub = not path.exists()
    if hub and (spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or "\\" in spec):  # not "user/name"
        raise GradmatchError(f"{what}: no such file or folder (nor a hub name \"user/name\"); give the path of a "
                             f"save_to_disk folder or of parquet/arrow files")
    if not hub and path.is_file() and path.suffix.lower() not in FILE_BUILDERS:
        raise GradmatchError(f"{what} is a file but not .parquet or .arrow; give one of those, a folder, or a "
                             f"save_to_disk folder")
    try:
        with quiet(datasets, offline=not (hub and download)):
            if hub:
                found = datasets.load_dataset(spec)
            elif path.is_file():
                found = datasets.load_dataset(FILE_BUILDERS[path.suffix.lower()], data_files=str(path))
            elif (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
                found = datasets.load_from_disk(str(path))
            else:
                found = datasets.load_dataset(str(path))
    except Exception as e:  # noqa: BLE001  the library raises many types; each becomes one line
        if hub and not download:
            raise GradmatchError(f"{what} is not in the local Hugging Face cache ({datasets.config.HF_DATASETS_CACHE}"
                                 f"); pass --download (download=True from Python) to fetch it with the datasets "
                                 f"library, or give the path of a save_to_disk folder or of parquet/arrow files"
                                 ) from None
        lines = str(e).strip().splitlines()
        error = f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")
        doing = "could not fetch" if hub else "cannot read"
        raise GradmatchError(f"{what}: the datasets library {doing} it ({error})") from None
    if isinstance(found, datasets.DatasetDict):
        return dict(found)
    if isinstance(found, datasets.Dataset):
        return {"train": found}
    raise GradmatchError(f"{what}: expected a Dataset or DatasetDict, got {type(found).__name__}")


def _describe(feature) -> str:
    return getattr(feature, "dtype", None) if type(feature).__name__ == "Value" else type(feature).__name__


def _pick(features, kind: str, given: str | None, what: str, option: str, hint: str) -> str:
    """The name of the column of feature type ``kind`` (or the ``given`` one, checked)."""
    listing = ", ".join(f"{name} ({_describe(f)})" for name, f in features.items())
    if given is not None:
        if given not in features:
            raise GradmatchError(f"{what} has no column '{given}' ({option}); its columns: {listing}")
        return given
    found = [name for name, f in features.items() if type(f).__name__ == kind]
    if len(found) == 1:
        return found[0]
    if not found:
        raise GradmatchError(f"{what} has no {kind} column; its columns: {listing}; {hint}")
    raise GradmatchError(f"{what} has {len(found)} {kind} columns ({', '.join(found)}); pass {option}=NAME "
                         f"(--{option}) to choose one")


def columns(features, image_column: str | None, label_column: str | None, what: str) -> tuple[str, str]:
    """(image column, label column) of a dataset with these ``features``."""
    image = _pick(features, "Image", image_column, what, "image_column",
                  "cast one with dataset.cast_column(name, datasets.Image()), or pass image_column=NAME")
    if type(features[image]).__name__ != "Image":
        raise GradmatchError(f"{what}: column '{image}' holds {_describe(features[image])}, not images "
                             f"(a datasets.Image feature)")
    label = _pick(features, "ClassLabel", label_column, what, "label_column",
                  "pass label_column=NAME (--label_column) to use a column of integers or strings as labels "
                  "(strings: the classes are their sorted unique values)")
    feature = features[label]
    dtype = str(getattr(feature, "dtype", ""))
    plain = type(feature).__name__ == "Value" and (dtype in ("string", "large_string") or "int" in dtype)
    if type(feature).__name__ != "ClassLabel" and not plain:
        raise GradmatchError(f"{what}: column '{label}' holds {_describe(feature)}; labels must be a ClassLabel, "
                             f"integers or strings")
    if label == image:
        raise GradmatchError(f"{what}: image_column and label_column are both '{label}'")
    return image, label


def _labels(part, column: str, classes: list[str] | None, what: str) -> tuple[np.ndarray, list[str]]:
    """Labels of one split as int64, and the classes (decided here, from the training split, when None)."""
    feature = part.features[column]
    values = list(part[column])
    if any(v is None for v in values):
        raise GradmatchError(f"{what}: column '{column}' has empty labels (row {values.index(None)}); fill or drop "
                             f"those rows")
    if type(feature).__name__ == "ClassLabel":
        classes = [str(n) for n in feature.names]
        labels = np.asarray(values, dtype=np.int64)
        if len(labels) and labels.min() < 0:
            raise GradmatchError(f"{what}: {int((labels < 0).sum())} rows have label -1 (unlabelled, as hub test "
                                 f"splits often are); drop them, or drop the split so a part of train is held out")
    elif isinstance(values[0] if values else 0, str):
        classes = sorted(set(values)) if classes is None else classes
        index = {name: i for i, name in enumerate(classes)}
        unknown = next((v for v in values if v not in index), None)
        if unknown is not None:
            raise GradmatchError(f"{what}: label '{unknown}' is not among the training split's classes")
        labels = np.asarray([index[v] for v in values], dtype=np.int64)
    else:
        labels = np.asarray(values, dtype=np.int64)
        if len(labels) and labels.min() < 0:
            raise GradmatchError(f"{what}: column '{column}' holds negative labels; labels must be 0..K-1")
        classes = [str(i) for i in range(int(labels.max()) + 1)] if classes is None else classes
    if len(labels) and labels.max() >= len(classes):
        raise GradmatchError(f"{what}: label {int(labels.max())} is beyond the {len(classes)} classes of column "
                             f"'{column}'")
    return labels, classes


def _images(part, column: str, what: str, grey: bool = False) -> list[np.ndarray]:
    """Every row's image as pixels, decoded by Pillow from the file's bytes (read as Arrow, unformatted) or path."""
    datasets = library()
    files = part.select_columns([column]).cast_column(column, datasets.Image(decode=False))
    table = files.with_format("arrow")[:][column].combine_chunks()
    arrays = []
    for row, (data, path) in enumerate(zip(table.field("bytes").to_pylist(), table.field("path").to_pylist())):
        if not (data or path):
            raise GradmatchError(f"{what}: row {row} has no image; fill or drop it")
        arrays.append(read_image(data or path, f"{what} row {row}", grey))
    return arrays


@register_dataset("hf", options=("test_fraction", "image_column", "label_column"), both=True)
def read_hf(spec: str, config) -> dict[str, Dataset]:
    """``load("hf:" + spec, ...)``: both splits from one read."""
    what = f"hf:{spec}"
    if not spec:
        raise GradmatchError("hf: needs a dataset after it: hf:PATH (save_to_disk folder, parquet/arrow files) or "
                             "hf:user/name (a hub dataset in the local cache)")
    splits = open_splits(spec, config.download)
    if "train" in splits:
        train_name = "train"
    elif len(splits) == 1:
        train_name = next(iter(splits))
    else:
        raise GradmatchError(f"{what} has splits {', '.join(splits)} but no 'train' split; name the one to "
                             f"condense 'train'")
    test_name = next((s for s in ("test", "validation") if s in splits and s != train_name), None)
    if test_name and config.test_fraction is not None:
        warn(f"{what} has its own {test_name} split: test_fraction ignored")
    train = splits[train_name]
    image_col, label_col = columns(train.features, config.image_column, config.label_column, what)
    if len(train) == 0:
        raise GradmatchError(f"{what}: the {train_name} split is empty")
    labels, classes = _labels(train, label_col, None, f"{what} {train_name}")
    arrays = _images(train, image_col, f"{what} {train_name}")
    channels = channels_of(arrays)
    if test_name:
        part = splits[test_name]
        image_col, label_col = columns(part.features, config.image_column or image_col,
                                       config.label_column or label_col, f"{what} {test_name}")
        test_labels, test_classes = _labels(part, label_col, classes, f"{what} {test_name}")
        if test_classes != classes:
            raise GradmatchError(f"{what}: the {test_name} split's classes ({', '.join(test_classes[:5])}...) differ "
                                 f"from the {train_name} split's ({', '.join(classes[:5])}...)")
        test_arrays = _images(part, image_col, f"{what} {test_name}", grey=channels == 1)
    check_one_size(arrays + (test_arrays if test_name else []), what, config.size)
    size = config.size or arrays[0].shape[:2]
    pixels = stack(arrays, channels, size)
    del arrays
    test = (stack(test_arrays, channels, size), test_labels) if test_name else None
    line = None if test_name in (None, "test") else \
        f"{what} has no test split: its validation split is used for testing"
    return two_splits(what, classes, pixels, labels, test, config.test_fraction,
                      no_test=f"{what} has no test split", own_note=line)
