"""Seeds: every random stream of a run is derived from the run's seed and where it is used."""
from __future__ import annotations

import numpy as np


def derive_seed(seed: int, *keys: int) -> int:
    """A well-mixed 63-bit seed for (seed, keys...): independent streams per experiment/iteration."""
    entropy = [k % 2**63 for k in (seed, *keys)]  # SeedSequence takes non-negative ints only
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))
