"""Who computes the per-class gradients that ``gradmatch.matching.schemes`` composes into a loss.

Each engine does one thing: given a network, the parameters the distance reads and a list of
batches, return each batch's gradient of the mean cross-entropy, stacked (one ``(K, *shape)``
tensor per parameter).  Targets (real batches) are constants computed in the run's precision;
synthetic ones keep their graph, so the loss is differentiable with respect to the images.  All
engines give the same numbers up to float rounding (tests/test_engines.py).

* ``loop``: the textbook per-class loop (one forward and backward per batch), plain PyTorch;
* ``fast``: the same passes under the CPU runtime (tuned allocator, thread policy, faster pooling
  kernel, large target batches in fixed chunks); the default on CPU;
* ``batched``: all batches in one ``torch.func.vmap`` pass; the default on GPUs, where the per-class
  passes are too small to fill the device.  (``vmap`` is an alias, its earlier name.)

``auto`` picks ``batched`` on CUDA and ``fast`` elsewhere.  An engine that cannot serve a case
returns None and the core falls back to ``fast``, saying so once (``fallback_note``).
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ...errors import unknown_name
from .batched import BatchedEngine, can_vmap
from .fast import FastEngine
from .loop import LoopEngine

Batch = Tuple[Tensor, Tensor]
ENGINES: Dict[str, object] = {"loop": LoopEngine(), "fast": FastEngine(), "batched": BatchedEngine()}
ALIASES = {"vmap": "batched"}
CHOICES = ("auto", "loop", "fast", "batched", "vmap")
_NOTED: set = set()


def resolve_engine(name: str, device=None) -> str:
    """The engine that runs for ``name`` (auto: batched on CUDA, fast elsewhere)."""
    if name not in CHOICES:
        raise unknown_name("matching engine (--matching)", name, CHOICES)
    name = ALIASES.get(name, name)
    if name == "auto":
        return "batched" if device is not None and torch.device(device).type == "cuda" else "fast"
    return name


def fallback_note(message: str) -> None:
    """Say once per process that an engine could not serve a case and another ran instead."""
    if message not in _NOTED:
        _NOTED.add(message)
        warnings.warn(message, stacklevel=3)


def needed_parameters(net: nn.Module, metric) -> List[Tuple[str, Tensor]]:
    """(name, parameter) pairs whose gradients the distance reads: all trainable ones for mse and
    cos; for the layer-wise distances those with more than one dimension (1-D tensors count nothing)."""
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    if isinstance(metric, str) and metric in ("mse", "cos"):
        return named
    return [(n, p) for n, p in named if p.dim() > 1]


def class_gradients(engine: str, net: nn.Module, params, batches: Sequence[Batch], *, target: bool,
                    precision: str = "fp32") -> List[Tensor]:
    """Each batch's gradient, K-stacked, by ``engine`` (falling back to ``fast`` where it cannot)."""
    grads: Optional[List[Tensor]] = ENGINES[engine].gradients(net, params, batches, target=target,
                                                              precision=precision)
    if grads is None:
        fallback_note(f"matching engine '{engine}' cannot serve {ENGINES[engine].why_not(net, batches)}; "
                      "the 'fast' engine ran instead (same numbers)")
        grads = ENGINES["fast"].gradients(net, params, batches, target=target, precision=precision)
    return grads


__all__ = ["CHOICES", "ENGINES", "can_vmap", "class_gradients", "fallback_note", "needed_parameters",
           "resolve_engine"]
