"""E networks of one architecture as one stack: each parameter and buffer one (E, *shape) tensor, each member a
module of views of it.  Training and re-initialisation write in place, so a captured CUDA graph stays valid."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from .registry import create_model, has_batchnorm


def fresh_network(model: str, channel: int, num_classes: int, im_size, seed: int) -> nn.Module:
    """``create_model`` initialised from ``seed`` on the CPU, leaving the global random stream alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(model, channel, num_classes, im_size)


def _rebind(module: nn.Module, name: str, tensor: Tensor, parameter: bool) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if parameter:
        owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=owner._parameters[leaf].requires_grad)
    else:
        owner._buffers[leaf] = tensor


class Networks:
    """``members`` (E modules) sharing the stacked storage ``params``/``buffers`` ({name: (E, *shape)})."""

    def __init__(self, members: Sequence[nn.Module], architecture: Optional[tuple] = None):
        self.members: List[nn.Module] = list(members)
        first = self.members[0]
        self.architecture = architecture  # (model, channel, num_classes, im_size): what reset() rebuilds
        self.trainable = [n for n, p in first.named_parameters() if p.requires_grad]
        self.params: Dict[str, Tensor] = {n: torch.stack([m.get_parameter(n).detach() for m in self.members])
                                          for n, _ in first.named_parameters()}
        self.buffers: Dict[str, Tensor] = {n: torch.stack([m.get_buffer(n) for m in self.members])
                                           for n, _ in first.named_buffers()}
        for e, member in enumerate(self.members):
            for n, t in self.params.items():
                _rebind(member, n, t[e], parameter=True)
            for n, t in self.buffers.items():
                _rebind(member, n, t[e], parameter=False)

    @classmethod
    def build(cls, model: str, channel: int, num_classes: int, im_size, seeds: Sequence[int],
              device=None) -> "Networks":
        """One fresh ``model`` per seed (initialised on the CPU), stacked on ``device``."""
        nets = [fresh_network(model, channel, num_classes, im_size, s).to(device or "cpu") for s in seeds]
        return cls(nets, (model, channel, num_classes, tuple(im_size)))

    @classmethod
    def wrap(cls, net: nn.Module) -> "Networks":
        """A stack of one around an existing network: views of its own tensors, nothing copied or rebound."""
        self = cls.__new__(cls)
        self.members, self.architecture = [net], None
        self.trainable = [n for n, p in net.named_parameters() if p.requires_grad]
        self.params = {n: p.detach().unsqueeze(0) for n, p in net.named_parameters()}
        self.buffers = {n: b.unsqueeze(0) for n, b in net.named_buffers()}
        return self

    def reset(self, seeds: Sequence[int]) -> None:
        """Fresh networks from ``seeds``, copied into the same storage (as ``build`` would make them)."""
        if self.architecture is None:
            raise ValueError("a wrapped network cannot be re-initialised")
        fresh = [fresh_network(*self.architecture, s) for s in seeds]
        with torch.no_grad():
            for name, stacked in self.params.items():
                stacked.copy_(torch.stack([m.get_parameter(name).detach() for m in fresh]))
            for name, stacked in self.buffers.items():
                stacked.copy_(torch.stack([m.get_buffer(name) for m in fresh]))

    def __len__(self) -> int:
        return len(self.members)

    @property
    def has_batchnorm(self) -> bool:
        return has_batchnorm(self.members[0])

    def train(self, mode: bool = True) -> None:
        for member in self.members:
            member.train(mode)
