"""The fast matching step: the same numbers as the textbook per-class loop, up to float rounding.

``matching_loss(..., method="fast")`` (the condensation loop's default) lands here.  Profiling the
textbook step (SPEC section 5: one forward and backward per class) on the 2-core CPU this project
runs on showed where its time goes; this module removes it:

* **Page faults.**  glibc hands every allocation above 32 MB to ``mmap`` and returns it on free, so
  every 134 MB activation of a 256-image class batch is faulted in afresh (in a VM each fault is
  expensive): a ReLU over one took 0.13 s instead of 0.02 s.  ``tune_cpu_allocator`` turns that off
  (``mallopt``), process-wide, once (``GRADMATCH_MALLOC=system`` leaves glibc alone).
* **Threads.**  Each class's gradient is one pass with ``job_threads()`` intra-op threads: by
  default all of torch's threads, classes one after the other, which on this 2-core machine, idle,
  runs a 256-image class pass in 0.46-0.60 s against 0.86 s single-threaded (two single-threaded
  classes side by side on two Python threads were no faster than one after the other: 0.92-1.08 s
  per class).  On a machine shared with other work, a multi-threaded OpenMP region waits for a core
  another process holds; there ``GRADMATCH_THREADS=1`` runs every pass single-threaded and lets
  ``ClassRunner`` spread the classes over worker threads when that is faster.  The thread count of
  a pass is fixed before the pass, so the numbers never depend on the load or on the runner's choice
  (they do depend on the thread count, as any reduction's rounding does).
  This covers the backward too: the returned loss carries the image gradient as a per-class
  vector-Jacobian product run the same way, whatever threads the caller's ``backward`` has.
* **Work nobody uses.**  The layer-wise distances give 1-D tensors (biases, norm scales) no
  weight, so their gradients are not computed; the backward computes the image gradient only (the
  textbook's ``loss.backward()`` also pushes the second-order graph into the network's ``.grad``,
  which the condensation loop discards).
* **Slow kernels.**  2x2 average pooling of an NCHW map (ConvNet's) runs 3x faster as one add of
  row pairs and a small matmul (``AvgPool2x2``), its backward 2x faster.
* **Small ops.**  The distance over the K classes is computed on K-stacked tensors, one call per
  parameter tensor; the multi-level mean term reuses the per-class gradients.

Measured and dropped (see benchmarks/bench_speed.py and the notes there): stacking the classes into
one forward (a grouped convolution, or ``torch.func.vmap`` over ``grad``) is slower for the 256-image
real batches and no faster for the synthetic ones once each pass is single-threaded;
channels_last makes the convolutions faster but GroupNorm much slower, a net loss for ConvNet;
``torch.compile`` of the real pass gained ~10% after a ~30 s compile.  The convolutions themselves
run at 65-85 GFLOP/s per core, close to this CPU's matmul peak.

Mixed precision (``precision``): ``"bf16"`` computes the real targets under bf16 autocast (the
synthetic side stays fp32); ``"bf16-sim"`` rounds every layer's inputs, weights, outputs and
gradients of the real pass to bf16 as autocast does but computes in fp32 -- for measuring bf16's
accuracy cost on CPUs without bf16 arithmetic (with AVX2 only, bf16 autocast runs ~20x slower than
fp32; with AVX512-BF16, as on this project's current 2-core machine, a 256-image ConvNet class pass
takes 0.48 s in bf16 against 1.3 s in fp32 single-threaded).
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..distributed import SINGLE, Group
from ..errors import unknown_name
from .batches import class_count, own_chunk, own_classes, split_by_class, summed
from .distances import Metric, gradient_distance, summed_distance

PRECISIONS = ("fp32", "bf16", "bf16-sim")

# ---- process settings -----------------------------------------------------------------------
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


def reset_cpu_allocator() -> None:
    """Undo ``tune_cpu_allocator`` (glibc defaults), e.g. to time the textbook loop as it runs."""
    global _ALLOCATOR_TUNED
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_MAX, 65536)
        libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        pass
    _ALLOCATOR_TUNED = None


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


# ---- bf16 ----------------------------------------------------------------------------------
class _RoundBF16(torch.autograd.Function):
    """Round to bf16 and back (forward), and the gradient too (backward), as a bf16 tensor would."""

    @staticmethod
    def forward(ctx, x):
        return x.to(torch.bfloat16).to(x.dtype)

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


def precision_context(precision: str):
    if precision == "fp32":
        return nullcontext()
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if precision == "bf16-sim":
        return SimulatedBF16()
    raise unknown_name("precision", precision, PRECISIONS)


# ---- gradients -----------------------------------------------------------------------------
def needed_parameters(params: Sequence[Tensor], metric: Metric) -> List[Tensor]:
    """The parameters whose gradients the distance reads: all for mse/cos, else those with more
    than one dimension (the layer-wise distances give 1-D tensors no weight)."""
    if isinstance(metric, str) and metric in ("mse", "cos"):
        return list(params)
    return [p for p in params if p.dim() > 1]


def target_gradient(net: nn.Module, params: Sequence[Tensor], images: Tensor, labels: Tensor,
                    precision: str = "fp32", fast_kernels: bool = True) -> List[Tensor]:
    """A real (constant) gradient: one pass, in this thread."""
    with FastKernels() if fast_kernels else nullcontext():
        with precision_context(precision):
            out = net(images)
        loss = F.cross_entropy(out.to(images.dtype), labels)  # bf16 logits: the loss in full precision
        return [g.detach() for g in torch.autograd.grad(loss, params)]


def synthetic_gradient(net: nn.Module, params: Sequence[Tensor], images: Tensor, labels: Tensor,
                       fast_kernels: bool = True) -> List[Tensor]:
    """A synthetic gradient, keeping the graph (fp32 always)."""
    with FastKernels() if fast_kernels else nullcontext():
        loss = F.cross_entropy(net(images), labels)
        return list(torch.autograd.grad(loss, params, create_graph=True))


# ---- distances over K-stacked gradients ------------------------------------------------------
def stacked_distance(g_syn: Sequence[Sequence[Tensor]], g_real: Sequence[Sequence[Tensor]],
                     metric: Metric) -> Tensor:
    """sum_c D(g_syn[c], g_real[c]) computed on K-stacked tensors (one call per parameter tensor)."""
    return summed_distance([torch.stack(t) for t in zip(*g_syn)], [torch.stack(t) for t in zip(*g_real)], metric)


# ---- the matching loss -----------------------------------------------------------------------
class _ImageGradient(torch.autograd.Function):
    """The matching loss as seen by the caller: its value, and on backward the image gradient from
    ``vjp`` (run single-threaded, class by class, whatever the caller's thread setting)."""

    @staticmethod
    def forward(ctx, images, value, vjp):
        ctx.vjp = vjp
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad):
        vjp, ctx.vjp = ctx.vjp, None
        if vjp is None:
            raise RuntimeError("the fast matching loss can be differentiated once (retain_graph is not supported)")
        return vjp(grad), None, None


