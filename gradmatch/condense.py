"""The condensation loop (SPEC section 4) for E >= 1 experiments at once (one run is E = 1).

Every draw of iteration ``it`` comes from a generator seeded from (seed, experiment, it), whatever runs beside
it: a resumed run continues exactly, and an experiment advanced with others equals its own run up to rounding."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

import torch
from torch import Tensor

from . import checks, distributed
from .augment import dsa, make_augment
from .config import EXPERIMENT_MODES, CondenseConfig
from .data import Dataset, check_dataset
from .distributed import Group
from .errors import GradmatchError, warn
from .matching import SCHEMES, matching_losses, scheme_at
from .models.stack import Networks
from .plan import BN_IMAGES_PER_CLASS, Plan, groups, make_plan
from .precision import run_context
from .runtime import cpu_context, resolve_device, to_device, tune_cuda
from .schedule import SCHEDULES
from .seeds import derive_seed
from .synset import SyntheticSet
from .train import Trainer, fit, sgd_update

IMAGE_MOMENTUM, NETWORK_MOMENTUM = 0.5, 0.5  # the seed's SGD on the images and on the inner network


@dataclass
class ExperimentState:
    """An unfinished experiment: its images (a leaf on the device), their SGD momentum, updates done, last loss."""
    images: Tensor
    momentum: Tensor
    iteration: int = 0
    last_loss: float = float("nan")


class NonFinite(GradmatchError):
    """The loss or the images of update ``iteration`` (0-based) of ``experiment`` became nan or inf."""

    def __init__(self, what: str, iteration: int, experiment: int):
        super().__init__(f"{what} in iteration {iteration + 1} (experiment {experiment}); lower --lr_img or check "
                         "the distance (--dis_metric)")
        self.what, self.iteration, self.experiment = what, iteration, experiment


class Condensation:
    """Experiments ``experiments`` of one run on ``real``, advanced together; ``steps`` runs them."""

    def __init__(self, real: Dataset, config: CondenseConfig, experiments: Sequence[int] = (0,), device=None,
                 group: Optional[Group] = None, plan: Optional[Plan] = None):
        self.cfg = config.resolved(real)
        self.group = group or distributed.current()  # several processes (torchrun) share the classes
        self.device = resolve_device(device)
        tune_cuda(self.device)
        self.real = real.to(self.device)  # where the caller moved it once, nothing is copied
        self.by_class = [torch.nonzero(real.labels.cpu() == c).flatten() for c in range(real.num_classes)]
        self.num_classes = real.num_classes
        self.experiments = list(experiments)
        # several experiments given without a plan: advanced together, as --experiments batched does
        self.plan = plan or make_plan(self.cfg, real, self.device, self.group,
                                      "batched" if len(self.experiments) > 1 else "auto")
        self.schedule = SCHEDULES[self.cfg.schedule]
        self.syn_labels = torch.arange(self.num_classes, device=self.device).repeat_interleave(self.cfg.ipc)
        self.nets: Optional[Networks] = None  # one stack for the whole run: a captured epoch stays valid
        self.trainer: Optional[Trainer] = None

    # ---- sampling: every draw takes its experiment's generator of the iteration ------------
    def real_per_class(self, n: int, gen: torch.Generator):
        """n random real images of every class (all of a class if it has fewer), grouped by class."""
        picks = [idx[torch.randperm(len(idx), generator=gen)[:n]] for idx in self.by_class]
        labels = torch.cat([torch.full((len(p),), c, dtype=torch.long) for c, p in enumerate(picks)])
        return self.real.images[to_device(torch.cat(picks), self.device)], to_device(labels, self.device), labels

    def real_mixed(self, n: int, gen: torch.Generator):
        idx = to_device(torch.randperm(len(self.real.labels), generator=gen)[:n], self.device)
        return self.real.images[idx], self.real.labels[idx]

    def matching_batches(self, images: Tensor, scheme, gen: torch.Generator):
        """The real and synthetic batches of one matching step, DSA-augmented if asked."""
        cfg = self.cfg
        if scheme.mixed:
            real = self.real_mixed(4 * cfg.batch_real, gen)
            pick = to_device(torch.randperm(len(self.syn_labels), generator=gen)[:cfg.batch_train], self.device)
            syn = (images[pick], self.syn_labels[pick])
            real_groups = syn_groups = None  # one mixed batch: one draw for both
        else:
            real_x, real_y, real_groups = self.real_per_class(cfg.batch_real, gen)
            real, syn, syn_groups = (real_x, real_y), (images, self.syn_labels), self.syn_labels.cpu()
        if not cfg.dsa:
            return real, syn
        # siamese: a class's real and synthetic images get the same augmentation
        real_x, syn_x = dsa.siamese(real[0], syn[0], cfg.dsa_strategy, gen, real_groups, syn_groups,
                                    groups=self.num_classes)
        return (real_x, real[1]), (syn_x, syn[1])

    # ---- state -------------------------------------------------------------------------------
    def initial_state(self, experiment: int) -> ExperimentState:
        gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, experiment, -1))
        if self.cfg.init == "real":
            images = self.real_per_class(self.cfg.ipc, gen)[0]
        else:
            shape = (self.num_classes * self.cfg.ipc, *self.real.images.shape[1:])
            images = torch.randn(shape, generator=gen).to(self.device)
        images = images.detach().clone().requires_grad_(True)
        return ExperimentState(images=images, momentum=torch.zeros_like(images.detach()))

    def networks(self, iteration: int):
        """Each experiment's fresh network of ``iteration`` (in the run's one stack), and the trainer."""
        seeds = [derive_seed(self.cfg.seed, e, iteration, 1) for e in self.experiments]
        if self.nets is None:
            self.nets = Networks.build(self.cfg.model, self.real.channel, self.num_classes, self.real.im_size,
                                       seeds, self.device)
            self.trainer = Trainer(self.nets, self.cfg.lr_net, NETWORK_MOMENTUM,
                                   stacked=self.plan.stacked_training, capture=self.plan.capture)
        else:  # initialised on the CPU, copied into the stack in place
            self.nets.reset(seeds)
        self.trainer.restart(self.cfg.lr_net)  # SGD(lr_net, momentum 0.5): one optimiser per iteration
        return self.nets, self.trainer

    # ---- one outer iteration of every experiment (SPEC section 4, steps 1-2) -------------------
    def update(self, states: Sequence[ExperimentState]) -> List[float]:
        """Returns each experiment's mean matching loss per class and outer step, as DC reports it."""
        cfg, it = self.cfg, states[0].iteration
        gens = [torch.Generator().manual_seed(derive_seed(cfg.seed, e, it, 0)) for e in self.experiments]
        nets, trainer = self.networks(it)
        scheme = scheme_at(cfg.scheme, it)
        totals = torch.zeros(len(states), device=self.device)
        for outer_step in range(cfg.outer_loop):
            if nets.has_batchnorm:
                for net, gen in zip(nets.members, gens):
                    freeze_batchnorm(net, self.real_per_class(BN_IMAGES_PER_CLASS, gen)[0])
            reals, syns = zip(*[self.matching_batches(s.images, scheme, g) for s, g in zip(states, gens)])
            losses = matching_losses(nets, reals, syns, scheme, cfg.dis_metric, self.num_classes,
                                     engine=self.plan.engine, precision=cfg.precision, group=self.group)
            for state, grad in zip(states, self.image_gradients(losses, states)):
                sgd_update([state.images], [grad], [state.momentum], cfg.lr_img, IMAGE_MOMENTUM)
            totals += losses.detach()
            if outer_step == cfg.outer_loop - 1:
                break
            self.train_networks(trainer, states, outer_step, gens)
            # every process trains the same networks; process 0's copies are made everyone's, in case
            # nondeterministic kernels (GPU atomics) let them drift apart
            self.group.broadcast_([*nets.params.values(), *nets.buffers.values()])
        self.group.sum_([totals])
        out = [t / (self.num_classes * cfg.outer_loop) for t in totals.tolist()]
        for e, state, loss in zip(self.experiments, states, out):
            if not math.isfinite(loss):
                raise NonFinite(f"the matching loss became {loss}", it, e)
            if not bool(torch.isfinite(state.images).all()):
                raise NonFinite("the synthetic images became non-finite (nan or inf)", it, e)
        return out

    def image_gradients(self, losses: Tensor, states: Sequence[ExperimentState]) -> List[Tensor]:
        """d loss_e / d images_e only (not the networks' parameters), summed over processes."""
        if losses.requires_grad:  # False for a process that has no classes of its own
            with cpu_context(self.device):
                grads = list(torch.autograd.grad(losses.sum(), [s.images for s in states]))
        else:
            grads = [torch.zeros_like(s.images) for s in states]
        self.group.sum_(grads)  # each process's share -> the whole gradient, on every process
        return grads

    def train_networks(self, trainer: Trainer, states, outer_step: int, gens) -> None:
        cfg = self.cfg
        epochs = self.schedule.epochs(outer_step, SCHEMES[cfg.scheme].adaptive, cfg.inner_loop)
        stop = self.schedule.stopper(lambda: self.held_batches(gens), trainer.held_losses)
        # with DSA the networks train on DSA-augmented batches
        augments = [make_augment(f"dsa:{cfg.dsa_strategy}", g) for g in gens] if cfg.dsa else None
        images = torch.stack([s.images.detach() for s in states])
        fit(trainer, images, self.syn_labels, epochs, cfg.batch_train, gens, augments=augments, stop=stop)

    def held_batches(self, gens):
        drawn = [self.real_mixed(self.cfg.batch_real, g) for g in gens]
        return torch.stack([x for x, _ in drawn]), torch.stack([y for _, y in drawn])

    def synthetic_set(self, state: ExperimentState) -> SyntheticSet:
        return SyntheticSet(images=state.images.detach().cpu().clone(), labels=self.syn_labels.cpu(),
                            classes=list(self.real.classes), mean=tuple(self.real.mean),
                            std=tuple(self.real.std), dataset=self.real.name, config=self.cfg.to_dict())

    def steps(self, states: Optional[Sequence[Optional[ExperimentState]]] = None) -> Iterator[List[ExperimentState]]:
        """Yield the states before every update and at the end, for the caller to evaluate or checkpoint."""
        states = states or [None] * len(self.experiments)
        states = [s or self.initial_state(e) for e, s in zip(self.experiments, states)]
        if len({s.iteration for s in states}) != 1:
            raise ValueError("experiments advanced together must start from the same iteration")
        while True:
            yield states
            if states[0].iteration >= self.cfg.iterations:
                return
            with run_context(self.cfg.precision):
                losses = self.update(states)
            for state, loss in zip(states, losses):
                state.last_loss = loss
                state.iteration += 1


