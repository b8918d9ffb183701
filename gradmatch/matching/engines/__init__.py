"""Who computes the per-class gradients that ``gradmatch.matching.schemes`` composes into losses: every batch's
gradient of the mean cross-entropy, one (E, K, *shape) tensor per parameter, targets constant, synthetic ones
differentiable.  The engines (loop, fast, batched; ``resolve_engine`` picks) give the same numbers up to rounding."""
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
    """The engine that runs for ``name`` on ``net`` (``fast`` where ``batched`` cannot), and why."""
    engine = resolve_engine(name, device)
    why = batched_obstacle(net, unequal) if engine == "batched" else None
    if why is None:
        return engine, None
    return "fast", f"matching engine 'batched' cannot serve {why}; 'fast' runs instead (same numbers)"


__all__ = ["CHOICES", "ENGINES", "batched_obstacle", "choose_engine", "resolve_engine"]
