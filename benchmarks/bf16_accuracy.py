"""The accuracy cost of bf16 real-gradient targets (``CondenseConfig.precision``) on real CIFAR-10.

Condenses CIFAR-10 twice with the same seed and settings -- once with fp32 targets, once with bf16
targets -- then trains the same evaluation networks on each set and prints the test accuracies.

    python benchmarks/bf16_accuracy.py --data /tmp/cifar --ipc 1 --iterations 100 --num_eval 5

``--bf16 native`` uses autocast itself: on CPUs with AVX512-BF16 or AMX (and GPUs) it is also the
faster one.  ``--bf16 sim`` (the default) rounds the real pass to bf16 as autocast does but
computes in fp32, for CPUs without bf16 arithmetic (AVX2 only), where native bf16 autocast runs
~20x slower than fp32.  The script first prints, for one small batch, how far apart the
simulation, native bf16 and fp32 gradients are (per weight tensor): on an AVX2 machine the
simulation was much closer to native bf16 than either to fp32; with oneDNN's AVX512-BF16 kernels
the native gradient differs from both by about as much (they round inside the kernels differently).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import gradmatch
from gradmatch.matching.fast import needed_parameters, target_gradient
from gradmatch.models import create_model


def check_simulation(real, seed: int = 0, n: int = 64) -> dict:
    """Relative differences of one real gradient: sim vs native bf16, and each vs fp32."""
    torch.manual_seed(seed)
    net = create_model("ConvNet", real.channel, real.num_classes, real.im_size)
    x, y = real.images[:n], real.labels[:n]
    params = needed_parameters(list(net.parameters()), "baseline")
    got = {p: target_gradient(net, params, x, y, p) for p in ("fp32", "bf16", "bf16-sim")}

    def rel(a, b):
        return [round(float((u - v).norm() / v.norm()), 4) for u, v in zip(got[a], got[b])]

    return {"sim_vs_native": rel("bf16-sim", "bf16"), "native_vs_fp32": rel("bf16", "fp32"),
            "sim_vs_fp32": rel("bf16-sim", "fp32")}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/tmp/cifar")
    ap.add_argument("--dataset", default="CIFAR10")
    ap.add_argument("--ipc", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--num_eval", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--scheme", default="intra-class")
    ap.add_argument("--dis_metric", default="baseline")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", choices=("sim", "native"), default="sim")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: as is)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train = gradmatch.data.load(args.dataset, args.data, "train")
    test = gradmatch.data.load(args.dataset, args.data, "test")
    check = check_simulation(train)
    print("one real gradient (64 images), relative difference per weight tensor:", flush=True)
    for k, v in check.items():
        print(f"  {k:15s} {v}", flush=True)
    out = {"args": vars(args), "check": check, "runs": {}}
    for precision in ("fp32", "bf16" if args.bf16 == "native" else "bf16-sim"):
        start = time.perf_counter()
        syn = gradmatch.condense(train, ipc=args.ipc, iterations=args.iterations, scheme=args.scheme,
                                 dis_metric=args.dis_metric, seed=args.seed, precision=precision, device="cpu")
        condense_s = time.perf_counter() - start
        start = time.perf_counter()
        result = gradmatch.evaluate(syn, "ConvNet", test, num_eval=args.num_eval, epochs=args.epochs,
                                    seed=args.seed, device="cpu")
        eval_s = time.perf_counter() - start
        out["runs"][precision] = {"accuracies": result.accuracies, "mean": result.mean, "std": result.std,
                                  "condense_s": condense_s, "eval_s": eval_s}
        print(f"{precision:9s} {result.line()}  (condense {condense_s:.0f} s, evaluate {eval_s:.0f} s)",
              flush=True)
        if precision == "fp32":
            fp32_images = syn.images.clone()
        else:
            diff = float((syn.images - fp32_images).norm() / fp32_images.norm())
            out["runs"][precision]["images_rel_diff_vs_fp32"] = diff
            print(f"synthetic images, relative difference bf16 vs fp32: {diff:.3e}")
    runs = list(out["runs"].values())
    delta = 100 * (runs[1]["mean"] - runs[0]["mean"])
    pooled = statistics.fmean([100 * runs[0]["std"], 100 * runs[1]["std"]])
    print(f"accuracy change bf16 - fp32: {delta:+.2f} points (std of one network's accuracy ~{pooled:.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
