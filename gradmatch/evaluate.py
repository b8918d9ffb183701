"""Evaluation: train fresh networks on a synthetic set under a ``Protocol``, test them on real data.
``evaluate`` is the public edge; ``evaluate_set`` runs a protocol's models for a set (and its random-real baseline)."""
from __future__ import annotations

import dataclasses
import statistics
import zlib
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import List, Optional, Sequence

import torch

from . import checks, distributed
from .augment import BY_METHOD, make_augment, strategy_for
from .augment.bench import cutmix
from .data import Dataset, check_dataset
from .distributed import Group
from .errors import GradmatchError
from .models import check_model_name, check_network, create_model
from .models.layers import ImageTooSmallError
from .models.stack import Networks
from .plan import eval_plan
from .protocols import Protocol
from .runtime import RUNNER, job_threads, resolve_device, torch_threads, tune_cpu_allocator, tune_cuda
from .seeds import derive_seed
from .synset import SyntheticSet
from .train import Trainer, accuracies, fit

BATCHED_IMAGES = 1024  # networks per stacked group: as many as keep group x batch under this


@dataclass
class EvalResult:
    """One model's networks: ``accuracies`` as the protocol reports them, ``last`` the final epoch's."""
    model: str
    accuracies: List[float]
    protocol: Optional[Protocol] = None
    epochs: Optional[int] = None
    last: Optional[List[float]] = None
    lrs: Optional[List[float]] = None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.pstdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    def what(self) -> str:
        p = self.protocol
        if p is None:
            return ""
        last = f", last {100 * statistics.fmean(self.last):.2f}" if p.report == "best_and_last" else ""
        rates = "/".join(f"{r:g}" for r in sorted(set(self.lrs)))
        said = f"; {', '.join(p.overrides)}" if p.overrides else ""
        return f" (protocol {p.name}: {p.which()}{last}, {self.epochs} epochs, lr {rates}{said})"

    def line(self) -> str:
        return (f"Evaluate {len(self.accuracies)} random {self.model}, mean = {100 * self.mean:.2f} "
                f"std = {100 * self.std:.2f}{self.what()}")

    def record(self) -> dict:
        """What a log or --json keeps: mean and std in percent as printed, the networks' accuracies as fractions."""
        p = self.protocol
        return {"model": self.model, "mean": 100 * self.mean, "std": 100 * self.std, "accuracies": self.accuracies,
                "last": self.last, "lr": self.lrs, "epochs": self.epochs, "networks": len(self.accuracies),
                "protocol": p.name if p else None, "which": p.which() if p else None}


def lr_factor(passes_done: int, epochs: int, milestones=(0.5,), gamma: float = 0.1) -> float:
    """MultiStepLR(milestones=[int(epochs * m)], gamma) after ``passes_done`` passes (the seed's: [epochs // 2])."""
    return gamma ** sum(passes_done >= int(epochs * m) for m in milestones)


def check_models_fit(models: Sequence[str], channel: int, num_classes: int, im_size, flag: str = "--eval_mode"):
    """Refuse, before any work, models whose feature maps would shrink to nothing on these images."""
    unfit = []
    for name in models:
        try:
            with torch.random.fork_rng(devices=[]):  # no run's random stream moves
                create_model(name, channel, num_classes, im_size)
        except ImageTooSmallError:
            unfit.append(name)
            continue
        check_network(name, channel, num_classes, im_size)  # scores of the right shape, trainable
    if unfit:
        fits = [m for m in models if m not in unfit]
        hint = f"those that fit: {', '.join(fits)}" if fits else "choose models made for such images (e.g. ConvNetD1)"
        raise GradmatchError(f"{flag}: {', '.join(unfit)} cannot take {'x'.join(map(str, im_size))} images (their "
                             f"feature maps shrink to nothing); {hint}")


