"""Batched experiments (gradmatch.experiments): E condensations advanced as one stacked computation
give each experiment the images of its own run (float64, so that only rounding may differ), for
every scheme, distance family, schedule and DSA; where they cannot apply, the reason is said."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import gradmatch.run as gm_run
from gradmatch.cli import main
from gradmatch.condense import CondenseConfig, Condenser
from gradmatch.data import Dataset
from gradmatch.errors import GradmatchError
from gradmatch.experiments import ExperimentBatch, for_experiments, use_batched, why_not
from gradmatch.results import CHECKPOINT_VERSION, load_checkpoint, read_log, save_torch
from tests.conftest import TINY_DIGITS

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
    assert use_batched("auto", cpu, 5) == (False, None)  # auto batches where the batched engine runs (GPUs)
    assert use_batched("auto", Condenser(real, config(matching="batched"), device="cpu"), 5) == (True, None)  # unsaid
    batched, note = use_batched("batched", cpu, 5)
    assert batched and "slower than one by one" in note
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
    with pytest.raises(GradmatchError, match="distance of your own"):
        ExperimentBatch(for_experiments(custom, [0, 1]))


# ---- in a run: the CLI's --experiments, checkpoints of several experiments, resume either way -------
NAME = "intra-class_digits_ConvNetD1_2ipc"


def run_args(save_path, *extra):  # ConvNetD1: TINY_DIGITS's ConvNetW32 is chaotic on 8x8 images (rounding grows)
    return ["condense", *TINY_DIGITS, "--model", "ConvNetD1", "--Iteration", "3",
            "--eval_iterations", "3", "--save_path", str(save_path), "--num_exp", "3", *extra]


def images_of(save_path):
    return [d[0] for d in torch.load(Path(save_path) / f"{NAME}.pt", weights_only=True)["data"]]


def close(a, b):
    """float32 runs: the stacked arithmetic rounds differently, and 3 iterations grow it to ~3e-4 of the
    images' norm (as much as between the fast and batched engines of one run, measured alike)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert float((x - y).norm() / y.norm()) < 1e-3


@pytest.fixture(scope="module")
def sequential_run(tmp_path_factory):
    torch.set_num_threads(1)
    save = tmp_path_factory.mktemp("sequential")
    assert main(run_args(save, "--experiments", "sequential")) == 0
    return images_of(save)


def test_a_batched_run_equals_the_sequential_one_and_says_so(sequential_run, tmp_path, capsys):
    assert main(run_args(tmp_path, "--experiments", "batched")) == 0
    assert capsys.readouterr().err.count("warning: batched experiments run on a CPU") == 1
    close(images_of(tmp_path), sequential_run)
    log = read_log(tmp_path / NAME / "log.jsonl")
    engines = [r for r in log if r["event"] == "engine"]
    assert [r["experiment"] for r in engines] == [0, 1, 2]
    assert all(r["engine"] == "batched" and r["together"] == [0, 1, 2] for r in engines)
    its = [r for r in log if r["event"] == "iteration"]
    assert sorted((r["experiment"], r["iteration"]) for r in its) == [(e, i) for e in range(3) for i in (1, 2, 3)]
    assert json.loads((tmp_path / NAME / "config.json").read_text())["experiments"] == "batched"


def interrupt_after(monkeypatch, experiment: int, iteration: int):
    real_append = gm_run.append_log

    def append(path, record):
        real_append(path, record)
        at = (record.get("experiment"), record.get("iteration"))
        if record.get("event") == "iteration" and at == (experiment, iteration):
            raise KeyboardInterrupt

    monkeypatch.setattr(gm_run, "append_log", append)


