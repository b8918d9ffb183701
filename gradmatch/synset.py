"""A synthetic set and what every layer shares about it (the loop is not imported for it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

import torch
from torch import Tensor


@dataclass
class SyntheticSet:
    """A condensed dataset: normalised images, fixed labels, and what made them."""
    images: Tensor
    labels: Tensor
    classes: List[str]
    mean: tuple
    std: tuple
    dataset: str = ""
    config: Dict[str, Any] = field(default_factory=dict)

    @property
    def ipc(self) -> int:
        return len(self.labels) // max(len(self.classes), 1)

    @property
    def channel(self) -> int:
        return self.images.shape[1]

    @property
    def im_size(self) -> tuple:
        return tuple(self.images.shape[2:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> Dict[str, Any]:
        """Tensors and plain data only (what a checkpoint may hold: read with weights_only)."""
        return {"images": self.images.detach().cpu(), "labels": self.labels.cpu(), "classes": list(self.classes),
                "mean": tuple(self.mean), "std": tuple(self.std), "dataset": self.dataset,
                "config": dict(self.config)}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "SyntheticSet":
        return cls(images=d["images"], labels=d["labels"], classes=list(d["classes"]), mean=tuple(d["mean"]),
                   std=tuple(d["std"]), dataset=d.get("dataset", ""), config=dict(d.get("config") or {}))

    def denormalised(self) -> Tensor:
        """Pixels in [0, 1] (clamped), for pictures."""
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (self.images.detach().cpu() * std + mean).clamp(0, 1)
