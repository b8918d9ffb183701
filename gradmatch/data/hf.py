"""Hugging Face datasets: ``load("hf:PATH_OR_NAME", split=...)`` reads an image-classification dataset
with the ``datasets`` library, an optional extra (``pip install gradmatch[hf]``). ``root`` is unused.

PATH_OR_NAME is one of
    a folder written by ``save_to_disk`` (a Dataset or a DatasetDict)   read by ``datasets.load_from_disk``
    a local folder of data files (parquet, arrow, an image folder...)   read by ``datasets.load_dataset``
    one .parquet or .arrow file                                          likewise
    a hub name ("user/name")                                             from the local Hugging Face cache
An existing path is read as local data, anything else as a hub name. A hub name is read offline, from
the cache only (``HF_HOME``/``HF_DATASETS_CACHE``): nothing is downloaded unless ``download=True``,
when the library's own client fetches it into that cache. Local data is always read offline
(``datasets`` keeps its usual cache of what it converted).

Columns: the image column is the dataset's one ``datasets.Image`` feature, the label column its one
``datasets.ClassLabel`` feature, whose names are the classes. Where that is ambiguous or missing, pass
``image_column=``/``label_column=``. A label column that is not a ClassLabel is used only when named:
integers 0..K-1 then give classes "0".."K-1", strings give the sorted unique strings of the training
split as classes. Unlabelled rows (ClassLabel -1) are refused.

Splits: "train" is the dataset's "train" split (or its only split, or a plain Dataset); "test" is its
"test" split, else its "validation" split (the ``note`` says so), else a fixed, seeded, stratified
``test_fraction`` of the training split is held out (``gradmatch.data.splits``; the ``note`` says so).

Images: each row's image file is decoded with Pillow, every mode as ``gradmatch.data.images`` says
(so 16-bit images keep their 16 bits); channels 3 if any training image is in colour, else 1. All
images must have one size, else they are refused in one line unless ``size`` says what to resize them
to. Normalisation: the per-channel mean/std of the training images (the training part, where held out).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from gradmatch.data.dataset import Dataset
from gradmatch.data.images import channels_of, check_one_size, image_sizes, read_image, stack
from gradmatch.data.registry import register_dataset
from gradmatch.data.splits import two_splits
from gradmatch.errors import GradmatchError, warn

FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}
SILENT = logging.CRITICAL + 1  # a log level above every record the library writes


def library():
    """The ``datasets`` module, or one line saying how to install it."""
    try:
        import datasets
    except ImportError:
        raise GradmatchError("hf: datasets are read with the Hugging Face datasets library, which is not installed; "
                             "pip install gradmatch[hf]") from None
    return datasets


@contextlib.contextmanager
def _quiet(datasets, offline: bool):
    """No progress bars and no log lines from ``datasets`` (not even its errors: a file it cannot read
    becomes gradmatch's one line, said once); no network unless ``offline`` is False. Both the library's
    flags (read at call time) and the environment are set, and restored after."""
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
    datasets.logging.set_verbosity(SILENT)
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


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _is_hub_name(spec: str) -> bool:
    return not spec.startswith(("/", ".", "~")) and spec.count("/") <= 1 and "\\" not in spec


def open_splits(spec: str, download: bool) -> dict:
    """The dataset's splits, {name: datasets.Dataset}, read as the module docstring says."""
    datasets = library()
    what = f"hf:{spec}"
    path = Path(os.path.expanduser(spec))
    hub = not path.exists()
    if hub and not _is_hub_name(spec):
        raise GradmatchError(f"{what}: no such file or folder (nor a hub name \"user/name\"); give the path of a "
                             f"save_to_disk folder or of parquet/arrow files")
    if not hub and path.is_file() and path.suffix.lower() not in FILE_BUILDERS:
        raise GradmatchError(f"{what} is a file but not .parquet or .arrow; give one of those, a folder, or a "
                             f"save_to_disk folder")
    try:
        with _quiet(datasets, offline=not (hub and download)):
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
        doing = "could not fetch" if hub else "cannot read"
        raise GradmatchError(f"{what}: the datasets library {doing} it ({_first_line(e)})") from None
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
    """Labels of one split as int64, and the classes (decided here from the training split when
    ``classes`` is None)."""
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
    """Every row's image as pixels (``gradmatch.data.images``), decoded by Pillow from the stored file
    (its bytes, read as Arrow without the library's per-row formatting, or its path)."""
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
    """``load("hf:" + spec, ...)``: see the module docstring; both splits from one read."""
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
    test = None
    if test_name:
        part = splits[test_name]
        image_col, label_col = columns(part.features, config.image_column or image_col,
                                       config.label_column or label_col, f"{what} {test_name}")
        test_labels, test_classes = _labels(part, label_col, classes, f"{what} {test_name}")
        if test_classes != classes:
            raise GradmatchError(f"{what}: the {test_name} split's classes ({', '.join(test_classes[:5])}...) differ "
                                 f"from the {train_name} split's ({', '.join(classes[:5])}...)")
        test_arrays = _images(part, image_col, f"{what} {test_name}", grey=channels == 1)
    check_one_size(image_sizes(arrays + (test_arrays if test_name else [])), what, config.size)
    size = config.size or arrays[0].shape[:2]
    pixels = stack(arrays, channels, size)
    del arrays
    if test_name:
        test = (stack(test_arrays, channels, size), test_labels)
    line = None if test_name in (None, "test") else \
        f"{what} has no test split: its validation split is used for testing"
    return two_splits(what, classes, pixels, labels, test, config.test_fraction,
                      no_test=f"{what} has no test split", own_note=line)
