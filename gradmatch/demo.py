"""The README's main job: condense scikit-learn's bundled digits with the paper's method on ConvNetD1 (one block
leaves 8x8 digits a 4x4 map, as three do 32x32 images) and compare with a random real subset of the same size."""
from __future__ import annotations

import time

from tqdm.auto import tqdm

from . import data
from .condense import Condensation
from .config import CondenseConfig
from .evaluate import evaluate_set, real_subset
from .protocols import Protocol
from .runtime import torch_threads

MODEL = "ConvNetD1"


def demo(ipc: int = 10, iterations: int | None = None, num_eval: int = 5, epochs: int = 300,
         quiet: bool = False, seed: int = 0) -> dict:
    iterations = 10 if iterations is None else iterations
    with torch_threads(1):  # 8x8 images: a second thread costs more in synchronisation than it gives
        cfg = CondenseConfig(ipc=ipc, model=MODEL, scheme="multi-level", dis_metric="improved", schedule="adaptive",
                             iterations=iterations, init="noise", batch_real=64, seed=seed).validate()  # before output
        train, test = data.load("digits", split="train"), data.load("digits", split="test")
        print(f"digits: {len(train)} training and {len(test)} test images of {train.channel}x"
              f"{train.im_size[0]}x{train.im_size[1]}, {train.num_classes} classes; network {MODEL}")
        start = time.perf_counter()
        condensation = Condensation(train, cfg.resolved(train), device="cpu")
        with tqdm(total=iterations, desc="condense", unit="it", disable=True if quiet else None) as bar:
            for (state,) in condensation.steps():
                if state.iteration:
                    bar.update(1)
                    bar.set_postfix(loss=f"{state.last_loss:.3f}")
        syn = condensation.synthetic_set(state)
        took = time.perf_counter() - start
        print(f"condensed {ipc} images per class from noise in {took:.0f} s ({iterations} iterations of multi-level "
              f"matching, improved distance, adaptive step)")
        protocol = Protocol(models=(MODEL,), num_eval=num_eval, epochs=epochs, seed=seed)  # the same for both sets
        ours, = evaluate_set(syn, test, protocol, "cpu")
        rand, = evaluate_set(real_subset(train, ipc, seed), test, protocol, "cpu")
        print(f"test accuracy of {num_eval} fresh {MODEL}s trained {epochs} epochs on {ipc * train.num_classes} "
              "images:")
        print(f"  synthetic set       {100 * ours.mean:5.1f} +- {100 * ours.std:.1f} %")
        print(f"  random real subset  {100 * rand.mean:5.1f} +- {100 * rand.std:.1f} %")
        return {"synthetic": ours, "random": rand, "seconds": took, "set": syn}
