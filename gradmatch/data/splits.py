"""The one place two splits are made from pixels and normalised alike (the training part's mean/std): a source's
own test split, or a fixed, seeded, stratified held-out part, each class drawn from a generator of its own so that
its choice is unchanged when another gains images."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from gradmatch import checks
from gradmatch.data.dataset import Dataset, channel_stats, check_dataset, make_dataset

DEFAULT_TEST_FRACTION = 0.2
SPLIT_SEED = 0  # the readers' split (folders, hf: datasets) is fixed: a constant, not the run's seed


def held_out(labels, test_fraction: float, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices into ``labels``, each sorted: ``test_fraction`` of every class held out."""
    labels = np.asarray(labels).reshape(-1)
    test = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = min(len(members) - 1, math.floor(len(members) * test_fraction + 0.5))
        if count > 0:  # numpy's seeds are unsigned: a negative seed is its 64-bit pattern
            test.append(np.random.default_rng((seed % 2**64, int(label))).permutation(members)[:count])
    test = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    return np.setdiff1d(np.arange(len(labels)), test), test


def note(what: str, test_fraction: float, n_test: int, n_total: int, seed: str = "fixed seed") -> str:
    """The one line a split dataset carries: how its test images were chosen."""
    share = f"{test_fraction * 100:g}%"
    if n_test:
        return (f"{what}: {share} of each class's images ({n_test} of {n_total}, stratified, {seed}) are held out "
                "for testing")
    why = ("test_fraction is 0" if test_fraction == 0 else
           f"no class has enough images to hold {share} out (each keeps at least one training image)")
    return f"{what}: {why}, so the test images are the training images: accuracy is measured on the images the set " \
           "is condensed from"


def two_splits(name: str, classes, pixels: torch.Tensor, labels, test: Optional[tuple] = None,
               test_fraction: Optional[float] = None, seed: int = SPLIT_SEED, no_test: str = "",
               own_note: Optional[str] = None) -> dict[str, Dataset]:
    """{"train", "test"} from training ``pixels`` (N x C x H x W in [0, 1], owned) and ``labels``, with
    ``test`` = (pixels, labels) a source's own test split, else ``test_fraction`` of each class held out."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    line = own_note
    if test is None:
        fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
        train_idx, test_idx = held_out(labels, fraction, seed)
        line = note(no_test or name, fraction, len(test_idx), len(labels), "fixed seed" if no_test else f"seed {seed}")
        if len(test_idx):
            test = (pixels[torch.as_tensor(test_idx)], labels[test_idx])
            pixels, labels = pixels[torch.as_tensor(train_idx)], labels[train_idx]
    mean, std = channel_stats(pixels)
    train = make_dataset(name, pixels, labels, classes, mean, std, note=line)
    if test is None:  # nothing held out: the test images are the training images
        return {"train": train, "test": train}
    return {"train": train, "test": make_dataset(name, test[0], test[1], classes, mean, std, note=line)}


def split(dataset: Dataset, test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(train, test) of ``dataset``, both normalised with the training part's mean/std (replacing its own)."""
    dataset = check_dataset(dataset, "split: dataset")
    test_fraction = checks.fraction(test_fraction, "split: test_fraction")
    seed = checks.seed(seed, "split: seed")
    mean = torch.tensor(dataset.mean, device=dataset.images.device).view(1, -1, 1, 1)
    std = torch.tensor(dataset.std, device=dataset.images.device).view(1, -1, 1, 1)
    parts = two_splits(dataset.name, dataset.classes, dataset.images * std + mean, dataset.labels.cpu().numpy(),
                       test_fraction=test_fraction, seed=seed)
    return parts["train"], parts["test"]
