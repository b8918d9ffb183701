"""Training a network on a (small) labelled tensor set, and testing it: shared by the condensation
loop (the inner loop) and the evaluation.

``Trainer`` runs DC's ``epoch('train', ...)``: shuffled mini-batches of cross-entropy SGD.  On a GPU
the networks train on a handful of images, so a step is a few dozen tiny kernels and the time goes
to launching them: there, when nothing is augmented, the whole epoch (per mini-batch: gather of the
shuffled batch, forward, backward, SGD update) is captured once as a CUDA graph and replayed
(``StaticStep``).  Elsewhere the same ``StaticStep`` runs eagerly (its non-CUDA twin,
which the tests exercise) or, on CPU, ``torch.optim.SGD`` does as it always did.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from .runtime import FastKernels, cpu_context, to_device

Augment = Optional[Callable[[Tensor], Tensor]]


def sgd_update(params: Sequence[Tensor], grads: Sequence[Tensor], buffers: Sequence[Tensor], lr, momentum: float,
               weight_decay: float, mask: Optional[Tensor] = None) -> None:
    """torch.optim.SGD's update (weight decay, then momentum into ``buffers``, dampening 0) in place;
    ``lr`` a number or a 0-dim tensor (a captured graph's); ``mask`` (E bools, stacked networks) leaves
    the members where it is False untouched."""
    with torch.no_grad():
        for p, g, buf in zip(params, grads, buffers):
            if weight_decay:
                g = g.add(p, alpha=weight_decay)
            if mask is None:
                buf.mul_(momentum).add_(g)
                p.sub_(buf * lr)
                continue
            keep = mask.view(-1, *([1] * (p.dim() - 1)))
            new_buf = buf * momentum + g
            buf.copy_(torch.where(keep, new_buf, buf))
            p.copy_(torch.where(keep, p - lr * new_buf, p))


def capture_graph(run: Callable[[], None], state: Sequence[Tensor]) -> Optional["torch.cuda.CUDAGraph"]:
    """``run`` recorded as a CUDA graph, after a warm-up on a side stream; ``state`` (the tensors
    ``run`` changes) is restored afterwards.  None where capture is impossible: then run eagerly."""
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
    except RuntimeError:
        graph = None
    with torch.no_grad():
        for t, value in zip(state, saved):
            t.copy_(value)
    return graph


class StaticStep:
    """One epoch of SGD steps, mini-batches of ``batch_size`` in the order ``order``, on fixed storage
    (every tensor allocated once): ``images``/``labels`` hold the set, ``lr`` the learning rate.  The
    update is torch.optim.SGD's (weight decay, then momentum, dampening 0; zeroed buffers at the
    start equal SGD's lazily created ones), so the numbers equal ``torch.optim.SGD`` up to rounding."""

    def __init__(self, net: nn.Module, images: Tensor, labels: Tensor, batch_size: int, lr: float,
                 momentum: float, weight_decay: float):
        self.net, self.batch_size = net, batch_size
        self.names = [n for n, p in net.named_parameters() if p.requires_grad]
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.images, self.labels = images.detach().clone(), labels.clone()
        self.order = torch.arange(len(labels), device=labels.device)
        self.lr = torch.tensor(lr, device=images.device, dtype=images.dtype)
        self.momentum, self.weight_decay = momentum, weight_decay
        self.buffers = [torch.zeros_like(p) for p in self.params]
        self.graph: Optional["torch.cuda.CUDAGraph"] = None

    def run(self) -> None:
        for start in range(0, len(self.order), self.batch_size):
            idx = self.order[start:start + self.batch_size]
            self._sgd_step(self.images[idx], self.labels[idx])

    def _sgd_step(self, x: Tensor, y: Tensor) -> None:
        # fresh leaves sharing the parameters' storage: no autograd node outlives a step, so none
        # made on another stream (the matching step's) meets the capture
        leaves = {n: p.detach().requires_grad_() for n, p in zip(self.names, self.params)}
        loss = F.cross_entropy(functional_call(self.net, leaves, (x,)), y)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        sgd_update(self.params, grads, self.buffers, self.lr, self.momentum, self.weight_decay)

    def capture(self) -> bool:
        """Record ``run`` as a CUDA graph; False where capture is impossible (it then runs eagerly)."""
        self.graph = capture_graph(self.run, [*self.params, *self.net.buffers(), *self.buffers])
        return self.graph is not None

    def step(self, order: Tensor) -> None:
        self.order.copy_(order)
        if self.graph is not None:
            self.graph.replay()
        else:
            self.run()

    def load(self, images: Tensor) -> None:
        """New images of the same shape (the synthetic set after an image update)."""
        self.images.copy_(images)

    def set_lr(self, lr: float, fresh: bool) -> None:
        """A new learning rate; ``fresh``: zero momentum too (a new optimiser)."""
        if fresh:
            for buf in self.buffers:
                buf.zero_()
        self.lr.fill_(lr)


class Trainer:
    """Cross-entropy SGD of ``net`` with torch.optim.SGD's settings, one ``epoch`` at a time.

    ``graph``: None = capture a CUDA graph where it applies (CUDA, no augmentation); True = use
    ``StaticStep`` even off CUDA (eagerly: the tests' twin of the graph
    path); False = torch.optim.SGD, batch by batch, always.
    """

    def __init__(self, net: nn.Module, lr: float, momentum: float, weight_decay: float = 0.0,
                 graph: Optional[bool] = None):
        self.net, self.lr, self.momentum, self.weight_decay = net, lr, momentum, weight_decay
        self.graph = graph
        self.static: Optional[StaticStep] = None
        self.optimizer = self._sgd()

    def _sgd(self) -> torch.optim.SGD:
        return torch.optim.SGD(self.net.parameters(), lr=self.lr, momentum=self.momentum,
                               weight_decay=self.weight_decay)

    def set_lr(self, lr: float, fresh: bool = True) -> None:
        """Learning rate ``lr`` from now on: with a fresh optimiser (zero momentum), or, with
        ``fresh=False``, keeping the momentum as a learning-rate scheduler does."""
        self.lr = lr
        if fresh:
            self.optimizer = self._sgd()
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        if self.static is not None:
            self.static.set_lr(lr, fresh)

    def _static_for(self, images: Tensor, labels: Tensor, batch_size: int, augment: Augment) -> Optional[StaticStep]:
        on_cuda = images.device.type == "cuda"
        wanted = self.graph if self.graph is not None else on_cuda
        if not wanted or augment is not None or len(images) == 0:
            return None
        if self.static is None or self.static.images.shape != images.shape or self.static.batch_size != batch_size:
            self.static = StaticStep(self.net, images, labels, batch_size, self.lr, self.momentum, self.weight_decay)
            if on_cuda:
                self.static.capture()
        else:
            self.static.load(images)
        return self.static

    def epoch(self, images: Tensor, labels: Tensor, batch_size: int, generator: torch.Generator,
              augment: Augment = None) -> None:
        """One shuffled epoch (DC's ``epoch('train', ...)``); the shuffle is drawn from ``generator``."""
        self.net.train()
        order = to_device(torch.randperm(len(images), generator=generator), images.device)
        static = self._static_for(images, labels, batch_size, augment)
        if static is not None:
            static.step(order)
            return
        with cpu_context(images.device):
            for start in range(0, len(images), batch_size):
                idx = order[start:start + batch_size]
                x, y = images[idx], labels[idx]
                if augment is not None:
                    x = augment(x)
                loss = F.cross_entropy(self.net(x), y)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()


class StackedTrainer:
    """SGD of E networks of one architecture at once: their parameters stacked (E, *shape), one
    vmapped forward and backward per mini-batch instead of E small ones.

    Each member keeps its own shuffling and augmentation (its own generator, drawn in the order it
    would be drawn alone) and its own momentum; the update is torch.optim.SGD's (weight decay, then
    momentum from zeroed buffers), element-wise on the stacked tensors, so every member follows its
    one-by-one trajectory up to float rounding.  The members train on one shared set (N, C, H, W) or
    on a set each (E, N, C, H, W).  ``active`` (E bools) leaves the members that stopped untouched:
    no draw from their generators, no change to their weights.  Networks with running state (batch
    norm) cannot be stacked (``evaluate.can_batch``).

    ``graph`` as ``Trainer``'s: on CUDA, without augmentation, the whole epoch runs on fixed storage
    (set, order, mask and learning rate in buffers) captured once as a CUDA graph; ``graph=True``
    runs that fixed-storage epoch eagerly anywhere (the tests' twin), ``False`` never.
    """

    def __init__(self, base: nn.Module, params: Dict[str, Tensor], lr: float, momentum: float,
                 weight_decay: float = 0.0, graph: Optional[bool] = None):
        self.base = base  # the architecture only; may live on the meta device
        self.names = list(params)
        self.params = [params[n] for n in self.names]  # stacked, updated in place
        self.buffers = [torch.zeros_like(p) for p in self.params]
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.graph = graph
        self.static: Optional[dict] = None  # the fixed-storage epoch: its buffers and its CUDA graph
        self._losses = vmap(self._loss)

    def _loss(self, params: Sequence[Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(self.base, dict(zip(self.names, params)), (x,)), y)

    def load(self, params: Dict[str, Tensor], lr: float) -> None:
        """Fresh networks (copied in place, so a captured epoch stays valid) and a fresh optimiser."""
        with torch.no_grad():
            for name, p in zip(self.names, self.params):
                p.copy_(params[name])
        self.set_lr(lr, fresh=True)

    def set_lr(self, lr: float, fresh: bool = True) -> None:
        """As ``Trainer.set_lr``: ``fresh`` zeroes the momentum (a new optimiser)."""
        self.lr = lr
        if self.static is not None:
            self.static["lr"].fill_(lr)
        if fresh:
            for buf in self.buffers:
                buf.zero_()

    @torch.no_grad()
    def losses(self, images: Tensor, labels: Tensor) -> Tensor:
        """Each member's mean cross-entropy on its own batch (E, n, ...): shape (E,)."""
        return self._losses(self.params, images, labels)

    def epoch(self, images: Tensor, labels: Tensor, batch_size: int, generators: Sequence[torch.Generator],
              augments: Optional[Sequence[Augment]] = None, active: Optional[Sequence[bool]] = None) -> None:
        members, n = len(generators), labels.shape[-1]
        active = list(active) if active is not None else [True] * members
        orders = torch.stack([torch.randperm(n, generator=g) if on else torch.arange(n)
                              for g, on in zip(generators, active)])
        orders = to_device(orders, images.device)
        augmented = augments is not None and any(a is not None for a in augments)
        wanted = self.graph if self.graph is not None else images.device.type == "cuda"
        if wanted and not augmented:
            static = self._static_for(images, labels, batch_size)
            static["images"].copy_(images)
            static["order"].copy_(orders)
            static["mask"].copy_(to_device(torch.tensor(active), images.device))
            if static["graph"] is not None:
                static["graph"].replay()
            else:
                self._run(static)
            return
        mask = None if all(active) else torch.tensor(active, device=images.device)
        for start in range(0, n, batch_size):
            x, y = _gather(images, labels, orders[:, start:start + batch_size])
            if augmented:
                x = torch.stack([a(x[k]) if a is not None and active[k] else x[k] for k, a in enumerate(augments)])
            self._step(x, y, mask, self.lr)

    def _static_for(self, images: Tensor, labels: Tensor, batch_size: int) -> dict:
        key = (tuple(images.shape), tuple(labels.shape), batch_size)
        if self.static is None or self.static["key"] != key:
            device, members = images.device, len(self.params[0])
            self.static = {"key": key, "images": images.detach().clone(), "labels": labels.clone(),
                           "order": torch.zeros(members, labels.shape[-1], dtype=torch.long, device=device),
                           "mask": torch.ones(members, dtype=torch.bool, device=device),
                           "lr": torch.tensor(self.lr, dtype=self.params[0].dtype, device=device),
                           "batch_size": batch_size, "graph": None}
            if device.type == "cuda":
                self.static["graph"] = capture_graph(lambda: self._run(self.static), [*self.params, *self.buffers])
        return self.static

    def _run(self, static: dict) -> None:
        n, size = static["labels"].shape[-1], static["batch_size"]
        for start in range(0, n, size):
            x, y = _gather(static["images"], static["labels"], static["order"][:, start:start + size])
            self._step(x, y, static["mask"], static["lr"])

    def _step(self, x: Tensor, y: Tensor, mask: Optional[Tensor], lr) -> None:
        leaves = [p.detach().requires_grad_() for p in self.params]
        grads = torch.autograd.grad(self._losses(leaves, x, y).sum(), leaves)
        sgd_update(self.params, grads, self.buffers, lr, self.momentum, self.weight_decay, mask)


def _gather(images: Tensor, labels: Tensor, idx: Tensor):
    """Each member's mini-batch ``idx`` (E, b) of a shared set (N, ...) or of its own (E, N, ...)."""
    if labels.dim() == 1:
        return images[idx], labels[idx]
    rows = torch.arange(len(idx), device=idx.device)[:, None]
    return images[rows, idx], labels[rows, idx]


def reset_network(net: nn.Module, source: nn.Module) -> None:
    """Copy ``source``'s parameters and buffers into ``net`` in place (same storage: a captured
    graph that reads ``net`` stays valid)."""
    with torch.no_grad():
        for dst, src in zip([*net.parameters(), *net.buffers()], [*source.parameters(), *source.buffers()]):
            dst.copy_(src)


@torch.no_grad()
def mean_loss(net: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Cross-entropy of a batch in eval mode (running batch-norm statistics), training mode restored."""
    was_training = net.training
    net.eval()
    loss = F.cross_entropy(net(images), labels).item()
    net.train(was_training)
    return loss


@torch.no_grad()
def accuracy(net: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy in eval mode, ``images`` already on the network's device or moved per batch."""
    net.eval()
    device = next(net.parameters()).device
    correct = torch.zeros((), dtype=torch.long, device=device)
    with FastKernels() if device.type == "cpu" else nullcontext():
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device, non_blocking=True)
            y = labels[start:start + batch_size].to(device, non_blocking=True)
            correct += (net(x).argmax(1) == y).sum()
    return correct.item() / max(len(images), 1)


__all__: List[str] = ["StackedTrainer", "StaticStep", "Trainer", "accuracy", "mean_loss", "reset_network", "to_device"]
