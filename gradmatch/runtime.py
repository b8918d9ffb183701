"""Runtime settings, not algorithm: the CPU allocator, threads, faster equivalent kernels, devices.

Nothing here changes what is computed, only how fast (and, through the thread count, the rounding
of reductions).  What was measured on this project's 2-core CPU (benchmarks/bench_speed.py):

* **Page faults.**  glibc hands every allocation above 32 MB to ``mmap`` and returns it on free, so
  every 134 MB activation of a 256-image class batch is faulted in afresh: a ReLU over one took
  0.13 s instead of 0.02 s.  ``tune_cpu_allocator`` turns that off (``mallopt``), process-wide,
  once (``GRADMATCH_MALLOC=system`` leaves glibc alone).
* **Threads.**  Each pass uses ``job_threads()`` intra-op threads: torch's by default; on a machine
  shared with other work ``GRADMATCH_THREADS=1`` runs passes single-threaded and ``ClassRunner``
  spreads independent jobs over worker threads where that is faster.  The thread count of a pass
  is fixed before it runs, so the numbers never depend on the load.
* **GPU launches.**  On a GPU the time goes to launching thousands of small kernels, not to
  arithmetic: host-to-device copies of indices go through pinned memory, asynchronously
  (``to_device``), so the host never waits for the GPU's queue; the networks' training steps
  are CUDA graphs (``train.Trainer``, ``capture``); cuDNN picks its fastest algorithms (``tune_cuda``).
* **Slow kernels.**  2x2 average pooling of an NCHW map (ConvNet's) runs 3x faster on CPU as one
  add of row pairs and a small matmul (``AvgPool2x2``), its backward 2x faster.
"""
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
    """Keep freed memory in the process instead of returning it to the kernel (glibc ``mallopt``):
    large tensors are then recycled instead of page-faulted in on every allocation.  Process-wide,
    done once; set ``GRADMATCH_MALLOC=system`` to leave the allocator alone.  True if in effect."""
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
    """Intra-op threads for one job (one class's gradient, one network's training):
    ``GRADMATCH_THREADS`` if set, else torch's current number (``torch.get_num_threads()``).
    ``GRADMATCH_THREADS=1`` suits a machine shared with other work (no OpenMP barrier waits for a
    core another process holds); jobs then also run side by side on worker threads where faster."""
    env = os.environ.get("GRADMATCH_THREADS", "")
    return max(1, int(env)) if env.strip().isdigit() else torch.get_num_threads()


@contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` intra-op threads (this thread), restoring the old number after."""
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
    """Runs independent single-threaded jobs (one class's gradient each) either in this thread or on
    ``workers`` threads, picking whichever mode has been faster per job lately; it tries the other
    mode now and then, since the load on a shared machine comes and goes.  The results do not
    depend on the mode."""

    def __init__(self, workers: Optional[int] = None, explore_every: int = 8):
        self.workers = workers
        self.explore_every = explore_every
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
        if other not in seen or calls % self.explore_every == 0:
            return best, other
        return best, 0

    def record(self, key: Tuple, mode: int, seconds_per_job: float) -> None:
        seen = self._seconds.setdefault(key, {})
        seen[mode] = seconds_per_job if mode not in seen else 0.5 * seen[mode] + 0.5 * seconds_per_job

    def _run(self, fn: Callable, items: Sequence, mode: int, key: Tuple) -> List:
        start = time.perf_counter()
        if mode == 1:
            with torch_threads(job_threads()):
                out = [fn(item) for item in items]
        else:
            out = list(self._executor(mode).map(fn, items))
        self.record(key, mode, (time.perf_counter() - start) / max(len(items), 1))
        return out

    def map(self, fn: Callable, items: Sequence, key: Tuple = (), threads: Optional[int] = None) -> List:
        """``[fn(item) for item in items]``; ``threads``: the intra-op threads the caller may use
        (default: torch's current number), the most workers to use.  Trying the other mode costs
        little: it runs only on as many jobs as the pool has workers."""
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
        m[2 * j, j] = 0.25
        m[2 * j + 1, j] = 0.25
        _POOL_MATRICES[key] = m
    return m


def _avg_pool2x2(x: Tensor) -> Tensor:
    n, c, h, w = x.shape
    v = x.view(n, c, h // 2, 2 * w)
    rows = v[..., :w] + v[..., w:]  # sums of row pairs
    return (rows.view(-1, w) @ _pool_matrix(w, x.dtype, x.device)).view(n, c, h // 2, w // 2)


def _avg_pool2x2_backward(g: Tensor) -> Tensor:
    """Differentiable (the synthetic side differentiates through it again)."""
    n, c, h2, w2 = g.shape
    rows = (g.reshape(-1, w2) @ _pool_matrix(2 * w2, g.dtype, g.device).t()).view(n, c, h2, 1, 2 * w2)
    return rows.expand(n, c, h2, 2, 2 * w2).reshape(n, c, 2 * h2, 2 * w2)


class AvgPool2x2(torch.autograd.Function):
    """``avg_pool2d(x, 2)`` for an NCHW-contiguous map of even size: same result up to rounding."""

    @staticmethod
    def forward(ctx, x):
        return _avg_pool2x2(x)

    @staticmethod
    def backward(ctx, g):
        return _avg_pool2x2_backward(g)


def _is_pool2x2(args, kwargs) -> bool:
    names = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
    given = dict(zip(names, args))
    given.update(kwargs)
    x = given.get("input")
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point() or not x.is_contiguous():
        return False
    if torch._C._functorch.is_functorch_wrapped_tensor(x):  # noqa: SLF001  inside vmap/grad: the stock kernel
        return False
    if x.shape[2] % 2 or x.shape[3] % 2 or x.numel() == 0:
        return False

    def two(v):
        return v in (2, (2, 2), [2, 2])

    stride = given.get("stride")
    return (two(given.get("kernel_size")) and (stride is None or stride == [] or two(stride))
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
    """A CPU tensor on ``device``; to a GPU through pinned memory, asynchronously (a plain copy
    from pageable memory waits for the GPU's queue to drain)."""
    if torch.device(device).type != "cuda":
        return cpu_tensor.to(device)
    return cpu_tensor.pin_memory().to(device, non_blocking=True)


def tune_cuda(device) -> None:
    """On a GPU: let cuDNN time its convolution algorithms once per shape and keep the fastest
    (``cudnn.benchmark``); a run's shapes never change, so the timing pays back at once.
    ``GRADMATCH_CUDNN_BENCHMARK=0`` leaves PyTorch's default."""
    if torch.device(device).type == "cuda" and os.environ.get("GRADMATCH_CUDNN_BENCHMARK", "1") != "0":
        torch.backends.cudnn.benchmark = True


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device=None) -> torch.device:
    """``device`` checked: None (cuda if available, else cpu), cpu, cuda or cuda:N with such a GPU
    present; GradmatchError otherwise."""
    if device is None:
        return default_device()
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
