"""Batched experiments: the ``num_exp`` independent condensations of a run advanced together.

Each experiment keeps everything of its own run: its images and their optimiser, its generator per
iteration (``derive_seed(seed, e, it, ...)``), its network initialisation, its real batches, DSA
draws and shuffles, drawn in the same order as alone.  Only the arithmetic is shared: the E networks
are stacked (``torch.func.stack_module_state``), every matching step computes the E x K class
gradients in one vmapped pass (``schemes.experiment_losses``), and the inner training is one stacked
SGD (``train.StackedTrainer``).  On a GPU the per-experiment passes are too small to fill it; E of
them at once are not.  Each experiment's images equal its own run's up to float rounding
(tests/test_experiments.py, float64).

It applies where the batched engine does, in one process (no torchrun), with a named distance and a
network without running state (no batch norm) or layer norm; ``why_not`` says otherwise.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Iterator, List, Optional, Sequence

import torch
from torch.func import stack_module_state

from .augment import make_augment
from .condense import Condenser, CondenseConfig, CondenseState, NonFiniteLoss
from .seeds import derive_seed
from .config import RunConfig, check_field
from .errors import GradmatchError, warn
from .matching import scheme_at
from .matching.distances import resolve_metric
from .matching.schemes import experiment_losses
from .models import create_model
from .precision import run_context
from .runtime import cpu_context
from .schedule import inner_epochs
from .train import StackedTrainer

# at most this many synthetic images advanced together: their double-backward graphs are what grows
# (CIFAR-10: 10 experiments at ipc 50; CIFAR-100: 5 at ipc 10, one at a time at ipc 50)
SYNTHETIC_IMAGES_TOGETHER = 5000


def most_together(condenser: Condenser) -> int:
    """How many experiments may advance together (memory)."""
    return max(1, SYNTHETIC_IMAGES_TOGETHER // len(condenser.syn_labels))


def why_not(condenser: Condenser) -> Optional[str]:
    """Why this run's experiments cannot be batched (None: they can): torchrun, a user's distance, or
    what keeps the batched engine (with stateless networks) from the run."""
    if condenser.group.active:
        return "runs of several processes (torchrun)"
    if not isinstance(resolve_metric(condenser.cfg.dis_metric), str):
        return "a distance of your own (--dis_metric package.module:function)"
    return condenser.batched_obstacle(stateless=True)


def use_batched(mode: str, condenser: Condenser, count: int) -> tuple[bool, Optional[str]]:
    """Whether ``count`` experiments advance together under ``mode`` (auto: where the batched engine
    runs, i.e. on a GPU), and what to say once where ``batched`` was asked for: why it cannot run,
    or that on a CPU it is slower."""
    if mode == "sequential" or count < 2 or (mode == "auto" and condenser.engine != "batched"):
        return False, None
    reason = why_not(condenser)
    if reason is None:
        slow = mode == "batched" and condenser.device.type == "cpu"
        return True, ("batched experiments run on a CPU, where they were measured slower than one by one "
                      "(vmapped convolutions); --experiments auto runs them one by one there") if slow else None
    return False, (f"batched experiments cannot serve {reason}; the experiments run one after another "
                   "(same numbers)") if mode == "batched" else None


class ExperimentBatch:
    """Experiments ``condensers[i].experiment`` advanced together; ``steps`` as ``Condenser.steps``,
    yielding the list of their states."""

    def __init__(self, condensers: Sequence[Condenser]):
        self.members = list(condensers)
        first = self.members[0]
        self.cfg, self.device, self.num_classes = first.cfg, first.device, first.num_classes
        self.syn_labels = first.syn_labels
        reason = why_not(first)
        if reason is not None:
            raise GradmatchError(f"batched experiments cannot serve {reason}; run them one by one")
        with torch.random.fork_rng(devices=[]):  # the architecture only (meta): no run's random stream moves
            self.base = create_model(self.cfg.model, first.real.channel, self.num_classes,
                                     first.real.im_size).to("meta")
        self.trainer: Optional[StackedTrainer] = None  # one per batch: its captured epoch is reused

    def networks(self, iteration: int):
        """Each experiment's fresh network of ``iteration``, stacked: {name: (E, *shape)}."""
        nets = [m.fresh_network(derive_seed(self.cfg.seed, m.experiment, iteration, 1), on_device=False)
                for m in self.members]
        params, _ = stack_module_state(nets)
        return {n: p.detach().to(self.device) for n, p in params.items()}

    def update(self, states: Sequence[CondenseState]) -> List[float]:
        """One outer iteration of every experiment (``Condenser.update`` each): their losses."""
        cfg, it = self.cfg, states[0].iteration
        gens = [torch.Generator().manual_seed(derive_seed(cfg.seed, m.experiment, it, 0)) for m in self.members]
        if self.trainer is None:
            self.trainer = StackedTrainer(self.base, self.networks(it), cfg.lr_net, momentum=0.5)
        else:  # copied into the run's stacked tensors: a captured training epoch stays valid
            self.trainer.load(self.networks(it), cfg.lr_net)
        trainer = self.trainer
        params = dict(zip(trainer.names, trainer.params))
        scheme = scheme_at(cfg.scheme, it)
        totals = torch.zeros(len(states), device=self.device)
        for outer_step in range(cfg.outer_loop):
            batches = [m.matching_batches(s.images, scheme, g) for m, s, g in zip(self.members, states, gens)]
            real = tuple(torch.stack([b[0][i] for b in batches]) for i in (0, 1))
            syn = tuple(torch.stack([b[1][i] for b in batches]) for i in (0, 1))
            losses = experiment_losses(self.base, params, real, syn, scheme, cfg.dis_metric, self.num_classes,
                                       cfg.precision)
            with cpu_context(self.device):
                grads = torch.autograd.grad(losses.sum(), [s.images for s in states])
            for state, grad in zip(states, grads):
                state.optimizer.zero_grad(set_to_none=True)
                state.images.grad = grad
                state.optimizer.step()
            totals += losses.detach()
            if outer_step == cfg.outer_loop - 1:
                break
            images = torch.stack([s.images.detach().clone() for s in states])
            self.train_networks(trainer, images, outer_step, gens)
        out = [t / (self.num_classes * cfg.outer_loop) for t in totals.tolist()]
        for member, loss in zip(self.members, out):
            if not math.isfinite(loss):
                raise NonFiniteLoss(it, member.experiment, loss)
        return out

    def train_networks(self, trainer: StackedTrainer, images, outer_step: int, gens) -> None:
        """``Condenser.train_network`` of every experiment; under the overfit schedule each stops on its
        own (the others go on, the stopped ones untouched)."""
        cfg = self.cfg
        epochs = inner_epochs(cfg.schedule, outer_step, cfg.scheme, cfg.inner_loop)
        held = None
        if cfg.schedule == "overfit":
            drawn = [m.real_mixed(cfg.batch_real, g) for m, g in zip(self.members, gens)]
            held = (torch.stack([x for x, _ in drawn]), torch.stack([y for _, y in drawn]))
        augments = [make_augment(f"dsa:{cfg.dsa_strategy}", g) for g in gens] if cfg.dsa else None
        labels = self.syn_labels.expand(len(gens), -1)
        active = [True] * len(gens)
        previous = [math.inf] * len(gens)
        for _ in range(epochs):
            trainer.epoch(images, labels, cfg.batch_train, gens, augments, active)
            if held is not None:
                current = trainer.losses(*held).tolist()
                # as alone: stop once the held loss rises (a nan does not stop it)
                active = [on and not now > before for on, now, before in zip(active, current, previous)]
                previous = [now if on else before for on, now, before in zip(active, current, previous)]
                if not any(active):
                    break

    def steps(self, states: Optional[Sequence[Optional[CondenseState]]] = None) -> Iterator[List[CondenseState]]:
        """Yield the states before every update and once more at the end (all at one iteration)."""
        states = [s or m.initial_state() for m, s in zip(self.members, states or [None] * len(self.members))]
        if len({s.iteration for s in states}) != 1:
            raise ValueError("batched experiments must start from the same iteration")
        while True:
            yield states
            if states[0].iteration >= self.cfg.iterations:
                return
            with run_context(self.cfg.precision):
                losses = self.update(states)
            for state, loss in zip(states, losses):
                state.last_loss = loss
                state.iteration += 1


