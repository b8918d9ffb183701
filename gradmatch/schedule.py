"""How long to train the network between matching steps (SPEC section 4): one entry of ``SCHEDULES`` each, a
fixed number of epochs, the paper's adaptive schedule, or until a held-out real batch's loss rises."""
from __future__ import annotations

import math
import operator
from typing import Any, Callable, List, Optional, Sequence

from .errors import GradmatchError

# DC's published (outer_loop, inner_loop) per ipc.
PUBLISHED_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
OVERFIT_MAX_EPOCHS = 50


def loops_rule(ipc: int) -> tuple[int, int]:
    """The one rule behind every (outer_loop, inner_loop), reproducing DC's published pairs: outer_loop is min(ipc,
    50); inner_loop the published values' linear interpolation, rounded half up (ipc 15 -> 38), 1 at ipc 1."""
    if ipc < 1:
        raise GradmatchError(f"ipc must be at least 1, got {ipc}")
    outer = min(ipc, 50)
    if outer == 1:
        return 1, 1
    at = min(max(ipc, 10), 50)  # the published values at ipc 10 and 50 hold below and above them
    lo = max(k for k in PUBLISHED_LOOPS if k <= at)
    hi = min(k for k in PUBLISHED_LOOPS if k >= at)
    if lo == hi:
        return outer, PUBLISHED_LOOPS[lo][1]
    a, b = PUBLISHED_LOOPS[lo][1], PUBLISHED_LOOPS[hi][1]
    return outer, math.floor(a + (b - a) * (at - lo) / (hi - lo) + 0.5)


def loops_for_ipc(ipc: int) -> tuple[int, int]:
    """(outer_loop, inner_loop) for any ipc >= 1: DC's published pair where there is one, else ``loops_rule``."""
    try:
        ipc = operator.index(ipc)
    except TypeError:
        raise GradmatchError(f"ipc must be a whole number, got {ipc!r}") from None
    return PUBLISHED_LOOPS.get(ipc) or loops_rule(ipc)


def adaptive_inner_epochs(outer_step: int, first: Sequence[int]) -> int:
    """The paper's adaptive learning step: a scheme's ``first`` epochs, then 10 up to outer step 9 and 5 after."""
    return first[outer_step] if outer_step < len(first) else 10 if outer_step <= 9 else 5


class Schedule:
    """Fixed: ``inner_loop`` epochs after every matching step (DC)."""
    name = "fixed"

    def epochs(self, outer_step: int, adaptive: Sequence[int], inner_loop: int) -> int:
        """Epochs of network training after outer step ``outer_step`` (at most, where it may stop early)."""
        return inner_loop

    def stopper(self, draw_held: Callable[[], Any], held_losses: Callable[[Any], List[float]]) -> Optional[Stopper]:
        """None, or a function of the networks still training after an epoch -> those to go on."""
        return None


class Adaptive(Schedule):
    name = "adaptive"

    def epochs(self, outer_step: int, adaptive: Sequence[int], inner_loop: int) -> int:
        return adaptive_inner_epochs(outer_step, adaptive)


class Overfit(Schedule):
    """Overfitting-aware: each network trains until its loss on a held real batch rises (a nan never stops it)."""
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
