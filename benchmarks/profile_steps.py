"""Where a GPU's time goes in the two steps that dominate an iteration: one inner-training step of a
ConvNet on an ipc-10 set (100 images, one batch) and one multi-level matching step (batched engine,
K x 256 real images).  Prints the operators (and, on CUDA, the kernels) that take the most device time,
so that the next change to the GPU path starts from a measurement.

    python benchmarks/profile_steps.py --device cuda          # in benchmarks/gpu.sh
    python benchmarks/profile_steps.py --device cpu --batch_real 32 --steps 1   # a quick look here
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradmatch.matching import matching_loss  # noqa: E402
from gradmatch.models import create_model  # noqa: E402
from gradmatch.models.stack import Networks  # noqa: E402
from gradmatch.train import Trainer  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch_real", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="profiled repetitions of each step (after 3 warm-ups)")
    p.add_argument("--rows", type=int, default=15)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = create_model("ConvNet", 3, 10, (32, 32)).to(device)
    syn = torch.randn(100, 3, 32, 32, generator=g).to(device)
    syn_labels = torch.arange(10).repeat_interleave(10).to(device)
    real = torch.randn(10 * args.batch_real, 3, 32, 32, generator=g).to(device)
    real_labels = torch.arange(10).repeat_interleave(args.batch_real).to(device)
    trainer = Trainer(Networks.wrap(net), 0.01, momentum=0.5)  # eager (no capture): the profile names each operator
    shuffle = torch.Generator().manual_seed(1)

    def training():
        trainer.epoch(syn, syn_labels, 256, [shuffle])

    def matching():
        images = syn.clone().requires_grad_(True)
        loss = matching_loss(net, (real, real_labels), (images, syn_labels), "multi-level", "improved",
                             engine="batched")
        torch.autograd.grad(loss, images)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    key = "self_device_time_total" if cuda else "self_cpu_time_total"  # own time: where to optimise
    for name, step in (("inner-training step (100 images)", training),
                       (f"multi-level matching step (10 x {args.batch_real} real images)", matching)):
        for _ in range(3):
            step()
        if cuda:
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            for _ in range(args.steps):
                step()
            if cuda:
                torch.cuda.synchronize()
        print(f"\n## {name}, {args.steps} repetitions, {device.type}")
        print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
