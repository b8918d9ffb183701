"""What to match: the four matching schemes of SPEC section 5.

``matching_loss`` is pure: it takes batches that the condensation loop has already drawn and
returns the scalar loss, differentiable with respect to the synthetic images.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..errors import unknown_name
from .distances import Metric, gradient_distance, resolve_metric
from .fast import fast_matching_loss
from .gradients import batch_gradient, mean_gradient, trainable_parameters

SCHEMES = ("intra-class", "inter-class", "interleaved", "multi-level")
# The seed's script names and a few short forms.
ALIASES = {"baseline": "intra-class", "intra": "intra-class", "inter": "inter-class",
           "multi": "multi-level", "multilevel": "multi-level", "intraclass": "intra-class",
           "interclass": "inter-class"}

Batch = Tuple[Tensor, Tensor]  # (images, labels)


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


def split_by_class(images: Tensor, labels: Tensor) -> List[Tuple[int, Tensor, Tensor]]:
    """[(class, images, labels), ...] for a batch whose labels are grouped by class."""
    if labels.numel() > 1 and not bool((labels[1:] >= labels[:-1]).all()):
        order = torch.argsort(labels, stable=True)
        images, labels = images[order], labels[order]
    classes, counts = torch.unique_consecutive(labels, return_counts=True)
    counts = counts.tolist()
    return list(zip(classes.tolist(), images.split(counts), labels.split(counts)))


def per_class_gradients(net: nn.Module, params: Sequence[Tensor], batch: Batch, create_graph: bool):
    """{class: gradient list} from one gradient pass per class (the textbook loop)."""
    return {c: batch_gradient(net, params, x, y, create_graph)
            for c, x, y in split_by_class(*batch)}


METHODS = ("loop", "fast")


def matching_loss(net: nn.Module, real: Batch, syn: Batch, scheme: str = "intra-class",
                  metric: Metric = "baseline", iteration: int = 0,
                  num_classes: Optional[int] = None, *, method: str = "loop",
                  precision: str = "fp32") -> Tensor:
    """The matching loss L of one outer step (SPEC section 5).

    ``real`` and ``syn`` are (images, labels).  For intra-class and multi-level both hold every
    class, grouped by label; for inter-class they are mixed batches.  ``iteration`` picks the
    half of the interleaved scheme; ``num_classes`` (K) defaults to the classes in ``syn``.

    ``method``: "loop" is the textbook per-class loop, written plainly below; "fast" computes the
    same loss and image gradient (up to float rounding) several times faster on CPU (see
    ``gradmatch.matching.fast``; the condensation loop uses it).  ``precision`` ("fp32", "bf16",
    "bf16-sim") applies to the real gradients of the fast path only; the synthetic side is fp32.
    """
    metric = resolve_metric(metric)
    scheme = scheme_at(scheme, iteration)
    params = trainable_parameters(net)
    if method not in METHODS:
        raise unknown_name("matching method", method, list(METHODS))
    if method == "fast" or precision != "fp32":
        return fast_matching_loss(net, real, syn, scheme, metric, params, num_classes, precision)
    if scheme == "inter-class":
        k = num_classes if num_classes is not None else int(torch.unique(syn[1]).numel())
        g_real = batch_gradient(net, params, *real)
        g_syn = batch_gradient(net, params, *syn, create_graph=True)
        return k * gradient_distance(g_syn, g_real, metric)

    g_real = per_class_gradients(net, params, real, create_graph=False)
    g_syn = per_class_gradients(net, params, syn, create_graph=True)
    missing = set(g_syn) - set(g_real)
    if missing:
        raise ValueError(f"real batch lacks classes {sorted(missing)}")
    loss = sum(gradient_distance(g_syn[c], g_real[c], metric) for c in g_syn)
    if scheme == "multi-level":
        k = num_classes if num_classes is not None else len(g_syn)
        classes = sorted(g_syn)
        loss = loss + k * gradient_distance(mean_gradient([g_syn[c] for c in classes]),
                                            mean_gradient([g_real[c] for c in classes]), metric)
    return loss
