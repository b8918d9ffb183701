"""Training networks on a (small) labelled tensor set, and testing them: the inner loop's and the evaluation's.

``Trainer`` trains a stack of E networks, each with its own shuffle, augmentation and momentum, on fixed storage,
so that with ``capture`` an epoch is recorded once as a CUDA graph and replayed (on a CPU it runs eagerly)."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from .errors import warn
from .models.stack import Networks
from .runtime import FastKernels, cpu_context, to_device

Augment = Optional[Callable[[Tensor], Tensor]]
Mix = Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]]  # (images, labels) -> (images, soft targets)


def sgd_update(params: Sequence[Tensor], grads: Sequence[Tensor], momenta: Sequence[Tensor], lr, momentum: float,
               weight_decay: float = 0.0, mask: Optional[Tensor] = None) -> None:
    """torch.optim.SGD's update in place; ``mask`` (E bools) leaves the members where it is False."""
    with torch.no_grad():
        for p, g, buf in zip(params, grads, momenta):
            if weight_decay:
                g = g.add(p, alpha=weight_decay)
            if mask is None:
                buf.mul_(momentum).add_(g)
                if isinstance(lr, Tensor):
                    p.sub_(buf * lr)
                else:
                    p.add_(buf, alpha=-lr)
                continue
            keep = mask.view(-1, *([1] * (p.dim() - 1)))
            new_buf = buf * momentum + g
            buf.copy_(torch.where(keep, new_buf, buf))
            p.copy_(torch.where(keep, p - lr * new_buf, p))


def capture_graph(run: Callable[[], None], state: Sequence[Tensor]) -> Optional["torch.cuda.CUDAGraph"]:
    """``run`` as a CUDA graph, ``state`` (what ``run`` changes) restored after; None if capture fails."""
    saved = [t.detach().clone() for t in state]
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run()
    except RuntimeError as err:
        warn(f"capturing the training epoch as a CUDA graph failed ({str(err).splitlines()[0][:120]}); it runs "
             "eagerly instead (same numbers, slower)")
        graph = None
    with torch.no_grad():
        for t, value in zip(state, saved):
            t.copy_(value)
    return graph


class _Storage:
    """One epoch's fixed storage: the set, each member's order, the mask and the learning rate."""

    def __init__(self, images: Tensor, labels: Tensor, members: int, batch_size: int, lr: float, dtype):
        device = images.device
        self.key = (tuple(images.shape), tuple(labels.shape), batch_size)
        self.images, self.labels, self.batch_size = images.detach().clone(), labels.clone(), batch_size
        self.order = torch.zeros(members, labels.shape[-1], dtype=torch.long, device=device)
        self.mask = torch.ones(members, dtype=torch.bool, device=device)
        self.lr = torch.tensor(lr, dtype=dtype, device=device)
        self.graph: Optional["torch.cuda.CUDAGraph"] = None
        self.tried = False  # capture is tried once per storage

    def batches(self):
        n = self.labels.shape[-1]
        for start in range(0, n, self.batch_size):
            idx = self.order[:, start:start + self.batch_size]
            if self.labels.dim() == 1:  # one set shared by every member
                yield self.images[idx], self.labels[idx]
            else:
                rows = torch.arange(len(idx), device=idx.device)[:, None]
                yield self.images[rows, idx], self.labels[rows, idx]


