"""What to match: the matching schemes of SPEC section 5, each one entry of ``SCHEMES``.

``matching_losses`` is pure: batches that the condensation loop has drawn go in, one loss per
network of the stack comes out, differentiable with respect to the synthetic images.  A scheme says
how its batches are cut (per class, or one mixed batch) and how its loss is composed from the
gradients an engine (``gradmatch.matching.engines``) computes; adding a scheme is one entry here.

With several processes (``group``) each is given the same whole batches and returns its share: the
terms of its own classes (its chunk of a mixed batch); the shares' values and image gradients, summed
over processes, are those of one process.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..distributed import SINGLE, Group
from .. import checks
from ..errors import GradmatchError, is_out_of_memory, out_of_memory, unknown_name, warn
from ..precision import PRECISIONS
from ..models.stack import Networks
from .batches import Batch, class_count, own_chunk, own_classes, split_by_class
from .distances import Metric, needed_parameters, resolve_metric, summed_distance, tensor_distance
from .engines import ENGINES, choose_engine
from .engines.batched import batched_obstacle

# compose(g_syn, g_real, metric, k, present, group): one network's loss from its (K, *shape) gradients
Compose = Callable[[Sequence[Tensor], Sequence[Tensor], object, int, int, Group], Tensor]


def mixed_term(g_syn, g_real, metric, k: int, present: int, group: Group = SINGLE) -> Tensor:
    """Inter-class: K x D of the mixed batches' gradients (each process holding its chunk's share)."""
    return group.share(k * tensor_distance(group.global_sum([g.sum(0) for g in g_syn]),
                                             group.global_sum([g.sum(0) for g in g_real]), metric))


def intra_terms(g_syn, g_real, metric, k: int, present: int, group: Group = SINGLE) -> Tensor:
    """Intra-class: D of each class's gradients, summed (over this process's classes)."""
    if not len(g_syn[0]):  # a process without classes of its own
        return g_syn[0].new_zeros(())
    return summed_distance(g_syn, g_real, metric)


def multi_level_terms(g_syn, g_real, metric, k: int, present: int, group: Group = SINGLE) -> Tensor:
    """Intra-class's terms plus K x D of the class-mean gradients (over all processes' classes)."""
    mean_syn = [s / present for s in group.global_sum([g.sum(0) for g in g_syn])]
    mean_real = [s / present for s in group.global_sum([g.sum(0) for g in g_real])]
    return intra_terms(g_syn, g_real, metric, k, present) + group.share(
        k * tensor_distance(mean_syn, mean_real, metric))


@dataclass(frozen=True)
class Scheme:
    name: str
    script: str                       # the seed's script that runs it
    compose: Optional[Compose] = None
    mixed: bool = False               # one mixed real and synthetic batch instead of one pair per class
    alternates: Tuple[str, ...] = ()  # the schemes it takes turns with, one per outer iteration
    adaptive: Tuple[int, ...] = (100, 50, 50, 50)  # the adaptive step's first inner epochs (the seed's scripts)


SCHEMES = {s.name: s for s in (
    Scheme("intra-class", "baseline.py", intra_terms),
    Scheme("inter-class", "inter-class.py", mixed_term, mixed=True),
    Scheme("interleaved", "interleaved.py", alternates=("intra-class", "inter-class")),
    Scheme("multi-level", "multi-level.py", multi_level_terms, adaptive=(50, 40, 30, 20)),
)}
# The seed's script names and a few short forms.
ALIASES = {"baseline": "intra-class", "intra": "intra-class", "inter": "inter-class",
           "multi": "multi-level", "multilevel": "multi-level", "intraclass": "intra-class",
           "interclass": "inter-class"}


def resolve_scheme(name: str) -> str:
    key = str(name).lower().replace("_", "-")
    canonical = ALIASES.get(key, key)
    if canonical not in SCHEMES:
        raise unknown_name("scheme", str(name), list(SCHEMES) + ["baseline"])
    return canonical


def scheme_at(scheme: str, iteration: int) -> Scheme:
    """The concrete scheme of one outer iteration: interleaved is intra (even) and inter (odd)."""
    s = SCHEMES[resolve_scheme(scheme)]
    return SCHEMES[s.alternates[iteration % len(s.alternates)]] if s.alternates else s


def per_class_turns(scheme: str) -> bool:
    """Whether any iteration of ``scheme`` matches class by class (needs a batch per class)."""
    s = SCHEMES[resolve_scheme(scheme)]
    return any(not SCHEMES[n].mixed for n in (s.alternates or (s.name,)))


def matching_losses(nets: Networks, reals: Sequence[Batch], syns: Sequence[Batch], scheme: str,
                    metric: Metric = "baseline", num_classes: Optional[int] = None, *, engine: str = "loop",
                    precision: str = "fp32", group: Optional[Group] = None, iteration: int = 0) -> Tensor:
    """The matching loss L of one outer step (SPEC section 5) for each network of ``nets``: shape (E,).

    ``reals[e]`` and ``syns[e]`` are member e's (images, labels).  For the per-class schemes both hold
    every class, grouped by label; for inter-class they are mixed batches.  ``num_classes`` (K)
    defaults to the classes in ``syns[0]``; ``engine`` (loop, fast, batched) computes the gradients,
    the same numbers up to rounding; ``precision`` is the real targets' arithmetic."""
    distance = resolve_metric(metric)
    concrete = scheme_at(scheme, iteration) if isinstance(scheme, str) else scheme
    group = group or SINGLE
    names = [n for n, _ in needed_parameters(nets.members[0], distance)]
    k = num_classes if num_classes is not None else class_count(syns[0][1])
    present = class_count(syns[0][1])

    def gradients(batches: List[List[Batch]], target: bool, weight: float = 1.0) -> List[Tensor]:
        if not len(batches[0]):  # this process holds no share: no gradient, only the collectives
            return [nets.params[n].new_zeros(len(nets), 0, *nets.params[n].shape[1:]) for n in names]
        grads = ENGINES[engine].gradients(nets, names, batches, target=target, precision=precision)
        return grads if weight == 1.0 else [weight * g for g in grads]

    if concrete.mixed:  # one mixed batch per member (this process's chunk of it, weighted by its size)
        (real_chunks, real_weights), (syn_chunks, syn_weights) = (zip(*[own_chunk(b, group) for b in batches])
                                                                  for batches in (reals, syns))
        g_real = gradients([[b] if len(b[1]) else [] for b in real_chunks], True, real_weights[0])
        g_syn = gradients([[b] if len(b[1]) else [] for b in syn_chunks], False, syn_weights[0])
    else:
        real_parts = [{c: (x, y) for c, x, y in split_by_class(*own_classes(b, group))} for b in reals]
        syn_parts = [split_by_class(*own_classes(b, group)) for b in syns]
        missing = sorted({c for c, _, _ in syn_parts[0]} - set(real_parts[0]))
        if missing:
            raise GradmatchError(f"matching_loss: the real batch has no images of classes {missing}, which the syn "
                                 f"batch has; {concrete.name} matches each class's gradients, so give real images "
                                 "of every syn class")
        g_real = gradients([[parts[c] for c, _, _ in own] for parts, own in zip(real_parts, syn_parts)], True)
        g_syn = gradients([[(x, y) for _, x, y in own] for own in syn_parts], False)
    return torch.stack([concrete.compose([g[e] for g in g_syn], [g[e] for g in g_real], distance, k, present, group)
                        for e in range(len(nets))])


