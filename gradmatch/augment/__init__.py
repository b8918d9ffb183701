"""Augmentation: DC's for training evaluation networks (``dc``), and DSA, the differentiable siamese
augmentation of the matching step, the inner loop and the evaluation (``dsa``).

``make_augment(strategy, generator)`` turns an evaluation strategy name into a function of a batch:
DC's ``crop_scale_rotate`` / ``crop_noise``, or ``dsa`` / ``dsa:<ops>`` (DSA, one op per batch and
per-image parameters, as DSA trains its networks), every draw from ``generator``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from ..errors import GradmatchError, unknown_name
from . import dsa
from .dc import STRATEGIES, augment, strategy_for

DSA_PREFIX = "dsa"


def dsa_strategy(strategy: Optional[str]) -> Optional[str]:
    """The DSA ops of an evaluation strategy ('dsa' -> DSA's default ops), or None if not DSA."""
    if not strategy or not strategy.startswith(DSA_PREFIX):
        return None
    ops = strategy[len(DSA_PREFIX):].lstrip(":")
    return ops or dsa.STRATEGY


def check_strategy(strategy: Optional[str]) -> Optional[str]:
    """An evaluation augmentation: auto (DC's rule), none, one of DC's strategies, or dsa[:ops]."""
    if strategy is None or strategy in ("auto", "none") or strategy in STRATEGIES:
        return strategy
    if isinstance(strategy, str) and dsa_strategy(strategy) is not None:
        if not dsa.parse_strategy(dsa_strategy(strategy)):
            raise GradmatchError(f"augmentation '{strategy}' names no DSA operation; give some of "
                                 f"{', '.join(dsa.OPS)} joined by '_', or 'none'")
        return strategy
    raise unknown_name("augmentation", str(strategy), ["auto", "none", *STRATEGIES, "dsa", "dsa:<ops>"])


def make_augment(strategy: Optional[str], generator: torch.Generator) -> Optional[Callable[[Tensor], Tensor]]:
    if strategy is None or strategy == "none":
        return None
    ops = dsa_strategy(strategy)
    if ops is not None:
        dsa.parse_strategy(ops)  # an unknown op: one clear error now, not mid-training
        return lambda images: dsa.augment_batch(images, ops, generator)
    names = STRATEGIES[strategy]
    return lambda images: augment(images, names, generator)


__all__ = ["STRATEGIES", "augment", "check_strategy", "dsa", "dsa_strategy", "make_augment", "strategy_for"]