def for_experiments(condenser: Condenser, experiments: Sequence[int]) -> List[Condenser]:
    """Condensers of ``experiments`` sharing ``condenser``'s data on the device (one copy, not E)."""
    out = []
    for e in experiments:
        member = copy.copy(condenser)
        member.experiment, member._net, member._trainer = e, None, None
        out.append(member)
    return out


def condense_experiments(real, experiments=5, config=None, device=None, mode: str = "batched",
                         **overrides) -> list:
    """``condense`` for several experiments (an int n: 0..n-1, or their numbers), advanced together
    where they can be (``mode`` as ``--experiments``; one by one otherwise): one SyntheticSet each,
    each equal to ``condense(real, config, experiment=e)`` up to float rounding."""
    check_field(RunConfig, "experiments", mode)
    config = dataclasses.replace(config or CondenseConfig(), **overrides)
    numbers = list(range(experiments)) if isinstance(experiments, int) else list(experiments)
    first = Condenser(real, config, numbers[0], device)
    members = for_experiments(first, numbers)
    batched, note = use_batched(mode, first, len(numbers))
    if note:
        warn(note)
    size = most_together(first) if batched else 1
    final = []
    for start in range(0, len(members), size):
        group = members[start:start + size]
        final += _last(ExperimentBatch(group).steps()) if len(group) > 1 else [_last(group[0].steps())]
    return [m.synthetic_set(s) for m, s in zip(members, final)]


def _last(steps):
    *_, last = steps
    return last