def matching_loss(net: nn.Module, real: Batch, syn: Batch, scheme: str = "intra-class",
                  metric: Metric = "baseline", iteration: int = 0, num_classes: Optional[int] = None, *,
                  engine: str = "loop", precision: str = "fp32", group: Optional[Group] = None) -> Tensor:
    """``matching_losses`` of one network: the scalar loss.  ``iteration`` picks the half of the
    interleaved scheme; ``engine`` may be ``auto``; where ``batched`` cannot serve the network or the
    batches, ``fast`` runs and it is said once."""
    dtype = _check_net(net)
    real, syn = _batch("real", real, dtype), _batch("syn", syn, dtype)
    if real[0].shape[1:] != syn[0].shape[1:]:
        raise GradmatchError(f"matching_loss: real images are {tuple(real[0].shape[1:])} but syn images "
                             f"{tuple(syn[0].shape[1:])}; give images of one shape")
    iteration = checks.whole(iteration, "matching_loss: iteration")
    if num_classes is not None:
        num_classes = checks.whole(num_classes, "matching_loss: num_classes", minimum=1)
    checks.choice(precision, "matching_loss: precision", PRECISIONS, kind="precision")
    resolve_metric(metric)
    concrete = scheme_at(scheme, iteration)
    equal = concrete.mixed or (_equal_classes(real[1]) and _equal_classes(syn[1]))
    engine, note = choose_engine(engine, net, syn[0].device, None if equal else "batches of unequal size")
    if note:
        warn(note)
    try:
        return matching_losses(Networks.wrap(net), [real], [syn], concrete, metric, num_classes, engine=engine,
                               precision=precision, group=group)[0]
    except GradmatchError:
        raise
    except (RuntimeError, IndexError, ValueError) as err:  # the network refuses these images or labels
        if is_out_of_memory(err):
            raise out_of_memory("matching_loss's gradients", "give smaller batches") from None
        first = str(err).splitlines()[0] if str(err) else ""
        raise GradmatchError(f"matching_loss: the network fails on these batches ({type(err).__name__}: {first}); "
                             "give images of the shape it takes and labels below its number of outputs") from None


def _check_net(net) -> torch.dtype:
    """The dtype of ``net``'s parameters; one line if it is not a network with trainable parameters."""
    if not isinstance(net, nn.Module):
        raise GradmatchError(f"matching_loss: net must be a torch.nn.Module (e.g. gradmatch.create_model(...)); got "
                             f"{type(net).__name__}")
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise GradmatchError("matching_loss: net has no parameters that take gradients; there is nothing to match")
    return params[0].dtype


def _batch(what: str, batch, dtype: torch.dtype) -> Batch:
    """``(images, labels)``: float images N x C x H x W of the network's dtype, N integer labels >= 0."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise GradmatchError(f"matching_loss: {what} must be an (images, labels) pair of tensors; got "
                             f"{type(batch).__name__}{f' of {len(batch)}' if isinstance(batch, (tuple, list)) else ''}")
    images = checks.images(batch[0], f"matching_loss: {what} images", dtype)
    return images, checks.labels(batch[1], len(images), f"matching_loss: {what} labels")


def _equal_classes(labels: Tensor) -> bool:
    counts = torch.bincount(labels.cpu())
    return len(set(counts[counts > 0].tolist())) <= 1


__all__ = ["SCHEMES", "Scheme", "batched_obstacle", "matching_loss", "matching_losses", "per_class_turns",
           "resolve_scheme", "scheme_at"]
