"""Experiments advanced together in runs and from Python (the arithmetic of each path is checked
against the textbook loop in tests/test_conformance.py): the plan, the grouping, checkpoints of several
experiments, resuming either way, and errors naming the experiment."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import gradmatch
import gradmatch.plan as plan_module
import gradmatch.run as gm_run
from gradmatch.cli import main
from gradmatch.config import CondenseConfig
from gradmatch.data import Dataset
from gradmatch.distributed import Group
from gradmatch.errors import GradmatchError
from gradmatch.plan import groups, make_plan
from gradmatch.results import read_log
from gradmatch.runstate import load_checkpoint
from tests.conftest import TINY_DIGITS, one_error_line

K = 3
NAME = "intra-class_digits_ConvNetD1_2ipc"


def tiny_real(seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset(images=torch.randn(K * 12, 1, 12, 12, generator=g), labels=torch.arange(K).repeat_interleave(12),
                   classes=list("abc"), mean=(0.0,), std=(1.0,), name="tiny")


def config(**kw) -> CondenseConfig:
    base = dict(ipc=2, model="ConvNetD1", iterations=2, batch_real=8, batch_train=4, inner_loop=3, outer_loop=2)
    return CondenseConfig(**{**base, **kw})


def test_the_plan_batches_only_when_asked_and_never_under_torchrun():
    real = tiny_real()
    cfg = config().resolved(real)
    cpu = torch.device("cpu")
    assert make_plan(cfg, real, cpu, Group(), "auto").together == 1  # until a GPU measurement says otherwise
    assert make_plan(cfg, real, cpu, Group(), "sequential").together == 1
    batched = make_plan(cfg, real, cpu, Group(), "batched")
    assert batched.together == plan_module.SYNTHETIC_IMAGES_TOGETHER // (K * 2) and not batched.stacked_training
    assert make_plan(config(matching="batched").resolved(real), real, cpu, Group(), "batched").stacked_training
    bn = make_plan(config(model="ConvNetBN", matching="batched").resolved(real), real, cpu, Group(), "batched")
    assert bn.together > 1 and bn.engine == "batched" and not bn.stacked_training  # running statistics
    shared = make_plan(cfg, real, cpu, Group(0, 2), "batched")
    assert shared.together == 1 and "torchrun" in shared.notes[0]
    assert not batched.capture and make_plan(cfg, real, cpu, Group(), "auto").record()["capture"] is False


def test_groups_are_consecutive_experiments_from_one_iteration():
    start = {0: 3, 1: 3, 2: 0, 3: 0, 4: 0}
    assert groups(range(5), start.get, 2) == [[0, 1], [2, 3], [4]]
    assert groups(range(5), start.get, 5) == [[0, 1], [2, 3, 4]]
    assert groups([1, 2, 4], lambda e: 0, 5) == [[1, 2], [4]]
    assert groups(range(3), lambda e: 0, 1) == [[0], [1], [2]]


def test_the_python_api_gives_each_experiment_its_own_set(float64, monkeypatch):
    real = tiny_real()
    alone = [gradmatch.condense(real, config(scheme="multi-level"), experiment=e, device="cpu") for e in range(3)]
    made = []
    loop = sys.modules["gradmatch.condense"]  # the package's `condense` is the function

    class Spy(loop.Condensation):
        def __init__(self, real, cfg, experiments, *args, **kw):
            made.append(list(experiments))
            super().__init__(real, cfg, experiments, *args, **kw)

    monkeypatch.setattr(loop, "Condensation", Spy)
    monkeypatch.setattr(plan_module, "SYNTHETIC_IMAGES_TOGETHER", 2 * K * 2)  # two experiments at a time
    sets = gradmatch.condense_experiments(real, 3, config(), device="cpu", mode="batched", scheme="multi-level")
    assert made == [[0, 1], [2]]
    for syn, ref in zip(sets, alone):
        torch.testing.assert_close(syn.images, ref.images, rtol=1e-10, atol=1e-12)
        assert torch.equal(syn.labels, ref.labels)
    assert not torch.allclose(sets[0].images, sets[1].images)
    made.clear()
    one = gradmatch.condense_experiments(real, [1], config(scheme="multi-level"), device="cpu", mode="sequential")
    assert made == [[1]] and torch.equal(one[0].images, alone[1].images)
    with pytest.raises(GradmatchError, match="--experiments"):
        gradmatch.condense_experiments(real, 2, config(), device="cpu", mode="together")


# ---- in a run: the CLI's --experiments, checkpoints of several experiments, resume either way -------
def run_args(save_path, *extra):
    return ["condense", *TINY_DIGITS, "--model", "ConvNetD1", "--Iteration", "3",
            "--eval_iterations", "3", "--save_path", str(save_path), "--num_exp", "3", *extra]


def images_of(save_path):
    return [d[0] for d in torch.load(Path(save_path) / f"{NAME}.pt", weights_only=True)["data"]]


def close(a, b):
    """float32 runs: the masked update of a stack rounds differently from one network's; three iterations
    grow that to ~1e-6 of the images' norm."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert float((x - y).norm() / y.norm()) < 1e-4