@pytest.mark.parametrize("resume_as", ["batched", "sequential"])
def test_a_cut_batched_run_resumes_batched_or_one_by_one(sequential_run, tmp_path, monkeypatch, resume_as):
    interrupt_after(monkeypatch, 2, 2)  # checkpoints every iteration: the last one holds iteration 1
    assert main(run_args(tmp_path / "cut", "--experiments", "batched")) == 130
    ckpt = load_checkpoint(tmp_path / "cut" / NAME / "checkpoint.pt")
    assert ckpt["progress"]["experiment"] == 0 and ckpt["state"]["iteration"] == 1
    assert sorted(ckpt["later_states"]) == [1, 2]
    assert all(s["iteration"] == 1 for s in ckpt["later_states"].values())
    monkeypatch.undo()
    torch.set_num_threads(1)
    assert main(run_args(tmp_path / "cut", "--experiments", resume_as, "--resume")) == 0
    close(images_of(tmp_path / "cut"), sequential_run)
    if resume_as == "batched":  # the same arithmetic as an uncut batched run: the same bits
        assert main(run_args(tmp_path / "whole", "--experiments", "batched")) == 0
        assert all(torch.equal(a, b) for a, b in zip(images_of(tmp_path / "cut"), images_of(tmp_path / "whole")))


def test_a_cut_sequential_run_resumes_with_the_rest_batched(sequential_run, tmp_path, monkeypatch):
    interrupt_after(monkeypatch, 0, 2)
    assert main(run_args(tmp_path, "--experiments", "sequential")) == 130
    monkeypatch.undo()
    torch.set_num_threads(1)
    assert main(run_args(tmp_path, "--experiments", "batched", "--resume")) == 0
    close(images_of(tmp_path), sequential_run)
    engines = [r for r in read_log(tmp_path / NAME / "log.jsonl") if r["event"] == "engine"]
    assert engines[-1]["together"] == [1, 2] and "together" not in engines[-3]  # experiment 0 went on alone


def test_a_checkpoint_with_a_broken_later_state_is_refused(tmp_path, capsys):
    ckpt_path = tmp_path / "checkpoint.pt"
    save_torch({"version": CHECKPOINT_VERSION, "config": {}, "progress": {}, "state": None, "images": None,
                "labels": None, "meta": {}, "later_states": {1: {"images": torch.zeros(1)}}}, ckpt_path)
    with pytest.raises(GradmatchError, match=r"incomplete \(no later_states\[1\]\)"):
        load_checkpoint(ckpt_path)


def test_batched_asked_where_it_cannot_run_is_said_once(tmp_path, capsys):
    args = run_args(tmp_path, "--experiments", "batched", "--dis_metric", "tests.user_distances:l1_rows",
                    "--Iteration", "1", "--eval_iterations", "1")
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("batched experiments cannot serve a distance of your own") == 1


def test_the_python_api_gives_each_experiments_own_set(float64, monkeypatch):
    import gradmatch
    import gradmatch.experiments as experiments
    real = tiny_real()
    sets = gradmatch.condense_experiments(real, 3, config(), device="cpu", scheme="multi-level")  # overrides too
    for e, syn in enumerate(sets):
        alone = gradmatch.condense(real, config(scheme="multi-level"), experiment=e, device="cpu")
        torch.testing.assert_close(syn.images, alone.images, rtol=1e-10, atol=1e-12)
        assert torch.equal(syn.labels, alone.labels)
    monkeypatch.setattr(experiments, "SYNTHETIC_IMAGES_TOGETHER", 2 * K * 2)  # two experiments at a time
    groups = []

    class Spy(experiments.ExperimentBatch):
        def __init__(self, members):
            groups.append([m.experiment for m in members])
            super().__init__(members)

    monkeypatch.setattr(experiments, "ExperimentBatch", Spy)
    in_twos = gradmatch.condense_experiments(real, 3, config(scheme="multi-level"), device="cpu")
    assert groups == [[0, 1]]  # experiment 2 alone
    for a, b in zip(in_twos, sets):
        torch.testing.assert_close(a.images, b.images, rtol=1e-10, atol=1e-12)
    one_by_one = gradmatch.condense_experiments(real, [1], config(scheme="multi-level"), device="cpu",
                                                mode="sequential")
    torch.testing.assert_close(one_by_one[0].images, sets[1].images, rtol=1e-10, atol=1e-12)
    with pytest.raises(GradmatchError, match="--experiments"):
        gradmatch.condense_experiments(real, 2, config(), device="cpu", mode="together")


