"""Augmentation: DC's for training evaluation networks (``dc``), DSA for the matching step, the inner loop and
the evaluation (``dsa``), and other tools' evaluation choices (``bench``)."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from ..errors import GradmatchError, unknown_name
from . import bench, dsa
from .dc import STRATEGIES, augment, strategy_for

DSA_PREFIX = "dsa"
BY_METHOD = "by_method"  # DSA where the set was condensed with DSA, else none (DD-Ranking's per-method configs)
NAMES = ("auto", "none", BY_METHOD, *STRATEGIES, "dsa", "dsa:<ops>", "idc", *bench.DCBENCH)


def dsa_strategy(strategy: Optional[str]) -> Optional[str]:
    """The DSA ops of an evaluation strategy ('dsa' -> DSA's default ops), or None if not DSA."""
    if not strategy or not strategy.startswith(DSA_PREFIX):
        return None
    return strategy[len(DSA_PREFIX):].lstrip(":") or dsa.STRATEGY


def check_strategy(strategy: Optional[str]) -> Optional[str]:
    """An evaluation augmentation, one of ``NAMES``."""
    if strategy is None or strategy in NAMES:
        return strategy
    if isinstance(strategy, str) and dsa_strategy(strategy) is not None:
        if not dsa.parse_strategy(dsa_strategy(strategy)):
            raise GradmatchError(f"augmentation '{strategy}' names no DSA operation; give some of "
                                 f"{', '.join(dsa.OPS)} joined by '_', or 'none'")
        return strategy
    raise unknown_name("augmentation", str(strategy), NAMES)


def make_augment(strategy: Optional[str], generator: torch.Generator,
                 space=None) -> Optional[Callable[[Tensor], Tensor]]:
    """An evaluation strategy as a function of a batch; DC-BENCH's need ``space`` (mean, std, size)."""
    if strategy is None or strategy == "none":
        return None
    ops = dsa_strategy(strategy)
    if ops is not None:
        dsa.parse_strategy(ops)  # an unknown op: one clear error now, not mid-training
        return lambda images: dsa.augment_batch(images, ops, generator)
    if strategy == "idc":
        return lambda images: bench.idc(images, generator)
    if strategy in bench.DCBENCH:
        draw = bench.dcbench(strategy, *space)
        return lambda images: draw(images, generator)
    names = STRATEGIES[strategy]
    return lambda images: augment(images, names, generator)


__all__ = ["BY_METHOD", "NAMES", "STRATEGIES", "augment", "bench", "check_strategy", "dsa", "dsa_strategy",
           "make_augment", "strategy_for"]
