"""How a run's arithmetic is done, decided once, before any work: the capability record.

``make_plan`` answers every "can this be batched" question of a run in one place: which matching
engine runs (``batched`` where it can serve the network and the class sizes, else ``fast``), how many
experiments advance together, whether their training is one vmapped pass, and whether the training
epoch is captured as a CUDA graph.  None of it changes what is computed, only how; the run's log
holds the record (``Plan.record``) and its notes are said once as warnings.

``groups`` is the one grouping planner: the run layer and the Python API both take experiments in
the groups it makes.
"""
from __future__ import annotations

from dataclasses import dataclass
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
        return {"engine": self.engine, "together": self.together, "stacked_training": self.stacked_training,
                "capture": self.capture, "notes": list(self.notes)}


def make_plan(cfg: CondenseConfig, real: Dataset, device: torch.device, group: Group,
              experiments: str = "auto") -> Plan:
    """The plan of a run of ``cfg`` (resolved) on ``real``: ``experiments`` as ``--experiments``.  Until
    a GPU measurement shows experiments advanced together faster than one by one, ``auto`` runs
    them one by one (on this project's CPU they were measured slower)."""
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
    stateless = not any(True for _ in probe.buffers())
    return Plan(engine=engine, together=together,
                stacked_training=together > 1 and engine == "batched" and stateless,
                capture=torch.device(device).type == "cuda" and not cfg.dsa, notes=tuple(notes))


@dataclass(frozen=True)
class EvalPlan:
    method: str    # sequential, parallel (worker threads) or batched (stacks of networks)
    capture: bool  # each training epoch recorded once as a CUDA graph


def eval_plan(method: str, model: str, shape, device: torch.device, augmented: bool) -> EvalPlan:
    """How the evaluation networks of ``model`` train: ``auto`` is parallel on CPU and batched elsewhere;
    a network with running state (batch norm) cannot be stacked and runs in parallel instead; epochs are
    captured on a GPU unless augmentation draws on the host every batch."""
    on_cpu = torch.device(device).type == "cpu"
    if method == "auto":
        method = "parallel" if on_cpu else "batched"
    if method == "batched" and has_batchnorm(fresh_network(model, *shape, seed=0)):
        method = "parallel"
    return EvalPlan(method, capture=torch.device(device).type == "cuda" and not augmented)


def groups(experiments: Sequence[int], start_of: Callable[[int], int], together: int) -> List[List[int]]:
    """``experiments`` in the order given, cut into groups of consecutive numbers that start from the
    same iteration (``start_of``), at most ``together`` each."""
    out: List[List[int]] = []
    for e in experiments:
        last = out[-1] if out else None
        if last and len(last) < together and e == last[-1] + 1 and start_of(e) == start_of(last[0]):
            last.append(e)
        else:
            out.append([e])
    return out
