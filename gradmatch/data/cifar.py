"""CIFAR-10 and CIFAR-100 from the python pickles in torchvision's layout, read by a restricted unpickler that
builds only what the official files hold (``OfficialUnpickler.ALLOWED``): any other call is refused before anything
runs.  Anything but uint8 N x 3072 pixels and N integer labels is said in one line naming the file, never cast."""

from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path

import numpy as np

from gradmatch import checks
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


PLAIN_KINDS = "biuf"  # bool, integer, unsigned, float: numbers, no objects, no structures


def _plain_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:  # an object array would unpickle arbitrary objects into it
        raise Refused(f"an object array (numpy dtype {dtype.str!r})")
    return dtype


def _raw(value, what: str) -> bytes:
    """An array's or a scalar's values as the file holds them: bytes (Python 2's str read as latin-1)."""
    if isinstance(value, str):
        value = value.encode("latin1")
    if not isinstance(value, bytes):
        raise Refused(f"{what} built from {type(value).__name__} instead of the bytes of its values")
    return value


class _NdarrayClass:
    """``numpy.ndarray`` as a pickle may name it: only the type ``_reconstruct`` is told to build."""

    def __call__(self, *args, **kwargs):
        raise Refused("numpy.ndarray called directly (an array whose values are not in the file)")


_NDARRAY = _NdarrayClass()


class _Array:
    """An array as ``_reconstruct`` starts it: ``array`` is None until its state (every value's bytes) is set."""

    def __init__(self):
        self.array = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise Refused("an array state that is not (shape, dtype, order, values)")
        shape, dtype, fortran, raw = state[-4:]
        if not (isinstance(shape, tuple) and all(checks.is_whole(d) and d >= 0 for d in shape)):
            raise Refused(f"an array of shape {shape!r}")
        if not isinstance(dtype, np.dtype) or dtype.kind not in PLAIN_KINDS or dtype.fields or dtype.subdtype:
            raise Refused(f"an array of numpy dtype {getattr(dtype, 'str', dtype)!r} (not plain numbers)")
        raw = _raw(raw, "an array")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if len(raw) != count * dtype.itemsize:
            raise pickle.UnpicklingError(f"an array of shape {shape} holds {len(raw)} bytes of values, not the "
                                         f"{count * dtype.itemsize} its shape needs")
        array = np.ndarray.__new__(np.ndarray, (0,), "b")
        array.__setstate__((1, shape, dtype, bool(fortran), raw))
        self.array = array


def _reconstruct(subtype, shape, dtype_code):
    """numpy's ``_reconstruct`` as the official files use it: a plain ndarray whose state follows."""
    if subtype is not _NDARRAY:
        raise Refused(f"an array of type {type(subtype).__name__}")
    return _Array()


def _scalar(dtype, raw=None):
    """A numpy scalar of a plain dtype (labels re-pickled with numpy), as a Python number."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in PLAIN_KINDS or dtype.fields or dtype.subdtype:
        raise Refused(f"a numpy scalar of dtype {getattr(dtype, 'str', dtype)!r}")
    raw = _raw(raw, "a numpy scalar")
    if len(raw) != dtype.itemsize:
        raise pickle.UnpicklingError(f"a numpy {dtype} scalar of {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype)[0].item()


def _latin1(text, encoding="latin1"):
    """``_codecs.encode`` as Python 3's protocol 2 uses it for bytes: latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class OfficialUnpickler(pickle.Unpickler):
    """Builds only what CIFAR's official pickles hold: any global but these is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
               ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
               ("numpy.core.multiarray", "scalar"): _scalar, ("numpy._core.multiarray", "scalar"): _scalar,
               ("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _plain_dtype, ("_codecs", "encode"): _latin1}

    def find_class(self, module, name):
        found = self.ALLOWED.get((module, name))
        if found is None:
            raise Refused(f"{module}.{name}")
        return found


def _resolved(value):
    """``value`` with every placeholder (in lists and dicts) replaced by its array; one never filled is refused."""
    if isinstance(value, _Array):
        if value.array is None:
            raise Refused("an array without its values (an empty array of a given shape, nothing read into it)")
        return value.array
    if isinstance(value, list):
        return [_resolved(v) for v in value]
    if isinstance(value, dict):
        return {k: _resolved(v) for k, v in value.items()}
    return value


def _text(value):
    return value.decode("latin1") if isinstance(value, bytes) else value


def unpickle(path: Path, dataset: str, keys) -> dict:
    """Load a pickled dict that must hold ``keys`` (str or bytes keys), refusing any other pickle unrun."""
    try:
        with open(path, "rb") as f:
            obj = _resolved(OfficialUnpickler(f, encoding="latin1").load())
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


FIX_PIXELS = ("the official files hold uint8 pixels 0..255: re-save them as uint8 (np.round(x * 255).astype("
              "np.uint8) for floats in [0, 1]), or delete it and re-download it (pass --download; download=True "
              "from Python)")


def _pixels(data, path: Path, dataset: str) -> np.ndarray:
    """``data`` as the official files hold it, uint8 N x 3072 (R, G and B planes)."""
    if not isinstance(data, np.ndarray):
        raise GradmatchError(f"{dataset}: {path} holds its data as a {type(data).__name__}, not an array of "
                             f"pixels; {FIX_PIXELS}")
    if data.dtype != np.uint8:
        span = f" ({data.min():.3g}..{data.max():.3g})" if data.size and data.dtype.kind in "iuf" else ""
        raise GradmatchError(f"{dataset}: {path} holds {data.dtype} pixels{span}, not uint8; {FIX_PIXELS}")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise corrupt(dataset, path, f"data of shape {data.shape}; expected N x 3072 (32 x 32 x 3 pixels each)")
    return data


def _labels(values, path: Path, dataset: str) -> np.ndarray:
    """Integer labels (Python or numpy integers, or an integer array) as int64."""
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "iu":
        return values.astype(np.int64)
    if isinstance(values, np.ndarray):
        values = values.tolist() if values.ndim == 1 else [values]
    if not isinstance(values, list):
        raise corrupt(dataset, path, f"labels are a {type(values).__name__}; expected a list of integers")
    odd = next((v for v in values if not checks.is_whole(v)), None)
    if odd is not None:
        raise GradmatchError(f"{dataset}: {path} holds the label {checks.show(odd)} (a {type(odd).__name__}); the "
                             f"official files hold integer class indices: re-save the labels as integers, or delete "
                             f"it and re-download it (pass --download; download=True from Python)")
    return np.asarray([int(v) for v in values], dtype=np.int64)


def _batch(path: Path, dataset: str, labels_key: str):
    obj = unpickle(path, dataset, ["data", labels_key])
    data = _pixels(obj["data"], path, dataset)
    labels = _labels(obj[labels_key], path, dataset)
    if len(labels) != len(data):
        raise corrupt(dataset, path, f"{len(data)} images with {len(labels)} labels; expected one label per image")
    return data, labels


def _read(name: str, root: Path, split: str, download: bool, size: Size) -> Dataset:
    spec = LAYOUT[name]
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


for _name in LAYOUT:
    register_dataset(_name)(partial(_read, _name))
