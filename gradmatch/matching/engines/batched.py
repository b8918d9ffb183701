"""The batched engine: every batch's gradient in one pass, ``torch.func.vmap`` over ``torch.func.grad``.

The K batches are stacked (K, n, C, H, W) and one vmapped gradient gives the K gradients at once.
On a GPU the per-class passes of the loop are small (one class's 256 images, or a few synthetic
ones) and leave most of the device idle; one stacked pass fills it.  On a 2-core CPU it is slower
than ``fast``.  It needs batches of equal size and networks whose forward writes no state and
that vmap differentiates correctly (``can_vmap``); otherwise it returns None and ``fast`` runs.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ...precision import target_context


def can_vmap(net: nn.Module) -> bool:
    """No batch norm in training mode (its running statistics are written in the forward) and no
    layer norm: the image gradient through a vmapped layer norm's backward is wrong (measured at 3%
    on ConvNetLN, torch 2.13; pytorch/functorch#534)."""
    return not any((isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training) or isinstance(m, nn.LayerNorm)
                   for m in net.modules())


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

    def gradients(self, net, params, batches, *, target: bool, precision: str = "fp32"):
        if not can_vmap(net) or len({len(y) for _, y in batches}) != 1:
            return None
        images = torch.stack([x for x, _ in batches])
        labels = torch.stack([y for _, y in batches])
        chosen = dict(params)
        others = {**{n: p for n, p in net.named_parameters() if n not in chosen}, **dict(net.named_buffers())}
        with torch.no_grad() if target else torch.enable_grad():  # targets: constants
            grads = per_class_gradients(net, target, precision)(chosen, others, images, labels)
        return [grads[n] for n, _ in params]

    def why_not(self, net, batches) -> str:
        if not can_vmap(net):
            return f"{type(net).__name__} (batch norm in training mode, or layer norm)"
        return "batches of unequal size (a class with fewer real images than --batch_real)"


def stacked_class_gradients(base: nn.Module, params: Dict[str, Tensor], wanted: Sequence[str], images: Tensor,
                            labels: Tensor, *, target: bool, precision: str = "fp32") -> List[Tensor]:
    """The batched engine for E networks (batched experiments): ``params`` stacked (E, *shape),
    ``images`` (E, K, n, C, H, W), ``labels`` (E, K, n); returns, per name in ``wanted``, the (E, K,
    *shape) gradients of each network's K batches.  ``base`` gives the architecture (no buffers).

    The synthetic batches (a few images per class) go through all E networks in one vmapped pass.
    The real targets (K x batch_real images, one pass already fills a GPU) are taken one network at
    a time, as a single run's batched engine takes them: ordinary convolutions rather than the
    grouped ones that stacked weights become under vmap, and one network's activations in memory."""
    chosen = {n: params[n] for n in wanted}
    rest = {n: p for n, p in params.items() if n not in chosen}
    per_network = per_class_gradients(base, target, precision)
    if not target:
        grads = vmap(per_network)(chosen, rest, images, labels)
        return [grads[n] for n in wanted]
    with torch.no_grad():  # targets: constants
        each = [per_network({n: p[e] for n, p in chosen.items()}, {n: p[e] for n, p in rest.items()},
                            images[e], labels[e]) for e in range(len(labels))]
    return [torch.stack([g[n] for g in each]) for n in wanted]
