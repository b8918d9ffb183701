"""Multi-process runs on ``torch.distributed``, as launched by ``torchrun``.

    torchrun --standalone --nproc_per_node 4 multi-level.py --dataset CIFAR10 --ipc 10 --data_path ~/data
    torchrun --nproc_per_node 4 -m gradmatch condense --scheme multi-level ...

Every process holds the whole synthetic set, the same network and the same random draws (they come
from seeds, not from the process).  The matching step is shared by class: process r computes the
terms of the classes c with ``c % world == r`` (a chunk of the mixed batches for inter-class), the
image gradients are summed over processes, and every process takes the same image step; the terms
that need every class (multi-level's mean gradient, inter-class's batch gradient) are built from
gradients summed over processes.  So a run on N processes learns the same images as on one, up to
float rounding.  The evaluation networks are shared out too (network k on process ``k % world``).
Only process 0 writes files and shows progress.
"""
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
    """This process's place in the job (``rank`` of ``world``) and the collectives the loop needs.
    With ``world == 1`` every method is the identity, so single-process code needs no branches."""
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
        """Sum each tensor over processes, in place."""
        if self.active:
            for t in tensors:
                dist.all_reduce(t)

    def global_sum(self, local: Sequence[Tensor]) -> List[Tensor]:
        """The sum over processes of ``local``, differentiable through this process's share only:
        the other processes' shares are constants here (their gradients are taken there)."""
        if not self.active:
            return list(local)
        totals = [t.detach().clone() for t in local]
        self.sum_(totals)
        return [t + (total - t.detach()) for t, total in zip(local, totals)]

    def share(self, term: Tensor) -> Tensor:
        """A term every process computes whole (from ``global_sum``s): its value is split evenly, so
        the processes' losses sum to the full loss, while its gradient stays whole."""
        if not self.active:
            return term
        return term - term.detach() * (1 - 1 / self.world)

    @torch.no_grad()
    def broadcast_(self, tensors: Sequence[Tensor], src: int = 0) -> None:
        if self.active:
            for t in tensors:
                dist.broadcast(t, src)

    def gather(self, values: Sequence[float], n: int) -> List[float]:
        """Items 0..n-1 shared out as ``owns`` says, this process holding the values of its own (in
        order): every item's value, in order, on every process."""
        if not self.active:
            return list(values)
        out = [None] * self.world
        dist.all_gather_object(out, list(values))
        streams = [iter(v) for v in out]
        return [next(streams[i % self.world]) for i in range(n)]


SINGLE = Group()


def current() -> Group:
    """The job this process is part of: torch.distributed's default group if initialised, else one
    process."""
    if dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size())
    return SINGLE


def launched() -> bool:
    """Whether torchrun (or another launcher setting WORLD_SIZE) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: Optional[str] = None) -> tuple[Group, Optional[str]]:
    """Join the job torchrun started (nothing to do for a single process); return the group and the
    device this process should use: ``cuda:LOCAL_RANK`` on a GPU machine unless ``device`` is given."""
    if not launched() or not dist.is_available():
        return current(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None and torch.cuda.is_available():
        device = f"cuda:{local_rank}"
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
    """Leave the job.  After a normal end, a barrier first: a process tearing its connections down
    while another was still finishing its last collective made gloo abort ("terminate called
    without an active exception", SIGABRT) in about one exit in twenty here."""
    if dist.is_available() and dist.is_initialized():
        if wait_for_others:
            dist.barrier()
        dist.destroy_process_group()
