"""What to match: the four matching schemes of SPEC section 5.

``matching_loss`` is pure: it takes batches that the condensation loop has already drawn and
returns the scalar loss, differentiable with respect to the synthetic images.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..distributed import SINGLE, Group
from ..errors import unknown_name
from .batches import Batch, class_count, own_chunk, own_classes, split_by_class, summed
from .distances import Metric, gradient_distance, resolve_metric
from .fast import fast_matching_loss, needed_parameters
from .gradients import batch_gradient, trainable_parameters
from .vmapped import vmap_matching_loss

SCHEMES = ("intra-class", "inter-class", "interleaved", "multi-level")
# The seed's script names and a few short forms.
ALIASES = {"baseline": "intra-class", "intra": "intra-class", "inter": "inter-class",
           "multi": "multi-level", "multilevel": "multi-level", "intraclass": "intra-class",
           "interclass": "inter-class"}

def resolve_scheme(name: str) -> str:
    canonical = ALIASES.get(name.lower().replace("_", "-"), name.lower().replace("_", "-"))
    if canonical not in SCHEMES:
        raise unknown_name("scheme", name, list(SCHEMES) + ["baseline"])
    return canonical


def scheme_at(scheme: str, iteration: int) -> str:
    """The concrete scheme used at one outer iteration: interleaved alternates intra (even) and
    inter (odd)."""
    scheme = resolve_scheme(scheme)
    if scheme == "interleaved":
        return "intra-class" if iteration % 2 == 0 else "inter-class"
    return scheme


def per_class_gradients(net: nn.Module, params: Sequence[Tensor], batch: Batch, create_graph: bool):
    """{class: gradient list} from one gradient pass per class (the textbook loop)."""
    return {c: batch_gradient(net, params, x, y, create_graph)
            for c, x, y in split_by_class(*batch)}


def weighted_gradient(net: nn.Module, params: Sequence[Tensor], batch: Batch, weight: float,
                      create_graph: bool = False) -> List[Tensor]:
    """``weight`` x the batch's gradient (zeros for an empty batch: a process with nothing to do)."""
    if not len(batch[1]):
        return [torch.zeros_like(p) for p in params]
    return [weight * g for g in batch_gradient(net, params, *batch, create_graph)]


METHODS = ("loop", "fast", "vmap")


def matching_loss(net: nn.Module, real: Batch, syn: Batch, scheme: str = "intra-class",
                  metric: Metric = "baseline", iteration: int = 0,
                  num_classes: Optional[int] = None, *, method: str = "loop",
                  precision: str = "fp32", group: Optional[Group] = None) -> Tensor:
    """The matching loss L of one outer step (SPEC section 5).

    ``real`` and ``syn`` are (images, labels).  For intra-class and multi-level both hold every
    class, grouped by label; for inter-class they are mixed batches.  ``iteration`` picks the
    half of the interleaved scheme; ``num_classes`` (K) defaults to the classes in ``syn``.

    ``method``: "loop" is the textbook per-class loop, written plainly below; "fast" computes the
    same loss and image gradient (up to float rounding) faster (see ``gradmatch.matching.fast``;
    the condensation loop's default); "vmap" computes all classes' gradients in one
    ``torch.func`` pass (``gradmatch.matching.vmapped``; meant for GPUs).  ``precision`` ("fp32", "bf16",
    "bf16-sim") applies to the real gradients of the fast path only; the synthetic side is fp32.

    ``group`` (``gradmatch.distributed``): with several processes, each is given the same whole
    batches and returns its share: the terms of its classes (its chunk of the mixed batches for
    inter-class).  The shares' values and image gradients, summed over processes, are the loss and
    image gradient of one process.
    """
    metric = resolve_metric(metric)
    scheme = scheme_at(scheme, iteration)
    params = trainable_parameters(net)
    group = group or SINGLE
    if method not in METHODS:
        raise unknown_name("matching method", method, list(METHODS))
    k = num_classes if num_classes is not None else class_count(syn[1])
    if method == "vmap" and scheme != "inter-class" and precision == "fp32":
        names = [n for n, p in net.named_parameters() if any(p is q for q in needed_parameters(params, metric))]
        loss = vmap_matching_loss(net, real, syn, scheme, metric, names, k, group)
        if loss is not None:
            return loss
    if method != "loop" or precision != "fp32":
        return fast_matching_loss(net, real, syn, scheme, metric, params, k, precision, group=group)
    if scheme == "inter-class":
        (real, real_weight), (syn, syn_weight) = own_chunk(real, group), own_chunk(syn, group)
        g_real = group.global_sum(weighted_gradient(net, params, real, real_weight))
        g_syn = group.global_sum(weighted_gradient(net, params, syn, syn_weight, create_graph=True))
        return group.share(k * gradient_distance(g_syn, g_real, metric))

    present = class_count(syn[1])
    g_real = per_class_gradients(net, params, own_classes(real, group), create_graph=False)
    g_syn = per_class_gradients(net, params, own_classes(syn, group), create_graph=True)
    missing = set(g_syn) - set(g_real)
    if missing:
        raise ValueError(f"real batch lacks classes {sorted(missing)}")
    loss = sum((gradient_distance(g_syn[c], g_real[c], metric) for c in g_syn), params[0].new_zeros(()))
    if scheme == "multi-level":  # + K x D of the gradients' means over (all processes') classes
        classes = sorted(g_syn)
        mean_syn = [s / present for s in group.global_sum(summed([g_syn[c] for c in classes], params))]
        mean_real = [s / present for s in group.global_sum(summed([g_real[c] for c in classes], params))]
        loss = loss + group.share(k * gradient_distance(mean_syn, mean_real, metric))
    return loss
