"""How a batch is cut up: by class (the per-class terms), and by process (multi-process runs)."""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from ..distributed import Group

Batch = Tuple[Tensor, Tensor]  # (images, labels)


def split_by_class(images: Tensor, labels: Tensor) -> List[Tuple[int, Tensor, Tensor]]:
    """[(class, images, labels), ...] for a batch whose labels are grouped by class."""
    if labels.numel() > 1 and not bool((labels[1:] >= labels[:-1]).all()):
        order = torch.argsort(labels, stable=True)
        images, labels = images[order], labels[order]
    classes, counts = torch.unique_consecutive(labels, return_counts=True)
    counts = counts.tolist()
    return list(zip(classes.tolist(), images.split(counts), labels.split(counts)))


def own_classes(batch: Batch, group: Group) -> Batch:
    """The images of the classes this process matches (all of them in a single process)."""
    if not group.active:
        return batch
    keep = (batch[1] % group.world) == group.rank
    return batch[0][keep], batch[1][keep]


def own_chunk(batch: Batch, group: Group) -> Tuple[Batch, float]:
    """This process's chunk of a mixed batch, and its weight in the batch's mean loss."""
    if not group.active:
        return batch, 1.0
    part = group.chunk(len(batch[1]))
    return (batch[0][part], batch[1][part]), (part.stop - part.start) / max(len(batch[1]), 1)
