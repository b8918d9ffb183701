"""The batched engine: every batch's gradient in one pass, ``torch.func.vmap`` over ``torch.func.grad``.

A member's K batches are stacked (K, n, C, H, W) and one vmapped gradient gives the K gradients at
once.  On a GPU the per-class passes of the loop are small (one class's 256 images, or a few synthetic
ones) and leave most of the device idle; one stacked pass fills it.  On a 2-core CPU it is slower
than ``fast``.  It needs batches of equal size and networks whose forward writes no state and that
vmap differentiates correctly (``batched_obstacle``).

With E > 1 stacked networks (experiments advanced together) the synthetic batches of all members go
through one more vmap, over the networks; the real targets (K x batch_real images, one pass already
fills a GPU) are taken one network at a time: ordinary convolutions rather than the grouped ones that
stacked weights become under vmap, and one network's activations in memory.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ...precision import target_context


def batched_obstacle(net: nn.Module, unequal: Optional[str] = None) -> Optional[str]:
    """What keeps the batched engine from ``net`` (None: nothing): batch norm in training mode (its
    running statistics are written in the forward), layer norm (the image gradient through a vmapped
    layer norm's backward is wrong: 3% on ConvNetLN, torch 2.13; pytorch/functorch#534), or batches
    of unequal size (``unequal`` says which)."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            return f"{type(net).__name__} (batch norm in training mode)"
        if isinstance(m, nn.LayerNorm):
            return f"{type(net).__name__} (layer norm)"
    return unequal


def per_class_gradients(net: nn.Module, target: bool, precision: str):
    """``f(wanted, others, images, labels)``: one network's gradients of the mean cross-entropy of each
    of K stacked batches (K, n, ...) with respect to ``wanted`` ({name: tensor}), the network's other
    tensors (parameters, buffers) given in ``others``; targets in the run's precision."""
    def loss(wanted: Dict[str, Tensor], others: Dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        with target_context(precision if target else "fp32", x.device):
            out = functional_call(net, {**others, **wanted}, (x,))
        return F.cross_entropy(out.to(x.dtype), y)

    return vmap(grad(loss), in_dims=(None, None, 0, 0))


class BatchedEngine:
    name = "batched"

    def gradients(self, nets, names, batches, *, target: bool, precision: str = "fp32") -> List[Tensor]:
        images = torch.stack([torch.stack([x for x, _ in member]) for member in batches])  # (E, K, n, ...)
        labels = torch.stack([torch.stack([y for _, y in member]) for member in batches])
        base = nets.members[0]
        chosen = {n: nets.params[n] for n in names}
        others = {**{n: p for n, p in nets.params.items() if n not in chosen}, **nets.buffers}
        per_network = per_class_gradients(base, target, precision)
        with torch.no_grad() if target else torch.enable_grad():  # targets: constants
            if len(nets) == 1:  # one network: as a single run always did, no vmap over networks
                one = per_network({n: p[0] for n, p in chosen.items()}, {n: p[0] for n, p in others.items()},
                                  images[0], labels[0])
                return [one[n].unsqueeze(0) for n in names]
            if not target:
                grads = vmap(per_network)(chosen, others, images, labels)
                return [grads[n] for n in names]
            each = [per_network({n: p[e] for n, p in chosen.items()}, {n: p[e] for n, p in others.items()},
                                images[e], labels[e]) for e in range(len(labels))]
            return [torch.stack([g[n] for g in each]) for n in names]
