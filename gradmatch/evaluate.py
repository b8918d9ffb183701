"""Evaluation (SPEC section 7): train fresh networks on a synthetic set, test them on real data."""
from __future__ import annotations

import copy
import statistics
import zlib
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.func import stack_module_state

from . import distributed
from .augment import make_augment, strategy_for
from .seeds import derive_seed
from .synset import SyntheticSet
from .config import EVAL_METHODS, EVAL_POOLS, eval_pool  # noqa: F401  (their old home)
from .data import Dataset
from .distributed import Group
from .errors import GradmatchError, unknown_name
from .models import create_model, has_batchnorm
from .runtime import RUNNER, job_threads, resolve_device, torch_threads, tune_cpu_allocator, tune_cuda
from .train import StackedTrainer, Trainer, accuracy

DEFAULT_EPOCHS, AUGMENTED_EPOCHS = 300, 1000
BATCHED_IMAGES = 1024  # networks per stacked group: as many as keep group x batch under this


@dataclass
class EvalResult:
    model: str
    accuracies: List[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.pstdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    def line(self) -> str:
        return (f"Evaluate {len(self.accuracies)} random {self.model}, mean = {100 * self.mean:.2f} "
                f"std = {100 * self.std:.2f}")


def train_net(net, images, labels, epochs: int, lr: float, batch_size: int, augment,
              generator: torch.Generator) -> None:
    """The seed's evaluate_synset training: ``epochs`` passes of SGD (momentum 0.9, weight decay
    5e-4), the learning rate x0.1 from pass ``epochs // 2`` on (its MultiStepLR, momentum kept)."""
    trainer = Trainer(net, lr * lr_factor(0, epochs), momentum=0.9, weight_decay=5e-4)
    for ep in range(epochs):
        trainer.epoch(images, labels, batch_size, generator, augment)
        if lr_factor(ep + 1, epochs) != lr_factor(ep, epochs):
            trainer.set_lr(lr * lr_factor(ep + 1, epochs), fresh=False)


def lr_factor(passes_done: int, epochs: int) -> float:
    """The seed's MultiStepLR(milestones=[epochs // 2], gamma=0.1) after ``passes_done`` passes."""
    return 0.1 if passes_done >= epochs // 2 else 1.0


def train_and_test(net, images, labels, test: Dataset, epochs: int, lr: float, batch_size: int,
                   augment, generator: torch.Generator) -> float:
    """``train_net``, then the test accuracy."""
    train_net(net, images, labels, epochs, lr, batch_size, augment, generator)
    return accuracy(net, test.images, test.labels)


def can_batch(net: nn.Module) -> bool:
    """A stacked ensemble needs networks without batch coupling or running state (no batch norm)."""
    return not has_batchnorm(net) and not any(True for _ in net.buffers())


def train_batched(nets: Sequence[nn.Module], images: Tensor, labels: Tensor, epochs: int, lr: float,
                  batch_size: int, augments: Sequence[Optional[Callable]],
                  generators: Sequence[torch.Generator]) -> None:
    """``train_net`` for every network at once, as one stacked ensemble (``StackedTrainer``); the
    trained weights are written back into ``nets``.  Each network keeps its own initialisation,
    shuffling, augmentation and momentum, so it follows its one-by-one trajectory up to rounding."""
    params, _ = stack_module_state(list(nets))
    trainer = StackedTrainer(copy.deepcopy(nets[0]).to("meta"), {n: p.detach() for n, p in params.items()},
                             lr * lr_factor(0, epochs), momentum=0.9, weight_decay=5e-4)
    for ep in range(epochs):
        trainer.epoch(images, labels, batch_size, generators, augments)
        if lr_factor(ep + 1, epochs) != lr_factor(ep, epochs):
            trainer.set_lr(lr * lr_factor(ep + 1, epochs), fresh=False)
    with torch.no_grad():
        for k, net in enumerate(nets):
            for name, p in net.named_parameters():
                p.copy_(trainer.params[trainer.names.index(name)][k])


def check_eval_method(method: str) -> str:
    if method not in EVAL_METHODS:
        raise unknown_name("evaluation method (--eval_method)", method, EVAL_METHODS)
    return method


def _method_for(method: str, net: nn.Module, on_cpu: bool) -> str:
    check_eval_method(method)
    if method == "auto":
        method = "parallel" if on_cpu else "batched"
    if method == "batched" and not can_batch(net):
        return "parallel"
    return method


def check_models_fit(models: Sequence[str], channel: int, num_classes: int, im_size, flag: str = "--eval_mode"):
    """Build each evaluation model once for this image shape (under a forked RNG, so no run's random
    stream moves) and refuse, before any work, models whose feature maps would shrink to nothing."""
    unfit = []
    with torch.random.fork_rng(devices=[]):
        for name in models:
            try:
                create_model(name, channel, num_classes, im_size)
            except GradmatchError:
                unfit.append(name)
    if unfit:
        fits = [m for m in models if m not in unfit]
        size = "x".join(str(s) for s in im_size)
        hint = f"those that fit: {', '.join(fits)}" if fits else "choose models made for such images (e.g. ConvNetD1)"
        raise GradmatchError(f"{flag}: {', '.join(unfit)} cannot take {size} images (their feature maps shrink to "
                             f"nothing); {hint}")


def check_set(syn: SyntheticSet, test: Optional[Dataset] = None) -> None:
    """A synthetic set that evaluation can use: as many labels as images, labels within the classes,
    finite pixels, and (with ``test``) the test images' shape."""
    images, labels = syn.images, syn.labels
    if images.dim() != 4 or labels.dim() != 1 or len(labels) != len(images):
        raise GradmatchError(f"a synthetic set needs N images (N, C, H, W) and N labels; got images "
                             f"{tuple(images.shape)} and labels {tuple(labels.shape)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= max(syn.num_classes, 1)):
        raise GradmatchError(f"the synthetic set's labels run from {int(labels.min())} to {int(labels.max())}, "
                             f"beyond its {syn.num_classes} classes")
    if not bool(torch.isfinite(images).all()):
        raise GradmatchError("the synthetic set holds non-finite (nan or inf) pixels; it cannot be evaluated; "
                             "use a set saved before the values diverged")
    if test is not None and tuple(test.images.shape[1:]) != tuple(images.shape[1:]):
        raise GradmatchError(f"the synthetic images are {tuple(images.shape[1:])} but the test images are "
                             f"{tuple(test.images.shape[1:])}; evaluate on the dataset the set was made from")


def evaluate(syn: SyntheticSet, model: str, test: Dataset, *, num_eval: int = 20,
             epochs: Optional[int] = None, lr: float = 0.01, batch_size: int = 256,
             augment: Optional[str] = "auto", seed: int = 0, device=None,
             method: str = "auto", group: Optional[Group] = None) -> EvalResult:
    """Train ``num_eval`` fresh ``model`` networks on ``syn`` and test each on ``test``.

    ``augment``: "auto" (DC's rule), None/"none", "crop_scale_rotate" or "crop_noise".
    ``epochs`` defaults to 300, or 1000 with augmentation.  ``method`` (EVAL_METHODS): how the
    networks are trained; every method gives each network the same initialisation, shuffling and
    augmentation (from seeds of (seed, model, k)), so the accuracies agree up to float rounding.
    With several processes (``group``, default: torch.distributed's if initialised) network k is
    trained by process ``k % world``; every process returns all the accuracies.
    """
    check_set(syn, test)
    device = resolve_device(device)
    tune_cuda(device)
    strategy = strategy_for(syn.dataset, model) if augment == "auto" else augment
    if epochs is None:
        epochs = AUGMENTED_EPOCHS if strategy not in (None, "none") else DEFAULT_EPOCHS
    on_cpu = device.type == "cpu"
    if on_cpu:
        tune_cpu_allocator()
    images, labels = syn.images.detach().to(device), syn.labels.to(device)
    test_on_device = Dataset(images=test.images.to(device), labels=test.labels.to(device),
                             classes=test.classes, mean=test.mean, std=test.std, name=test.name)
    model_key = zlib.crc32(model.encode())
    group = group or distributed.current()
    mine = [k for k in range(num_eval) if group.owns(k)]  # with several processes, a share each
    gens, nets = [], []
    for k in mine:
        gens.append(torch.Generator().manual_seed(derive_seed(seed, model_key, k, 0)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, model_key, k, 1))
            nets.append(create_model(model, syn.channel, syn.num_classes, syn.im_size).to(device))
    accs = _train_and_test(nets, gens, images, labels, test_on_device, epochs, lr, batch_size, strategy,
                           method, on_cpu, ("eval", model, tuple(images.shape), epochs))
    return EvalResult(model, group.gather(accs, num_eval))


def _train_and_test(nets, gens, images, labels, test: Dataset, epochs, lr, batch_size, strategy, method,
                    on_cpu: bool, key) -> List[float]:
    """Train each network on (images, labels) with its own generator, then test it; ``method`` as in
    ``evaluate``."""
    if not nets:
        return []
    method = _method_for(method, nets[0], on_cpu)
    threads = torch.get_num_threads() if on_cpu else 1

    def test_job(k: int) -> float:
        with torch_threads(job_threads()) if on_cpu else nullcontext():
            return accuracy(nets[k], test.images, test.labels)

    if method == "batched":
        per_group = max(1, BATCHED_IMAGES // max(1, min(batch_size, len(images))))
        for first in range(0, len(nets), per_group):
            ks = range(first, min(len(nets), first + per_group))
            with torch_threads(job_threads()) if on_cpu else nullcontext():
                train_batched([nets[k] for k in ks], images, labels, epochs, lr, batch_size,
                              [make_augment(strategy, gens[k]) for k in ks], [gens[k] for k in ks])
        return RUNNER.map(test_job, list(range(len(nets))), key + ("test",), threads)

    def job(k: int) -> float:
        with torch_threads(job_threads()) if on_cpu else nullcontext():
            return train_and_test(nets[k], images, labels, test, epochs, lr, batch_size,
                                  make_augment(strategy, gens[k]), gens[k])

    if method == "sequential" or not on_cpu:
        return [job(k) for k in range(len(nets))]
    return RUNNER.map(job, list(range(len(nets))), key, threads)


def random_real_subset(real: Dataset, ipc: int, seed: int = 0) -> SyntheticSet:
    """ipc random real images per class: the baseline every synthetic set must beat."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(real.num_classes):
        idx = torch.nonzero(real.labels == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:ipc]])
    idx = torch.cat(picks)
    return SyntheticSet(images=real.images[idx].clone(), labels=real.labels[idx].clone(),
                        classes=list(real.classes), mean=real.mean, std=real.std, dataset=real.name,
                        config={"random_real_subset": True, "ipc": ipc, "seed": seed})
