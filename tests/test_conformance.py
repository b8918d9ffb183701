"""Conformance, enumerated from the code's own tables: every scheme of ``SCHEMES``, every distance
family of ``DISTANCES`` (layer-wise, whole-vector) and a user's own, every schedule of ``SCHEDULES``,
DSA on and off.  Each case runs two iterations of the condensation loop on tiny data in float64 and is
checked, images and losses, against one oracle: the textbook loop written out again below (per-class
gradients by plain autograd, torch.optim.SGD, the draws in their documented order).  The same case is
run every way the code can run it: each experiment alone (the CPU's default engine), the experiments
advanced together one network after another, the experiments together as the GPU's default path runs
them (batched engine, vmapped training, the captured epoch's eager twin), and shared over two processes
(torch.distributed, gloo).  A new scheme, distance kind or schedule fails here until every path (and
this oracle) serves it.
"""
from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from gradmatch.augment import dsa, make_augment
from gradmatch.condense import Condensation
from gradmatch.config import CondenseConfig
from gradmatch.data import Dataset
from gradmatch.distributed import Group, shutdown
from gradmatch.matching.distances import DISTANCES, as_rows
from gradmatch.matching.schemes import SCHEMES
from gradmatch.models import list_models, register_model, registry
from gradmatch.models.stack import fresh_network
from gradmatch.plan import Plan
from gradmatch.schedule import OVERFIT_MAX_EPOCHS, SCHEDULES, adaptive_inner_epochs
from gradmatch.seeds import derive_seed

K, IPC, EXPERIMENTS, ITERATIONS = 3, 2, 2, 2
MODEL = "ConformanceConv"  # one narrow ConvNet block (conv, instance norm, ReLU, pool): tiny and quick


