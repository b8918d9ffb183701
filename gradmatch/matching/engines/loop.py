"""The textbook engine: one forward and one backward per batch, plain PyTorch (SPEC section 5)."""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...precision import target_context


def batch_gradient(net: nn.Module, params: Sequence[Tensor], images: Tensor, labels: Tensor, *,
                   target: bool, precision: str = "fp32") -> List[Tensor]:
    """Gradient of the batch's mean cross-entropy: a constant for a target, else differentiable."""
    with torch.enable_grad():  # gradients are what is matched, even under no_grad
        with target_context(precision if target else "fp32", images.device):
            out = net(images)
        loss = F.cross_entropy(out.to(images.dtype), labels)  # bf16 logits: the loss in full precision
        grads = torch.autograd.grad(loss, params, create_graph=not target)
    return [g.detach() for g in grads] if target else list(grads)


def stack_gradients(per_member: Sequence[Sequence[Sequence[Tensor]]]) -> List[Tensor]:
    """[member][batch][parameter] gradients -> per parameter one (E, K, *shape) tensor."""
    return [torch.stack([torch.stack([batch[j] for batch in member]) for member in per_member])
            for j in range(len(per_member[0][0]))]


class LoopEngine:
    def gradients(self, nets, names, batches, *, target: bool, precision: str = "fp32") -> List[Tensor]:
        per_member = []
        for net, member_batches in zip(nets.members, batches):
            params = [net.get_parameter(n) for n in names]
            per_member.append([batch_gradient(net, params, x, y, target=target, precision=precision)
                               for x, y in member_batches])
        return stack_gradients(per_member)