def test_a_run_advances_at_most_what_memory_allows_together(sequential_run, tmp_path, monkeypatch):
    import gradmatch.experiments as experiments
    monkeypatch.setattr(experiments, "SYNTHETIC_IMAGES_TOGETHER", 2 * 10 * 2)  # digits, ipc 2: two at a time
    assert main(run_args(tmp_path, "--experiments", "batched")) == 0
    engines = [r for r in read_log(tmp_path / NAME / "log.jsonl") if r["event"] == "engine"]
    assert [r.get("together") for r in engines] == [[0, 1], [0, 1], None]
    close(images_of(tmp_path), sequential_run)


# ---- the stacked training's fixed-storage epoch (its CUDA graph's twin) ------------------------------
@pytest.mark.parametrize("own_sets", [False, True])
def test_the_fixed_storage_epoch_equals_the_plain_one(float64, own_sets):
    from gradmatch.models import create_model
    from gradmatch.train import StackedTrainer
    from torch.func import stack_module_state

    members, n = 3, 9
    g = torch.Generator().manual_seed(4)
    images = torch.randn(*((members,) if own_sets else ()), n, 1, 8, 8, generator=g)
    labels = torch.randint(0, K, (*((members,) if own_sets else ()), n), generator=g)
    trainers = []
    for graph in (False, True):
        nets = []
        for k in range(members):
            torch.manual_seed(20 + k)
            nets.append(create_model("ConvNetD1", 1, K, (8, 8)))
        params, _ = stack_module_state(nets)
        base = create_model("ConvNetD1", 1, K, (8, 8)).to("meta")
        trainers.append(StackedTrainer(base, {k: v.detach() for k, v in params.items()}, 0.05, 0.9, 5e-4,
                                       graph=graph))
    for trainer in trainers:
        gens = [torch.Generator().manual_seed(k) for k in range(members)]
        for ep in range(4):  # batches of 4 of 9 images; the lr drop; one member stopped from epoch 2 on
            if ep == 2:
                trainer.set_lr(0.005, fresh=False)
            trainer.epoch(images, labels, 4, gens, active=[True, ep < 2, True])
    assert trainers[1].static is not None and trainers[0].static is None
    for p, q in zip(*(t.params for t in trainers)):
        torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-14)
    assert not torch.equal(trainers[1].params[0][0], trainers[1].params[0][1])


@pytest.mark.parametrize("schedule", ["fixed", "overfit"])
def test_batched_experiments_on_the_fixed_storage_epoch_equal_their_own_runs(float64, monkeypatch, schedule):
    """What a GPU runs (the captured epoch, reused across iterations by copying fresh networks in),
    through its eager twin."""
    import functools

    import gradmatch.experiments as experiments
    from gradmatch.train import StackedTrainer
    monkeypatch.setattr(experiments, "StackedTrainer", functools.partial(StackedTrainer, graph=True))
    real, cfg = tiny_real(), config(scheme="multi-level", schedule=schedule, iterations=3)
    for (ref, _), (got, _) in zip(alone(real, cfg, [0, 1]), together(real, cfg, [0, 1])):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_a_batched_run_whose_loss_turns_nan_stops_in_one_line(tmp_path, capsys):
    from tests.conftest import one_error_line
    assert main(run_args(tmp_path, "--experiments", "batched", "--lr_img", "1e38")) == 2
    line = one_error_line(capsys, warned=("batched experiments run on a CPU",))
    assert "the matching loss became nan in iteration" in line and "(experiment 0)" in line
