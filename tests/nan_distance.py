"""User distances for the NaN-guard tests (passed as ``--dis_metric tests.nan_distance:NAME``).

Each is a per-tensor distance d(syn_rows, real_rows) -> scalar, as ``gradient_distance`` takes.
"""
from __future__ import annotations

import torch

from gradmatch.matching.distances import LAYERWISE

POISON = False  # a test sets this to make ``nan_when_poisoned`` turn to NaN from then on


def always_nan(syn: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    return (syn - real).pow(2).sum() * float("nan")


def nan_when_poisoned(syn: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    d = LAYERWISE["baseline"](syn, real)
    return d * float("nan") if POISON else d


def nan_gradient(syn: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Finite (zero) value, NaN gradient: sqrt'(0) = inf, times 0."""
    return torch.sqrt((syn - real).pow(2).sum() * 0.0)
