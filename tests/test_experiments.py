"""Batched experiments (gradmatch.experiments): E condensations advanced as one stacked computation
give each experiment the images of its own run (float64, so that only rounding may differ), for
every scheme, distance family, schedule and DSA; where they cannot apply, the reason is said."""
from __future__ import annotations

import pytest
import torch

from gradmatch.condense import CondenseConfig, Condenser
from gradmatch.data import Dataset
from gradmatch.experiments import ExperimentBatch, for_experiments, use_batched, why_not

K = 3


def tiny_real(seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset(images=torch.randn(K * 12, 1, 12, 12, generator=g), labels=torch.arange(K).repeat_interleave(12),
                   classes=list("abc"), mean=(0.0,), std=(1.0,), name="tiny")


def config(**kw) -> CondenseConfig:
    base = dict(ipc=2, model="ConvNetD1", iterations=2, batch_real=8, batch_train=4, inner_loop=3, outer_loop=2)
    return CondenseConfig(**{**base, **kw})


def alone(real, cfg, experiments):
    out = []
    for e in experiments:
        *_, final = Condenser(real, cfg, e, device="cpu").steps()
        out.append((final.images.detach().clone(), final.last_loss))
    return out


def together(real, cfg, experiments):
    batch = ExperimentBatch(for_experiments(Condenser(real, cfg, device="cpu"), experiments))
    *_, final = batch.steps()
    return [(s.images.detach().clone(), s.last_loss) for s in final]


@pytest.mark.parametrize("scheme,metric,schedule,dsa", [
    ("intra-class", "baseline", "fixed", False),
    ("multi-level", "improved", "adaptive", False),
    ("inter-class", "mse", "fixed", False),
    ("interleaved", "dc", "overfit", False),
    ("multi-level", "improved", "fixed", True),
    ("inter-class", "cos", "overfit", True),
])
def test_each_batched_experiment_equals_its_own_run(float64, scheme, metric, schedule, dsa):
    real = tiny_real()
    cfg = config(scheme=scheme, dis_metric=metric, schedule=schedule, dsa=dsa)
    ref = alone(real, cfg, [0, 1, 2])
    got = together(real, cfg, [0, 1, 2])
    for (ref_images, ref_loss), (images, loss) in zip(ref, got):
        torch.testing.assert_close(images, ref_images, rtol=1e-10, atol=1e-12)
        assert loss == pytest.approx(ref_loss, rel=1e-10)
    assert not torch.allclose(got[0][0], got[1][0])  # the experiments differ: each has its own seeds


def test_experiments_stop_on_their_own_under_the_overfit_schedule(float64, monkeypatch):
    """The held-out loss rises for different experiments after different epochs; the batch must then
    freeze exactly those networks (and draw nothing more for them), as their own runs stop."""
    import gradmatch.experiments as experiments
    stops = {}
    real_epoch = experiments.StackedTrainer.epoch

    def counting(self, images, labels, batch_size, generators, augments=None, active=None):
        for k, on in enumerate(active):
            stops[k] = stops.get(k, 0) + bool(on)
        return real_epoch(self, images, labels, batch_size, generators, augments, active)

    monkeypatch.setattr(experiments.StackedTrainer, "epoch", counting)
    real = tiny_real(3)
    cfg = config(schedule="overfit", lr_net=0.5, iterations=1, outer_loop=3)
    ref = alone(real, cfg, range(4))
    got = together(real, cfg, range(4))
    for (ref_images, _), (images, _) in zip(ref, got):
        torch.testing.assert_close(images, ref_images, rtol=1e-10, atol=1e-12)
    assert len(set(stops.values())) > 1, stops  # the experiments trained for different numbers of epochs


def test_batched_experiments_resume_from_states_at_one_iteration(float64):
    real, cfg = tiny_real(), config(iterations=3)
    full = together(real, cfg, [0, 1])
    batch = ExperimentBatch(for_experiments(Condenser(real, cfg, device="cpu"), [0, 1]))
    steps = batch.steps()
    for states in steps:
        if states[0].iteration == 1:
            break
    *_, final = ExperimentBatch(for_experiments(Condenser(real, cfg, device="cpu"), [0, 1])).steps(states)
    for (ref, _), state in zip(full, final):
        torch.testing.assert_close(state.images.detach(), ref, rtol=0, atol=0)


def test_when_experiments_are_batched_and_why_not():
    real = tiny_real()
    cpu = Condenser(real, config(), device="cpu")
    assert use_batched("auto", cpu, 5) == (False, None)  # auto batches on GPUs only
    assert use_batched("batched", cpu, 5) == (True, None)
    assert use_batched("batched", cpu, 1) == (False, None)  # nothing to batch
    assert use_batched("sequential", cpu, 5) == (False, None)
    assert why_not(cpu) is None
    assert "batch norm" in why_not(Condenser(real, config(model="ConvNetBN"), device="cpu"))
    assert "layer norm" in why_not(Condenser(real, config(model="ConvNetLN"), device="cpu"))
    assert "--batch_real 20" in why_not(Condenser(real, config(batch_real=20), device="cpu"))
    assert why_not(Condenser(real, config(batch_real=20, scheme="inter-class"), device="cpu")) is None
    custom = Condenser(real, config(dis_metric="tests.user_distances:l1_rows"), device="cpu")
    batched, note = use_batched("batched", custom, 3)
    assert not batched and "distance of your own" in note and "one after another" in note