def fast_matching_loss(net: nn.Module, real, syn, scheme: str, metric: Metric, params: Sequence[Tensor],
                       num_classes: Optional[int] = None, precision: str = "fp32",
                       runner: Optional[ClassRunner] = None, group: Optional[Group] = None) -> Tensor:
    """The fast path behind ``matching_loss(method="fast")``; ``scheme`` is concrete (intra-class,
    inter-class or multi-level), ``metric`` resolved, ``group`` as there.

    The returned loss is differentiable with respect to the synthetic images (once, first order);
    unlike the textbook loop's, its backward does not also fill the network parameters' ``.grad``
    (the condensation loop never reads them: it zeroes them before training the network).
    """
    if precision not in PRECISIONS:
        raise unknown_name("precision", precision, PRECISIONS)
    runner = runner or RUNNER
    group = group or SINGLE
    on_cpu = real[0].device.type == "cpu"
    if on_cpu:
        tune_cpu_allocator()
    workers = torch.get_num_threads() if on_cpu else 1  # the pool size, read before going single-threaded
    one_thread = (lambda: torch_threads(job_threads())) if on_cpu else nullcontext
    used = needed_parameters(params, metric)
    key = (type(net).__name__, tuple(real[0].shape), tuple(syn[0].shape), str(real[0].dtype), precision)
    k = num_classes if num_classes is not None else class_count(syn[1])

    def real_job(part):
        with one_thread():
            return target_gradient(net, used, *part, precision)

    def syn_job(part):
        with one_thread():
            return synthetic_gradient(net, used, *part)

    grad_wanted = torch.is_grad_enabled()
    with one_thread(), torch.enable_grad():  # gradients are what is matched, even under no_grad
        if scheme == "inter-class":
            (real_part, real_weight), (syn_part, syn_weight) = own_chunk(real, group), own_chunk(syn, group)
            g_real = (_chunked_target(runner, real_job, real_part, key + ("real",), workers)
                      if len(real_part[1]) else [])
            g_syn = [[syn_weight * g for g in syn_job(syn_part)]] if len(syn_part[1]) else []
            total_real = group.global_sum(summed([[real_weight * g for g in g_real]] if g_real else [], used))
            total_syn = group.global_sum(summed(g_syn, used))
            loss = group.share(k * stacked_distance([total_syn], [total_real], metric))
        else:
            present = class_count(syn[1])
            real_parts = {c: (x, y) for c, x, y in split_by_class(*own_classes(real, group))}
            syn_parts = split_by_class(*own_classes(syn, group))
            missing = {c for c, _, _ in syn_parts} - set(real_parts)
            if missing:
                raise ValueError(f"real batch lacks classes {sorted(missing)}")
            classes = [c for c, _, _ in syn_parts]
            g_real = runner.map(real_job, [real_parts[c] for c in classes], key + ("real",), workers)
            g_syn = runner.map(syn_job, [(x, y) for _, x, y in syn_parts], key + ("syn",), workers)
            loss = stacked_distance(g_syn, g_real, metric) if classes else used[0].new_zeros(())
            if scheme == "multi-level":  # the class means from the per-class gradients already here
                mean_syn = [s / present for s in group.global_sum(summed(g_syn, used))]
                mean_real = [s / present for s in group.global_sum(summed(g_real, used))]
                loss = loss + group.share(k * gradient_distance(mean_syn, mean_real, metric))
        images = syn[0]
        if not grad_wanted or not g_syn:
            return loss.detach()
        if not images.requires_grad:
            return loss
        # dL/dg_syn now (cheap: the distance's graph only); the expensive second-order part, the
        # image gradient, on backward, one class per job.
        flat = [g for per_class in g_syn for g in per_class]
        v = torch.autograd.grad(loss, flat, retain_graph=True, allow_unused=True)
        n = len(used)
        cotangents = [[t if t is not None else torch.zeros_like(g) for t, g in zip(v[i * n:(i + 1) * n], g_syn[i])]
                      for i in range(len(g_syn))]

    def vjp(grad: Tensor) -> Tensor:
        def job(i):
            with one_thread():
                (gx,) = torch.autograd.grad(g_syn[i], images, cotangents[i], retain_graph=True, allow_unused=True)
                return gx
        parts = runner.map(job, list(range(len(g_syn))), key + ("vjp",), workers)
        with one_thread():
            total = sum(p for p in parts if p is not None)
            if not isinstance(total, Tensor):
                return torch.zeros_like(images)
            return total * grad

    return _ImageGradient.apply(images, loss.detach(), vjp)


def _chunked_target(runner: ClassRunner, job: Callable, batch, key, workers: int, chunk: int = 256) -> List[Tensor]:
    """The mean-loss gradient of one big mixed batch, from fixed chunks (same numbers in any mode)."""
    x, y = batch
    n = len(y)
    if n <= chunk:
        return job((x, y))
    starts = list(range(0, n, chunk))
    parts = runner.map(job, [(x[s:s + chunk], y[s:s + chunk]) for s in starts], key, workers)
    weights = [min(chunk, n - s) / n for s in starts]
    return [sum(w * g[j] for w, g in zip(weights, parts)) for j in range(len(parts[0]))]
