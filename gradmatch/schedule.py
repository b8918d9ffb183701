"""How long to train the network between matching steps (SPEC section 4).

``outer_loop`` matching steps per iteration; between two of them the network trains on the
synthetic set for as many epochs as its schedule (one entry of ``SCHEDULES``) says: a fixed number,
the paper's adaptive schedule, or until a held-out real batch's loss rises (the overfitting-aware
variant, at most ``OVERFIT_MAX_EPOCHS``).  A schedule that stops early keeps its state in its own
``stopper``; the loop only asks it.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Callable, List, Optional, Sequence

from .errors import GradmatchError

# DC's published (outer_loop, inner_loop) per ipc.
PUBLISHED_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
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


def adaptive_inner_epochs(outer_step: int, first: Sequence[int]) -> int:
    """The paper's adaptive learning step at 0-based outer step ``outer_step``: a scheme's ``first`` epochs
    (``Scheme.adaptive``), then 10 up to step 9 and 5 after."""
    if outer_step < len(first):
        return first[outer_step]
    return 10 if outer_step <= 9 else 5


class Schedule:
    """Fixed: ``inner_loop`` epochs after every matching step (DC)."""
    name = "fixed"

    def epochs(self, outer_step: int, adaptive: Sequence[int], inner_loop: int) -> int:
        """Epochs of network training after outer step ``outer_step`` (at most, where it may stop early);
        ``adaptive``: the scheme's first adaptive epochs."""
        return inner_loop

    def stopper(self, draw_held: Callable[[], Any], held_losses: Callable[[Any], List[float]]) -> Optional[Stopper]:
        """A function of the networks still training (E bools) after each epoch -> those to go on; None:
        every network trains all its epochs.  ``draw_held()`` draws what it watches (before training),
        ``held_losses(held)`` is each network's loss on it now."""
        return None


class Adaptive(Schedule):
    """The paper's adaptive learning step."""
    name = "adaptive"

    def epochs(self, outer_step: int, adaptive: Sequence[int], inner_loop: int) -> int:
        return adaptive_inner_epochs(outer_step, adaptive)


class Overfit(Schedule):
    """Overfitting-aware: each network trains until its loss on a held real batch rises (at most
    ``OVERFIT_MAX_EPOCHS``); a nan never stops it."""
    name = "overfit"

    def epochs(self, outer_step: int, adaptive: Sequence[int], inner_loop: int) -> int:
        return OVERFIT_MAX_EPOCHS

    def stopper(self, draw_held, held_losses):
        held = draw_held()
        previous: List[float] = []

        def going_on(active: List[bool]) -> List[bool]:
            current = held_losses(held)
            before = previous or [math.inf] * len(current)
            still = [on and not now > last for on, now, last in zip(active, current, before)]
            previous[:] = [now if on else last for on, now, last in zip(still, current, before)]
            return still

        return going_on


Stopper = Callable[[List[bool]], List[bool]]
SCHEDULES = {s.name: s for s in (Schedule(), Adaptive(), Overfit())}
