"""Dataset readers: ``load(name, root, split, download, size) -> Dataset`` with images in memory.

Each reader module registers its datasets when imported below.
"""

from gradmatch.data import cifar, digits, folder, idx, svhn  # noqa: F401  (registers the readers)
from gradmatch.data.registry import Dataset, list_datasets, load, register_dataset

__all__ = ["Dataset", "list_datasets", "load", "register_dataset"]
