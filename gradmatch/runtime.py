"""Runtime settings, not algorithm: the CPU allocator, threads, faster equivalent kernels, devices.  Nothing here
changes what is computed, only how fast (and, through the thread count, the rounding of reductions); measured in
benchmarks/bench_speed.py."""
from __future__ import annotations

import ctypes
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .errors import GradmatchError

_ALLOCATOR_TUNED: Optional[bool] = None
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process (glibc ``mallopt``), so large tensors are not page-faulted afresh."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED is None:
        _ALLOCATOR_TUNED = False
        if os.environ.get("GRADMATCH_MALLOC", "").lower() not in ("system", "0", "off", "no"):
            try:
                libc = ctypes.CDLL("libc.so.6")
                _ALLOCATOR_TUNED = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(
                    libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
            except (OSError, AttributeError):  # not glibc
                pass
    return _ALLOCATOR_TUNED


def job_threads() -> int:
    """Intra-op threads for one job: ``GRADMATCH_THREADS`` if set, else torch's current number."""
    env = os.environ.get("GRADMATCH_THREADS", "")
    return max(1, int(env)) if env.strip().isdigit() else torch.get_num_threads()


@contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` intra-op threads (this thread)."""
    old = torch.get_num_threads()
    if n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class ClassRunner:
    """Runs independent jobs in this thread or on worker threads, whichever has lately been faster."""

    def __init__(self, workers: Optional[int] = None, explore_every: int = 8):
        self.workers, self.explore_every = workers, explore_every
        self._pool: Optional[ThreadPoolExecutor] = None
        self._seconds: Dict[Tuple, Dict[int, float]] = {}
        self._calls: Dict[Tuple, int] = {}
        self._lock = threading.Lock()
        self.forced: Optional[int] = None  # 1 or the pool size, to switch adaptivity off

    def _pool_size(self, threads: Optional[int]) -> int:
        if self.workers is not None:
            return self.workers
        env = os.environ.get("GRADMATCH_WORKERS")
        if env:
            return max(1, int(env))
        threads = threads if threads is not None else torch.get_num_threads()
        return max(1, min(os.cpu_count() or 1, threads, 4) // job_threads())

    def _executor(self, n: int) -> ThreadPoolExecutor:
        if self._pool is None or self._pool._max_workers != n:  # noqa: SLF001
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._pool = ThreadPoolExecutor(n, thread_name_prefix="gradmatch",
                                            initializer=torch.set_num_threads, initargs=(job_threads(),))
        return self._pool

    def choose(self, key: Tuple, jobs: int, threads: Optional[int] = None) -> Tuple[int, int]:
        """(mode, the other mode to try on a few jobs of this call, or 0)."""
        n = min(self._pool_size(threads), jobs)
        if self.forced is not None:
            return min(self.forced, n), 0
        if n <= 1:
            return 1, 0
        seen = self._seconds.setdefault(key, {})
        calls = self._calls[key] = self._calls.get(key, 0) + 1
        if 1 not in seen:
            return 1, 0
        best = min(seen, key=seen.get) if n in seen else 1
        other = 1 if best != 1 else n
        return best, (other if other not in seen or calls % self.explore_every == 0 else 0)

    def _run(self, fn: Callable, items: Sequence, mode: int, key: Tuple) -> List:
        start = time.perf_counter()
        if mode == 1:
            with torch_threads(job_threads()):
                out = [fn(item) for item in items]
        else:
            out = list(self._executor(mode).map(fn, items))
        per_job = (time.perf_counter() - start) / max(len(items), 1)
        seen = self._seconds.setdefault(key, {})
        seen[mode] = per_job if mode not in seen else 0.5 * seen[mode] + 0.5 * per_job
        return out

    def map(self, fn: Callable, items: Sequence, key: Tuple = (), threads: Optional[int] = None) -> List:
        """``[fn(item) for item in items]``, on at most ``threads`` workers."""
        items = list(items)
        with self._lock:
            mode, other = self.choose(key, len(items), threads)
            if not other:
                return self._run(fn, items, mode, key)
            trial = max(mode, other)
            if len(items) <= trial:
                return self._run(fn, items, other, key)
            return self._run(fn, items[:trial], other, key) + self._run(fn, items[trial:], mode, key)


RUNNER = ClassRunner()


# ---- faster kernels -------------------------------------------------------------------------
_POOL_MATRICES: Dict[Tuple, Tensor] = {}


def _pool_matrix(w: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(w, w/2) with 1/4 where column j averages input columns 2j and 2j+1."""
    key = (w, dtype, device)
    m = _POOL_MATRICES.get(key)
    if m is None:
        m = torch.zeros(w, w // 2, dtype=dtype, device=device)
        j = torch.arange(w // 2, device=device)
        m[2 * j, j] = m[2 * j + 1, j] = 0.25
        _POOL_MATRICES[key] = m
    return m


class AvgPool2x2(torch.autograd.Function):
    """``avg_pool2d(x, 2)`` of an NCHW-contiguous map of even size: 3x faster on CPU, same up to rounding."""

    @staticmethod
    def forward(ctx, x):
        n, c, h, w = x.shape
        v = x.view(n, c, h // 2, 2 * w)
        rows = v[..., :w] + v[..., w:]  # sums of row pairs
        return (rows.view(-1, w) @ _pool_matrix(w, x.dtype, x.device)).view(n, c, h // 2, w // 2)

    @staticmethod
    def backward(ctx, g):  # differentiable: the synthetic side differentiates through it again
        n, c, h2, w2 = g.shape
        rows = (g.reshape(-1, w2) @ _pool_matrix(2 * w2, g.dtype, g.device).t()).view(n, c, h2, 1, 2 * w2)
        return rows.expand(n, c, h2, 2, 2 * w2).reshape(n, c, 2 * h2, 2 * w2)


def _is_pool2x2(args, kwargs) -> bool:
    names = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
    given = {**dict(zip(names, args)), **kwargs}
    x = given.get("input")
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point() or not x.is_contiguous():
        return False
    if torch._C._functorch.is_functorch_wrapped_tensor(x):  # noqa: SLF001  inside vmap/grad: the stock kernel
        return False
    if x.shape[2] % 2 or x.shape[3] % 2 or x.numel() == 0:
        return False
    two, stride = (2, (2, 2), [2, 2]), given.get("stride")
    return (given.get("kernel_size") in two and (stride is None or stride == [] or stride in two)
            and given.get("padding", 0) in (0, (0, 0), [0, 0]) and given.get("divisor_override") is None)


class FastKernels(TorchFunctionMode):
    """Swaps slow kernels for equivalent faster ones inside the block (this thread only)."""

    enabled = True  # False: the stock kernels (e.g. to count FLOPs without the pooling matmul)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.enabled and func is torch._C._nn.avg_pool2d and _is_pool2x2(args, kwargs):  # noqa: SLF001
            return AvgPool2x2.apply(args[0] if args else kwargs["input"])
        return func(*args, **kwargs)


@contextmanager
def cpu_context(device):
    """On CPU: the tuned allocator, ``job_threads()`` intra-op threads and the faster kernels; elsewhere nothing."""
    if torch.device(device).type != "cpu":
        yield
        return
    tune_cpu_allocator()
    with torch_threads(job_threads()), FastKernels():
        yield


def to_device(cpu_tensor: Tensor, device) -> Tensor:
    """A CPU tensor on ``device``: to a GPU through pinned memory, without waiting for its queue."""
    if torch.device(device).type != "cuda":
        return cpu_tensor.to(device)
    return cpu_tensor.pin_memory().to(device, non_blocking=True)


def tune_cuda(device) -> None:
    """On a GPU: ``cudnn.benchmark`` (a run's shapes never change); ``GRADMATCH_CUDNN_BENCHMARK=0`` leaves it."""
    if torch.device(device).type == "cuda" and os.environ.get("GRADMATCH_CUDNN_BENCHMARK", "1") != "0":
        torch.backends.cudnn.benchmark = True


def resolve_device(device=None) -> torch.device:
    """``device`` checked: None (cuda if available, else cpu), cpu, cuda or cuda:N with such a GPU present."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise GradmatchError(f"--device {device} is not a device; use cpu, cuda or cuda:N") from None
    if where.type == "cuda":
        if not torch.cuda.is_available():
            raise GradmatchError(f"--device {device}: CUDA is not available on this machine; use --device cpu "
                                 "or leave --device out")
        if where.index is not None and where.index >= torch.cuda.device_count():
            raise GradmatchError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s); "
                                 f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif where.type != "cpu":
        raise GradmatchError(f"--device {device}: gradmatch runs on cpu or cuda; use one of those")
    return where