class _Tiny(torch.nn.Module):
    def __init__(self, channel, num_classes, im_size):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(channel, 6, 3, padding=1),
                                            torch.nn.GroupNorm(6, 6, affine=True), torch.nn.ReLU(),
                                            torch.nn.AvgPool2d(2))
        self.classifier = torch.nn.Linear(6 * (im_size[0] // 2) * (im_size[1] // 2), num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def register_tiny() -> None:
    if MODEL not in list_models():
        register_model(lambda channel, num_classes, im_size: _Tiny(channel, num_classes, im_size), name=MODEL)


SHORT_ADAPTIVE = (3, 2)  # the adaptive step's table, cut short: its rule is tested in test_schedule.py


def shorten_adaptive() -> dict:
    """Every scheme's adaptive table cut to SHORT_ADAPTIVE (what the loop and the oracle read); the old entries."""
    saved = dict(SCHEMES)
    SCHEMES.update({name: dataclasses.replace(s, adaptive=SHORT_ADAPTIVE) for name, s in saved.items()})
    return saved


@pytest.fixture(scope="module", autouse=True)
def tiny_model():
    """Registered for this module only (other tests list the registry); the adaptive step cut short."""
    register_tiny()
    saved = shorten_adaptive()
    yield
    SCHEMES.update(saved)
    registry._MODELS.pop(MODEL, None)


def user_l1(syn_rows, real_rows):  # a user's own per-tensor distance
    return (syn_rows - real_rows).abs().sum()


# one case per scheme x distance family x schedule x DSA; every distance of the table once more below
FAMILIES = {"layer-wise": next(n for n, d in DISTANCES.items() if not d.whole_vector),
            "whole-vector": next(n for n, d in DISTANCES.items() if d.whole_vector), "user": user_l1}
CASES = [(scheme, metric, schedule, with_dsa) for scheme in SCHEMES for metric in FAMILIES.values()
         for schedule in SCHEDULES for with_dsa in (False, True)]
CASES += [("multi-level", name, "fixed", False) for name in DISTANCES if name not in FAMILIES.values()]
IDS = [f"{s}-{getattr(m, '__name__', m)}-{sc}-{'dsa' if d else 'plain'}" for s, m, sc, d in CASES]


def tiny_real() -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset(images=torch.randn(K * 6, 1, 8, 8, generator=g, dtype=torch.float64),
                   labels=torch.arange(K).repeat_interleave(6), classes=list("abc"), mean=(0.0,), std=(1.0,),
                   name="tiny")


def config(scheme, metric, schedule, with_dsa) -> CondenseConfig:
    return CondenseConfig(ipc=IPC, model=MODEL, scheme=scheme, dis_metric=metric, schedule=schedule,
                          dsa=with_dsa, dsa_strategy="color_crop_flip_scale" if with_dsa else dsa.STRATEGY,
                          iterations=ITERATIONS, batch_real=4, batch_train=4, outer_loop=2, inner_loop=2, seed=5,
                          lr_net=0.01)


# ---- the oracle: the textbook loop, written out again ------------------------------------------------
def oracle_distance(gs, gr, metric):
    name = metric if isinstance(metric, str) else None
    if name is not None and DISTANCES[name].whole_vector:
        return DISTANCES[name].fn(torch.cat([g.flatten() for g in gs]), torch.cat([g.flatten() for g in gr]))
    fn = DISTANCES[name].fn if name is not None else metric
    return sum(fn(as_rows(s), as_rows(r)) for s, r in zip(gs, gr) if s.dim() > 1)


def oracle_grad(net, x, y, create_graph, metric):
    whole = isinstance(metric, str) and DISTANCES[metric].whole_vector
    params = [p for p in net.parameters() if p.dim() > 1 or whole]
    g = torch.autograd.grad(F.cross_entropy(net(x), y), params, create_graph=create_graph)
    return [t if create_graph else t.detach() for t in g]


def oracle_loss(net, real, syn, scheme, metric):
    if scheme == "inter-class":
        return K * oracle_distance(oracle_grad(net, *syn, True, metric), oracle_grad(net, *real, False, metric), metric)
    terms, gs_all, gr_all = 0, [], []
    for c in range(K):
        gr = oracle_grad(net, real[0][real[1] == c], real[1][real[1] == c], False, metric)
        gs = oracle_grad(net, syn[0][syn[1] == c], syn[1][syn[1] == c], True, metric)
        terms, gs_all, gr_all = terms + oracle_distance(gs, gr, metric), gs_all + [gs], gr_all + [gr]
    if scheme == "multi-level":
        mean_s = [sum(t) / K for t in zip(*gs_all)]
        mean_r = [sum(t) / K for t in zip(*gr_all)]
        terms = terms + K * oracle_distance(mean_s, mean_r, metric)
    elif scheme != "intra-class":
        raise KeyError(f"the oracle does not know scheme {scheme}")
    return terms


def oracle_epochs(schedule, step, scheme, inner):
    adaptive = adaptive_inner_epochs(step, SCHEMES[scheme].adaptive)
    return {"fixed": inner, "adaptive": adaptive, "overfit": OVERFIT_MAX_EPOCHS}[schedule]


def oracle_run(real: Dataset, cfg: CondenseConfig, experiment: int):
    """(images after ITERATIONS iterations, the loss of each iteration) of one experiment."""
    by_class = [torch.nonzero(real.labels == c).flatten() for c in range(K)]
    syn_y = torch.arange(K).repeat_interleave(IPC)
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, experiment, -1))
    images = torch.randn(K * IPC, *real.images.shape[1:], generator=gen).requires_grad_(True)
    opt_img = torch.optim.SGD([images], lr=0.1, momentum=0.5)
    losses = []
    for it in range(ITERATIONS):
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, experiment, it, 0))
        net = fresh_network(MODEL, 1, K, (8, 8), derive_seed(cfg.seed, experiment, it, 1))
        opt_net = torch.optim.SGD(net.parameters(), lr=cfg.lr_net, momentum=0.5)
        scheme = SCHEMES[cfg.scheme].alternates[it % 2] if SCHEMES[cfg.scheme].alternates else cfg.scheme
        total = 0.0
        for step in range(cfg.outer_loop):
            if scheme == "inter-class":
                idx = torch.randperm(len(real.labels), generator=gen)[:4 * cfg.batch_real]
                real_b = (real.images[idx], real.labels[idx])
                pick = torch.randperm(len(syn_y), generator=gen)[:cfg.batch_train]
                syn_b = (images[pick], syn_y[pick])
                groups = (None, None)
            else:
                picks = [i[torch.randperm(len(i), generator=gen)[:cfg.batch_real]] for i in by_class]
                idx = torch.cat(picks)
                real_b, syn_b = (real.images[idx], real.labels[idx]), (images, syn_y)
                groups = (real.labels[idx], syn_y)
            if cfg.dsa:
                rx, sx = dsa.siamese(real_b[0], syn_b[0], cfg.dsa_strategy, gen, *groups, groups=K)
                real_b, syn_b = (rx, real_b[1]), (sx, syn_b[1])
            loss = oracle_loss(net, real_b, syn_b, scheme, cfg.dis_metric)
            opt_img.zero_grad()
            (images.grad,) = torch.autograd.grad(loss, [images])
            opt_img.step()
            total += loss.item()
            if step == cfg.outer_loop - 1:
                break
            held = None
            if cfg.schedule == "overfit":
                idx = torch.randperm(len(real.labels), generator=gen)[:cfg.batch_real]
                held, previous = (real.images[idx], real.labels[idx]), math.inf
            augment = make_augment(f"dsa:{cfg.dsa_strategy}", gen) if cfg.dsa else None
            train_x = images.detach().clone()
            for _ in range(oracle_epochs(cfg.schedule, step, cfg.scheme, cfg.inner_loop)):
                net.train()
                order = torch.randperm(len(syn_y), generator=gen)
                for start in range(0, len(syn_y), cfg.batch_train):
                    b = order[start:start + cfg.batch_train]
                    x = train_x[b] if augment is None else augment(train_x[b])
                    opt_net.zero_grad()
                    F.cross_entropy(net(x), syn_y[b]).backward()
                    opt_net.step()
                if held is not None:
                    with torch.no_grad():
                        current = F.cross_entropy(net.eval()(held[0]), held[1]).item()
                    net.train()
                    if current > previous:
                        break
                    previous = current
        losses.append(total / (K * cfg.outer_loop))
    return images.detach(), losses