def check_compatible(syn: SyntheticSet, test: Dataset, what: str = "the synthetic set") -> None:
    """A set can be scored on ``test``: the same image shape, classes and normalisation."""
    if tuple(test.images.shape[1:]) != tuple(syn.images.shape[1:]):
        raise GradmatchError(f"the images of {what} are {tuple(syn.images.shape[1:])} but the test images are "
                             f"{tuple(test.images.shape[1:])}; evaluate on the dataset the set was made from")
    if syn.num_classes != test.num_classes:
        raise GradmatchError(f"{what} has {syn.num_classes} classes but the test data {test.name} has "
                             f"{test.num_classes}; evaluate on the dataset the set was made from")
    if not (checks.same_statistics(syn.mean, test.mean) and checks.same_statistics(syn.std, test.std)):
        raise GradmatchError(f"{what} was normalised with mean {_fmt(syn.mean)} std {_fmt(syn.std)} "
                             f"({syn.dataset or 'dataset unknown'}), the test set {test.name} with mean "
                             f"{_fmt(test.mean)} std {_fmt(test.std)}; "
                             "networks trained on one and tested on the other would see shifted pixels; evaluate on "
                             f"the set's own dataset{f' (--dataset {syn.dataset})' if syn.dataset else ''}")


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4f}" for v in values) + ")"


def evaluate(syn: SyntheticSet, model: str, test: Dataset, protocol: Optional[Protocol] = None, *, device=None,
             group: Optional[Group] = None, **settings) -> EvalResult:
    """Train ``protocol.num_eval`` fresh ``model`` networks on ``syn`` and test each on ``test``; ``settings``
    (``Protocol`` fields) override ``protocol``.  With several processes each trains a share, all get every result."""
    if not isinstance(syn, SyntheticSet):
        raise GradmatchError(f"evaluate: the set must be a gradmatch SyntheticSet (from condense or load_synthetic); "
                             f"got {type(syn).__name__}")
    if protocol is not None and not isinstance(protocol, Protocol):
        raise GradmatchError(f"evaluate: protocol must be a gradmatch.Protocol; got {type(protocol).__name__}")
    check_model_name(model)
    syn = syn.checked("evaluate: the set")
    test = check_dataset(test, "evaluate: test")
    check_compatible(syn, test)
    protocol = (protocol or Protocol()).replace(models=(model,), **settings).validate()
    return evaluate_set(syn, test, protocol, device, group)[0]


def evaluate_set(syn: SyntheticSet, test: Dataset, protocol: Protocol, device=None,
                 group: Optional[Group] = None) -> List[EvalResult]:
    """Every model of ``protocol`` trained on ``syn`` and tested on ``test`` (all three checked already)."""
    if not (protocol.lr or syn.lr or protocol.lr_grid):
        raise GradmatchError(f"protocol {protocol.name} trains at the set's own learning rate, which this set does not "
                             "carry; pass --lr_net (lr= from Python)")
    device = resolve_device(device)
    tune_cuda(device)
    if device.type == "cpu":
        tune_cpu_allocator()
    test = test.to(device)  # nothing is copied where the caller moved it once
    return [_evaluate_model(syn, model, test, protocol, device, group or distributed.current())
            for model in protocol.models]


