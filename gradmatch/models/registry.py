"""Model registry (timm-style): ``builder(channel, num_classes, im_size, **kwargs) -> nn.Module`` registered
by name with ``@register_model``, or named as ``package.module:function`` and imported (called with keywords);
``create_model`` builds one, ``check_network`` tries one as gradient matching uses it, before any work."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gradmatch import checks
from gradmatch.errors import GradmatchError, is_out_of_memory, out_of_memory, unknown_name
from gradmatch.models.layers import ImageTooSmallError
from gradmatch.usercode import import_function, staying_here

Builder = Callable[..., nn.Module]

_MODELS: dict[str, Builder] = {}
_MAX_SUGGESTED_SIZE = 1024  # the largest image size suggested to a network that finds its images too small


def register_model(fn: Builder | None = None, *, name: str | None = None):
    """``@register_model``, ``@register_model(name="X")`` or ``register_model(fn, name="X")``: the builder,
    unchanged, under ``name`` (default its ``__name__``); registering a name twice is a ``ValueError``."""
    def decorator(f: Builder) -> Builder:
        key = name or f.__name__
        if key in _MODELS:
            raise ValueError(f"model '{key}' is already registered")
        _MODELS[key] = f
        return f
    return decorator(fn) if fn is not None else decorator


def list_models(filter: str = "") -> list[str]:
    """Sorted names of all registered models, optionally those matching a shell-style ``filter``."""
    return sorted(n for n in _MODELS if not filter or fnmatch.fnmatchcase(n, filter))


def _user_builder(name: str) -> Builder:
    """``package.module:function`` imported, wrapped so a call keeps the working folder and says a sys.exit."""
    fn = import_function("--model", name)

    def build(channel, num_classes, im_size, **kwargs):
        called = f"calling it with channel={channel}, num_classes={num_classes}, im_size={im_size}"
        try:
            with staying_here("--model", name, "while building a network"):
                net = fn(channel=channel, num_classes=num_classes, im_size=im_size, **kwargs)
        except GradmatchError:
            raise
        except SystemExit as err:
            raise GradmatchError(f"--model {name}: {called} called sys.exit({err.code!r}); it must return a "
                                 "torch.nn.Module") from None
        except Exception as err:  # noqa: BLE001 - a user's function can fail in any way
            raise GradmatchError(f"--model {name}: {called} failed ({type(err).__name__}: {err})") from None
        if not isinstance(net, nn.Module):
            raise GradmatchError(f"--model {name} returned {type(net).__name__}; it must return a torch.nn.Module")
        return net

    return build


def is_user_model(name) -> bool:
    return isinstance(name, str) and ":" in name


def _resolve(name: str) -> str:
    if not isinstance(name, str):
        raise GradmatchError(f"--model takes a model name, got {name!r}")
    if name in _MODELS or is_user_model(name):
        return name
    matches = [n for n in _MODELS if n.lower() == str(name).lower()]
    if len(matches) == 1:
        return matches[0]
    raise unknown_name("model", name, _MODELS)


def is_model(name: str) -> bool:
    """Whether ``name`` names a registered model (case-insensitively) or an importable function."""
    try:
        check_model_name(name)
    except GradmatchError:
        return False
    return True


def check_model_name(name) -> None:
    """GradmatchError (one line) for a name that names no model: unknown, or a function that cannot be imported."""
    key = _resolve(name)
    if is_user_model(key):
        _user_builder(key)


TRIAL_BATCHES = (2, 3)  # a network must take any batch size: two of them tell one that takes a fixed one


def check_network(name: str, channel: int, num_classes: int, im_size) -> None:
    """Build ``name`` (leaving the global random stream alone) and try it as gradient matching will, before any work."""
    with torch.random.fork_rng(devices=[]):
        net = create_model(name, channel, num_classes, im_size)
        trainable = _check_parameters(name, net)
        for batch in TRIAL_BATCHES:
            _trial(name, net, trainable, batch, channel, num_classes, im_size)


def _names(params) -> str:
    listed = [n or "(unnamed)" for n, _ in params]
    return ", ".join(listed[:4]) + (f" and {len(listed) - 4} more" if len(listed) > 4 else "")


def _check_parameters(name: str, net: nn.Module) -> list:
    """The trainable (name, parameter) pairs, checked for what gradient matching needs of them."""
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    if not trainable:
        raise GradmatchError(f"--model {name} has no parameters that take gradients; gradient matching needs them")
    dtype = torch.get_default_dtype()
    other = [(n, p) for n, p in net.named_parameters() if p.dtype != dtype]
    if other:
        kind = str(other[0][1].dtype).replace("torch.", "")
        want = str(dtype).replace("torch.", "")
        raise GradmatchError(f"--model {name} has {kind} parameters ({_names(other)}) but the data are {want}: build "
                             f"it in {want} (torch's default dtype), without .double()/.half() or a dtype=")
    if all(p.dim() < 2 for _, p in trainable):
        raise GradmatchError(f"--model {name} has only 1-D parameters ({_names(trainable)}): nothing a layer-wise "
                             "distance (--dis_metric baseline, improved, dc) can match, as it matches weights of 2 or "
                             "more dimensions; give it a weight layer (nn.Linear, nn.Conv2d)")
    return trainable


def _trial(name: str, net: nn.Module, trainable: list, batch: int, channel: int, num_classes: int, im_size) -> None:
    """One forward and backward pass of ``net`` on ``batch`` random images, checked."""
    shape = f"{channel}x{'x'.join(map(str, im_size))}"
    images = torch.randn(batch, channel, *im_size)
    given = images.clone()
    labels = torch.randint(num_classes, (batch,))
    net.zero_grad(set_to_none=True)
    try:
        with torch.enable_grad():
            out = net.train()(images)
            if isinstance(out, torch.Tensor) and tuple(out.shape) == (batch, num_classes) and out.is_floating_point():
                F.cross_entropy(out, labels).backward()
    except (Exception, SystemExit) as err:  # noqa: BLE001 - any failure means it does not take such batches
        text = str(err).splitlines()[0] if str(err) else ""
        fixed = f"; it takes a batch of {TRIAL_BATCHES[0]} but must take a batch of any size" \
            if batch != TRIAL_BATCHES[0] else ""
        raise GradmatchError(f"--model {name} fails on a batch of {batch} images of {shape} ({type(err).__name__}: "
                             f"{text}){fixed}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (batch, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise GradmatchError(f"--model {name} returns {got} for a batch of {batch} images; it must return ({batch}, "
                             f"{num_classes}): one score per class")
    if not out.is_floating_point():
        raise GradmatchError(f"--model {name} returns {str(out.dtype).replace('torch.', '')} scores; it must return "
                             "float scores, one per class")
    if not torch.equal(images, given):
        raise GradmatchError(f"--model {name} changes the images it is given (an in-place first operation, such as "
                             "nn.ReLU(inplace=True) applied to its input); the images are what gradient matching "
                             "learns: make that first operation out of place (inplace=False)")
    if not bool(torch.isfinite(out).all()):
        raise GradmatchError(f"--model {name} gives non-finite scores on a batch of random images (nan or inf); fix "
                             "its forward pass (a log or a division of values that can be 0 or negative)")
    unused = [(n, p) for n, p in trainable if p.grad is None]
    if unused:
        raise GradmatchError(f"--model {name}: its parameter(s) {_names(unused)} take no gradient (its forward "
                             "pass does not use them); remove them, or set requires_grad=False on them")
    bad = [(n, p) for n, p in trainable if not bool(torch.isfinite(p.grad).all())]
    if bad:
        raise GradmatchError(f"--model {name} gives non-finite gradients (in {_names(bad)}) on a batch of random "
                             "images; fix its forward pass")
    net.zero_grad(set_to_none=True)


def _smallest_square_that_fits(builder: Builder, channel: int, num_classes: int, start: int, kwargs) -> int | None:
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
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def create_model(name: str, channel: int, num_classes: int,
                 im_size: int | Sequence[int] = (32, 32), **kwargs) -> nn.Module:
    """Model ``name`` for ``channel`` x ``im_size`` ((H, W) or an int) images and ``num_classes``, in train mode
    with PyTorch's default init; keyword arguments go to the builder (e.g. ``width=64`` for ConvNet)."""
    key = _resolve(name)
    channel = checks.whole(channel, "create_model: channel", minimum=1)
    num_classes = checks.whole(num_classes, "create_model: num_classes", minimum=1)
    size = checks.size(im_size, "create_model: im_size")
    builder = _user_builder(key) if is_user_model(key) else _MODELS[key]
    try:
        return builder(channel, num_classes, size, **kwargs)
    except ImageTooSmallError as e:
        fit = _smallest_square_that_fits(builder, channel, num_classes, max(size), kwargs)
        hint = f"; use larger images, e.g. {fit}x{fit}" if fit else "; use larger images"
        raise ImageTooSmallError(f"{e}{hint}") from None
    except GradmatchError:
        raise
    except TypeError as e:  # a keyword the builder does not take
        if not kwargs or "argument" not in str(e):
            raise
        raise GradmatchError(f"create_model: {key} does not take {', '.join(f'{k}=' for k in kwargs)} ({e})") from None
    except (RuntimeError, MemoryError, ValueError) as e:
        if is_out_of_memory(e):
            raise out_of_memory(f"{key} for {channel}x{size[0]}x{size[1]} images and {num_classes} classes",
                                "choose smaller images (--size), fewer channels or another model") from None
        if isinstance(e, ValueError) and kwargs:  # e.g. width=0: a layer refuses the builder's numbers
            raise GradmatchError(f"create_model: {key} cannot be built with {kwargs} ({e})") from None
        raise


def has_batchnorm(net: nn.Module) -> bool:
    """Whether ``net`` contains any BatchNorm layer (those need batches > 1 and have running stats)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
