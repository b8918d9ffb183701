"""scikit-learn's bundled handwritten digits: 1,797 real 8 x 8 grayscale images (values 0..16),
classes '0'..'9'. Needs no files and no download.

Splits: a fixed stratified split, ``train_test_split(test_size=0.25, random_state=0, stratify=y)``
(1,347 train / 450 test, in the order that call returns), or "all" (the 1,797 in their original
order). Every split is normalised with the per-channel mean and std of the training split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gradmatch.data.dataset import Dataset, Size, channel_stats, make_dataset, resize, to_unit
from gradmatch.data.registry import register_dataset


def split_indices(target: np.ndarray):
    """(train, test) indices of the fixed stratified split of the digits' ``target``."""
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(len(target)), test_size=0.25, random_state=0, stratify=target)


@register_dataset("digits", splits=("train", "test", "all"))
def read_digits(root: Path, split: str, download: bool, size: Size) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels, target = bunch.images, bunch.target  # (1797, 8, 8) float in 0..16, (1797,)
    train, test = split_indices(target)
    pick = {"train": train, "test": test, "all": np.arange(len(target))}[split]
    mean, std = channel_stats(resize(to_unit(pixels[train][:, None], 16.0), size))
    images = to_unit(pixels[pick][:, None], 16.0)
    return make_dataset("digits", images, target[pick], [str(d) for d in range(10)], mean, std, size)