def _evaluate_model(syn: SyntheticSet, model: str, test: Dataset, protocol: Protocol, device: torch.device,
                    group: Group) -> EvalResult:
    strategy = {"auto": strategy_for(syn.dataset, model),
                BY_METHOD: "dsa" if syn.config.get("dsa") else "none"}.get(protocol.augment, protocol.augment)
    epochs = protocol.epochs_for(strategy)
    rates = [protocol.lr or syn.lr] if protocol.lr or syn.lr else list(protocol.lr_grid)
    images, labels = syn.images.detach().to(device), syn.labels.long().to(device)
    model_key = zlib.crc32(model.encode())
    mine = [k for k in range(protocol.num_eval) if group.owns(k)]  # with several processes, a share each
    shape = (syn.channel, syn.num_classes, syn.im_size)
    plan = eval_plan(protocol.method, model, shape, device, augmented=strategy not in (None, "none"))
    checks_at = protocol.checks_at(epochs)

    def train_and_test(ks: Sequence[int], lr: float) -> List[tuple]:
        """(best of the checks, last, lr) of networks ``ks`` trained at ``lr``, each drawing as it always does."""
        gens = [torch.Generator().manual_seed(derive_seed(protocol.seed, model_key, k, 0)) for k in ks]
        nets = Networks.build(model, *shape, [derive_seed(protocol.seed, model_key, k, 1) for k in ks], device)
        lr_at = lambda epoch: lr * lr_factor(epoch, epochs, protocol.milestones, protocol.gamma)  # noqa: E731
        trainer = Trainer(nets, lr_at(0), protocol.momentum, protocol.weight_decay, stacked=len(ks) > 1,
                          capture=plan.capture)
        best, latest = [0.0] * len(ks), [0.0] * len(ks)

        def check(epoch: int) -> None:
            if epoch in checks_at:
                latest[:] = accuracies(nets, test.images, test.labels)
                best[:] = map(max, best, latest)
        mixes = [partial(cutmix(protocol.cutmix, syn.num_classes), generator=g) for g in gens] \
            if protocol.cutmix else None
        fit(trainer, images, labels, epochs, protocol.batch_size, gens, mixes=mixes, lr_at=lr_at, after=check,
            augments=[make_augment(strategy, g, (syn.mean, syn.std, syn.im_size)) for g in gens])
        last = latest if epochs - 1 in checks_at else accuracies(nets, test.images, test.labels)
        return [(max(b, f) if checks_at else f, f, lr) for b, f in zip(best, last)]

    def job(ks: Sequence[int]) -> List[tuple]:
        with torch_threads(job_threads()) if device.type == "cpu" else nullcontext():
            trials = [train_and_test(ks, lr) for lr in rates]  # DD-Ranking's grid: the rate with the best result
            return [max(per_lr, key=lambda t: t[0]) for per_lr in zip(*trials)]

    per_group = max(1, BATCHED_IMAGES // max(1, min(protocol.batch_size, len(images)))) \
        if plan.method == "batched" else 1
    chunks = [mine[i:i + per_group] for i in range(0, len(mine), per_group)]
    parts = RUNNER.map(job, chunks, ("eval", model, tuple(images.shape), epochs), torch.get_num_threads()) \
        if plan.method == "parallel" else [job(ks) for ks in chunks]
    results = group.gather([r for part in parts for r in part], protocol.num_eval)
    reported = [r[0] if protocol.report != "final" else r[1] for r in results]
    return EvalResult(model, reported, protocol, epochs, [r[1] for r in results], [r[2] for r in results])


def protocol_space(protocol: Protocol, train: Optional[Dataset]):
    """A function taking a set or a dataset into the space the protocol trains in (ZCA where asked)."""
    if not protocol.zca:
        return lambda x: x
    from .sets import ZCA

    zca = ZCA(_pixels(train))

    def into(x):
        if getattr(x, "config", {}).get("space") == "zca":
            return x
        zero, one = (0.0,) * x.images.shape[1], (1.0,) * x.images.shape[1]
        extra = {"config": {**x.config, "space": "zca"}} if isinstance(x, SyntheticSet) else {}
        return dataclasses.replace(x, images=zca(_pixels(x)), mean=zero, std=one, **extra)
    return into


def _pixels(x) -> torch.Tensor:
    mean, std = (torch.tensor(v, device=x.images.device).view(1, -1, 1, 1) for v in (x.mean, x.std))
    return x.images.detach() * std + mean


def random_real_subset(real: Dataset, ipc: int, seed: int = 0) -> SyntheticSet:
    """ipc random real images per class: the baseline every synthetic set must beat."""
    what = "random_real_subset"
    return real_subset(check_dataset(real, f"{what}: real"), checks.whole(ipc, f"{what}: ipc", minimum=1),
                       checks.seed(seed, f"{what}: seed"))


def real_subset(real: Dataset, ipc: int, seed: int) -> SyntheticSet:
    gen = torch.Generator().manual_seed(seed)
    by_class = (torch.nonzero(real.labels.cpu() == c).flatten() for c in range(real.num_classes))
    picks = [idx[torch.randperm(len(idx), generator=gen)[:ipc]] for idx in by_class]
    idx = torch.cat(picks).to(real.images.device)
    return SyntheticSet(images=real.images[idx].clone(), labels=real.labels[idx].clone(), classes=list(real.classes),
                        mean=real.mean, std=real.std, dataset=real.name,
                        config={"random_real_subset": True, "ipc": ipc, "seed": seed}, source=real.source)
