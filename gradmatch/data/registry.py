"""Where data comes from: the data settings (``DataConfig``), the table of sources, and ``load``.  A reader is
called as ``reader(location, split, download, size) -> Dataset``, or, registered with ``both=True`` (sources
that decode the training images for either split), as ``reader(location, config) -> {split: ...}``."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from gradmatch import checks
from gradmatch.data.dataset import Dataset, check_dataset
from gradmatch.errors import GradmatchError, unknown_name, warn
from gradmatch.settings import Settings, boolean, declared, setting


@dataclass(frozen=True)
class Source:
    reader: Callable
    splits: tuple[str, ...]
    options: tuple[str, ...]  # the DataConfig settings it uses beyond the common ones
    both: bool


_SOURCES: dict[str, Source] = {}
PREFIXES = {"hf:": "hf"}  # a source spelt PREFIX + location
OWN_OPTIONS = ("test_fraction", "image_column", "label_column")  # settings only some sources use


def register_dataset(name: str, splits=("train", "test"), options=(), both: bool = False):
    """Register a reader under ``name`` with its ``splits`` and the ``OWN_OPTIONS`` it uses."""
    def decorate(reader: Callable) -> Callable:
        _SOURCES[name] = Source(reader, tuple(splits), tuple(options), both)
        return reader
    return decorate


def list_datasets() -> list[str]:
    """Names of the registered datasets, sorted (ignoring case); prefixes and folders are not listed."""
    return sorted((n for n in _SOURCES if n not in PREFIXES.values()), key=str.lower)


def _datasets_help() -> str:
    return f"{', '.join(list_datasets())}, the path of an image folder, or hf:NAME (a Hugging Face dataset)"


@declared("data")
class DataConfig(Settings):
    """Where a run's data comes from and how it is read: every command that reads data takes these."""
    dataset: str = setting("CIFAR10", _datasets_help, check=checks.text)
    data_path: str = setting("data", "the folder holding the datasets", check=checks.text, free=True)
    test_fraction: Optional[float] = setting(None, "the share of each class held out for testing where the data has no "
                                             "test split of its own (default 0.2; 0: test on the training images, "
                                             "said)", check=checks.fraction, type=float)
    image_column: Optional[str] = setting(None, "the image column of an hf: dataset, where its features leave it "
                                          "ambiguous", check=checks.text, type=str)
    label_column: Optional[str] = setting(None, "the label column of an hf: dataset, where its features leave it "
                                          "ambiguous", check=checks.text, type=str)
    size: Optional[tuple] = setting(None, "resize every image to H,W (or N for NxN), e.g. for a folder or hf: dataset "
                                    "of mixed sizes", check=checks.size, type=str)
    download: bool = setting(False, "fetch missing dataset files (checksummed)", check=boolean, free=True)

    def source(self) -> tuple[str, Source, object]:
        """(the source's name, its entry, where it is): the one parse of ``dataset``."""
        spec = self.dataset
        for prefix, name in PREFIXES.items():
            if spec.startswith(prefix):
                return name, _SOURCES[name], spec[len(prefix):]
        key = spec.lower().replace("-", "").replace("_", "")
        canonical = {n.lower().replace("-", "").replace("_", ""): n for n in list_datasets()}.get(key)
        if canonical is not None:
            return canonical, _SOURCES[canonical], Path(os.path.expanduser(self.data_path))
        path = Path(os.path.expanduser(spec))
        if path.is_dir():
            return "folder", _SOURCES["folder"], path
        raise GradmatchError(f"{unknown_name('dataset', spec, list_datasets())} (or the path of an image folder, or "
                             "hf:NAME for a Hugging Face dataset)")

    def where(self) -> dict:
        """These settings as a set records them: enough to read its data again from another folder."""
        name, _, location = self.source()
        settings = self.to_dict()
        if name == "folder":
            settings["dataset"] = str(Path(location).resolve())
        settings.pop("download")
        return settings


def load_data(config: DataConfig, splits=("train", "test")) -> dict[str, Dataset]:
    """The ``splits`` of ``config``'s (validated) data, each checked once here."""
    name, source, location = config.source()
    for split in splits:
        if split not in source.splits:
            raise unknown_name(f"{name} split", str(split), source.splits)
    given = [k for k in OWN_OPTIONS if getattr(config, k) is not None and k not in source.options]
    if "test_fraction" in given:
        warn(f"{name} has its own test split: test_fraction ignored")
    columns = [k for k in given if k != "test_fraction"]
    if columns:
        warn(f"{name} is not an hf: dataset: {' and '.join(columns)} ignored")
    if source.both:
        read = source.reader(location, config)
    else:
        read = {split: source.reader(location, split, config.download, config.size) for split in splits}
    where = config.where()
    return {split: dataclasses.replace(check_dataset(read[split], f"{name} {split}"), source=where)
            for split in splits}


def load(name, root=".", split: str = "train", **options) -> Dataset:
    """Split ``split`` ("train", "test"; "all" too for digits) of dataset ``name`` (``list_datasets()``, an
    image folder or ``hf:PATH_OR_NAME``) from the folder ``root``.  ``options`` are the other ``DataConfig``
    settings (``download``, ``size``, ``test_fraction``...); one the source does not use is said and ignored."""
    config = DataConfig(dataset=os.fspath(name) if isinstance(name, os.PathLike) else name,
                        data_path=os.fspath(root) if isinstance(root, os.PathLike) else root, **options).validate()
    return load_data(config, (split,))[split]


__all__ = ["DataConfig", "Source", "list_datasets", "load", "load_data", "register_dataset"]
