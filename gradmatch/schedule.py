"""How long to train the network between matching steps (SPEC section 4).

``outer_loop`` matching steps per iteration; between two of them the network trains on the
synthetic set for ``inner_epochs(...)`` epochs: a fixed number, the paper's adaptive schedule, or
until a held-out real batch's loss rises (the overfitting-aware variant, at most
``OVERFIT_MAX_EPOCHS``).
"""
from __future__ import annotations

import math
import operator

from .errors import GradmatchError, unknown_name

# DC's published (outer_loop, inner_loop) per ipc.
PUBLISHED_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
SCHEDULES = ("fixed", "adaptive", "overfit")
OVERFIT_MAX_EPOCHS = 50


def loops_rule(ipc: int) -> tuple[int, int]:
    """The one rule behind every (outer_loop, inner_loop); it reproduces all of DC's published pairs.

    outer_loop = min(ipc, 50): one matching step per synthetic image of a class, at most 50.
    inner_loop (epochs of network training between two matching steps):
      * 1 when outer_loop is 1 (ipc 1): one outer step never trains the network, so the value is
        never used; DC writes 1;
      * 50 for ipc 2..10 (the value at ipc 10: few images, many cheap epochs);
      * between two published ipc values (10 < ipc < 50), linear interpolation of the published
        inner loops, rounded half up: ipc 15 -> 38, ipc 25 -> 23, ipc 45 -> 13;
      * 10 from ipc 50 on (the value at ipc 50).
    """
    if ipc < 1:
        raise GradmatchError(f"ipc must be at least 1, got {ipc}")
    outer = min(ipc, 50)
    if outer == 1:
        return 1, 1
    if ipc <= 10:
        return outer, PUBLISHED_LOOPS[10][1]
    if ipc >= 50:
        return outer, PUBLISHED_LOOPS[50][1]
    lo = max(k for k in PUBLISHED_LOOPS if k <= ipc)
    hi = min(k for k in PUBLISHED_LOOPS if k >= ipc)
    if lo == hi:
        return outer, PUBLISHED_LOOPS[lo][1]
    a, b = PUBLISHED_LOOPS[lo][1], PUBLISHED_LOOPS[hi][1]
    return outer, math.floor(a + (b - a) * (ipc - lo) / (hi - lo) + 0.5)


def loops_for_ipc(ipc: int) -> tuple[int, int]:
    """(outer_loop, inner_loop) for any ipc >= 1: DC's published pair where there is one
    (ipc 1, 10, 20, 30, 40, 50), else ``loops_rule`` (which gives the published pairs too).

    Examples: 2 -> (2, 50), 5 -> (5, 50), 15 -> (15, 38), 100 -> (50, 10), 200 -> (50, 10).
    Whether the ipc fits the data (no more than the smallest class has) is checked against the
    dataset, in ``CondenseConfig.resolved``.
    """
    try:
        ipc = operator.index(ipc)
    except TypeError:
        raise GradmatchError(f"ipc must be a whole number, got {ipc!r}") from None
    if ipc in PUBLISHED_LOOPS:
        return PUBLISHED_LOOPS[ipc]
    return loops_rule(ipc)


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
