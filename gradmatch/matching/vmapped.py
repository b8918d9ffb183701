"""Per-class gradients of all classes in one pass: ``torch.func.vmap`` over ``torch.func.grad``.

``matching_loss(..., method="vmap")`` lands here for intra-class and multi-level matching.  The K
class batches are stacked (K, n, C, H, W) and one vmapped gradient gives the K per-class gradients
at once, real (constants) and synthetic (differentiable with respect to the images, so the loss's
backward is the usual second-order one).  Same numbers as the per-class loop, up to rounding.

Why it exists: on a GPU the per-class passes of the loop are small (one class's 256 images, or a
few synthetic ones) and leave most of the device idle; one stacked pass fills it.  On the 2-core CPU
this project is developed on it is slower than ``method="fast"`` (benchmarks/bench_speed.py prints
both), so it is not the default anywhere.  It needs networks whose layers do not update state in
the forward (batch norm must be frozen, as the condensation loop does), no layer norm (see
``can_vmap``) and classes of equal size in each batch; other cases fall back to the fast path.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..distributed import SINGLE, Group
from .batches import class_count, own_classes
from .distances import Metric, gradient_distance, summed_distance


def _stack_by_class(images: Tensor, labels: Tensor, classes: Sequence[int]) -> Optional[tuple]:
    """(K, n, ...) images and (K, n) labels for ``classes``, or None if their sizes differ."""
    parts = [images[labels == c] for c in classes]
    if len({len(p) for p in parts}) != 1:
        return None
    return torch.stack(parts), torch.tensor(classes, device=labels.device).unsqueeze(1).expand(-1, len(parts[0]))


def can_vmap(net: nn.Module) -> bool:
    """No batch norm in training mode (its running statistics are written in the forward) and no
    layer norm: the image gradient through a vmapped layer norm's backward is wrong (measured here
    at 3% on ConvNetLN, torch 2.13; pytorch/functorch#534), so those networks take the fast path."""
    return not any((isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training) or isinstance(m, nn.LayerNorm)
                   for m in net.modules())


def per_class_gradients(net: nn.Module, names: Sequence[str], images: Tensor, labels: Tensor) -> List[Tensor]:
    """Gradients of each class's mean cross-entropy with respect to the parameters ``names``: one
    (K, *shape) tensor per parameter, from one vmapped pass over the (K, n, ...) ``images``."""
    params = dict(net.named_parameters())
    chosen = {n: params[n] for n in names}
    rest = {n: p for n, p in params.items() if n not in chosen}
    buffers = dict(net.named_buffers())

    def loss(wanted: Dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(net, {**rest, **wanted, **buffers}, (x,)), y)

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(chosen, images, labels)
    return [grads[n] for n in names]


def vmap_matching_loss(net: nn.Module, real, syn, scheme: str, metric: Metric, names: Sequence[str],
                       num_classes: int, group: Optional[Group] = None) -> Optional[Tensor]:
    """The intra-class or multi-level loss (this process's share), or None where this path does not
    apply (unequal class sizes, batch norm in training mode): the caller then takes the fast path."""
    group = group or SINGLE
    if not can_vmap(net):
        return None
    present = class_count(syn[1])
    real, syn = own_classes(real, group), own_classes(syn, group)
    classes = sorted(torch.unique(syn[1]).tolist())
    if not classes:
        return None
    stacked_real, stacked_syn = _stack_by_class(*real, classes), _stack_by_class(*syn, classes)
    if stacked_real is None or stacked_syn is None:
        return None
    with torch.no_grad():
        g_real = per_class_gradients(net, names, *stacked_real)
    g_syn = per_class_gradients(net, names, *stacked_syn)
    loss = summed_distance(g_syn, g_real, metric)
    if scheme == "multi-level":
        mean_syn = [s / present for s in group.global_sum([g.sum(0) for g in g_syn])]
        mean_real = [s / present for s in group.global_sum([g.sum(0) for g in g_real])]
        loss = loss + group.share(num_classes * gradient_distance(mean_syn, mean_real, metric))
    return loss