def freeze_batchnorm(net: torch.nn.Module, real_images: Tensor) -> None:
    """Set batch-norm running statistics from a real batch, then fix them (eval mode) for matching."""
    net.train()
    with torch.no_grad():
        net(real_images)
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def condense_experiments(real: Dataset, experiments=5, config: Optional[CondenseConfig] = None, device=None,
                         mode: str = "auto", **overrides) -> List[SyntheticSet]:
    """``condense`` of several experiments (n: 0..n-1, or their numbers); ``mode`` as ``--experiments``."""
    real = check_dataset(real, "condense: real")
    mode = checks.choice(mode, "--experiments", EXPERIMENT_MODES, kind="condense_experiments: mode")
    if config is not None and not isinstance(config, CondenseConfig):
        raise GradmatchError(f"condense: config must be a gradmatch.CondenseConfig (or left out, with the settings "
                             f"as keywords); got {type(config).__name__}")
    config = (config or CondenseConfig()).replace(**overrides).validate()
    numbers = experiment_numbers(experiments)
    resolved = config.resolved(real)
    where = resolve_device(device)
    plan = make_plan(resolved, real, where, distributed.current(), mode)
    for note in plan.notes:
        warn(note)
    real = real.to(where)  # once for every group
    final = []
    for group in groups(numbers, lambda e: 0, plan.together):
        condensation = Condensation(real, resolved, group, where, plan=plan)
        *_, last = condensation.steps()
        final += [condensation.synthetic_set(s) for s in last]
    return final


