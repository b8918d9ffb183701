"""The batched engine: every batch's gradient in one ``torch.func.vmap`` pass over ``torch.func.grad``.  With E > 1
networks the real targets are taken one network at a time (ordinary convolutions, one network's activations)."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ...precision import target_context


def batched_obstacle(net: nn.Module, unequal: Optional[str] = None) -> Optional[str]:
    """What keeps the batched engine from ``net`` (None: nothing): batch norm in training mode (it writes in the
    forward), layer norm (a vmapped layer norm's image gradient is wrong: pytorch/functorch#534), or ``unequal``."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            return f"{type(net).__name__} (batch norm in training mode)"
        if isinstance(m, nn.LayerNorm):
            return f"{type(net).__name__} (layer norm)"
    return unequal


def per_class_gradients(net: nn.Module, target: bool, precision: str):
    """``f(wanted, others, images, labels)``: the gradients w.r.t. ``wanted`` of K stacked batches."""
    def loss(wanted: Dict[str, Tensor], others: Dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        with target_context(precision if target else "fp32", x.device):
            out = functional_call(net, {**others, **wanted}, (x,))
        return F.cross_entropy(out.to(x.dtype), y)

    return vmap(grad(loss), in_dims=(None, None, 0, 0))


class BatchedEngine:
    def gradients(self, nets, names, batches, *, target: bool, precision: str = "fp32") -> List[Tensor]:
        images = torch.stack([torch.stack([x for x, _ in member]) for member in batches])  # (E, K, n, ...)
        labels = torch.stack([torch.stack([y for _, y in member]) for member in batches])
        chosen = {n: nets.params[n] for n in names}
        others = {**{n: p for n, p in nets.params.items() if n not in chosen}, **nets.buffers}
        per_network = per_class_gradients(nets.members[0], target, precision)
        with torch.no_grad() if target else torch.enable_grad():  # targets: constants
            if not target and len(nets) > 1:
                grads = vmap(per_network)(chosen, others, images, labels)
                return [grads[n] for n in names]
            # targets, and a single network, one network at a time (no vmap over networks)
            each = [per_network({n: p[e] for n, p in chosen.items()}, {n: p[e] for n, p in others.items()},
                                images[e], labels[e]) for e in range(len(labels))]
            return [torch.stack([g[n] for g in each]) for n in names]
