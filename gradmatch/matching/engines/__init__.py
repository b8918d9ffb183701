"""Who computes the per-class gradients that ``gradmatch.matching.schemes`` composes into losses.

Each engine does one thing: given E stacked networks (``gradmatch.models.stack.Networks``), the
names of the parameters the distance reads and every member's K batches, return each batch's gradient
of the mean cross-entropy, one (E, K, *shape) tensor per parameter.  Targets (real batches) are
constants computed in the run's precision; synthetic ones keep their graph, so the losses are
differentiable with respect to the images.  All engines give the same numbers up to float rounding
(tests/test_engines.py).

* ``loop``: the textbook per-class loop (one forward and backward per batch), plain PyTorch;
* ``fast``: the same passes under the CPU runtime (tuned allocator, thread policy, faster pooling
  kernel, large target batches in fixed chunks); the default on CPU;
* ``batched``: all batches in one ``torch.func.vmap`` pass (and the members in another); the default
  on GPUs, where the per-class passes are too small to fill the device.  (``vmap``: its earlier name.)

``choose_engine`` is the one place that decides which engine runs: ``auto`` is ``batched`` on CUDA
and ``fast`` elsewhere, and where ``batched`` cannot serve a case ``fast`` runs instead, with a note.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn

from ...errors import unknown_name
from .batched import BatchedEngine, batched_obstacle
from .fast import FastEngine
from .loop import LoopEngine

ENGINES: Dict[str, object] = {"loop": LoopEngine(), "fast": FastEngine(), "batched": BatchedEngine()}
ALIASES = {"vmap": "batched"}
CHOICES = ("auto", "loop", "fast", "batched", "vmap")


def resolve_engine(name: str, device=None) -> str:
    """The engine ``name`` asks for (auto: batched on CUDA, fast elsewhere)."""
    if name not in CHOICES:
        raise unknown_name("matching engine (--matching)", str(name), CHOICES)
    name = ALIASES.get(name, name)
    if name == "auto":
        return "batched" if device is not None and torch.device(device).type == "cuda" else "fast"
    return name


def choose_engine(name: str, net: nn.Module, device=None, unequal: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """The engine that runs for ``name`` on ``net``, and why another one did not (None: it did);
    ``unequal``: why the batches differ in size, where they do."""
    engine = resolve_engine(name, device)
    why = batched_obstacle(net, unequal) if engine == "batched" else None
    if why is None:
        return engine, None
    return "fast", f"matching engine 'batched' cannot serve {why}; 'fast' runs instead (same numbers)"


__all__ = ["CHOICES", "ENGINES", "batched_obstacle", "choose_engine", "resolve_engine"]
