"""What users wait for: whole condensation iterations and whole evaluations, gradmatch against the
textbook loop, in one run.

    python benchmarks/bench_e2e.py --device cpu --ipcs 1 --iterations 2            # a quick look here
    python benchmarks/bench_e2e.py --device cuda --data_path data --out e2e.json    # the GPU table

Per ipc (multi-level matching, improved distance, fixed schedule, ConvNet, batch_real 256: the seed's
Table 3 setting), seconds per condensation iteration, the median of ``--iterations`` after one
warm-up iteration, for:

* ``textbook``: the seed's multi-level.py loop written out plainly below (per-class passes, the
  seed's distance, a DataLoader over the synthetic set for each inner epoch, a ``.item()`` per batch
  as its ``epoch`` does);
* gradmatch's ``Condensation.update`` (one experiment) with each engine (``--engines``) and
  precision (``--precisions``).

Then, at ``--experiments_ipcs``, ``--experiments`` experiments advanced together (one
``gradmatch.condense.Condensation`` of several experiments under the plan ``--experiments batched``
gives on a GPU: the batched engine, stacked training, the epoch captured as a CUDA graph on CUDA)
against one experiment alone (its default plan): the time of one iteration of all of them over the
time of one (the issue's goal: 5 in at most 2x).
Then the evaluation of 20 ConvNets on an ipc-10 set (``--eval_epochs`` each): the seed's
evaluate_synset loop written out plainly, one network after the other, against ``gradmatch.evaluate``
(its default method for the device).  Achieved TFLOP/s count the useful FLOPs of one iteration
(``torch.utils.flop_counter`` on one matching step and one inner epoch, times the schedule's counts)
against a 4096^2 matmul timed in this run.  Data: real CIFAR-10 from ``--data_path`` if it is there,
else random CIFAR-10-shaped data (the timings do not depend on the pixels).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradmatch.condense import Condensation  # noqa: E402
from gradmatch.config import CondenseConfig  # noqa: E402
from gradmatch.data import Dataset  # noqa: E402
from gradmatch.evaluate import evaluate  # noqa: E402
from gradmatch.models import create_model  # noqa: E402
from gradmatch.plan import Plan  # noqa: E402
from gradmatch.schedule import loops_for_ipc  # noqa: E402
from gradmatch.synset import SyntheticSet  # noqa: E402

BATCH_REAL, BATCH_TRAIN, LR_IMG, LR_NET = 256, 256, 0.1, 0.01


# ---- the textbook loop (the seed's multi-level.py), written plainly ---------------------------------
def seed_distance(gw_syn, gw_real, improved: bool = True):
    """The seed's match_loss with dis_metric='improved' (or 'baseline')."""
    dis = 0.0
    for gws, gwr in zip(gw_syn, gw_real):
        if gwr.dim() == 1:
            continue
        gwr, gws = gwr.reshape(gwr.shape[0], -1), gws.reshape(gws.shape[0], -1)
        rows = 1 - F.cosine_similarity(gwr, gws, dim=-1)
        dis = dis + torch.sum(rows + torch.norm(gwr - gws, dim=-1) if improved else rows)
    return dis


class Textbook:
    def __init__(self, real: Dataset, ipc: int, device):
        self.device, self.ipc, self.k = device, ipc, real.num_classes
        self.images = real.images.to(device)
        self.indices = [np.flatnonzero(real.labels.numpy() == c) for c in range(self.k)]
        self.syn = torch.randn(self.k * ipc, *real.images.shape[1:], device=device, requires_grad=True)
        self.syn_labels = torch.arange(self.k, device=device).repeat_interleave(ipc)
        self.opt_img = torch.optim.SGD([self.syn], lr=LR_IMG, momentum=0.5)
        self.shape = real.images.shape[1:]

    def matching_step(self, net, params):
        loss = torch.tensor(0.0, device=self.device)
        sum_real, sum_syn = [0.0] * len(params), [0.0] * len(params)
        for c in range(self.k):
            img_real = self.images[np.random.permutation(self.indices[c])[:BATCH_REAL]]
            lab_real = torch.ones((img_real.shape[0],), device=self.device, dtype=torch.long) * c
            gw_real = torch.autograd.grad(F.cross_entropy(net(img_real), lab_real), params)
            gw_real = [g.detach().clone() for g in gw_real]
            img_syn = self.syn[c * self.ipc:(c + 1) * self.ipc]
            lab_syn = torch.ones((self.ipc,), device=self.device, dtype=torch.long) * c
            gw_syn = torch.autograd.grad(F.cross_entropy(net(img_syn), lab_syn), params, create_graph=True)
            sum_real = [a + g for a, g in zip(sum_real, gw_real)]
            sum_syn = [a + g for a, g in zip(sum_syn, gw_syn)]
            loss = loss + seed_distance(gw_syn, gw_real)
        loss = loss + self.k * seed_distance([s / self.k for s in sum_syn], [r / self.k for r in sum_real])
        self.opt_img.zero_grad()
        loss.backward()
        self.opt_img.step()
        return loss.item()

    def train_epoch(self, net, opt, loader):
        net.train()
        for img, lab in loader:
            out = net(img)
            loss = F.cross_entropy(out, lab)
            _ = loss.item(), out.max(1)[1].eq(lab).sum().item()  # the seed's epoch() keeps these
            opt.zero_grad()
            loss.backward()
            opt.step()

    def iteration(self):
        outer, inner = loops_for_ipc(self.ipc)
        net = create_model("ConvNet", self.shape[0], self.k, tuple(self.shape[1:])).to(self.device)
        net.train()
        params = list(net.parameters())
        opt_net = torch.optim.SGD(net.parameters(), lr=LR_NET, momentum=0.5)
        for ol in range(outer):
            self.matching_step(net, params)
            if ol == outer - 1:
                break
            data = torch.utils.data.TensorDataset(self.syn.detach().clone(), self.syn_labels.clone())
            loader = torch.utils.data.DataLoader(data, batch_size=BATCH_TRAIN, shuffle=True, num_workers=0)
            for _ in range(inner):
                self.train_epoch(net, opt_net, loader)