class Trainer:
    """Cross-entropy SGD of the stack ``nets`` with torch.optim.SGD's settings, one ``epoch`` at a time."""

    def __init__(self, nets: Networks, lr: float, momentum: float, weight_decay: float = 0.0, *,
                 stacked: bool = False, capture: bool = False):
        self.nets, self.momentum, self.weight_decay = nets, momentum, weight_decay
        self.stacked, self.capture = stacked, capture
        self.names = list(nets.trainable)
        self.params = [nets.params[n] for n in self.names]  # updated in place
        self.momenta = [torch.zeros_like(p) for p in self.params]
        self.lr = lr
        self.storage: Optional[_Storage] = None
        self._stacked_losses = vmap(self._member_loss)

    def restart(self, lr: float) -> None:
        """A fresh optimiser: zero momentum, learning rate ``lr``."""
        for buf in self.momenta:
            buf.zero_()
        self.set_lr(lr)

    def set_lr(self, lr: float) -> None:
        """Learning rate ``lr`` from now on, keeping the momentum (as a scheduler does)."""
        self.lr = lr
        if self.storage is not None:
            self.storage.lr.fill_(lr)

    def _member_loss(self, params: Sequence[Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(self.nets.members[0], dict(zip(self.names, params)), (x,)), y)

    def _gradients(self, x: Tensor, y: Tensor) -> List[Tensor]:
        """Every member's gradient on its own batch (E, b, ...), stacked (E, *shape) per parameter."""
        # fresh leaves sharing the stack's storage: no autograd node outlives a step, so none made on
        # another stream (the matching step's) meets a captured graph
        leaves = [p.detach().requires_grad_() for p in self.params]
        if self.stacked:
            loss = self._stacked_losses(leaves, x, y).sum()
        else:
            loss = sum(F.cross_entropy(functional_call(net, {n: leaf[e] for n, leaf in zip(self.names, leaves)},
                                                       (x[e],)), y[e])
                       for e, net in enumerate(self.nets.members))
        return list(torch.autograd.grad(loss, leaves))

    def _run(self, store: _Storage, augments: Optional[Sequence[Augment]], active: Sequence[bool],
             mixes: Optional[Sequence[Mix]] = None) -> None:
        mask = store.mask if len(self.nets) > 1 else None  # a stack of one never trains a stopped member
        lr = store.lr if self.capture else self.lr
        for x, y in store.batches():
            if augments is not None:
                x = torch.stack([a(x[e]) if a is not None and active[e] else x[e] for e, a in enumerate(augments)])
            if mixes is not None:  # mixed images, soft targets (CutMix: the loss mixed by area)
                x, y = (torch.stack(part) for part in zip(*[mix(x[e], y[e]) for e, mix in enumerate(mixes)]))
            sgd_update(self.params, self._gradients(x, y), self.momenta, lr, self.momentum, self.weight_decay, mask)

    def epoch(self, images: Tensor, labels: Tensor, batch_size: int, generators: Sequence[torch.Generator],
              augments: Optional[Sequence[Augment]] = None, active: Optional[Sequence[bool]] = None,
              mixes: Optional[Sequence[Mix]] = None) -> None:
        """One shuffled epoch of every member on ``images`` (N, ...) shared or (E, N, ...) each; members not
        ``active`` draw nothing and stay untouched."""
        members = len(self.nets)
        active = list(active) if active is not None else [True] * members
        if images.dim() == 5 and members == 1:  # a stack of one trains on its set as on a shared one
            images, labels = images[0], labels if labels.dim() == 1 else labels[0]
        elif images.dim() == 5 and labels.dim() == 1:
            labels = labels.expand(members, -1)
        n = labels.shape[-1]
        orders = torch.stack([torch.randperm(n, generator=g) if on else torch.arange(n)
                              for g, on in zip(generators, active)])
        if augments is not None and all(a is None for a in augments):
            augments = None
        store = self.storage
        if store is None or store.key != (tuple(images.shape), tuple(labels.shape), batch_size):
            store = self.storage = _Storage(images, labels, members, batch_size, self.lr, self.params[0].dtype)
        store.images.copy_(images)
        store.order.copy_(to_device(orders, images.device))
        store.mask.copy_(to_device(torch.tensor(active), images.device))
        self.nets.train()
        if self.capture and augments is None and mixes is None and images.device.type == "cuda" and not store.tried:
            store.tried = True  # augmentation draws on the host every batch: never captured
            store.graph = capture_graph(lambda: self._run(store, None, active),
                                        [*self.params, *self.nets.buffers.values(), *self.momenta])
        if store.graph is not None and augments is None and mixes is None:
            store.graph.replay()
            return
        with cpu_context(images.device):
            self._run(store, augments, active, mixes)

    @torch.no_grad()
    def held_losses(self, held) -> List[float]:
        """Each member's cross-entropy on its own held batch (images (E, n, ...), labels (E, n)), in eval mode."""
        losses = []
        for net, images, labels in zip(self.nets.members, *held):
            was_training = net.training
            net.eval()
            losses.append(F.cross_entropy(net(images), labels).item())
            net.train(was_training)
        return losses


def fit(trainer: Trainer, images: Tensor, labels: Tensor, epochs: int, batch_size: int,
        generators: Sequence[torch.Generator], *, augments: Optional[Sequence[Augment]] = None,
        mixes: Optional[Sequence[Mix]] = None, lr_at: Optional[Callable[[int], float]] = None,
        stop: Optional[Callable[[List[bool]], List[bool]]] = None,
        after: Optional[Callable[[int], None]] = None) -> None:
    """``epochs`` epochs of ``trainer``; ``stop(active)`` says which members go on (a schedule's early stop)."""
    active = [True] * len(generators)
    for epoch in range(epochs):
        if lr_at is not None and lr_at(epoch) != trainer.lr:
            trainer.set_lr(lr_at(epoch))
        trainer.epoch(images, labels, batch_size, generators, augments, active, mixes)
        if after is not None:
            after(epoch)
        if stop is not None:
            active = stop(active)
            if not any(active):
                return


@torch.no_grad()
def accuracies(nets: Networks, images: Tensor, labels: Tensor, batch_size: int = 512) -> List[float]:
    """Every member's top-1 accuracy, one by one: a vmapped pass of the stack measured 5x slower on CPU
    (benchmarks/bench_eval.py) and is unmeasured on GPU."""
    return [accuracy(net, images, labels, batch_size) for net in nets.members]


@torch.no_grad()
def accuracy(net: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy in eval mode, ``images`` on the network's device or moved per batch."""
    net.eval()
    device = next(net.parameters()).device
    correct = torch.zeros((), dtype=torch.long, device=device)
    with FastKernels() if device.type == "cpu" else torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device, non_blocking=True)
            y = labels[start:start + batch_size].to(device, non_blocking=True)
            correct += (net(x).argmax(1) == y).sum()
    return correct.item() / max(len(images), 1)
