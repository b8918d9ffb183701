"""DD-Ranking's label-robust scores (ddranking/metrics/hard_label.py:380-383) on fractions, and the full-data
accuracy they need (hard_label.py:228-288; trained once, cached).  DD-Ranking 0.2.0 computes them on percentage
points, where any alpha below about -5 gives LRS's floor for every method alike: ``points`` for comparison."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

from .errors import GradmatchError
from .results import read_json_object, save_json
from .synset import SyntheticSet

LAMBDA = 0.5
FULL_LR, FULL_STEP, FULL_CHECKS = 0.01, 100, 10


def label_robust_scores(full: float, syn: float, random: float, units: str = "fractions") -> dict:
    """hlr, ior, lrs from accuracies in percent."""
    scale = 100.0 if units == "fractions" else 1.0
    hlr, ior = (full - syn) / scale, (syn - random) / scale
    alpha = LAMBDA * ior - (1 - LAMBDA) * hlr
    lrs = (math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1))
    return {"hlr": hlr, "ior": ior, "lrs": lrs, "lrs_units": units}


def full_accuracy(parts: dict, data, protocol, device=None) -> float:
    """The test accuracy (percent) of the protocol's first model trained on the whole training split."""
    from .evaluate import evaluate_set

    train, test = parts["train"], parts["test"]
    epochs = protocol.epochs_for("none")
    full = dataclasses.replace(protocol, num_eval=1, lr=FULL_LR, lr_grid=(), augment="none", cutmix=0.0,
                               milestones=tuple(e / epochs for e in range(FULL_STEP, epochs, FULL_STEP)),
                               gamma=0.1, test_every=FULL_CHECKS, report="best", models=protocol.models[:1])
    key = f"{data.source()[0]}|{json.dumps(data.where(), sort_keys=True)}|{full.models[0]}|{full.name}|{epochs}"
    path = Path(os.environ.get("GRADMATCH_CACHE", Path.home() / ".cache" / "gradmatch")) / "full_accuracy.json"
    cache = read_json_object(path)
    if key not in cache:
        whole = SyntheticSet(images=train.images, labels=train.labels, classes=train.classes, mean=train.mean,
                             std=train.std, dataset=train.name)
        result = evaluate_set(whole, test, full, device)[0]
        cache[key] = 100 * result.mean
        try:
            save_json(cache, path)
        except OSError as err:
            raise GradmatchError(f"cannot cache the full-data accuracy in {path} ({err.strerror}); pass "
                                 "--full_accuracy, or set GRADMATCH_CACHE to a writable folder") from None
    return cache[key]
