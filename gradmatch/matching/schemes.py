"""What to match: the four matching schemes of SPEC section 5, composed in this one place.

``matching_loss`` is pure: batches that the condensation loop has drawn go in, the scalar loss
comes out, differentiable with respect to the synthetic images.  Every scheme is composed here from
per-class (or per-batch) gradients; an engine (``gradmatch.matching.engines``) only computes those.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor, nn

from ..distributed import SINGLE, Group
from ..errors import unknown_name
from .batches import Batch, class_count, own_chunk, own_classes, split_by_class
from .distances import Metric, gradient_distance, resolve_metric, summed_distance
from .engines import class_gradients, needed_parameters, resolve_engine
from .engines.batched import stacked_class_gradients

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
    """The concrete scheme of one outer iteration: interleaved is intra (even) and inter (odd)."""
    scheme = resolve_scheme(scheme)
    if scheme == "interleaved":
        return "intra-class" if iteration % 2 == 0 else "inter-class"
    return scheme


def matching_loss(net: nn.Module, real: Batch, syn: Batch, scheme: str = "intra-class",
                  metric: Metric = "baseline", iteration: int = 0, num_classes: Optional[int] = None, *,
                  engine: str = "loop", precision: str = "fp32", group: Optional[Group] = None) -> Tensor:
    """The matching loss L of one outer step (SPEC section 5).

    ``real`` and ``syn`` are (images, labels).  For intra-class and multi-level both hold every
    class, grouped by label; for inter-class they are mixed batches.  ``iteration`` picks the half
    of the interleaved scheme; ``num_classes`` (K) defaults to the classes in ``syn``.  ``engine``
    (loop, fast, batched, auto) computes the gradients, the same numbers up to rounding;
    ``precision`` is the real targets' arithmetic (``gradmatch.precision``).

    ``group`` (``gradmatch.distributed``): with several processes each is given the same whole
    batches and returns its share: the terms of its classes (its chunk of a mixed batch).  The
    shares' values and image gradients, summed over processes, are those of one process.
    """
    metric = resolve_metric(metric)
    scheme = scheme_at(scheme, iteration)
    group = group or SINGLE
    engine = resolve_engine(engine, syn[0].device)
    params = needed_parameters(net, metric)
    k = num_classes if num_classes is not None else class_count(syn[1])

    def gradients(batches, target: bool):
        return class_gradients(engine, net, params, batches, target=target, precision=precision)

    if scheme == "inter-class":  # K x D of the mixed batches' gradients
        (real, real_weight), (syn, syn_weight) = own_chunk(real, group), own_chunk(syn, group)
        g_real = [real_weight * g[0] for g in gradients([real], True)] if len(real[1]) else _zeros(params)
        g_syn = [syn_weight * g[0] for g in gradients([syn], False)] if len(syn[1]) else _zeros(params)
        return mixed_term(g_syn, g_real, metric, k, group)

    present = class_count(syn[1])
    real_parts = {c: (x, y) for c, x, y in split_by_class(*own_classes(real, group))}
    syn_parts = split_by_class(*own_classes(syn, group))
    missing = {c for c, _, _ in syn_parts} - set(real_parts)
    if missing:
        raise ValueError(f"real batch lacks classes {sorted(missing)}")
    if not syn_parts:  # a process with no class of its own (more processes than classes)
        return class_terms(scheme, None, None, metric, k, present, group, params)
    g_real = gradients([real_parts[c] for c, _, _ in syn_parts], True)
    g_syn = gradients([(x, y) for _, x, y in syn_parts], False)
    return class_terms(scheme, g_syn, g_real, metric, k, present, group, params)


def mixed_term(g_syn, g_real, metric: Metric, k: int, group: Group = SINGLE) -> Tensor:
    """Inter-class: K x D of the mixed batches' gradients (each process holding its chunk's share)."""
    return group.share(k * gradient_distance(group.global_sum(g_syn), group.global_sum(g_real), metric))


def class_terms(scheme: str, g_syn, g_real, metric: Metric, k: int, present: int, group: Group = SINGLE,
                params=None) -> Tensor:
    """Intra-class: D of each class's gradients, summed; multi-level adds K x D of the class means
    (over all processes' classes).  ``g_syn``/``g_real``: K-stacked, None for a process without classes."""
    if g_syn is None:
        loss, syn_sum, real_sum = params[0][1].new_zeros(()), _zeros(params), _zeros(params)
    else:
        loss = summed_distance(g_syn, g_real, metric)
        syn_sum, real_sum = [g.sum(0) for g in g_syn], [g.sum(0) for g in g_real]
    if scheme == "multi-level":
        mean_syn = [s / present for s in group.global_sum(syn_sum)]
        mean_real = [s / present for s in group.global_sum(real_sum)]
        loss = loss + group.share(k * gradient_distance(mean_syn, mean_real, metric))
    return loss


def experiment_losses(base: nn.Module, params: Dict[str, Tensor], real: Batch, syn: Batch, scheme: str,
                      metric: Metric, num_classes: int, precision: str = "fp32") -> Tensor:
    """``matching_loss`` of E experiments at once (one process, batched engine): network e has the
    parameters ``params[name][e]`` and the batches ``real[.][e]``, ``syn[.][e]``, stacked (E, ...);
    for intra-class and multi-level every class has the same number of images, grouped by label.
    Returns the E losses, shape (E,)."""
    metric = resolve_metric(metric)
    wanted = [n for n, _ in needed_parameters(base, metric)]
    (real_x, real_y), (syn_x, syn_y) = real, syn
    batches = 1 if scheme == "inter-class" else num_classes  # per experiment: one mixed batch, or K

    def grouped(x: Tensor, y: Tensor):
        return x.reshape(len(x), batches, -1, *x.shape[2:]), y.reshape(len(y), batches, -1)

    g_real = stacked_class_gradients(base, params, wanted, *grouped(real_x, real_y), target=True,
                                     precision=precision)
    g_syn = stacked_class_gradients(base, params, wanted, *grouped(syn_x, syn_y), target=False)
    if scheme == "inter-class":
        def one(s, r):
            return mixed_term([g[0] for g in s], [g[0] for g in r], metric, num_classes)
    else:
        def one(s, r):
            return class_terms(scheme, s, r, metric, num_classes, num_classes)
    return torch.func.vmap(one)(g_syn, g_real)


def _zeros(params):
    return [torch.zeros_like(p) for _, p in params]
