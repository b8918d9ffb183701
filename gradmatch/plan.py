"""How a run's arithmetic is done, decided once before any work: the matching engine, how many experiments
advance together, vmapped training, CUDA graphs.  None of it changes what is computed."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from .config import CondenseConfig
from .data import Dataset
from .distributed import Group
from .matching.engines import choose_engine
from .matching.schemes import per_class_turns
from .models import has_batchnorm
from .models.stack import fresh_network

# at most this many synthetic images advance together: their double-backward graphs are what grows
# (CIFAR-10: 10 experiments at ipc 50; CIFAR-100: 5 at ipc 10, one at a time at ipc 50)
SYNTHETIC_IMAGES_TOGETHER = 5000
BN_IMAGES_PER_CLASS = 16  # real images per class that set the frozen batch-norm statistics


@dataclass(frozen=True)
class Plan:
    engine: str             # the matching engine that runs: loop, fast or batched
    together: int           # experiments advanced together, at most (1: one after another)
    stacked_training: bool  # their inner training as one vmapped pass (else one network after another)
    capture: bool           # the training epoch recorded once as a CUDA graph and replayed
    notes: Tuple[str, ...] = ()

    def record(self) -> Dict[str, object]:
        return {**asdict(self), "notes": list(self.notes)}


def make_plan(cfg: CondenseConfig, real: Dataset, device: torch.device, group: Group,
              experiments: str = "auto") -> Plan:
    """The plan of a run of ``cfg`` (resolved) on ``real``; ``experiments`` as ``--experiments``."""
    probe = fresh_network(cfg.model, real.channel, real.num_classes, real.im_size, seed=0)
    if has_batchnorm(probe):
        probe.eval()  # matching runs with frozen batch-norm statistics
    smallest = int(torch.bincount(real.labels.cpu(), minlength=real.num_classes).min())
    unequal = None
    if per_class_turns(cfg.scheme) and smallest < cfg.batch_real:
        unequal = f"classes with fewer than --batch_real {cfg.batch_real} images (the smallest has {smallest})"
    engine, note = choose_engine(cfg.matching, probe, device, unequal)
    notes = [note] if note else []
    if has_batchnorm(probe):  # DC's rule for batch norm, which a user's own network may not expect
        notes.append(f"{cfg.model} has batch norm: every matching step sets its statistics from "
                     f"{BN_IMAGES_PER_CLASS} real images per class and freezes them (as DC); its networks train one "
                     "after another")
    together = 1
    if experiments == "batched" and group.active:
        notes.append("batched experiments cannot serve runs of several processes (torchrun); the experiments "
                     "run one after another (same numbers)")
    elif experiments == "batched":
        together = max(1, SYNTHETIC_IMAGES_TOGETHER // (real.num_classes * cfg.ipc))
    return Plan(engine=engine, together=together,
                stacked_training=together > 1 and engine == "batched" and not any(True for _ in probe.buffers()),
                capture=torch.device(device).type == "cuda" and not cfg.dsa, notes=tuple(notes))


@dataclass(frozen=True)
class EvalPlan:
    method: str    # sequential, parallel (worker threads) or batched (stacks of networks)
    capture: bool  # each training epoch recorded once as a CUDA graph


def eval_plan(method: str, model: str, shape, device: torch.device, augmented: bool) -> EvalPlan:
    """How the evaluation networks of ``model`` train: batch norm cannot be stacked."""
    if method == "auto":
        method = "parallel" if torch.device(device).type == "cpu" else "batched"
    if method == "batched" and has_batchnorm(fresh_network(model, *shape, seed=0)):
        method = "parallel"
    return EvalPlan(method, capture=torch.device(device).type == "cuda" and not augmented)


def groups(experiments: Sequence[int], start_of: Callable[[int], int], together: int) -> List[List[int]]:
    """``experiments`` cut into groups of at most ``together`` consecutive ones from one start."""
    out: List[List[int]] = []
    for e in experiments:
        last = out[-1] if out else None
        if last and len(last) < together and e == last[-1] + 1 and start_of(e) == start_of(last[0]):
            last.append(e)
        else:
            out.append([e])
    return out
