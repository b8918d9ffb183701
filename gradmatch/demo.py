"""The README's main job: condense scikit-learn's bundled digits (real 8x8 handwriting, no download)
with multi-level matching, the improved distance and the adaptive step, then compare with a random
real subset of the same size."""
from __future__ import annotations

import time
from typing import Optional

import torch

from . import data
from .condense import CondenseConfig, Condenser
from .evaluate import evaluate, random_real_subset


def demo(ipc: int = 10, iterations: Optional[int] = None, num_eval: int = 5, epochs: int = 300,
         quiet: bool = False, seed: int = 0) -> dict:
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    train, test = data.load("digits", split="train"), data.load("digits", split="test")
    iterations = iterations if iterations is not None else 60
    print(f"digits: {len(train)} training and {len(test)} test images of {train.channel}x"
          f"{train.im_size[0]}x{train.im_size[1]}, {train.num_classes} classes; model ConvNet")
    cfg = CondenseConfig(ipc=ipc, scheme="multi-level", dis_metric="improved", schedule="adaptive",
                         iterations=iterations, init="noise", batch_real=64, seed=seed)
    start = time.perf_counter()
    condenser = Condenser(train, cfg, device="cpu")
    from tqdm.auto import tqdm

    bar = tqdm(total=iterations, desc="condense", unit="it", disable=True if quiet else None)
    for state in condenser.steps():
        if state.iteration:
            bar.update(1)
            bar.set_postfix(loss=f"{state.last_loss:.3f}")
    bar.close()
    syn = condenser.synthetic_set(state)
    took = time.perf_counter() - start
    ours = evaluate(syn, "ConvNet", test, num_eval=num_eval, epochs=epochs, seed=seed, device="cpu")
    rand = evaluate(random_real_subset(train, ipc, seed), "ConvNet", test, num_eval=num_eval, epochs=epochs,
                    seed=seed, device="cpu")
    print(f"condensed {ipc} images per class in {took:.0f} s ({iterations} iterations, multi-level, "
          f"improved distance, adaptive step)")
    print(f"test accuracy, {num_eval} ConvNets each: synthetic {100 * ours.mean:.1f} +- {100 * ours.std:.1f} %"
          f"   random real subset {100 * rand.mean:.1f} +- {100 * rand.std:.1f} %")
    return {"synthetic": ours, "random": rand, "seconds": took}
