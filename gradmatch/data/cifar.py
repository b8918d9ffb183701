"""CIFAR-10 and CIFAR-100 from the python pickles, laid out as torchvision does:
``root/cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``, ``batches.meta``) and
``root/cifar-100-python/`` (``train``, ``test``, ``meta``). ``data`` is uint8 N x 3072 holding the
R, G and B planes, each 32 x 32 row-major.

The pickles are read with a restricted unpickler that builds only what the official files hold (dicts,
lists, str, bytes, ints, and numpy arrays of plain dtypes): a file whose pickle would call anything
else (``os.system``, ``eval``...) is refused in one line before anything runs. Keys and class names
may be str or bytes (as Python 3 reads Python 2's str with ``encoding="bytes"``)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from gradmatch.data.download import fetch
from gradmatch.data.dataset import Dataset, Size, corrupt, make_dataset, missing, to_unit
from gradmatch.data.registry import register_dataset
from gradmatch.errors import GradmatchError

LAYOUT = {
    "CIFAR10": {"folder": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "meta": "batches.meta", "names": "label_names", "labels": "labels",
                "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616)},
    "CIFAR100": {"folder": "cifar-100-python", "train": ["train"], "test": ["test"], "meta": "meta",
                 "names": "fine_label_names", "labels": "fine_labels",
                 "mean": (0.5071, 0.4867, 0.4408), "std": (0.2675, 0.2565, 0.2761)},
}


class Refused(pickle.UnpicklingError):
    """A pickle asked for a callable the official files never use."""


_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]  # numpy's array reconstructor, whichever module holds it


def _plain_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:  # an object array would unpickle arbitrary objects into it
        raise Refused(f"an object array (numpy dtype {dtype.str!r})")
    return dtype


def _latin1(text, encoding="latin1"):
    """``_codecs.encode`` as Python 3's protocol 2 uses it for bytes: latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class OfficialUnpickler(pickle.Unpickler):
    """Builds only what CIFAR's official pickles hold: numpy arrays of plain dtypes (Python 2's
    ``numpy.core.multiarray._reconstruct``, numpy 2's ``numpy._core.multiarray._reconstruct``,
    ``numpy.ndarray``, ``numpy.dtype``) and bytes as Python 3 writes them (``_codecs.encode``); dicts,
    lists, str, bytes and ints need no global. Any other global is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
               ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
               ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _plain_dtype, ("_codecs", "encode"): _latin1}

    def find_class(self, module, name):
        found = self.ALLOWED.get((module, name))
        if found is None:
            raise Refused(f"{module}.{name}")
        return found


def _text(value):
    return value.decode("latin1") if isinstance(value, bytes) else value


def unpickle(path: Path, dataset: str, keys) -> dict:
    """Load a pickled dict that must hold ``keys`` (str or bytes keys); anything else is a corrupt file,
    and a pickle that would call anything but numpy's array reconstruction is refused unrun."""
    try:
        with open(path, "rb") as f:
            obj = OfficialUnpickler(f, encoding="latin1").load()
    except Refused as e:
        raise GradmatchError(f"{dataset}: {path} is not an official file: its pickle asks for {e}, which "
                             f"the official files never do (refused, nothing was run); delete it and "
                             f"re-download it (pass --download; download=True from Python)") from None
    except Exception as e:  # noqa: BLE001  a damaged pickle can raise almost anything
        raise corrupt(dataset, path, f"{type(e).__name__}: {e}") from None
    if isinstance(obj, dict):
        obj = {_text(k): v for k, v in obj.items()}
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
        classes = [str(_text(c)) for c in meta[spec["names"]]]
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
