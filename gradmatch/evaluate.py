"""Evaluation (SPEC section 7): train fresh networks on a synthetic set, test them on real data.

Every evaluation follows one ``Protocol`` (``gradmatch.config``): the set and its random-real
baseline are given the same object, so they are trained the same way.  The networks of a model are
trained by the one trainer (``gradmatch.train``): one stack of all of them (``batched``), or one
network after another, in this thread (``sequential``) or on worker threads (``parallel``); every
method gives each network the same initialisation, shuffling and augmentation, so the accuracies
agree up to float rounding.
"""
from __future__ import annotations

import statistics
import zlib
from contextlib import nullcontext
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from . import distributed
from .augment import make_augment, strategy_for
from .config import Protocol
from .data import Dataset, check_dataset
from .distributed import Group
from .errors import GradmatchError
from .models import check_model_name, check_network, create_model, has_batchnorm
from .models.layers import ImageTooSmallError
from .models.stack import Networks, fresh_network
from .runtime import RUNNER, job_threads, resolve_device, torch_threads, tune_cpu_allocator, tune_cuda
from .seeds import derive_seed
from .synset import SyntheticSet
from .train import Trainer, accuracy, fit

BATCHED_IMAGES = 1024  # networks per stacked group: as many as keep group x batch under this
EVAL_MOMENTUM, EVAL_WEIGHT_DECAY = 0.9, 5e-4  # the seed's evaluate_synset


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


def lr_factor(passes_done: int, epochs: int) -> float:
    """The seed's MultiStepLR(milestones=[epochs // 2], gamma=0.1) after ``passes_done`` passes."""
    return 0.1 if passes_done >= epochs // 2 else 1.0


def check_models_fit(models: Sequence[str], channel: int, num_classes: int, im_size, flag: str = "--eval_mode"):
    """Build each evaluation model once for this image shape (under a forked RNG, so no run's random
    stream moves) and refuse, before any work, models whose feature maps would shrink to nothing."""
    unfit = []
    for name in models:
        try:
            with torch.random.fork_rng(devices=[]):
                create_model(name, channel, num_classes, im_size)
        except ImageTooSmallError:
            unfit.append(name)
            continue
        check_network(name, channel, num_classes, im_size)  # scores of the right shape, trainable
    if unfit:
        fits = [m for m in models if m not in unfit]
        size = "x".join(str(s) for s in im_size)
        hint = f"those that fit: {', '.join(fits)}" if fits else "choose models made for such images (e.g. ConvNetD1)"
        raise GradmatchError(f"{flag}: {', '.join(unfit)} cannot take {size} images (their feature maps shrink to "
                             f"nothing); {hint}")


def check_set(syn: SyntheticSet, test: Optional[Dataset] = None) -> None:
    """A synthetic set that evaluation can use: as many labels as images, labels within the classes,
    finite pixels, and (with ``test``) the test images' shape."""
    if not isinstance(syn, SyntheticSet):
        raise GradmatchError(f"evaluate: the set must be a gradmatch SyntheticSet (from condense or load_synthetic); "
                             f"got {type(syn).__name__}")
    syn.validate("evaluate: the set")
    images = syn.images
    if images.dtype != torch.get_default_dtype():  # what the networks are built in
        raise GradmatchError(f"evaluate: the set's images are {str(images.dtype).replace('torch.', '')}, the networks "
                             f"{str(torch.get_default_dtype()).replace('torch.', '')}; convert them first "
                             "(syn.images = syn.images.float())")
    if test is None:
        return
    check_dataset(test, "evaluate: test")
    if tuple(test.images.shape[1:]) != tuple(images.shape[1:]):
        raise GradmatchError(f"the synthetic images are {tuple(images.shape[1:])} but the test images are "
                             f"{tuple(test.images.shape[1:])}; evaluate on the dataset the set was made from")
    if syn.num_classes != test.num_classes:  # the networks' outputs are the set's classes: scores would mislead
        raise GradmatchError(f"the synthetic set has {syn.num_classes} classes but the test data {test.name} has "
                             f"{test.num_classes}; evaluate on the dataset the set was made from")
    from .export import check_normalisation

    check_normalisation(syn, test, "the synthetic set")