def textbook_evaluation(syn: SyntheticSet, test: Dataset, num_eval: int, epochs: int, device) -> float:
    """The seed's evaluate_synset, one network after the other; returns the mean accuracy."""
    accs = []
    test_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(test.images, test.labels),
                                              batch_size=256, shuffle=False)
    for _ in range(num_eval):
        net = create_model("ConvNet", syn.channel, syn.num_classes, syn.im_size).to(device)
        opt = torch.optim.SGD(net.parameters(), lr=LR_NET, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[epochs // 2], gamma=0.1)
        data = torch.utils.data.TensorDataset(syn.images.to(device), syn.labels.to(device))
        loader = torch.utils.data.DataLoader(data, batch_size=BATCH_TRAIN, shuffle=True)
        for _ in range(epochs):
            net.train()
            for img, lab in loader:
                out = net(img)
                loss = F.cross_entropy(out, lab)
                _ = loss.item(), out.max(1)[1].eq(lab).sum().item()
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
        net.eval()
        correct = 0
        with torch.no_grad():
            for img, lab in test_loader:
                img, lab = img.to(device), lab.to(device)
                correct += net(img).max(1)[1].eq(lab).sum().item()
        accs.append(correct / len(test.labels))
    return statistics.fmean(accs)


# ---- measuring ------------------------------------------------------------------------------------
def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median_seconds(step, warmup: int, iterations: int, device) -> float:
    for _ in range(warmup):
        timed(step, device)
    return statistics.median(timed(step, device) for _ in range(iterations))


def time_training(condensation, device) -> dict:
    """Count the seconds an iteration spends training the networks (the rest is matching)."""
    spent = {"seconds": 0.0, "iterations": 0}
    train, update = condensation.train_networks, condensation.update

    def timed_train(*args, **kwargs):
        spent["seconds"] += timed(lambda: train(*args, **kwargs), device)

    def counted_update(states):
        if spent["iterations"] == 1:  # the warm-up iteration is not counted
            spent["seconds"], spent["iterations"] = 0.0, 0
        spent["iterations"] += 1
        return update(states)

    condensation.train_networks, condensation.update = timed_train, counted_update
    return spent


def captured(condensation) -> bool:
    """Whether the inner training's epoch ran as a CUDA graph."""
    trainer = condensation.trainer
    return bool(trainer and trainer.storage and trainer.storage.graph is not None)


def matmul_peak(device, dtype=torch.float32, tf32=False) -> float:
    """TFLOP/s of a 4096^2 matmul (the ceiling the table compares against)."""
    n = 4096 if torch.device(device).type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        seconds = median_seconds(lambda: [a @ b for _ in range(10)], 1, 3, device) / 10
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return 2 * n ** 3 / seconds / 1e12


def iteration_flops(real: Dataset, ipc: int, device) -> float:
    """Useful FLOPs of one iteration: one matching step and one inner epoch counted, times the
    schedule's numbers of each."""
    from torch.utils.flop_counter import FlopCounterMode

    book = Textbook(real, ipc, device)
    net = create_model("ConvNet", real.channel, real.num_classes, real.im_size).to(device)
    with FlopCounterMode(display=False) as counter:
        book.matching_step(net, list(net.parameters()))
    per_step = counter.get_total_flops()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(book.syn.detach(), book.syn_labels),
                                         batch_size=BATCH_TRAIN, shuffle=True)
    opt = torch.optim.SGD(net.parameters(), lr=LR_NET, momentum=0.5)
    with FlopCounterMode(display=False) as counter:
        book.train_epoch(net, opt, loader)
    per_epoch = counter.get_total_flops()
    outer, inner = loops_for_ipc(ipc)
    return outer * per_step + (outer - 1) * inner * per_epoch


def time_experiments(train: Dataset, ipc: int, count: int, timed_iterations: int, device) -> dict:
    """Seconds of one iteration: one experiment alone (the default engine) and ``count`` together."""
    cfg = CondenseConfig(ipc=ipc, model="ConvNet", scheme="multi-level", dis_metric="improved", seed=0)
    alone = Condensation(train, cfg, [0], device)
    state = alone.initial_state(0)

    def one():
        alone.update([state])
        state.iteration += 1

    # as --experiments batched runs them on a GPU (the batched engine, stacked training, the epoch captured
    # on CUDA), here on any device
    plan = Plan(engine="batched", together=count, stacked_training=True,
                capture=torch.device(device).type == "cuda")
    batch = Condensation(train, cfg, list(range(count)), device, plan=plan)
    states = [batch.initial_state(e) for e in batch.experiments]

    def together():
        batch.update(states)
        for s in states:
            s.iteration += 1

    one_s = median_seconds(one, 1, timed_iterations, device)
    all_s = median_seconds(together, 1, timed_iterations, device)
    return {"ipc": ipc, "experiments": count, "one_seconds": one_s, "together_seconds": all_s,
            "together_over_one": all_s / one_s, "speedup_vs_one_by_one": count * one_s / all_s,
            "graph": captured(batch)}


def load_data(data_path, device):
    from gradmatch.data import load

    try:
        return load("CIFAR10", data_path, "train"), load("CIFAR10", data_path, "test"), "real CIFAR-10"
    except Exception:  # noqa: BLE001 - no files here: random data of the same shape
        g = torch.Generator().manual_seed(0)
        train = Dataset(torch.randn(50000, 3, 32, 32, generator=g), torch.arange(10).repeat(5000),
                        [str(c) for c in range(10)], (0.0,) * 3, (1.0,) * 3, "CIFAR10")
        test = Dataset(torch.randn(10000, 3, 32, 32, generator=g), torch.arange(10).repeat(1000),
                       train.classes, (0.0,) * 3, (1.0,) * 3, "CIFAR10")
        return train, test, "random CIFAR-10-shaped data"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data_path", default="data")
    p.add_argument("--ipcs", default="1,10,50")
    p.add_argument("--iterations", type=int, default=3, help="timed iterations per row (after one warm-up)")
    p.add_argument("--engines", default="textbook,auto,fast,batched")
    p.add_argument("--precisions", default="fp32", help="for the auto engine, e.g. fp32,tf32,bf16")
    p.add_argument("--precision_ipcs", default=None, help="the ipcs where --precisions run (default: all)")
    p.add_argument("--experiments", type=int, default=5, help="experiments advanced together; 0: no such part")
    p.add_argument("--experiments_ipcs", default="1,10")
    p.add_argument("--eval_epochs", type=int, default=300, help="0: no evaluation part")
    p.add_argument("--num_eval", type=int, default=20)
    p.add_argument("--eval_methods", default="auto", help="gradmatch's evaluation methods to time, e.g. auto,batched")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    device = args.device
    torch.manual_seed(0)
    np.random.seed(0)
    train, test, what = load_data(args.data_path, device)
    name = torch.cuda.get_device_name() if torch.device(device).type == "cuda" else "CPU"
    peak = matmul_peak(device)
    print(f"# {name}, torch {torch.__version__}, {what}; fp32 matmul peak {peak:.3f} TFLOP/s"
          + (f", tf32 {matmul_peak(device, tf32=True):.1f}, bf16 {matmul_peak(device, torch.bfloat16):.1f}"
             if torch.device(device).type == "cuda" else ""), flush=True)
    rows = []
    for ipc in [int(x) for x in args.ipcs.split(",")]:
        flops = iteration_flops(train, ipc, device)
        timed_iterations = args.iterations if ipc < 50 else max(1, args.iterations // 2)
        base = None
        runs = [(e, "fp32") for e in args.engines.split(",")]
        if args.precision_ipcs is None or str(ipc) in args.precision_ipcs.split(","):
            runs += [("auto", prec) for prec in args.precisions.split(",") if prec != "fp32"]
        for engine, precision in runs:
            if engine == "textbook":
                book = Textbook(train, ipc, device)
                step = book.iteration
            else:
                cfg = CondenseConfig(ipc=ipc, model="ConvNet", scheme="multi-level", dis_metric="improved",
                                     matching=engine, precision=precision, seed=0)
                condensation = Condensation(train, cfg, [0], device)
                state = condensation.initial_state(0)
                training = time_training(condensation, device)

                def step(condensation=condensation, state=state):
                    condensation.update([state])
                    state.iteration += 1
            try:
                seconds = median_seconds(step, 1, timed_iterations, device)
            except Exception as err:  # noqa: BLE001 - one failing row must not lose the others
                print(f"ipc {ipc} {engine} {precision}: failed: {type(err).__name__}: {err}", flush=True)
                continue
            base = seconds if engine == "textbook" else base
            ran = engine if engine == "textbook" else f"{engine} -> {condensation.plan.engine}"
            row = {"ipc": ipc, "engine": ran, "precision": precision, "seconds": seconds,
                   "ratio": base / seconds if base else None, "tflops": flops / seconds / 1e12}
            detail = ""
            if engine != "textbook":  # where an iteration's time went, and whether training was a graph
                row["training_seconds"] = training["seconds"] / training["iterations"]
                row["graph"] = captured(condensation)
                detail = f"  (training {row['training_seconds']:.3f} s/it, graph {row['graph']})"
            rows.append(row)
            print(f"ipc {ipc:>2} {ran:<18} {precision:<5} {seconds:8.3f} s/it  "
                  f"{'x%.2f' % row['ratio'] if row['ratio'] else '':>7}  {row['tflops']:6.2f} TFLOP/s{detail}",
                  flush=True)
    for ipc in [int(x) for x in args.experiments_ipcs.split(",")] if args.experiments else []:
        try:
            row = time_experiments(train, ipc, args.experiments, args.iterations, device)
        except Exception as err:  # noqa: BLE001 - one failing row must not lose the others
            print(f"ipc {ipc} {args.experiments} experiments together: failed: {type(err).__name__}: {err}", flush=True)
            continue
        rows.append(row)
        print(f"ipc {ipc:>2} {args.experiments} experiments together {row['together_seconds']:.3f} s/it, one alone "
              f"{row['one_seconds']:.3f} s/it: x{row['together_over_one']:.2f} the time of one, "
              f"x{row['speedup_vs_one_by_one']:.2f} faster than one by one (training graph {row['graph']})", flush=True)
    if args.eval_epochs:
        ipc = 10
        g = torch.Generator().manual_seed(1)
        syn = SyntheticSet(torch.randn(10 * ipc, 3, 32, 32, generator=g), torch.arange(10).repeat_interleave(ipc),
                           train.classes, train.mean, train.std, train.name)
        book = timed(lambda: textbook_evaluation(syn, test, args.num_eval, args.eval_epochs, device), device)
        for method in args.eval_methods.split(","):
            ours = timed(lambda: evaluate(syn, "ConvNet", test, num_eval=args.num_eval, epochs=args.eval_epochs,
                                          device=device, method=method), device)  # noqa: B023 - called at once
            what = f"{args.num_eval} ConvNets x {args.eval_epochs} epochs, ipc 10, method {method}"
            rows.append({"evaluation": what, "textbook_seconds": book, "gradmatch_seconds": ours,
                         "ratio": book / ours})
            print(f"evaluation, {what}: textbook {book:.2f} s, gradmatch {ours:.2f} s, x{book / ours:.2f}",
                  flush=True)
    print("\n| ipc | engine | precision | s / iteration | vs textbook | TFLOP/s (% of fp32 matmul peak) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "experiments" in r:
            print(f"| {r['ipc']} | {r['experiments']} experiments together | fp32 | {r['one_seconds']:.3f} -> "
                  f"{r['together_seconds']:.3f} | {r['together_over_one']:.2f}x of one "
                  f"({r['speedup_vs_one_by_one']:.2f}x vs one by one) | |")
        elif "ipc" in r:
            ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "1.00x"
            print(f"| {r['ipc']} | {r['engine']} | {r['precision']} | {r['seconds']:.3f} | {ratio} | "
                  f"{r['tflops']:.2f} ({100 * r['tflops'] / peak:.0f}%) |")
        else:
            print(f"| evaluation | {r['evaluation']} | | {r['textbook_seconds']:.2f} s -> "
                  f"{r['gradmatch_seconds']:.2f} s | {r['ratio']:.2f}x | |")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": name, "peak_tflops": peak, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
