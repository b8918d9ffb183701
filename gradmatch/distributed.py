"""Multi-process runs on ``torch.distributed``, launched by ``torchrun --nproc_per_node 4 -m gradmatch ...``.

Every process holds the same set, network and random draws; process r matches the classes c with
``c % world == r`` and the image gradients are summed, so N processes learn the images of one up to rounding."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import GradmatchError


@dataclass(frozen=True)
class Group:
    """This process's place in the job; with ``world == 1`` every collective is the identity."""
    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, index: int) -> bool:
        """Whether class (or network) ``index`` is this process's work (``gather`` relies on it)."""
        return index % self.world == self.rank

    def chunk(self, n: int) -> slice:
        """This process's contiguous share of ``n`` items (sizes differ by at most one)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    @torch.no_grad()  # in place on values, never part of a graph
    def sum_(self, tensors: Sequence[Tensor]) -> None:
        if self.active:
            for t in tensors:
                dist.all_reduce(t)

    def global_sum(self, local: Sequence[Tensor]) -> List[Tensor]:
        """The sum over processes of ``local``, differentiable through this process's share only."""
        if not self.active:
            return list(local)
        totals = [t.detach().clone() for t in local]
        self.sum_(totals)
        return [t + (total - t.detach()) for t, total in zip(local, totals)]

    def share(self, term: Tensor) -> Tensor:
        """A term every process computes whole: its value split evenly, its gradient whole."""
        return term - term.detach() * (1 - 1 / self.world) if self.active else term

    @torch.no_grad()
    def broadcast_(self, tensors: Sequence[Tensor], src: int = 0) -> None:
        if self.active:
            for t in tensors:
                dist.broadcast(t, src)

    def gather(self, values: Sequence[float], n: int) -> List[float]:
        """Every item's value, in order, on every process, from items 0..n-1 shared out as ``owns`` says."""
        if not self.active:
            return list(values)
        out = [None] * self.world
        dist.all_gather_object(out, list(values))
        streams = [iter(v) for v in out]
        return [next(streams[i % self.world]) for i in range(n)]


SINGLE = Group()


def current() -> Group:
    """torch.distributed's default group if initialised, else one process."""
    return Group(dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else SINGLE


def init(device: Optional[str] = None) -> tuple[Group, Optional[str]]:
    """Join the job torchrun started: the group and this process's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():  # not one of several (torchrun's)
        return current(), device
    if device is None and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    on_gpu = device is not None and str(device).startswith("cuda")
    if on_gpu:
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        try:
            dist.init_process_group("nccl" if on_gpu else "gloo")
        except (RuntimeError, ValueError) as err:
            raise GradmatchError(f"cannot join the torchrun job ({err}); launch with torchrun "
                                 "--nproc_per_node N, or unset WORLD_SIZE for one process") from None
    return current(), device


def shutdown(wait_for_others: bool = True) -> None:
    """Leave the job; after a normal end, a barrier first: a process tearing its connections down while another
    still finished its last collective made gloo abort (SIGABRT) in about one exit in twenty."""
    if dist.is_available() and dist.is_initialized():
        if wait_for_others:
            dist.barrier()
        dist.destroy_process_group()
