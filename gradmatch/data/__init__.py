"""Datasets in memory: ``load`` (a registered dataset, an image folder or ``hf:``), ``from_tensors``/``from_torch``
for data already in Python, ``split`` and ``check_dataset``.  Each reader module registers its source below."""

from gradmatch.data import cifar, digits, folder, hf, idx, svhn  # noqa: F401  (registers the readers)
from gradmatch.data.arrays import from_tensors, from_torch
from gradmatch.data.dataset import Dataset, check_dataset
from gradmatch.data.registry import DataConfig, list_datasets, load, load_data, register_dataset
from gradmatch.data.splits import split

__all__ = ["DataConfig", "Dataset", "check_dataset", "from_tensors", "from_torch", "list_datasets", "load",
           "load_data", "register_dataset", "split"]