def experiment_numbers(experiments) -> List[int]:
    """An int n (experiments 0..n-1, n >= 1) or distinct numbers >= 0; one line naming the argument otherwise."""
    what = "condense_experiments: experiments"
    if checks.is_whole(experiments):
        return list(range(checks.whole(experiments, what, minimum=1, maximum=checks.SEED_LIMIT)))
    numbers = None
    if hasattr(experiments, "__iter__") and not isinstance(experiments, (str, bytes, dict)):
        numbers = [checks.whole(e, what, minimum=0, maximum=checks.SEED_LIMIT - 1) for e in experiments]
    if not numbers or len(set(numbers)) != len(numbers):
        raise GradmatchError(f"{what} takes a whole number of at least 1 or distinct experiment numbers, got "
                             f"{checks.show(experiments)}")
    return numbers


def condense(real: Dataset, config: Optional[CondenseConfig] = None, experiment: int = 0, device=None,
             **overrides) -> SyntheticSet:
    """Learn a synthetic set from ``real``: ``condense(real, ipc=10, scheme="multi-level", dis_metric="improved")``."""
    experiment = checks.whole(experiment, "condense: experiment", minimum=0, maximum=checks.SEED_LIMIT - 1)
    return condense_experiments(real, [experiment], config, device, **overrides)[0]