# ---- the paths under test ------------------------------------------------------------------------------
GPU_DEFAULT = Plan(engine="batched", together=EXPERIMENTS, stacked_training=True, capture=True)
TOGETHER_CPU = Plan(engine="fast", together=EXPERIMENTS, stacked_training=False, capture=False)


def run_path(real, cfg, experiments, plan=None, group=None):
    """(images, losses) per experiment through ``Condensation``."""
    losses = {e: [] for e in experiments}
    cond = Condensation(real, cfg, experiments, device="cpu", plan=plan, group=group)
    for states in cond.steps():
        for e, s in zip(experiments, states):
            if s.iteration:
                losses[e].append(s.last_loss)
    return [(s.images.detach(), losses[e]) for e, s in zip(experiments, states)]


def assert_conforms(got, expected, what):
    (images, losses), (ref_images, ref_losses) = got, expected
    torch.testing.assert_close(images, ref_images, rtol=1e-9, atol=1e-10, msg=lambda m: f"{what}: {m}")
    assert losses == pytest.approx(ref_losses, rel=1e-9), what


@pytest.fixture(scope="module")
def oracles():
    with torch.random.fork_rng():
        torch.set_default_dtype(torch.float64)
        try:
            return {case: [oracle_run(tiny_real(), config(*case), e) for e in range(EXPERIMENTS)] for case in CASES}
        finally:
            torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_path_equals_the_textbook_loop(float64, oracles, case):
    real, cfg = tiny_real(), config(*case)
    expected = oracles[case]
    assert not torch.allclose(expected[0][0], expected[1][0])  # the experiments differ: each its own seeds
    for e in range(EXPERIMENTS):
        assert_conforms(run_path(real, cfg, [e])[0], expected[e], f"experiment {e} alone")
    for name, plan in (("together, one network after another", TOGETHER_CPU), ("together, GPU default", GPU_DEFAULT)):
        for e, got in enumerate(run_path(real, cfg, list(range(EXPERIMENTS)), plan)):
            assert_conforms(got, expected[e], f"{name}, experiment {e}")


def shared_worker(rank: int, world: int, folder: str) -> None:
    register_tiny()
    shorten_adaptive()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    try:
        out = [run_path(tiny_real(), config(*case), [0], group=Group(rank, world))[0] for case in CASES]
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        shutdown()


def test_processes_sharing_the_classes_equal_the_textbook_loop(oracles, tmp_path):
    mp.start_processes(shared_worker, args=(2, str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for case, what, shares in zip(CASES, IDS, got):
            assert_conforms(shares, oracles[case][0], f"{what}, process {rank} of 2")
