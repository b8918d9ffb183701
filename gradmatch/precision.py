"""Arithmetic precision: what ``--precision`` changes.

* ``fp32`` (default): PyTorch's defaults.  On NVIDIA GPUs that already means cuDNN convolutions in
  TF32 (``torch.backends.cudnn.allow_tf32`` is True by default) and matmuls in full fp32
  (``torch.backends.cuda.matmul.allow_tf32`` is False by default); on CPU everything is fp32.
* ``tf32``: TF32 for the matmuls too (GPUs with tensor cores; the CPU ignores it), in every
  condensation step (matching and inner training); the evaluation keeps PyTorch's defaults.
* ``bf16``: the real-gradient targets under bf16 autocast on the tensors' device (GPUs, and CPUs with
  bf16 units); the synthetic side, which is differentiated twice, stays fp32.
* ``bf16-sim``: the rounding of ``bf16`` computed in fp32, to measure bf16's accuracy cost on CPUs
  without bf16 arithmetic (``SimulatedBF16``).
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .errors import unknown_name

PRECISIONS = ("fp32", "tf32", "bf16", "bf16-sim")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise unknown_name("precision (--precision)", precision, PRECISIONS)
    return precision


class _RoundBF16(torch.autograd.Function):
    """Round to bf16 and back (forward), and the gradient too (backward), as a bf16 tensor would."""

    generate_vmap_rule = True  # so that the batched engine (torch.func) can use it

    @staticmethod
    def forward(x):
        return x.to(torch.bfloat16).to(x.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g.to(torch.bfloat16).to(g.dtype)


_BF16_OPS = {"conv1d", "conv2d", "conv3d", "linear", "group_norm", "layer_norm", "batch_norm", "instance_norm",
             "relu", "leaky_relu", "sigmoid", "avg_pool2d", "max_pool2d", "max_pool2d_with_indices", "matmul",
             "addmm", "mm", "bmm"}


def _round_tree(x):
    if isinstance(x, Tensor) and x.is_floating_point():
        return _RoundBF16.apply(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_round_tree(v) for v in x)
    return x


class SimulatedBF16(TorchFunctionMode):
    """Emulates bf16 autocast on CPUs without bf16 arithmetic: the inputs, parameters and outputs of
    every layer op (and their gradients) are rounded to bf16, the arithmetic stays fp32 (as bf16
    kernels accumulate in fp32)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in _BF16_OPS:
            return _round_tree(func(*_round_tree(args), **{k: _round_tree(v) for k, v in kwargs.items()}))
        return func(*args, **kwargs)


def target_context(precision: str, device):
    """The arithmetic of the real (target) gradients' pass."""
    check_precision(precision)
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    if precision == "bf16-sim":
        return SimulatedBF16()
    return nullcontext()


@contextmanager
def run_context(precision: str):
    """The settings around a condensation step: TF32 matmuls (and convolutions) for ``tf32``
    (process-wide flags, restored after)."""
    check_precision(precision)
    if precision != "tf32":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
