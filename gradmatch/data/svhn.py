"""SVHN (cropped digits) from ``root/{train,test}_32x32.mat`` (torchvision's layout) or
``root/SVHN/{train,test}_32x32.mat``. ``X`` is 32 x 32 x 3 x N uint8, ``y`` N x 1 with 10 for digit 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from gradmatch.data.download import fetch
from gradmatch.data.dataset import Dataset, Size, corrupt, first_existing, make_dataset, missing, to_unit
from gradmatch.data.registry import register_dataset


@register_dataset("SVHN")
def read_svhn(root: Path, split: str, download: bool, size: Size) -> Dataset:
    filename = f"{split}_32x32.mat"
    path = first_existing([root / filename, root / "SVHN" / filename])
    if path is None and download:
        fetch("SVHN", root, [filename])
        path = first_existing([root / filename])
    if path is None:
        raise missing("SVHN", root / filename, filename)
    try:
        mat = scipy.io.loadmat(path)
        x, y = mat["X"], mat["y"]
    except Exception as e:  # noqa: BLE001  loadmat raises many types on damaged files
        raise corrupt("SVHN", path, f"{type(e).__name__}: {e}") from None
    if x.ndim != 4 or x.shape[2] != 3 or y.size != x.shape[3]:
        raise corrupt("SVHN", path, f"X has shape {x.shape} and y {y.shape}; expected H x W x 3 x N and N x 1")
    labels = y.reshape(-1).astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 10):
        raise corrupt("SVHN", path, f"labels outside 0..10 ({labels.min()}..{labels.max()})")
    labels[labels == 10] = 0
    images = to_unit(np.asarray(x, dtype=np.uint8).transpose(3, 2, 0, 1))  # H W C N -> N C H W
    return make_dataset("SVHN", images, labels, [str(d) for d in range(10)], (0.4377, 0.4438, 0.4728),
                        (0.1980, 0.2010, 0.1970), size)
