"""How a protocol's evaluation networks should train on this machine: one stack or one by one.

    python benchmarks/bench_eval.py                        # ipc 1 and 10, 5 networks, CIFAR-10 shapes
    python benchmarks/bench_eval.py --ipcs 1 --epochs 20   # a quick look

CIFAR-10-shaped random sets (3x32x32, 10 classes), ConvNet, no augmentation, SGD as every protocol trains.
Each method runs the real evaluation (``gradmatch.evaluate``) with E networks, in a fresh subprocess, one
after the other: ``sequential`` (one network after another in this process), ``parallel`` (one network per
worker process, today's CPU default), ``batched`` (the E networks as one vmapped stack).  Training and testing
are timed apart: a run tested once on 16 images is the training; the same run tested every ``--every``
epochs on ``--test`` images, minus it, is the testing.  Printed: network-epochs per second of training,
network-images per second of testing (and GFLOP/s of that inference against a 4096^2 matmul in this run),
and the ratio of each method to ``sequential``, all measured in this one run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

METHODS = ("sequential", "parallel", "batched")


def measure(method: str, ipc: int, networks: int, epochs: int, test_images: int, every: int) -> float:
    import torch

    from gradmatch import Protocol, SyntheticSet, evaluate
    from gradmatch.data import from_tensors

    gen = torch.Generator().manual_seed(0)
    syn = SyntheticSet(images=torch.randn(10 * ipc, 3, 32, 32, generator=gen),
                       labels=torch.arange(10).repeat_interleave(ipc), classes=[str(c) for c in range(10)],
                       mean=(0.0,) * 3, std=(1.0,) * 3)
    test = from_tensors(torch.rand(test_images, 3, 32, 32, generator=gen),
                        torch.arange(test_images) % 10, mean=[0.0] * 3, std=[1.0] * 3)
    protocol = Protocol(name="bench", num_eval=networks, epochs=epochs, augment="none", method=method,
                        test_every=every, report="best" if every else "final")
    evaluate(syn, "ConvNet", test, protocol, device="cpu", num_eval=1, epochs=1)  # warm-up: pools, kernels
    start = time.perf_counter()
    evaluate(syn, "ConvNet", test, protocol, device="cpu")
    return time.perf_counter() - start


def inference_gflop(test_images: int) -> float:
    """Useful GFLOP of one ConvNet forward over ``test_images`` CIFAR images."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from gradmatch.models import create_model

    net = create_model("ConvNet", 3, 10, (32, 32))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 3, 32, 32))
    return counter.get_total_flops() * test_images / 1e9


def matmul_gflops() -> float:
    import torch

    a = torch.randn(4096, 4096)
    a @ a
    start = time.perf_counter()
    for _ in range(3):
        a @ a
    return 3 * 2 * 4096 ** 3 / (time.perf_counter() - start) / 1e9


def child(args) -> None:
    if args.child == "matmul":
        print(json.dumps(matmul_gflops()))
        return
    method, ipc, test_images, every = args.child.split(",")
    print(json.dumps(measure(method, int(ipc), args.networks, args.epochs, int(test_images), int(every))))


def run(what: str, args) -> float:
    cmd = [sys.executable, __file__, "--child", what, "--networks", str(args.networks), "--epochs", str(args.epochs)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ipcs", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--networks", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--test", type=int, default=2000, help="test images per check")
    parser.add_argument("--every", type=int, default=10, help="epochs between test checks (DD-Ranking's 10)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    peak = run("matmul", args)
    checks = args.epochs // args.every
    flop = inference_gflop(args.test) * args.networks * checks
    rows = []
    for ipc in args.ipcs:
        for method in METHODS:
            train = run(f"{method},{ipc},16,0", args)
            tested = run(f"{method},{ipc},{args.test},{args.every}", args)
            rows.append((ipc, method, train, max(tested - train, 1e-9)))
    print(f"# {args.networks} ConvNets x {args.epochs} epochs on CIFAR-10-shaped sets; {checks} checks of {args.test} "
          f"test images; matmul peak {peak:.0f} GFLOP/s in this run")
    print(f"{'ipc':>4} {'method':>10} {'train s':>8} {'net-epochs/s':>13} {'x seq':>6} {'test s':>7} "
          f"{'net-images/s':>13} {'GFLOP/s':>8} {'x seq':>6}")
    for ipc, method, train, test in rows:
        seq_train, seq_test = next((t, s) for i, m, t, s in rows if i == ipc and m == "sequential")
        rate, images = args.networks * args.epochs / train, args.networks * checks * args.test / test
        print(f"{ipc:>4} {method:>10} {train:8.2f} {rate:13.1f} {seq_train / train:6.2f} "
              f"{test:7.2f} {images:13.0f} {flop / test:8.1f} {seq_test / test:6.2f}")


if __name__ == "__main__":
    main()
