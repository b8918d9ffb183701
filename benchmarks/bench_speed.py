"""Speed of gradmatch's matching step and evaluation against the textbook loops, in one run.

    python benchmarks/bench_speed.py                  # matching: ipc 1, 10, 50 x intra-class, multi-level
    python benchmarks/bench_speed.py --part eval      # evaluation: 20 networks, ipc 10
    python benchmarks/bench_speed.py --ipcs 1 --schemes intra-class --steps 1    # a quick look
    python benchmarks/bench_speed.py --device cuda --vmap --part all             # on a GPU, the batched engine too

CIFAR10-shaped random data (3x32x32, 10 classes, batch_real 256), ConvNet, baseline distance.
"textbook" is the per-class loop of SPEC section 5 written out plainly below, run the way anyone
would run it (torch's default threads, glibc's default allocator); "gradmatch" is what the
condensation loop runs on CPU (``matching_loss(engine="fast")``, ``gradmatch.train.Trainer`` on the
network wrapped as a stack of one).  Whole iterations of
the real loop, on CPU and GPU: benchmarks/bench_e2e.py.  Every measurement runs
in a fresh subprocess (so peak memory is its own and allocator settings do not leak), one after the
other, textbook first; ratios are textbook / gradmatch seconds within this run.  On a shared
machine absolute seconds move with the load; the ratios less so.

Per setting it prints: seconds per matching step (loss, backward, image step), the ratio, the
network-training part (seconds per inner epoch on the synthetic set, and per outer iteration of the
published schedule), the peak resident memory above the process's baseline, and the achieved
GFLOP/s (useful FLOPs, counted with torch's FlopCounterMode, per second) against the matmul peak
(a 4096^2 torch.mm timed in this run, with torch's threads and with one).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from bench_e2e import seed_distance

K, C, H, BATCH_REAL, BATCH_TRAIN = 10, 3, 32, 256, 256
LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


# ---- the textbook loops, written plainly ---------------------------------------------------------
def distance_wb(gs, gr):
    """The seed's baseline distance (per output unit, 1 - cos; 1-D tensors count nothing)."""
    return seed_distance(gs, gr, improved=False)


def textbook_matching_step(net, real_x, real_y, syn_x, syn_y, opt_img, scheme):
    """SPEC section 5: per class, the real gradient (a constant) and the synthetic one (with its
    graph), one forward and backward each; L = sum_c D (+ K * D of the class means); one image step."""
    params = list(net.parameters())
    loss, all_s, all_r = 0, [], []
    for c in range(K):
        xr, yr = real_x[real_y == c], real_y[real_y == c]
        gr = torch.autograd.grad(F.cross_entropy(net(xr), yr), params)
        gr = [g.detach() for g in gr]
        xs, ys = syn_x[syn_y == c], syn_y[syn_y == c]
        gs = torch.autograd.grad(F.cross_entropy(net(xs), ys), params, create_graph=True)
        loss = loss + distance_wb(gs, gr)
        all_s.append(gs)
        all_r.append(gr)
    if scheme == "multi-level":
        mean_s = [torch.stack(t).mean(0) for t in zip(*all_s)]
        mean_r = [torch.stack(t).mean(0) for t in zip(*all_r)]
        loss = loss + K * distance_wb(mean_s, mean_r)
    opt_img.zero_grad()
    loss.backward()
    opt_img.step()
    return loss.detach()


