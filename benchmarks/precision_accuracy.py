"""The accuracy cost of a precision (``--precision``: tf32, bf16 targets) on real CIFAR-10.

Condenses CIFAR-10 with the same seed and settings once per precision -- fp32 first -- then trains
the same evaluation networks on each set and prints the test accuracies and the change from fp32.

    python benchmarks/precision_accuracy.py --data data --ipc 1 --iterations 100 --num_eval 5
    python benchmarks/precision_accuracy.py --device cuda --precisions fp32,tf32,bf16 --iterations 200

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
from gradmatch.matching import needed_parameters
from gradmatch.matching.engines.loop import batch_gradient
from gradmatch.models import create_model


def check_simulation(real, seed: int = 0, n: int = 64) -> dict:
    """Relative differences of one real gradient: sim vs native bf16, and each vs fp32."""
    torch.manual_seed(seed)
    net = create_model("ConvNet", real.channel, real.num_classes, real.im_size)
    x, y = real.images[:n], real.labels[:n]
    params = [p for _, p in needed_parameters(net, "baseline")]
    got = {p: batch_gradient(net, params, x, y, target=True, precision=p) for p in ("fp32", "bf16", "bf16-sim")}

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
    ap.add_argument("--bf16", choices=("sim", "native"), default="sim", help="what 'bf16' in --precisions runs")
    ap.add_argument("--precisions", default="fp32,bf16", help="fp32 first, then those to compare with it")
    ap.add_argument("--device", default="cpu")
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
    precisions = [p if p != "bf16" or args.bf16 == "native" else "bf16-sim" for p in args.precisions.split(",")]
    for precision in precisions:
        start = time.perf_counter()
        syn = gradmatch.condense(train, ipc=args.ipc, iterations=args.iterations, scheme=args.scheme,
                                 dis_metric=args.dis_metric, seed=args.seed, precision=precision,
                                 device=args.device)
        condense_s = time.perf_counter() - start
        start = time.perf_counter()
        result = gradmatch.evaluate(syn, "ConvNet", test, num_eval=args.num_eval, epochs=args.epochs,
                                    seed=args.seed, device=args.device)
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
            print(f"synthetic images, relative difference {precision} vs fp32: {diff:.3e}")
    base = out["runs"][precisions[0]]
    for precision in precisions[1:]:
        run = out["runs"][precision]
        delta = 100 * (run["mean"] - base["mean"])
        pooled = statistics.fmean([100 * base["std"], 100 * run["std"]])
        print(f"accuracy change {precision} - {precisions[0]}: {delta:+.2f} points "
              f"(std of one network's accuracy ~{pooled:.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