@pytest.fixture(scope="module")
def sequential_run(tmp_path_factory):
    torch.set_num_threads(1)
    save = tmp_path_factory.mktemp("sequential")
    assert main(run_args(save, "--experiments", "sequential")) == 0
    return images_of(save)


def test_a_batched_run_equals_the_sequential_one_and_logs_its_plan(sequential_run, tmp_path):
    assert main(run_args(tmp_path, "--experiments", "batched")) == 0
    close(images_of(tmp_path), sequential_run)
    log = read_log(tmp_path / NAME / "log.jsonl")
    plan = [r for r in log if r["event"] == "plan"]
    assert len(plan) == 1 and plan[0]["engine"] == "fast" and plan[0]["together"] > 1
    assert [r["experiments"] for r in log if r["event"] == "experiments"] == [[0, 1, 2]]
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
def test_a_cut_batched_run_resumes_batched_or_one_by_one(sequential_run, tmp_path, monkeypatch, capsys, resume_as):
    interrupt_after(monkeypatch, 2, 2)  # checkpoints every iteration: the last one holds iteration 1
    assert main(run_args(tmp_path / "cut", "--experiments", "batched")) == 130
    assert "run the same command with --resume" in capsys.readouterr().err
    state = load_checkpoint(tmp_path / "cut" / NAME / "checkpoint.pt")
    assert state.next_experiment == 0 and sorted(state.pending) == [0, 1, 2]
    assert all(s.iteration == 1 for s in state.pending.values())
    monkeypatch.undo()
    torch.set_num_threads(1)
    assert main(run_args(tmp_path / "cut", "--experiments", resume_as, "--resume")) == 0
    close(images_of(tmp_path / "cut"), sequential_run)
    if resume_as == "batched":  # the same arithmetic as an uncut batched run: the same bits
        assert main(run_args(tmp_path / "whole", "--experiments", "batched")) == 0
        assert all(torch.equal(a, b) for a, b in zip(images_of(tmp_path / "cut"), images_of(tmp_path / "whole")))
    else:
        grouped = [r["experiments"] for r in read_log(tmp_path / "cut" / NAME / "log.jsonl")
                   if r["event"] == "experiments"]
        assert grouped[-3:] == [[0], [1], [2]]


def test_a_cut_sequential_run_resumes_with_the_rest_batched(sequential_run, tmp_path, monkeypatch):
    interrupt_after(monkeypatch, 0, 2)
    assert main(run_args(tmp_path, "--experiments", "sequential")) == 130
    monkeypatch.undo()
    torch.set_num_threads(1)
    assert main(run_args(tmp_path, "--experiments", "batched", "--resume")) == 0
    close(images_of(tmp_path), sequential_run)
    grouped = [r["experiments"] for r in read_log(tmp_path / NAME / "log.jsonl") if r["event"] == "experiments"]
    assert grouped[-2:] == [[0], [1, 2]]  # experiment 0 went on alone from its iteration


def test_a_run_advances_at_most_what_memory_allows_together(sequential_run, tmp_path, monkeypatch):
    monkeypatch.setattr(plan_module, "SYNTHETIC_IMAGES_TOGETHER", 2 * 10 * 2)  # digits, ipc 2: two at a time
    assert main(run_args(tmp_path, "--experiments", "batched")) == 0
    grouped = [r["experiments"] for r in read_log(tmp_path / NAME / "log.jsonl") if r["event"] == "experiments"]
    assert grouped == [[0, 1], [2]]
    close(images_of(tmp_path), sequential_run)


def test_a_batched_run_whose_loss_turns_nan_stops_in_one_line(tmp_path, capsys):
    assert main(run_args(tmp_path, "--experiments", "batched", "--lr_img", "1e38")) == 2
    line = one_error_line(capsys)
    assert "the matching loss became nan in iteration" in line and "(experiment 0)" in line
    assert "no checkpoint was written before it" in line
