"""Gradients of the classification loss with respect to a network's parameters.

``batch_gradient`` is the textbook step: one forward and one backward per batch.  Real gradients
are constants (detached); synthetic ones keep the graph so the matching loss can be differentiated
with respect to the synthetic images (second order).
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def trainable_parameters(net: nn.Module) -> List[Tensor]:
    return [p for p in net.parameters() if p.requires_grad]


def batch_gradient(net: nn.Module, params: Sequence[Tensor], images: Tensor, labels: Tensor,
                   create_graph: bool = False) -> List[Tensor]:
    """Gradient of the mean cross-entropy over the batch w.r.t. ``params``."""
    loss = F.cross_entropy(net(images), labels)
    grads = torch.autograd.grad(loss, params, create_graph=create_graph)
    return list(grads) if create_graph else [g.detach() for g in grads]

