"""Arithmetic precision: what ``--precision`` changes.  ``fp32`` (default): PyTorch's defaults (on NVIDIA GPUs
cuDNN convolutions already in TF32, matmuls fp32); ``tf32``: TF32 matmuls too, in every condensation step;
``bf16``: the real-gradient targets under bf16 autocast (the twice-differentiated synthetic side stays fp32);
``bf16-sim``: bf16's rounding computed in fp32, to measure its accuracy cost on CPUs without bf16 units."""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

PRECISIONS = ("fp32", "tf32", "bf16", "bf16-sim")


class _RoundBF16(torch.autograd.Function):
    """Round to bf16 and back, and the gradient too, as a bf16 tensor would."""

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
    if isinstance(x, (list, tuple)):
        return type(x)(_round_tree(v) for v in x)
    return _RoundBF16.apply(x) if isinstance(x, Tensor) and x.is_floating_point() else x


class SimulatedBF16(TorchFunctionMode):
    """Emulates bf16 autocast: every layer op's inputs, outputs and gradients rounded, arithmetic fp32."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in _BF16_OPS:
            return _round_tree(func(*_round_tree(args), **{k: _round_tree(v) for k, v in kwargs.items()}))
        return func(*args, **kwargs)


def target_context(precision: str, device):
    """The arithmetic of the real (target) gradients' pass (``precision`` checked where it was given)."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return SimulatedBF16() if precision == "bf16-sim" else nullcontext()


@contextmanager
def run_context(precision: str):
    """Around a condensation step: TF32 matmuls and convolutions for ``tf32`` (process-wide flags, restored)."""
    if precision != "tf32":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
