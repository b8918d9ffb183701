"""Training a network on a (small) labelled tensor set, and testing it: shared by the condensation
loop (the inner loop) and the evaluation."""
from __future__ import annotations

from contextlib import ExitStack, nullcontext
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .matching.fast import FastKernels, job_threads, torch_threads


def _cpu_context(device: torch.device):
    """On CPU: ``job_threads()`` intra-op threads and the faster kernels of gradmatch.matching.fast."""
    if device.type != "cpu":
        return nullcontext()
    stack = ExitStack()
    stack.enter_context(torch_threads(job_threads()))
    stack.enter_context(FastKernels())
    return stack


def train_epoch(net: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor,
                batch_size: int, generator: torch.Generator,
                augment: Optional[Callable[[Tensor], Tensor]] = None) -> None:
    """One shuffled epoch of cross-entropy SGD (DC's ``epoch('train', ...)``).

    On CPU it runs with ``job_threads()`` intra-op threads (torch's, unless GRADMATCH_THREADS says
    otherwise) and the faster 2x2 pooling kernel.
    """
    net.train()
    order = torch.randperm(len(images), generator=generator).to(images.device)
    with _cpu_context(images.device):
        for start in range(0, len(images), batch_size):
            idx = order[start:start + batch_size]
            x, y = images[idx], labels[idx]
            if augment is not None:
                x = augment(x)
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


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
