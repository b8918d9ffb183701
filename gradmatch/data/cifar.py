"""CIFAR-10 and CIFAR-100 from the python pickles, laid out as torchvision does:
``root/cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``, ``batches.meta``) and
``root/cifar-100-python/`` (``train``, ``test``, ``meta``). ``data`` is uint8 N x 3072 holding the
R, G and B planes, each 32 x 32 row-major.

The pickles are loaded with ``pickle``, as torchvision does, so only read files you trust."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from gradmatch.data.download import fetch
from gradmatch.data.registry import Dataset, Size, corrupt, make_dataset, missing, register_dataset, to_unit
from gradmatch.errors import GradmatchError

LAYOUT = {
    "CIFAR10": {"folder": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "meta": "batches.meta", "names": "label_names", "labels": "labels",
                "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616)},
    "CIFAR100": {"folder": "cifar-100-python", "train": ["train"], "test": ["test"], "meta": "meta",
                 "names": "fine_label_names", "labels": "fine_labels",
                 "mean": (0.5071, 0.4867, 0.4408), "std": (0.2675, 0.2565, 0.2761)},
}


def unpickle(path: Path, dataset: str, keys) -> dict:
    """Load a pickled dict that must hold ``keys``; anything else is a corrupt file."""
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except Exception as e:  # noqa: BLE001  a damaged pickle can raise almost anything
        raise corrupt(dataset, path, f"{type(e).__name__}: {e}") from None
    if not isinstance(obj, dict) or any(k not in obj for k in keys):
        raise corrupt(dataset, path, f"expected a dict with keys {', '.join(keys)}")
    return obj


def _batch(path: Path, dataset: str, labels_key: str):
    obj = unpickle(path, dataset, ["data", labels_key])
    try:
        data = np.asarray(obj["data"], dtype=np.uint8)
        labels = np.asarray(obj[labels_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise corrupt(dataset, path, str(e)) from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise corrupt(dataset, path, f"data {data.shape} with {len(labels)} labels; expected N x 3072 and N")
    return data, labels


def _cifar_reader(name: str):
    spec = LAYOUT[name]

    def read(root: Path, split: str, download: bool, size: Size) -> Dataset:
        folder = root / spec["folder"]
        files = [folder / f for f in spec[split] + [spec["meta"]]]
        if download and not all(f.is_file() for f in files):
            fetch(name, root)
        for f in files:
            if not f.is_file():
                raise missing(name, f, spec["folder"] + "/")
        meta = unpickle(files[-1], name, [spec["names"]])
        classes = [str(c) for c in meta[spec["names"]]]
        batches = [_batch(f, name, spec["labels"]) for f in files[:-1]]
        labels = np.concatenate([b[1] for b in batches])
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise GradmatchError(f"{name}: labels {labels.min()}..{labels.max()} do not fit the "
                                 f"{len(classes)} classes of {files[-1]}; delete {folder} and re-download it")
        images = to_unit([data.reshape(len(data), 3, 32, 32) for data, _ in batches])
        return make_dataset(name, images, labels, classes, spec["mean"], spec["std"], size)

    read.__name__ = f"read_{name.lower()}"
    return read


read_cifar10 = register_dataset("CIFAR10")(_cifar_reader("CIFAR10"))
read_cifar100 = register_dataset("CIFAR100")(_cifar_reader("CIFAR100"))