def evaluate(syn: SyntheticSet, model: str, test: Dataset, protocol: Optional[Protocol] = None, *, device=None,
             group: Optional[Group] = None, **settings) -> EvalResult:
    """Train ``protocol.num_eval`` fresh ``model`` networks on ``syn`` and test each on ``test``.

    ``protocol`` (default ``Protocol()``), with ``settings`` (its fields: ``num_eval``, ``epochs``,
    ``lr``, ``batch_size``, ``augment``, ``method``, ``seed``) overriding it.  With several processes
    (``group``, default: torch.distributed's if initialised) network k is trained by process
    ``k % world``; every process returns all the accuracies.
    """
    if protocol is not None and not isinstance(protocol, Protocol):
        raise GradmatchError(f"evaluate: protocol must be a gradmatch.Protocol; got {type(protocol).__name__}")
    check_model_name(model)
    protocol = (protocol or Protocol(models=(model,))).replace(**settings)
    check_set(syn, test)
    if test is None:
        check_dataset(test, "evaluate: test")
    device = resolve_device(device)
    tune_cuda(device)
    strategy = strategy_for(syn.dataset, model) if protocol.augment == "auto" else protocol.augment
    epochs = protocol.epochs_for(strategy)
    on_cpu = device.type == "cpu"
    if on_cpu:
        tune_cpu_allocator()
    images, labels = syn.images.detach().to(device), syn.labels.long().to(device)  # any integer dtype validated
    test = test.to(device)  # nothing is copied where the caller moved it once
    model_key = zlib.crc32(model.encode())
    group = group or distributed.current()
    mine = [k for k in range(protocol.num_eval) if group.owns(k)]  # with several processes, a share each
    gens = [torch.Generator().manual_seed(derive_seed(protocol.seed, model_key, k, 0)) for k in mine]
    seeds = [derive_seed(protocol.seed, model_key, k, 1) for k in mine]
    shape = (syn.channel, syn.num_classes, syn.im_size)
    method = _method_for(protocol.method, model, shape, on_cpu)
    capture = device.type == "cuda" and strategy in (None, "none")

    def train_and_test(ks: Sequence[int]) -> List[float]:
        nets = Networks.build(model, *shape, [seeds[k] for k in ks], device)
        trainer = Trainer(nets, protocol.lr * lr_factor(0, epochs), EVAL_MOMENTUM, EVAL_WEIGHT_DECAY,
                          stacked=len(ks) > 1, capture=capture)
        fit(trainer, images, labels, epochs, protocol.batch_size, [gens[k] for k in ks],
            augments=[make_augment(strategy, gens[k]) for k in ks],
            lr_at=lambda epoch: protocol.lr * lr_factor(epoch, epochs))
        return [accuracy(net, test.images, test.labels) for net in nets.members]

    indices = list(range(len(mine)))
    if method == "batched":
        per_group = max(1, BATCHED_IMAGES // max(1, min(protocol.batch_size, len(images))))
        chunks = [indices[i:i + per_group] for i in range(0, len(indices), per_group)]
    else:
        chunks = [[k] for k in indices]

    def job(ks: Sequence[int]) -> List[float]:
        with torch_threads(job_threads()) if on_cpu else nullcontext():
            return train_and_test(ks)

    if method == "parallel":
        parts = RUNNER.map(job, chunks, ("eval", model, tuple(images.shape), epochs), torch.get_num_threads())
    else:
        parts = [job(ks) for ks in chunks]
    accs = [a for part in parts for a in part]
    return EvalResult(model, group.gather(accs, protocol.num_eval))


def _method_for(method: str, model: str, shape, on_cpu: bool) -> str:
    """``auto``: parallel on CPU, batched elsewhere; a network with running state (batch norm) cannot
    be stacked and runs in parallel instead."""
    if method == "auto":
        method = "parallel" if on_cpu else "batched"
    if method == "batched" and has_batchnorm(fresh_network(model, *shape, seed=0)):
        return "parallel"
    return method


def random_real_subset(real: Dataset, ipc: int, seed: int = 0) -> SyntheticSet:
    """ipc random real images per class: the baseline every synthetic set must beat."""
    from .config import check_seed

    real = check_dataset(real, "random_real_subset: real")
    if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
        raise GradmatchError(f"random_real_subset: ipc must be a whole number of at least 1, got {ipc!r}")
    check_seed("random_real_subset: seed", seed)
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(real.num_classes):
        idx = torch.nonzero(real.labels.cpu() == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:ipc]])
    idx = torch.cat(picks).to(real.images.device)
    return SyntheticSet(images=real.images[idx].clone(), labels=real.labels[idx].clone(),
                        classes=list(real.classes), mean=real.mean, std=real.std, dataset=real.name,
                        config={"random_real_subset": True, "ipc": ipc, "seed": seed})
