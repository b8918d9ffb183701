"""Checks that need a GPU, in seconds: the CUDA-graph training step, the engines, bf16 autocast,
DSA and batched experiments on CUDA against their CPU-tested counterparts.  Prints one line per check; never raises.

    python benchmarks/gpu_smoke.py            # on a GPU machine (on CPU it checks the twins only)
"""
from __future__ import annotations

import copy
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradmatch.augment import dsa  # noqa: E402
from gradmatch.matching import matching_loss  # noqa: E402
from gradmatch.models import create_model  # noqa: E402
from gradmatch.models.stack import Networks  # noqa: E402
from gradmatch.precision import run_context  # noqa: E402
from gradmatch.train import Trainer  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rel(a, b) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def captured(trainer: Trainer) -> bool:
    """Whether the trainer's epoch ran as a CUDA graph (on a CPU its capture runs eagerly: False)."""
    return trainer.storage is not None and trainer.storage.graph is not None


def graph_step():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(100, 3, 32, 32, generator=g).to(DEVICE)
    labels = torch.arange(10).repeat_interleave(10).to(DEVICE)
    out = {}
    for model in ("ConvNet", "ConvNetBN"):
        nets = []
        for _ in range(2):
            torch.manual_seed(1)
            nets.append(create_model(model, 3, 10, (32, 32)).to(DEVICE))
        eager = Trainer(Networks.wrap(nets[0]), 0.01, 0.9, 5e-4)
        graphed = Trainer(Networks.wrap(nets[1]), 0.01, 0.9, 5e-4, capture=True)
        gens = [torch.Generator().manual_seed(2) for _ in range(2)]
        for ep in range(30):
            if ep == 15:  # the evaluation's drop: the momentum kept
                eager.set_lr(0.001)
                graphed.set_lr(0.001)
            eager.epoch(images, labels, 256, [gens[0]])
            graphed.epoch(images, labels, 256, [gens[1]])
        diff = max(rel(q, p) for p, q in zip(nets[0].parameters(), nets[1].parameters()))
        out[model] = f"captured={captured(graphed)} max rel diff after 30 epochs {diff:.1e}"
    out["stacked x4 ConvNet"] = stacked_graph_step(images, labels)
    return out


def stacked_graph_step(images, labels) -> str:
    """The stacked trainer (batched evaluation, batched experiments): captured against eager."""
    trainers = []
    for capture in (False, True):
        nets = Networks.build("ConvNet", 3, 10, (32, 32), [10 + k for k in range(4)], DEVICE)
        trainers.append(Trainer(nets, 0.01, 0.9, 5e-4, stacked=True, capture=capture))
    for trainer in trainers:
        gens = [torch.Generator().manual_seed(k) for k in range(4)]
        for ep in range(30):
            if ep == 15:
                trainer.set_lr(0.001)
            trainer.epoch(images, labels, 256, gens)
    diff = max(rel(q, p) for p, q in zip(trainers[0].params, trainers[1].params))
    return f"captured={captured(trainers[1])} max rel diff after 30 epochs {diff:.1e}"


def engines():
    """Each engine's loss and image gradient against the textbook loop in float64 (the truth): the
    fp32 engines differ from it by the device's fp32 (or TF32) rounding, bf16 by more."""
    g = torch.Generator().manual_seed(3)
    real = (torch.randn(10 * 64, 3, 32, 32, generator=g).to(DEVICE), torch.arange(10).repeat_interleave(64).to(DEVICE))
    syn_x = torch.randn(10 * 2, 3, 32, 32, generator=g).to(DEVICE)
    syn_y = torch.arange(10).repeat_interleave(2).to(DEVICE)
    torch.manual_seed(4)
    net = create_model("ConvNet", 3, 10, (32, 32)).to(DEVICE)
    net64 = copy.deepcopy(net).double()

    def run(model, engine, precision, scheme, dtype):
        x = syn_x.to(dtype).clone().requires_grad_(True)
        loss = matching_loss(model, (real[0].to(dtype), real[1]), (x, syn_y), scheme, "improved", engine=engine,
                             precision=precision)
        (grad,) = torch.autograd.grad(loss, x)
        return loss.detach().double(), grad.double()

    out = {}
    for scheme in ("multi-level", "inter-class"):
        truth = run(net64, "loop", "fp32", scheme, torch.float64)
        for engine, precision in (("loop", "fp32"), ("fast", "fp32"), ("batched", "fp32"), ("batched", "tf32"),
                                  ("batched", "bf16"), ("loop", "bf16")):
            with run_context(precision):
                loss, grad = run(net, engine, precision, scheme, torch.float32)
            out[f"{engine}/{precision}/{scheme}"] = (f"vs float64: loss rel {rel(loss, truth[0]):.1e}, "
                                                     f"image grad rel {rel(grad, truth[1]):.1e}")
    return out


