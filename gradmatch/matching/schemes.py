"""What to match: the matching schemes of SPEC section 5, each one entry of ``SCHEMES``.  With several processes
each returns the share of its own classes; the shares summed are the one-process values and image gradients."""
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
from .batches import Batch, own_chunk, own_classes, split_by_class
from .distances import Metric, needed_parameters, resolve_metric, summed_distance, tensor_distance
from .engines import ENGINES, choose_engine

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
ALIASES = {"baseline": "intra-class", "intra": "intra-class", "intraclass": "intra-class", "inter": "inter-class",
           "interclass": "inter-class", "multi": "multi-level", "multilevel": "multi-level"}


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
    """The matching loss of one outer step for each network of ``nets``, shape (E,): ``reals[e]``, ``syns[e]`` are
    member e's (images, labels), grouped by class (mixed for inter-class); ``precision``: the real targets'."""
    distance = resolve_metric(metric)
    concrete = scheme_at(scheme, iteration) if isinstance(scheme, str) else scheme
    group = group or SINGLE
    names = [n for n, _ in needed_parameters(nets.members[0], distance)]
    present = int(torch.unique(syns[0][1]).numel())
    k = num_classes if num_classes is not None else present

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
    """``matching_losses`` of one network; ``iteration`` picks the half of the interleaved scheme."""
    if not isinstance(net, nn.Module):
        raise GradmatchError(f"matching_loss: net must be a torch.nn.Module (e.g. gradmatch.create_model(...)); got "
                             f"{type(net).__name__}")
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise GradmatchError("matching_loss: net has no parameters that take gradients; there is nothing to match")
    real, syn = _batch("real", real, params[0].dtype), _batch("syn", syn, params[0].dtype)
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


def _batch(what: str, batch, dtype: torch.dtype) -> Batch:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise GradmatchError(f"matching_loss: {what} must be an (images, labels) pair of tensors; got "
                             f"{type(batch).__name__}{f' of {len(batch)}' if isinstance(batch, (tuple, list)) else ''}")
    images = checks.images(batch[0], f"matching_loss: {what} images", dtype)
    return images, checks.labels(batch[1], len(images), f"matching_loss: {what} labels")


def _equal_classes(labels: Tensor) -> bool:
    counts = torch.bincount(labels.cpu())
    return len(set(counts[counts > 0].tolist())) <= 1


__all__ = ["SCHEMES", "Scheme", "matching_loss", "matching_losses", "per_class_turns", "resolve_scheme", "scheme_at"]
