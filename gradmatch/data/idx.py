"""MNIST and FashionMNIST from IDX files, laid out as torchvision does: ``root/<name>/raw/``
holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``, each plain or gzipped (``.gz``)."""

from __future__ import annotations

import gzip
import struct
import zlib
from functools import partial
from pathlib import Path

import numpy as np

from gradmatch.data.download import fetch
from gradmatch.data.dataset import Dataset, Size, corrupt, first_existing, make_dataset, missing, to_unit
from gradmatch.data.registry import register_dataset

IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]


def read_idx(path: Path, magic: int, dataset: str) -> np.ndarray:
    """Parse an unsigned-byte IDX file (plain or .gz) whose magic number must be ``magic``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a cut .gz an EOFError
        raise corrupt(dataset, path, f"cannot decompress: {e}") from None
    if len(data) < 4:
        raise corrupt(dataset, path, f"only {len(data)} bytes")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise corrupt(dataset, path, f"magic number {found:#010x}, expected {magic:#010x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise corrupt(dataset, path, f"header cut short at {len(data)} bytes")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise corrupt(dataset, path, f"{len(data)} bytes, the header {dims} implies {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read(name: str, classes, mean: float, std: float, root: Path, split: str, download: bool, size: Size) -> Dataset:
    folder = root / name / "raw"
    bases = FILES[split]
    paths = [first_existing([folder / b, folder / (b + ".gz")]) for b in bases]
    if download and None in paths:
        fetch(name, folder, [b + ".gz" for b, p in zip(bases, paths) if p is None])
        paths = [first_existing([folder / b, folder / (b + ".gz")]) for b in bases]
    for base, path in zip(bases, paths):
        if path is None:
            raise missing(name, folder / f"{base}[.gz]", f"{name}/raw/")
    images = read_idx(paths[0], IMAGES_MAGIC, name)
    labels = read_idx(paths[1], LABELS_MAGIC, name)
    if len(images) != len(labels):
        raise corrupt(name, paths[1], f"{len(labels)} labels for {len(images)} images in {paths[0]}")
    if len(labels) and labels.max() >= len(classes):
        raise corrupt(name, paths[1], f"label {labels.max()} out of range 0..{len(classes) - 1}")
    return make_dataset(name, to_unit(images[:, None]), labels.astype(np.int64), classes, (mean,), (std,), size)


register_dataset("MNIST")(partial(_read, "MNIST", [str(d) for d in range(10)], 0.1307, 0.3081))
register_dataset("FashionMNIST")(partial(_read, "FashionMNIST", FASHION_CLASSES, 0.2861, 0.3530))