def flags():
    conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", "n/a")
    matmul = getattr(getattr(torch.backends.cuda, "matmul", None), "fp32_precision", "n/a")
    return {"defaults": f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32} "
                        f"cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32} "
                        f"cudnn.conv.fp32_precision={conv} cuda.matmul.fp32_precision={matmul}"}


def dsa_on_device():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, 3, 32, 32, generator=g)
    params = dsa.draw(dsa.STRATEGY, 10, torch.Generator().manual_seed(6))
    groups = torch.arange(10).repeat_interleave(4)
    cpu = dsa.apply(x, params, groups)
    dev = dsa.apply(x.to(DEVICE), params, groups).cpu()
    xs = x.to(DEVICE).requires_grad_(True)
    dsa.apply(xs, params, groups).sum().backward()
    return {"dsa": f"device vs cpu max abs diff {float((dev - cpu).abs().max()):.1e}; "
                   f"gradient reaches the images: {bool(xs.grad.abs().sum() > 0)}"}


def experiments_together():
    """Three experiments advanced together against each alone (the default engine), CIFAR-10-shaped
    random data, ipc 2, two iterations: the images' relative difference (float32 rounding, which these
    two iterations grow: on this project's CPU 3.4-5.4e-3, as between the fast and loop engines of one
    run there, 5.0e-3)."""
    from gradmatch.condense import Condensation
    from gradmatch.config import CondenseConfig
    from gradmatch.data import Dataset
    from gradmatch.plan import Plan

    g = torch.Generator().manual_seed(8)
    real = Dataset(torch.randn(10 * 100, 3, 32, 32, generator=g), torch.arange(10).repeat_interleave(100),
                   [str(c) for c in range(10)], (0.0,) * 3, (1.0,) * 3, "CIFAR10")
    cfg = CondenseConfig(ipc=2, iterations=2, scheme="multi-level", dis_metric="improved", inner_loop=5,
                         batch_real=64)
    # as --experiments batched runs them on a GPU: the batched engine, stacked training, captured on CUDA
    plan = Plan(engine="batched", together=3, stacked_training=True, capture=DEVICE == "cuda")
    batch = Condensation(real, cfg, [0, 1, 2], DEVICE, plan=plan)
    *_, together = batch.steps()
    out = {"training": f"stacked epoch captured as a CUDA graph: {captured(batch.trainer)}"}
    for e, state in enumerate(together):
        *_, [alone] = Condensation(real, cfg, [e], DEVICE).steps()
        diff = float((state.images - alone.images).detach().norm() / alone.images.detach().norm())
        out[f"experiment {e}"] = f"together vs alone: images rel norm diff {diff:.1e}"
    return out


def main() -> int:
    print(f"# {torch.cuda.get_device_name() if DEVICE == 'cuda' else 'CPU'}, torch {torch.__version__}", flush=True)
    for check in (flags, graph_step, engines, dsa_on_device, experiments_together):
        try:
            for name, line in check().items():
                print(f"{check.__name__:13s} {name:28s} {line}", flush=True)
        except Exception:  # noqa: BLE001 - report and go on with the next check
            print(f"{check.__name__}: FAILED\n{traceback.format_exc()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
