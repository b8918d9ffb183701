"""An honest test split for data that has none: a fixed, seeded, stratified held-out part.

Each class holds out ``round(n * test_fraction)`` of its ``n`` images (halves round up), but at most
``n - 1``: every class keeps at least one training image, so a class of 1 image (or of 2 at the default
0.2) holds none out. Which images are held out is drawn per class by ``numpy.random.default_rng((seed,
class))``: the same in every run, whatever the global RNG, and unchanged in one class when another
class gains images. Train and test are disjoint and each keeps the original order.

Where nothing can be held out (``test_fraction`` 0, or every class too small) the test images are the
training images, and the datasets' ``note`` says that accuracy then measures the images the set is
condensed from. Normalisation (mean/std) comes from the training part only.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gradmatch.data.registry import Dataset, channel_stats, check_dataset
from gradmatch.errors import GradmatchError

DEFAULT_TEST_FRACTION = 0.2
SPLIT_SEED = 0  # the readers' split (folders, hf: datasets) is fixed: a constant, not the run's seed


def check_fraction(value) -> float:
    """``value`` as a float in [0, 1), else one error line."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or not 0 <= value < 1:
        raise GradmatchError(f"test_fraction must be a number in [0, 1) (the share of each class held out for "
                             f"testing; 0 tests on the training images), not {value!r}")
    return float(value)


def held_out(labels, test_fraction: float, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices into ``labels``, each sorted: ``test_fraction`` of every class held out."""
    labels = np.asarray(labels).reshape(-1)
    test = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = min(len(members) - 1, math.floor(len(members) * test_fraction + 0.5))
        if count > 0:
            test.append(np.random.default_rng((seed, int(label))).permutation(members)[:count])
    test = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


def note(what: str, test_fraction: float, n_test: int, n_total: int, seed: str = "fixed seed") -> str:
    """The one line a split dataset carries: how its test images were chosen."""
    share = f"{test_fraction * 100:g}%"
    if n_test:
        return (f"{what}: {share} of each class's images ({n_test} of {n_total}, stratified, {seed}) are "
                f"held out for testing")
    why = ("test_fraction is 0" if test_fraction == 0 else
           f"no class has enough images to hold {share} out (each keeps at least one training image)")
    return (f"{what}: {why}, so the test images are the training images: accuracy is measured on the "
            f"images the set is condensed from")


def split(dataset: Dataset, test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0
          ) -> tuple[Dataset, Dataset]:
    """(train, test) of ``dataset`` (e.g. from ``from_tensors`` or ``from_torch``) as the module docstring
    says, both normalised with the mean/std of the training part (recomputed: the dataset's own are
    replaced) and carrying a ``note``."""
    check_dataset(dataset, "split: dataset")
    test_fraction = check_fraction(test_fraction)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise GradmatchError(f"split: seed must be a whole number of at least 0, not {seed!r}")
    train_idx, test_idx = held_out(dataset.labels.cpu().numpy(), test_fraction, int(seed))
    line = note(dataset.name, test_fraction, len(test_idx), len(dataset), f"seed {seed}")
    mean = torch.tensor(dataset.mean, device=dataset.images.device).view(1, -1, 1, 1)
    std = torch.tensor(dataset.std, device=dataset.images.device).view(1, -1, 1, 1)
    pixels = dataset.images * std + mean
    train_pixels = pixels[torch.as_tensor(train_idx, device=pixels.device)]
    new_mean, new_std = channel_stats(train_pixels)

    def part(images: torch.Tensor, idx: np.ndarray) -> Dataset:
        m = torch.tensor(new_mean, device=images.device).view(1, -1, 1, 1)
        s = torch.tensor(new_std, device=images.device).view(1, -1, 1, 1)
        labels = dataset.labels[torch.as_tensor(idx, device=dataset.labels.device)]
        return Dataset(images=(images - m) / s, labels=labels, classes=list(dataset.classes), mean=new_mean,
                       std=new_std, name=dataset.name, note=line)

    train = part(train_pixels, train_idx)
    if not len(test_idx):
        return train, Dataset(images=train.images, labels=train.labels, classes=list(dataset.classes),
                              mean=new_mean, std=new_std, name=dataset.name, note=line)
    return train, part(pixels[torch.as_tensor(test_idx, device=pixels.device)], test_idx)