def textbook_train_epoch(net, opt, images, labels, gen):
    perm = torch.randperm(len(images), generator=gen)
    for start in range(0, len(images), BATCH_TRAIN):
        idx = perm[start:start + BATCH_TRAIN]
        loss = F.cross_entropy(net(images[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


# ---- gradmatch's --------------------------------------------------------------------------------
def gradmatch_matching_step(net, real_x, real_y, syn_x, syn_y, opt_img, scheme, engine="fast", precision="fp32"):
    from gradmatch.matching import matching_loss
    loss = matching_loss(net, (real_x, real_y), (syn_x, syn_y), scheme, "baseline", num_classes=K, engine=engine,
                         precision=precision)
    opt_img.zero_grad()
    loss.backward()
    opt_img.step()
    return loss.detach()


def gradmatch_train_epoch(trainer, images, labels, gen):
    trainer.epoch(images, labels, BATCH_TRAIN, [gen])


# ---- one measurement (in its own process) ---------------------------------------------------------
def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def setup(ipc: int, seed: int = 0, device: str = "cpu"):
    from gradmatch.models import create_model
    g = torch.Generator().manual_seed(seed)
    real_x = torch.randn(K * BATCH_REAL, C, H, H, generator=g).to(device)
    real_y = torch.arange(K).repeat_interleave(BATCH_REAL).to(device)
    syn_x = torch.randn(K * ipc, C, H, H, generator=g).to(device).requires_grad_(True)
    syn_y = torch.arange(K).repeat_interleave(ipc).to(device)
    torch.manual_seed(seed + 1)
    net = create_model("ConvNet", C, K, (H, H)).to(device)
    return net, real_x, real_y, syn_x, syn_y


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def peak_mb(device: str, base: float) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base


def worker(job: dict) -> dict:
    """Time ``steps`` matching steps and ``epochs`` inner epochs of one method at one setting."""
    textbook, device = job["method"] == "textbook", job.get("device", "cpu")
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    if job.get("tuned_allocator"):
        from gradmatch.runtime import tune_cpu_allocator
        tune_cpu_allocator()
    net, real_x, real_y, syn_x, syn_y = setup(job["ipc"], device=device)
    opt_img = torch.optim.SGD([syn_x], lr=0.1, momentum=0.5)
    if textbook:
        step = textbook_matching_step
    else:
        def step(*a):
            return gradmatch_matching_step(*a, engine="batched" if job["method"] == "vmap" else "fast",
                                           precision="bf16" if job["method"] == "bf16" else "fp32")
    base = rss_mb()
    out = {"losses": [], "step_s": [], "epoch_s": []}
    if device != "cpu":  # one untimed step: CUDA context, kernels, allocator
        step(*setup(job["ipc"], seed=1, device=device)[:5], torch.optim.SGD([syn_x], lr=0.0), job["scheme"])
    for _ in range(job["steps"]):
        sync(device)
        start = time.perf_counter()
        out["losses"].append(float(step(net, real_x, real_y, syn_x, syn_y, opt_img, job["scheme"])))
        sync(device)
        out["step_s"].append(time.perf_counter() - start)
    if job.get("epochs"):
        from gradmatch.models.stack import Networks
        from gradmatch.train import Trainer

        opt_net = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.5)
        trainer = Trainer(Networks.wrap(net), 0.01, momentum=0.5)
        images, gen = syn_x.detach().clone(), torch.Generator().manual_seed(0)
        for _ in range(job["epochs"]):
            sync(device)
            start = time.perf_counter()
            if textbook:
                textbook_train_epoch(net, opt_net, images, syn_y, gen)
            else:
                gradmatch_train_epoch(trainer, images, syn_y, gen)
            sync(device)
            out["epoch_s"].append(time.perf_counter() - start)
    out["peak_mb"] = peak_mb(device, base)
    return out


def count_flops(job: dict) -> dict:
    """Useful FLOPs of one matching step (gradmatch's, one thread, the textbook's too) and of one
    inner epoch: counted at real batches of 4 and 8 per class and extrapolated linearly to 256 (the
    count is linear in the batch), so that counting costs little."""
    from torch.utils.flop_counter import FlopCounterMode

    from gradmatch import runtime
    runtime.RUNNER.forced = 1  # counting modes are per thread
    runtime.FastKernels.enabled = False  # count the pooling as the textbook does (not at all), not as matmuls
    torch.set_num_threads(1)
    ipc, res = job["ipc"], {}
    for name, fn in (("gradmatch", gradmatch_matching_step), ("textbook", textbook_matching_step)):
        counts = []
        for b in (4, 8):
            net, _, _, syn_x, syn_y = setup(ipc)
            g = torch.Generator().manual_seed(3)
            real_x = torch.randn(K * b, C, H, H, generator=g)
            real_y = torch.arange(K).repeat_interleave(b)
            opt_img = torch.optim.SGD([syn_x], lr=0.1, momentum=0.5)
            with FlopCounterMode(display=False) as counter:
                fn(net, real_x, real_y, syn_x, syn_y, opt_img, job["scheme"])
            counts.append(counter.get_total_flops())
        res[name] = counts[0] + (counts[1] - counts[0]) / 4 * (BATCH_REAL - 4)
    net, _, _, syn_x, syn_y = setup(ipc)
    opt_net = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.5)
    with FlopCounterMode(display=False) as counter:
        textbook_train_epoch(net, opt_net, syn_x.detach().clone(), syn_y, torch.Generator().manual_seed(0))
    res["epoch"] = counter.get_total_flops()
    return res


def matmul_peak(device: str = "cpu") -> dict:
    """GFLOP/s of a 4096^2 fp32 torch.mm: {threads: value} on the CPU, {"gpu": value} on a GPU."""
    a, b = torch.randn(4096, 4096, device=device), torch.randn(4096, 4096, device=device)
    if device != "cpu":
        torch.mm(a, b)
        return {"gpu": 2 * 4096**3 / min(_timed(lambda: torch.mm(a, b), device) for _ in range(5)) / 1e9}
    out = {}
    for threads in (torch.get_num_threads(), 1):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        torch.mm(a, b)
        best = min(_timed(lambda: torch.mm(a, b)) for _ in range(3))
        torch.set_num_threads(old)
        out[threads] = 2 * 4096**3 / best / 1e9
    return out


def _timed(fn, device: str = "cpu") -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


# ---- evaluation ----------------------------------------------------------------------------------
def eval_worker(job: dict) -> dict:
    """Train ``num_eval`` ConvNets on an ipc-10 set for ``epochs`` (the seed's schedule) and test them."""
    from gradmatch.synset import SyntheticSet
    from gradmatch.data import Dataset
    from gradmatch.evaluate import evaluate
    from gradmatch.models import create_model
    from gradmatch.train import accuracy
    g = torch.Generator().manual_seed(0)
    n, ipc, device = job["num_eval"], job["ipc"], job.get("device", "cpu")
    images = torch.randn(K * ipc, C, H, H, generator=g).to(device)
    labels = torch.arange(K).repeat_interleave(ipc).to(device)
    test_x = torch.randn(job["test"], C, H, H, generator=g).to(device)
    test_y = torch.randint(0, K, (job["test"],), generator=g).to(device)
    base = rss_mb()
    if device != "cpu":  # CUDA context and kernels before the clock starts
        create_model("ConvNet", C, K, (H, H)).to(device)(images).sum().backward()
    sync(device)
    start = time.perf_counter()
    if job["method"] == "textbook":  # one network after another, as the seed's evaluate_synset
        accs = []
        for k in range(n):
            torch.manual_seed(k)
            net = create_model("ConvNet", C, K, (H, H)).to(device)
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[job["epochs"] // 2], gamma=0.1)
            gen = torch.Generator().manual_seed(k)
            for _ in range(job["epochs"]):  # as many passes as gradmatch.evaluate trains
                textbook_train_epoch(net, opt, images, labels, gen)
                sched.step()
            accs.append(accuracy(net, test_x, test_y))
    else:
        syn = SyntheticSet(images=images, labels=labels, classes=[str(c) for c in range(K)],
                           mean=(0.0,) * C, std=(1.0,) * C, dataset="CIFAR10-shaped")
        test = Dataset(images=test_x, labels=test_y, classes=syn.classes, mean=syn.mean, std=syn.std, name="t")
        accs = evaluate(syn, "ConvNet", test, num_eval=n, epochs=job["epochs"], augment=None, device=device,
                        method=job["method"]).accuracies
    sync(device)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "accs": accs, "peak_mb": peak_mb(device, base)}


# ---- the driver ----------------------------------------------------------------------------------
def run_job(job: dict) -> dict:
    env = dict(os.environ)
    if job.get("method") == "textbook" and not job.get("tuned_allocator"):
        env["GRADMATCH_MALLOC"] = "system"
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True,
                          env=env)
    if proc.returncode:
        raise RuntimeError(f"worker {job} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def bench_matching(args) -> None:
    peak = matmul_peak(args.device)
    threads = torch.get_num_threads()
    if args.device == "cpu":
        print(f"CPU: {os.cpu_count()} cores, torch {torch.__version__}, {threads} threads; "
              f"load average {os.getloadavg()[0]:.1f} at start")
        print("matmul peak (4096^2 torch.mm): " + ", ".join(f"{v:.0f} GFLOP/s with {t} thread{'s' * (t > 1)}"
                                                           for t, v in peak.items()))
    else:
        print(f"GPU: {torch.cuda.get_device_name(args.device)}, torch {torch.__version__}; "
              f"matmul peak (4096^2 fp32 torch.mm): {peak['gpu']:.0f} GFLOP/s")
    top = max(peak.values())
    header = (f"{'setting':24s} {'method':10s} {'s/match step':>12s} {'ratio':>6s} {'s/epoch':>8s} "
              f"{'s/iteration*':>12s} {'peak MB':>8s} {'GFLOP/s':>8s} {'% peak':>6s}")
    print(header)
    print("-" * len(header))
    flops = {}
    for ipc in args.ipcs:
        outer, inner = LOOPS[ipc]
        steps = args.steps or (2 if ipc == 1 else 1)
        epochs = 0 if outer == 1 else args.epochs
        for scheme in args.schemes:
            if ipc not in flops:
                flops[ipc] = run_job({"count": True, "ipc": ipc, "scheme": scheme})
            results = {}
            for method in ["textbook", "gradmatch"] + (["vmap"] if args.vmap else []) + (["bf16"] if args.bf16 else []):
                results[method] = run_job({"method": method, "ipc": ipc, "scheme": scheme, "steps": steps,
                                           "epochs": epochs if scheme == args.schemes[0] else 0,
                                           "device": args.device})
            if args.attribution and scheme == args.schemes[0]:  # the textbook loop in gradmatch's settings
                results["tb-tuned"] = run_job(
                    {"method": "textbook", "ipc": ipc, "scheme": scheme, "steps": steps,
                     "tuned_allocator": True, "epochs": epochs})
            if epochs and scheme == args.schemes[0]:
                flops[ipc]["train_s"] = {m: mean(r["epoch_s"]) for m, r in results.items()}
            train_s = flops[ipc].get("train_s", {})
            rel = abs(results["gradmatch"]["losses"][0] - results["textbook"]["losses"][0]) / abs(
                results["textbook"]["losses"][0])
            for method, r in results.items():
                step_s = mean(r["step_s"])
                ratio = mean(results["textbook"]["step_s"]) / step_s
                per_epoch = train_s.get(method, float("nan"))
                per_iter = outer * step_s + (outer - 1) * inner * per_epoch if outer > 1 else step_s
                gflops = flops[ipc]["gradmatch"] / step_s / 1e9
                print(f"{f'ipc {ipc:2d} {scheme}':24s} {method:10s} {step_s:12.2f} {ratio:6.2f} "
                      f"{per_epoch:8.3f} {per_iter:12.1f} {r['peak_mb']:8.0f} {gflops:8.1f} {100 * gflops / top:6.1f}")
            print(f"{'':24s} first loss: textbook {results['textbook']['losses'][0]:.6f}, gradmatch "
                  f"{results['gradmatch']['losses'][0]:.6f} (relative difference {rel:.1e}); useful work "
                  f"{flops[ipc]['gradmatch'] / 1e9:.0f} GFLOP/step (textbook computes "
                  f"{flops[ipc]['textbook'] / 1e9:.0f}), {flops[ipc]['epoch'] / 1e9:.1f} GFLOP/epoch", flush=True)
    print("* s/iteration: outer_loop matching steps + (outer_loop - 1) x inner_loop epochs of the published "
          "schedule, from the measured means; ratio: textbook s / this row's s per matching step"
          + ("; tb-tuned: the textbook loop with gradmatch's allocator setting" if args.attribution
             else "") + ("; vmap: gradmatch's batched engine (engine='batched')" if args.vmap else "")
          + ("; bf16: gradmatch with bf16 real-gradient targets (precision='bf16')" if args.bf16 else ""))


def bench_eval(args) -> None:
    print(f"evaluation: {args.num_eval} ConvNets on an ipc-{args.eval_ipc} set, {args.eval_epochs} epochs "
          f"(the seed's schedule), test on {args.test} images; load average {os.getloadavg()[0]:.1f}")
    header = f"{'method':12s} {'seconds':>8s} {'ratio':>6s} {'peak MB':>8s}  accuracies (first 5)"
    print(header)
    print("-" * len(header))
    base = None
    accs = {}
    for method in args.eval_methods:
        r = run_job({"eval": True, "method": method, "num_eval": args.num_eval, "ipc": args.eval_ipc,
                     "epochs": args.eval_epochs, "test": args.test, "device": args.device})
        base = base or r["seconds"]
        accs[method] = r["accs"]
        print(f"{method:12s} {r['seconds']:8.1f} {base / r['seconds']:6.2f} {r['peak_mb']:8.0f}  "
              f"{[round(a, 3) for a in r['accs'][:5]]}", flush=True)
    gm = [m for m in accs if m != "textbook"]
    same = all(accs[m] == accs[gm[0]] for m in gm if m != "batched")
    print(f"ratio: textbook seconds / method seconds.  gradmatch's methods give the same per-network accuracies "
          f"(sequential = parallel{' = auto' if 'auto' in accs else ''}: {same}; batched agrees up to rounding); "
          "the textbook's differ only because it seeds its networks its own way")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("match", "eval", "all"), default="match")
    ap.add_argument("--ipcs", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--schemes", nargs="+", default=["intra-class", "multi-level"])
    ap.add_argument("--steps", type=int, default=None,
                    help="matching steps timed per setting (default: 2 at ipc 1, else 1, to stay under ~10 min)")
    ap.add_argument("--epochs", type=int, default=3, help="inner epochs timed per ipc (ipc > 1)")
    ap.add_argument("--attribution", action="store_true",
                    help="also time the textbook loop with the tuned allocator (first scheme): how "
                         "much of the gain is settings, how much the fast path's own work")
    ap.add_argument("--vmap", action="store_true", help="also time matching_loss(engine='batched') (torch.func)")
    ap.add_argument("--bf16", action="store_true", help="also time gradmatch with bf16 real targets")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where the matching and evaluation run")
    ap.add_argument("--num_eval", type=int, default=20)
    ap.add_argument("--eval_ipc", type=int, default=10)
    ap.add_argument("--eval_epochs", type=int, default=4)
    ap.add_argument("--test", type=int, default=1000, help="test images per network")
    ap.add_argument("--eval_methods", nargs="+", default=["textbook", "sequential", "parallel", "batched"])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        result = count_flops(job) if job.get("count") else eval_worker(job) if job.get("eval") else worker(job)
        print(json.dumps(result))
        return
    if args.part in ("match", "all"):
        bench_matching(args)
    if args.part in ("eval", "all"):
        bench_eval(args)


if __name__ == "__main__":
    main()
