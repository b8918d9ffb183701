"""Model registry (timm-style): builders are registered by name and built with :func:`create_model`.

A builder is a function ``builder(channel, num_classes, im_size, **kwargs) -> nn.Module`` where
``im_size`` is an ``(H, W)`` tuple.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Callable

from torch import nn

from gradmatch.errors import GradmatchError, unknown_name
from gradmatch.models.layers import ImageTooSmallError

Builder = Callable[..., nn.Module]

_MODELS: dict[str, Builder] = {}

# Upper bound when searching for an image size that fits a network (error path only).
_MAX_SUGGESTED_SIZE = 1024


def register_model(fn: Builder | None = None, *, name: str | None = None):
    """Register a model builder under ``name`` (default: the function's ``__name__``).

    Use as ``@register_model``, ``@register_model(name="X")`` or ``register_model(fn, name="X")``.
    Returns the builder unchanged. Registering a name twice is a programming error (``ValueError``).
    """

    def decorator(f: Builder) -> Builder:
        key = name or f.__name__
        if key in _MODELS:
            raise ValueError(f"model '{key}' is already registered")
        _MODELS[key] = f
        return f

    return decorator(fn) if fn is not None else decorator


def list_models(filter: str = "") -> list[str]:
    """Sorted names of all registered models, optionally those matching a shell-style ``filter``."""
    names = sorted(_MODELS)
    if filter:
        names = [n for n in names if fnmatch.fnmatchcase(n, filter)]
    return names


def _resolve(name: str) -> str:
    if name in _MODELS:
        return name
    matches = [n for n in _MODELS if n.lower() == str(name).lower()]
    if len(matches) == 1:
        return matches[0]
    raise unknown_name("model", name, _MODELS)


def is_model(name: str) -> bool:
    """Whether ``name`` (case-insensitively) names a registered model."""
    try:
        _resolve(name)
    except GradmatchError:
        return False
    return True


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GradmatchError(f"{what} must be a positive integer, got {value!r}")
    return value


def _im_size(im_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(im_size, int) and not isinstance(im_size, bool):
        im_size = (im_size, im_size)
    try:
        h, w = (int(s) for s in im_size)
    except (TypeError, ValueError):
        raise GradmatchError(f"im_size must be an int or a (height, width) pair, got {im_size!r}") from None
    if h < 1 or w < 1:
        raise GradmatchError(f"im_size must be positive, got {h}x{w}")
    return h, w


def _smallest_square_that_fits(builder: Builder, channel: int, num_classes: int, start: int,
                               kwargs) -> int | None:
    """A square image size (>= ``start``) the network accepts, close to the smallest; None if none."""

    def fits(s: int) -> bool:
        try:
            builder(channel, num_classes, (s, s), **kwargs)
        except ImageTooSmallError:
            return False
        return True

    lo, hi = start, max(2 * start, 2)
    while not fits(hi):
        lo, hi = hi, 2 * hi
        if hi > _MAX_SUGGESTED_SIZE:
            return None
    while hi - lo > 1:  # lo fails, hi fits
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


def create_model(name: str, channel: int, num_classes: int,
                 im_size: int | Sequence[int] = (32, 32), **kwargs) -> nn.Module:
    """Build the model registered as ``name`` for ``channel`` x ``im_size`` images and ``num_classes``.

    ``im_size`` is ``(H, W)`` or an int for square images. Extra keyword arguments go to the builder
    (e.g. ``width=64`` for ConvNet). The model is returned in train mode with PyTorch's default init.
    """
    key = _resolve(name)
    channel = _positive_int(channel, "channel")
    num_classes = _positive_int(num_classes, "num_classes")
    size = _im_size(im_size)
    builder = _MODELS[key]
    try:
        return builder(channel, num_classes, size, **kwargs)
    except ImageTooSmallError as e:
        fit = _smallest_square_that_fits(builder, channel, num_classes, max(size), kwargs)
        hint = f"; use larger images, e.g. {fit}x{fit}" if fit else "; use larger images"
        raise GradmatchError(f"{e}{hint}") from None


def has_batchnorm(net: nn.Module) -> bool:
    """Whether ``net`` contains any BatchNorm layer (those need batches > 1 and have running stats)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
