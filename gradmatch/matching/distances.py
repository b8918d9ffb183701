"""How to compare two gradients: the distances of SPEC section 6, as the seed's code computes them.

Each is one entry of ``DISTANCES``: the layer-wise ones (``baseline``, ``improved``, ``dc``, alias ``ours``)
view each tensor as rows, one per output unit, and skip 1-D tensors; the whole-vector ones (``mse``, ``cos``)
compare the flattened gradient, biases included.  A user's own is ``package.module:function``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import GradmatchError, unknown_name

DC_EPS = 1e-6  # DC's distance_wb adds this to the product of the row norms

PerTensorDistance = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Distance:
    """``fn(syn, real)``: of two row matrices (layer-wise) or of two flat vectors (``whole_vector``)."""
    name: str
    fn: PerTensorDistance
    whole_vector: bool = False
    builtin: bool = True  # ours: vmappable; a user's function is called one class pair at a time


def as_rows(grad: Tensor) -> Tensor:
    """View a gradient as one row per output unit: conv (out, in*kh*kw), linear as is, a 3-D norm weight (C, h*w)."""
    return grad.reshape(grad.shape[0], -1)


def baseline_distance(syn: Tensor, real: Tensor) -> Tensor:
    """The seed's distance_baseline: sum over rows of (1 - cos), F.cosine_similarity's eps bounding each norm."""
    return torch.sum(1 - F.cosine_similarity(real, syn, dim=-1))


def improved_distance(syn: Tensor, real: Tensor) -> Tensor:
    """The seed's distance_improved (Jiang et al.): the angle and the magnitude, per row."""
    return torch.sum((1 - F.cosine_similarity(real, syn, dim=-1)) + torch.norm(real - syn, dim=-1))


def dc_distance(syn: Tensor, real: Tensor) -> Tensor:
    """DC's distance_wb: sum over rows of (1 - cos), 1e-6 added to the product of the norms."""
    return torch.sum(1 - torch.sum(real * syn, dim=-1) / (torch.norm(real, dim=-1) * torch.norm(syn, dim=-1) + DC_EPS))


def mse_distance(syn: Tensor, real: Tensor) -> Tensor:
    return ((syn - real) ** 2).sum()


def cos_distance(syn: Tensor, real: Tensor) -> Tensor:
    return 1 - F.cosine_similarity(real, syn, dim=-1)


DISTANCES: Dict[str, Distance] = {d.name: d for d in (
    Distance("baseline", baseline_distance), Distance("improved", improved_distance), Distance("dc", dc_distance),
    Distance("mse", mse_distance, whole_vector=True), Distance("cos", cos_distance, whole_vector=True))}
LAYERWISE = {name: d.fn for name, d in DISTANCES.items() if not d.whole_vector}
ALIASES = {"ours": "dc"}  # DC's own name for its distance
METRICS = sorted(DISTANCES)
Metric = Union[str, PerTensorDistance, Distance]


def resolve_metric(metric: Metric) -> Distance:
    """A name, an alias, ``package.module:function`` or a callable -> the ``Distance`` it means."""
    if isinstance(metric, Distance):
        return metric
    if callable(metric):
        return Distance(getattr(metric, "__name__", "custom"), metric, builtin=False)
    if not isinstance(metric, str):
        raise GradmatchError(f"--dis_metric takes a distance name or package.module:function, got {metric!r}")
    name = ALIASES.get(metric, metric)
    if name in DISTANCES:
        return DISTANCES[name]
    if ":" in name:
        from ..usercode import import_function

        fn = import_function("--dis_metric", name)
        return Distance(name.partition(":")[2], fn, builtin=False)
    raise unknown_name("distance (--dis_metric)", metric, METRICS + ["package.module:function"])


def needed_parameters(net: nn.Module, metric: Metric) -> List[Tuple[str, Tensor]]:
    """(name, parameter) pairs whose gradients the distance reads."""
    whole = resolve_metric(metric).whole_vector
    return [(n, p) for n, p in net.named_parameters() if p.requires_grad and (whole or p.dim() > 1)]


def gradient_distance(gw_syn: Sequence[Tensor], gw_real: Sequence[Tensor], metric: Metric = "baseline") -> Tensor:
    """D(gw_syn, gw_real) summed over parameter tensors (SPEC section 6), a caller's lists checked first."""
    for what, grads in (("gw_syn", gw_syn), ("gw_real", gw_real)):
        if isinstance(grads, Tensor) or not isinstance(grads, (list, tuple)) or not grads or \
                not all(isinstance(g, Tensor) and g.is_floating_point() for g in grads):
            raise GradmatchError(f"gradient_distance: {what} must be a non-empty list of float gradient tensors (one "
                                 f"per parameter); got {type(grads).__name__}")
    if len(gw_syn) != len(gw_real):
        raise GradmatchError(f"gradient_distance: {len(gw_syn)} synthetic and {len(gw_real)} real gradients; give one "
                             "of each per parameter")
    for i, (syn, real) in enumerate(zip(gw_syn, gw_real)):
        if syn.shape != real.shape:
            raise GradmatchError(f"gradient_distance: gradient {i} is {tuple(syn.shape)} (syn) but {tuple(real.shape)} "
                                 "(real); give the two gradients of one parameter in the same order")
    return tensor_distance(gw_syn, gw_real, metric)


def tensor_distance(gw_syn: Sequence[Tensor], gw_real: Sequence[Tensor], metric: Metric = "baseline") -> Tensor:
    """``gradient_distance`` without its argument checks: the matching core's per-step calls."""
    distance = resolve_metric(metric)
    if distance.whole_vector:
        return distance.fn(*(torch.cat([g.reshape(-1) for g in grads]) for grads in (gw_syn, gw_real)))
    total = gw_syn[0].new_zeros(())
    for syn, real in zip(gw_syn, gw_real):
        if syn.dim() > 1:
            total = total + distance.fn(as_rows(syn), as_rows(real))
    return total


def summed_distance(syn: Sequence[Tensor], real: Sequence[Tensor], metric: Metric = "baseline") -> Tensor:
    """sum_k D over K-stacked gradients (one (K, *shape) tensor per parameter), vmapped."""
    distance = resolve_metric(metric)
    if not distance.builtin:  # a user's distance need not be vmappable: one class pair at a time
        return sum(tensor_distance([s[i] for s in syn], [r[i] for r in real], distance)
                   for i in range(len(syn[0])))
    return torch.func.vmap(lambda s, r: tensor_distance(s, r, distance))(list(syn), list(real)).sum()
