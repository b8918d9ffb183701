"""The condensation loop (SPEC section 4), readable top to bottom.

``condense`` learns ``ipc`` synthetic images per class.  Every outer iteration draws a fresh
network and alternates matching steps on the images with training the network on them.  All
randomness of iteration ``it`` of experiment ``e`` comes from a seed derived from (seed, e, it),
so a run stopped after any iteration and resumed from its images and optimiser state continues
exactly as if it had never stopped.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import Tensor

from . import distributed
from .data import Dataset
from .distributed import Group
from .augment import dsa, make_augment
from .config import CondenseConfig
from .errors import GradmatchError
from .matching import matching_loss, resolve_scheme, scheme_at
from .matching.engines import can_vmap, fallback_note, resolve_engine
from .models import create_model, has_batchnorm
from .precision import run_context
from .runtime import cpu_context, resolve_device, to_device, tune_cuda
from .schedule import inner_epochs
from .seeds import derive_seed
from .synset import SyntheticSet
from .train import Trainer, mean_loss, reset_network

BN_IMAGES_PER_CLASS = 16  # real images per class that set the frozen batch-norm statistics


@dataclass
class CondenseState:
    """Everything a resumed run needs: the images, their optimiser and the next iteration."""
    images: Tensor
    optimizer: torch.optim.Optimizer
    iteration: int = 0
    last_loss: float = float("nan")


class Condenser:
    """Holds the real data (resident on the device, indexed by class) and runs matching iterations."""

    def __init__(self, real: Dataset, config: CondenseConfig, experiment: int = 0,
                 device: Optional[torch.device] = None, group: Optional[Group] = None):
        self.cfg = config.resolved(real)
        self.group = group or distributed.current()  # several processes (torchrun) share the classes
        self.real = real
        self.experiment = experiment
        self.device = resolve_device(device)
        tune_cuda(self.device)
        self.images = real.images.to(self.device)
        self.labels = real.labels.to(self.device)
        self.by_class = [torch.nonzero(real.labels == c).flatten() for c in range(real.num_classes)]
        self.num_classes = real.num_classes
        self.syn_labels = torch.arange(self.num_classes, device=self.device).repeat_interleave(self.cfg.ipc)
        self.engine, self.engine_note = self._choose_engine()
        self._net: Optional[torch.nn.Module] = None  # on CUDA: one network (and training graph) per run
        self._trainer: Optional[Trainer] = None

    def _choose_engine(self):
        """The matching engine that will run, and why another one did not (or None)."""
        engine = resolve_engine(self.cfg.matching, self.device)
        if engine != "batched":
            return engine, None
        why = self.batched_obstacle()
        if why is None:
            return engine, None
        note = f"matching engine 'batched' cannot serve {why}; 'fast' runs instead (same numbers)"
        fallback_note(note)
        return "fast", note

    def batched_obstacle(self, stateless: bool = False) -> Optional[str]:
        """What keeps the batched engine from this run (None: nothing): a layer norm, or a class smaller
        than --batch_real (its per-class batches would differ); with ``stateless`` (stacked networks,
        which train vmapped too) also running state (batch norm)."""
        with torch.random.fork_rng(devices=[]):  # no run's random stream moves
            probe = create_model(self.cfg.model, self.real.channel, self.num_classes, self.real.im_size)
        if stateless and any(True for _ in probe.buffers()):
            return f"{self.cfg.model} (batch norm)"
        if has_batchnorm(probe):  # matching runs with frozen (eval-mode) batch norm
            probe.eval()
        smallest = min(len(idx) for idx in self.by_class)
        if not can_vmap(probe):
            return f"{self.cfg.model} (layer norm)"
        if smallest < self.cfg.batch_real and resolve_scheme(self.cfg.scheme) != "inter-class":
            return f"classes with fewer than --batch_real {self.cfg.batch_real} images (the smallest has {smallest})"
        return None

    # ---- sampling: every draw takes the iteration's generator -------------------------------
    def real_per_class(self, n: int, gen: torch.Generator):
        """n random real images of every class (all of a class if it has fewer), grouped by class;
        with their labels on the device and on the CPU."""
        picks = [idx[torch.randperm(len(idx), generator=gen)[:n]] for idx in self.by_class]
        labels = torch.cat([torch.full((len(p),), c, dtype=torch.long) for c, p in enumerate(picks)])
        return self.images[to_device(torch.cat(picks), self.device)], to_device(labels, self.device), labels

    def real_mixed(self, n: int, gen: torch.Generator):
        idx = to_device(torch.randperm(len(self.labels), generator=gen)[:n], self.device)
        return self.images[idx], self.labels[idx]

    # ---- state ---------------------------------------------------------------------------
    def initial_state(self) -> CondenseState:
        gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, self.experiment, -1))
        if self.cfg.init == "real":
            images = self.real_per_class(self.cfg.ipc, gen)[0]
        else:
            shape = (self.num_classes * self.cfg.ipc, *self.images.shape[1:])
            images = torch.randn(shape, generator=gen).to(self.device)
        images = images.detach().clone().requires_grad_(True)
        optimizer = torch.optim.SGD([images], lr=self.cfg.lr_img, momentum=0.5)
        return CondenseState(images=images, optimizer=optimizer)

    def fresh_network(self, seed: int, on_device: bool = True) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = create_model(self.cfg.model, self.real.channel, self.num_classes, self.real.im_size)
        return net.to(self.device) if on_device else net

    # ---- one outer iteration -------------------------------------------------------------
    def update(self, state: CondenseState) -> float:
        """One outer iteration (SPEC section 4, steps 1-2): returns the mean matching loss per class
        and outer step, as DC reports it."""
        cfg, it = self.cfg, state.iteration
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, self.experiment, it, 0))
        net, trainer = self.network_and_trainer(derive_seed(cfg.seed, self.experiment, it, 1))
        scheme = scheme_at(cfg.scheme, it)
        freeze_bn = has_batchnorm(net)
        total = torch.zeros((), device=self.device)
        for outer_step in range(cfg.outer_loop):
            if freeze_bn:
                freeze_batchnorm(net, self.real_per_class(BN_IMAGES_PER_CLASS, gen)[0])
            real, syn = self.matching_batches(state.images, scheme, gen)
            loss = matching_loss(net, real, syn, scheme, cfg.dis_metric, num_classes=self.num_classes,
                                 engine=self.engine, precision=cfg.precision, group=self.group)
            state.optimizer.zero_grad(set_to_none=True)
            state.images.grad = self.image_gradient(loss, state.images)
            state.optimizer.step()
            total += loss.detach()
            if outer_step == cfg.outer_loop - 1:
                break
            self.train_network(net, trainer, state.images.detach().clone(), outer_step, gen)
            # every process trains the same network; process 0's copy is made everyone's, in case
            # nondeterministic kernels (GPU atomics) let the copies drift apart
            self.group.broadcast_([*net.parameters(), *net.buffers()])
        self.group.sum_([total])
        loss = total.item() / (self.num_classes * cfg.outer_loop)
        if not math.isfinite(loss):
            raise NonFiniteLoss(it, self.experiment, loss)
        return loss

    def matching_batches(self, images: Tensor, scheme: str, gen: torch.Generator):
        """The real and synthetic batches of one matching step, DSA-augmented if asked."""
        cfg = self.cfg
        if scheme == "inter-class":
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

    def network_and_trainer(self, seed: int):
        """A freshly initialised network and its inner-loop trainer (SGD, momentum 0.5).  On CUDA the
        same network object is re-initialised in place every iteration, so that its training step,
        captured once as a CUDA graph, stays valid for the whole run."""
        if self.device.type != "cuda":
            net = self.fresh_network(seed)
            return net, Trainer(net, self.cfg.lr_net, momentum=0.5)
        if self._net is None:
            self._net = self.fresh_network(seed)
            self._trainer = Trainer(self._net, self.cfg.lr_net, momentum=0.5)
        else:  # initialised on the CPU, copied straight into the run's network
            reset_network(self._net, self.fresh_network(seed, on_device=False))
            self._trainer.set_lr(self.cfg.lr_net)
        return self._net, self._trainer

    def image_gradient(self, loss: Tensor, images: Tensor) -> Tensor:
        """d loss / d images only (not the network's parameters), summed over processes."""
        if loss.requires_grad:  # False for a process that has no classes of its own
            with cpu_context(self.device):
                (grad,) = torch.autograd.grad(loss, [images])
        else:
            grad = torch.zeros_like(images)
        self.group.sum_([grad])  # each process's share -> the whole gradient, on every process
        return grad

    def train_network(self, net, trainer: Trainer, images: Tensor, outer_step: int, gen: torch.Generator):
        cfg = self.cfg
        epochs = inner_epochs(cfg.schedule, outer_step, cfg.scheme, cfg.inner_loop)
        held = self.real_mixed(cfg.batch_real, gen) if cfg.schedule == "overfit" else None
        previous = math.inf
        augment = make_augment(f"dsa:{cfg.dsa_strategy}", gen) if cfg.dsa else None  # DSA trains on DSA'd batches
        for _ in range(epochs):
            trainer.epoch(images, self.syn_labels, cfg.batch_train, gen, augment)
            if held is not None:  # overfitting-aware: stop once the held real loss rises
                current = mean_loss(net, *held)
                if current > previous:
                    break
                previous = current

    def synthetic_set(self, state: CondenseState) -> SyntheticSet:
        return SyntheticSet(images=state.images.detach().cpu().clone(), labels=self.syn_labels.cpu(),
                            classes=list(self.real.classes), mean=tuple(self.real.mean),
                            std=tuple(self.real.std), dataset=self.real.name, config=self.cfg.to_dict())

    def steps(self, state: Optional[CondenseState] = None) -> Iterator[CondenseState]:
        """Yield the state before every update and once more at the end; the caller may evaluate or
        checkpoint at each yield (``state.iteration`` is the number of updates done so far)."""
        state = state or self.initial_state()
        while True:
            yield state
            if state.iteration >= self.cfg.iterations:
                return
            with run_context(self.cfg.precision):
                state.last_loss = self.update(state)
            state.iteration += 1


class NonFiniteLoss(GradmatchError):
    """The matching loss of update ``iteration`` (0-based; the log calls it iteration + 1) is nan/inf."""

    def __init__(self, iteration: int, experiment: int, value: float):
        super().__init__(f"the matching loss became {value} in iteration {iteration + 1} (experiment "
                         f"{experiment}); lower --lr_img or check the distance (--dis_metric)")
        self.iteration, self.experiment, self.value = iteration, experiment, value


def freeze_batchnorm(net: torch.nn.Module, real_images: Tensor) -> None:
    """Set batch-norm running statistics from a real batch, then fix them (eval mode) for matching."""
    net.train()
    with torch.no_grad():
        net(real_images)
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def condense(real: Dataset, config: Optional[CondenseConfig] = None, experiment: int = 0,
             device: Optional[str] = None, **overrides) -> SyntheticSet:
    """Learn a synthetic set from ``real`` (a ``gradmatch.data.Dataset``).

    ``condense(real, ipc=10, scheme="multi-level", dis_metric="improved", schedule="adaptive")``.
    """
    config = dataclasses.replace(config or CondenseConfig(), **overrides)
    condenser = Condenser(real, config, experiment, device)
    *_, final = condenser.steps()  # run to the end; the last state holds the finished images
    return condenser.synthetic_set(final)
