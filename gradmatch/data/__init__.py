"""Dataset readers: ``load(name, root, split, download, size, ...) -> Dataset`` with images in memory,
``from_tensors``/``from_torch`` for data already in Python, ``split`` for a held-out test part, and
``check_dataset``, the one check of a ``Dataset`` that readers and the training code share.

Each reader module registers its datasets when imported below.
"""

from gradmatch.data import cifar, digits, folder, idx, svhn  # noqa: F401  (registers the readers)
from gradmatch.data.arrays import from_tensors, from_torch
from gradmatch.data.registry import Dataset, check_dataset, list_datasets, load, register_dataset
from gradmatch.data.splits import split

__all__ = ["Dataset", "check_dataset", "from_tensors", "from_torch", "list_datasets", "load", "register_dataset",
           "split"]
