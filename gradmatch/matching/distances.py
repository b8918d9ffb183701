"""How to compare two gradients: the distances of SPEC section 6, as the seed's code computes them.

Every distance works on lists of per-parameter gradient tensors.  The layer-wise ones view each
tensor as rows, one per output unit, and skip 1-D tensors (biases and norm scales):

* ``baseline``: sum over rows of 1 - cos, the cosine as the seed's ``distance_baseline`` computes it,
  ``torch.nn.functional.cosine_similarity`` (its epsilon, 1e-8, bounds each norm);
* ``improved``: the seed's ``distance_improved``: the same cosine term plus each row's Euclidean distance;
* ``dc`` (also ``ours``, DC's own name): DC's original ``distance_wb`` (VICO-UoE/DatasetCondensation),
  1e-6 added to the product of the two row norms; for reproducing VICO's code;
* a user's own per-tensor function of (syn_rows, real_rows).

``mse`` and ``cos`` compare the whole flattened gradient vectors, biases included, as the seed does.
"""
from __future__ import annotations

import importlib
from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import GradmatchError, unknown_name

DC_EPS = 1e-6  # DC's distance_wb adds this to the product of the row norms

PerTensorDistance = Callable[[Tensor, Tensor], Tensor]
Metric = Union[str, PerTensorDistance]


def as_rows(grad: Tensor) -> Tensor:
    """View a gradient as one row per output unit: conv (out, in*kh*kw), linear as is, a 3-D norm
    weight (C, h*w)."""
    return grad.reshape(grad.shape[0], -1)


def baseline_distance(syn: Tensor, real: Tensor) -> Tensor:
    """The seed's distance_baseline: sum over rows of (1 - cos)."""
    return torch.sum(1 - F.cosine_similarity(real, syn, dim=-1))


def improved_distance(syn: Tensor, real: Tensor) -> Tensor:
    """The seed's distance_improved (Jiang et al.): the angle and the magnitude, per row."""
    return torch.sum((1 - F.cosine_similarity(real, syn, dim=-1)) + torch.norm(real - syn, dim=-1))


def dc_distance(syn: Tensor, real: Tensor) -> Tensor:
    """DC's distance_wb: sum over rows of (1 - cos), 1e-6 added to the product of the norms."""
    return torch.sum(1 - torch.sum(real * syn, dim=-1) / (torch.norm(real, dim=-1) * torch.norm(syn, dim=-1) + DC_EPS))


LAYERWISE: dict[str, PerTensorDistance] = {"baseline": baseline_distance, "improved": improved_distance,
                                           "dc": dc_distance}
ALIASES = {"ours": "dc"}  # DC's own name for its distance
METRICS = sorted([*LAYERWISE, "mse", "cos"])


def _flat(grads: Sequence[Tensor]) -> Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def resolve_metric(metric: Metric) -> Metric:
    """Turn a metric name, an alias or ``package.module:function`` into what ``gradient_distance`` takes.

    Raises GradmatchError for an unknown name or a function that cannot be imported.
    """
    if callable(metric):
        return metric
    name = ALIASES.get(metric, metric)
    if name in LAYERWISE or name in ("mse", "cos"):
        return name
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise GradmatchError(
                f"--dis_metric {metric}: cannot import module '{module_name}' ({err}); "
                "make it importable (PYTHONPATH) or fix the name") from None
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise GradmatchError(f"--dis_metric {metric}: module '{module_name}' has no function '{attr}'")
        return fn
    raise unknown_name("distance (--dis_metric)", metric, METRICS + ["package.module:function"])


def gradient_distance(gw_syn: Sequence[Tensor], gw_real: Sequence[Tensor], metric: Metric = "baseline") -> Tensor:
    """D(gw_syn, gw_real) summed over parameter tensors (SPEC section 6).

    ``metric`` is a name (baseline, improved, mse, cos), ``package.module:function``, or a callable
    ``d(syn_rows, real_rows) -> scalar`` applied to each multi-dimensional tensor viewed as rows
    (1-D tensors contribute nothing, as in the seed's ``distance_improved``).
    """
    metric = resolve_metric(metric)
    if metric == "mse":
        return ((_flat(gw_syn) - _flat(gw_real)) ** 2).sum()
    if metric == "cos":
        return 1 - F.cosine_similarity(_flat(gw_real), _flat(gw_syn), dim=-1)
    per_tensor = LAYERWISE[metric] if isinstance(metric, str) else metric
    total = gw_syn[0].new_zeros(())
    for syn, real in zip(gw_syn, gw_real):
        if syn.dim() > 1:
            total = total + per_tensor(as_rows(syn), as_rows(real))
    return total


def summed_distance(syn: Sequence[Tensor], real: Sequence[Tensor], metric: Metric = "baseline") -> Tensor:
    """sum_k D(syn[.][k], real[.][k]) over K-stacked gradients (one (K, *shape) tensor per parameter):
    ``gradient_distance`` of the K class pairs at once (``torch.func.vmap`` over the K axis), one
    batched op per parameter tensor instead of K small ones."""
    metric = resolve_metric(metric)
    if not isinstance(metric, str):  # a user's distance need not be vmappable: one class pair at a time
        return sum(gradient_distance([s[i] for s in syn], [r[i] for r in real], metric) for i in range(len(syn[0])))
    return torch.func.vmap(lambda s, r: gradient_distance(s, r, metric))(list(syn), list(real)).sum()
