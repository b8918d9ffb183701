"""How to compare two gradients: the distances of SPEC section 6.

Every distance works on lists of per-parameter gradient tensors.  The layer-wise ones (``baseline``,
``improved``, a user's own) view each tensor as rows, one per output unit, and skip 1-D tensors
(biases and norm scales), exactly as DC's ``distance_wb``; ``mse`` and ``cos`` compare the whole
flattened gradient vectors.
"""
from __future__ import annotations

import importlib
from typing import Callable, Sequence, Union

import torch
from torch import Tensor

from ..errors import GradmatchError, unknown_name

# DC adds this to the product of the row norms so an all-zero row does not divide by zero.
EPS = 1e-6

PerTensorDistance = Callable[[Tensor, Tensor], Tensor]
Metric = Union[str, PerTensorDistance]


def as_rows(grad: Tensor) -> Tensor:
    """View a gradient as one row per output unit: conv (out, in*kh*kw), linear as is, a 3-D norm
    weight (C, h*w)."""
    return grad.reshape(grad.shape[0], -1)


def _cosine_rows(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + EPS)


def baseline_distance(syn: Tensor, real: Tensor) -> Tensor:
    """DC: sum over rows of (1 - cos)."""
    return (1 - _cosine_rows(syn, real)).sum()


def improved_distance(syn: Tensor, real: Tensor) -> Tensor:
    """Jiang et al.: the angle first, the magnitude too: sum over rows of (1 - cos) + ||a - b||."""
    return (1 - _cosine_rows(syn, real)).sum() + (syn - real).norm(dim=-1).sum()


LAYERWISE: dict[str, PerTensorDistance] = {"baseline": baseline_distance, "improved": improved_distance}
# "ours" is DC's own name for its layer-wise distance.
ALIASES = {"ours": "baseline", "dc": "baseline"}
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
        a, b = _flat(gw_syn), _flat(gw_real)
        return 1 - (a * b).sum() / (a.norm() * b.norm() + EPS)
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
