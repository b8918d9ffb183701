"""How long to train the network between matching steps (SPEC section 4).

``outer_loop`` matching steps per iteration; between two of them the network trains on the
synthetic set for ``inner_epochs(...)`` epochs: a fixed number, the paper's adaptive schedule, or
until a held-out real batch's loss rises (the overfitting-aware variant, at most
``OVERFIT_MAX_EPOCHS``).
"""
from __future__ import annotations

from typing import Tuple

from .errors import GradmatchError, unknown_name

# DC's published (outer_loop, inner_loop) per ipc.
PUBLISHED_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
SCHEDULES = ("fixed", "adaptive", "overfit")
OVERFIT_MAX_EPOCHS = 50


def loops_for_ipc(ipc: int) -> Tuple[int, int]:
    """(outer_loop, inner_loop) for any ipc.

    The rule: the published pairs where they exist; otherwise outer_loop = min(ipc, 50) and
    inner_loop is read off the published curve: 50 below ipc 10 (ipc 1's inner value never runs,
    since one outer step leaves no network training), linear interpolation between published
    neighbours (rounded), and 10 beyond ipc 50.
    """
    if ipc < 1:
        raise GradmatchError(f"ipc must be at least 1, got {ipc}")
    if ipc in PUBLISHED_LOOPS:
        return PUBLISHED_LOOPS[ipc]
    outer = min(ipc, 50)
    if ipc < 10:
        return outer, 50
    if ipc > 50:
        return outer, 10
    lo = max(k for k in PUBLISHED_LOOPS if k < ipc)
    hi = min(k for k in PUBLISHED_LOOPS if k > ipc)
    a, b = PUBLISHED_LOOPS[lo][1], PUBLISHED_LOOPS[hi][1]
    return outer, int(round(a + (b - a) * (ipc - lo) / (hi - lo)))


def adaptive_inner_epochs(outer_step: int, scheme: str) -> int:
    """The paper's adaptive learning step at 0-based outer step ``outer_step``."""
    if scheme == "multi-level":
        if outer_step < 4:
            return (50, 40, 30, 20)[outer_step]
    elif outer_step == 0:
        return 100
    elif outer_step < 4:
        return 50
    return 10 if outer_step <= 9 else 5


def resolve_schedule(name: str) -> str:
    if name not in SCHEDULES:
        raise unknown_name("inner-loop schedule", name, SCHEDULES)
    return name


def inner_epochs(schedule: str, outer_step: int, scheme: str, fixed_inner: int) -> int:
    """Epochs of network training after outer step ``outer_step`` (an upper bound for 'overfit')."""
    if schedule == "adaptive":
        return adaptive_inner_epochs(outer_step, scheme)
    if schedule == "overfit":
        return OVERFIT_MAX_EPOCHS
    return fixed_inner
