"""scikit-learn's bundled 8 x 8 handwritten digits (1,797): no files, no download.  A fixed stratified split
(1,347 train / 450 test) or "all", each normalised with the training split's per-channel mean and std."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gradmatch.data.dataset import Dataset, Size, channel_stats, make_dataset, resize, to_unit
from gradmatch.data.registry import register_dataset


@register_dataset("digits", splits=("train", "test", "all"))
def read_digits(root: Path, split: str, download: bool, size: Size) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    pixels, target = bunch.images, bunch.target  # (1797, 8, 8) float in 0..16, (1797,)
    train, test = train_test_split(np.arange(len(target)), test_size=0.25, random_state=0, stratify=target)
    pick = {"train": train, "test": test, "all": np.arange(len(target))}[split]
    mean, std = channel_stats(resize(to_unit(pixels[train][:, None], 16.0), size))
    images = to_unit(pixels[pick][:, None], 16.0)
    return make_dataset("digits", images, target[pick], [str(d) for d in range(10)], mean, std, size)
