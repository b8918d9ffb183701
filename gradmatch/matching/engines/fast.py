"""The CPU engine: the textbook passes under gradmatch's CPU runtime (``gradmatch.runtime``), with large
target batches (inter-class's 4 x batch_real) in chunks of ``CHUNK`` images, small enough to stay in the
recycled memory.  On a GPU it runs the plain passes."""
from __future__ import annotations

from typing import List

import torch

from ...runtime import RUNNER, cpu_context
from .loop import batch_gradient, stack_gradients

CHUNK = 256


class FastEngine:
    def __init__(self, runner=RUNNER):
        self.runner = runner

    def gradients(self, nets, names, batches, *, target: bool, precision: str = "fp32") -> List[torch.Tensor]:
        device = batches[0][0][0].device
        on_cpu = device.type == "cpu"
        workers = torch.get_num_threads() if on_cpu else 1  # read before a job goes single-threaded
        params = [[net.get_parameter(n) for n in names] for net in nets.members]

        def job(item):
            e, x, y = item
            with cpu_context(device):
                return batch_gradient(nets.members[e], params[e], x, y, target=target, precision=precision)

        jobs, weights = [], []  # a big target batch: its chunks' gradients, weighted by size
        for e, member_batches in enumerate(batches):
            for x, y in member_batches:
                n = len(y)
                step = CHUNK if target and n > CHUNK else max(n, 1)
                starts = list(range(0, n, step))
                jobs += [(e, x[s:s + step], y[s:s + step]) for s in starts]
                weights.append((e, [min(step, n - s) / n for s in starts]))
        key = (type(nets.members[0]).__name__, tuple(batches[0][0][0].shape[1:]), len(jobs), target, precision)
        parts = self.runner.map(job, jobs, key, workers) if on_cpu else [job(b) for b in jobs]
        per_member: List[list] = [[] for _ in batches]
        for e, w in weights:
            chunk, parts = parts[:len(w)], parts[len(w):]
            per_member[e].append(chunk[0] if len(w) == 1 else
                                 [sum(wi * g[j] for wi, g in zip(w, chunk)) for j in range(len(chunk[0]))])
        return stack_gradients(per_member)
