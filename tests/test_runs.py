"""Long runs: checkpoints, exact resume after SIGKILL, refusal to overwrite, the NaN guard, progress
and the JSON-lines log.  Tiny digits runs (1x8x8, 10 classes), a few seconds each."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import gradmatch.run as gm_run
from gradmatch.cli import main
from gradmatch.errors import GradmatchError
from gradmatch.results import append_log, atomic_write, read_log, save_torch
from gradmatch.runstate import CHECKPOINT_VERSION, load_checkpoint
from tests import nan_distance
from tests.conftest import DEEP_ON_DIGITS, TINY_DIGITS, TINY_DIGITS_NAME, one_error_line

REPO = Path(__file__).resolve().parents[1]
NAME = TINY_DIGITS_NAME
ITERATIONS = 8
TINY = TINY_DIGITS


def condense_args(save_path, iterations=ITERATIONS, *extra):
    return ["condense", *TINY, "--Iteration", str(iterations), "--save_path", str(save_path), *extra]


def final_images(save_path) -> torch.Tensor:
    return torch.load(Path(save_path) / f"{NAME}.pt", weights_only=True)["data"][0][0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: the result every interrupted one must reproduce exactly."""
    torch.set_num_threads(1)
    save = tmp_path_factory.mktemp("reference")
    assert main(condense_args(save, ITERATIONS, "--eval_iterations", f"4,{ITERATIONS}")) == 0
    results = json.loads((save / f"{NAME}.json").read_text())
    return {"save": save, "images": final_images(save), "results": results}


def checkpoint_iteration(path) -> int:
    try:
        state = load_checkpoint(path)
    except GradmatchError:
        return -1
    return state.pending[0].iteration if 0 in state.pending else -1


def interrupt_at(monkeypatch, iteration: int):
    """Make the in-process run stop (KeyboardInterrupt, as Ctrl-C) right after logging ``iteration``."""
    real_append = gm_run.append_log

    def append(path, record):
        real_append(path, record)
        if record.get("event") == "iteration" and record["iteration"] == iteration:
            raise KeyboardInterrupt

    monkeypatch.setattr(gm_run, "append_log", append)


# ---- exact resume --------------------------------------------------------------------------------
def test_sigkill_then_resume_equals_uninterrupted(reference, tmp_path):
    save = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "gradmatch.cli",
           *condense_args(save, ITERATIONS, "--eval_iterations", f"4,{ITERATIONS}")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = save / NAME / "checkpoint.pt"
    deadline = time.monotonic() + 60
    try:
        while checkpoint_iteration(ckpt) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint at iteration 2 within 60 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = checkpoint_iteration(ckpt)
    assert 2 <= killed_at < ITERATIONS, killed_at
    print(f"killed after iteration {killed_at}; temporaries: {list((save / NAME).glob('.*.tmp'))}")
    assert not (save / f"{NAME}.pt").exists()  # it never finished

    # resume with the RUN_DIR form; a second, plain --resume of the finished run only rewrites results
    assert main(["condense", "--resume", str(save / NAME), "--quiet"]) == 0
    assert torch.equal(final_images(save), reference["images"])
    results = json.loads((save / f"{NAME}.json").read_text())
    assert results["accs_all_exps"] == reference["results"]["accs_all_exps"]
    assert not list((save / NAME).glob(".*.tmp")) and not list(save.glob(".*.tmp"))

    # the log: raw lines may repeat iterations redone after the kill; read_log keeps one of each
    records = read_log(save / NAME / "log.jsonl")
    iters = [r["iteration"] for r in records if r["event"] == "iteration"]
    evals = [(r["iteration"], r["model"]) for r in records if r["event"] == "eval"]
    assert sorted(iters) == list(range(1, ITERATIONS + 1))
    assert sorted(evals) == [(4, "ConvNetW32"), (ITERATIONS, "ConvNetW32")]
    ref_losses = {r["iteration"]: r["loss"] for r in read_log(reference["save"] / NAME / "log.jsonl")
                  if r["event"] == "iteration"}
    assert {r["iteration"]: r["loss"] for r in records if r["event"] == "iteration"} == ref_losses
    raw = (save / NAME / "log.jsonl").read_text().splitlines()
    assert len(raw) >= ITERATIONS + 2


def test_plain_resume_after_interrupt_equals_uninterrupted(reference, tmp_path, monkeypatch, capsys):
    interrupt_at(monkeypatch, 3)
    assert main(condense_args(tmp_path, ITERATIONS, "--eval_iterations", f"4,{ITERATIONS}")) == 130
    assert "is kept intact" in capsys.readouterr().err  # and says to pass --resume
    assert checkpoint_iteration(tmp_path / NAME / "checkpoint.pt") == 2  # 3 is logged, not yet saved
    monkeypatch.undo()
    torch.set_num_threads(1)
    torn = tmp_path / NAME / ".checkpoint.pt.x1y2.tmp"  # as a kill in the middle of a save leaves
    torn.write_bytes(b"half a checkpoint")
    # settings given on the command line that differ from the saved ones are named and ignored
    assert main(condense_args(tmp_path, ITERATIONS, "--eval_iterations", f"4,{ITERATIONS}",
                              "--resume", "--epoch_eval_train", "3")) == 0
    err = capsys.readouterr().err
    assert "warning: resuming with the saved settings; ignoring --epoch_eval_train 3 (saved: 2)" in err
    assert torch.equal(final_images(tmp_path), reference["images"])
    assert not torn.exists()


def test_resume_in_the_second_experiment(tmp_path, monkeypatch):
    two = ["--num_exp", "2", "--eval_iterations", "3"]
    assert main(condense_args(tmp_path / "whole", 3, *two)) == 0
    real_append = gm_run.append_log

    def append(path, record):  # stop in experiment 1, after its iteration 2
        real_append(path, record)
        if record.get("event") == "iteration" and (record["experiment"], record["iteration"]) == (1, 2):
            raise KeyboardInterrupt

    monkeypatch.setattr(gm_run, "append_log", append)
    assert main(condense_args(tmp_path / "cut", 3, *two)) == 130
    state = load_checkpoint(tmp_path / "cut" / NAME / "checkpoint.pt")
    assert state.next_experiment == 1 and state.pending[1].iteration == 1
    assert len(state.finished) == 1
    monkeypatch.undo()
    torch.set_num_threads(1)
    assert main(condense_args(tmp_path / "cut", 3, *two, "--resume")) == 0
    whole = torch.load(tmp_path / "whole" / f"{NAME}.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / f"{NAME}.pt", weights_only=True)
    assert len(cut["data"]) == 2
    assert all(torch.equal(a[0], b[0]) for a, b in zip(whole["data"], cut["data"]))
    assert cut["accs_all_exps"] == whole["accs_all_exps"]


def test_checkpoint_holds_state_and_rng(reference):
    state = load_checkpoint(reference["save"] / NAME / "checkpoint.pt")
    assert state.next_experiment == 1 and state.pending == {}  # finished
    assert torch.equal(state.finished[0], reference["images"])
    assert set(state.rng) >= {"torch", "numpy", "python"}
    assert [e["iteration"] for e in state.evaluations] == [4, ITERATIONS]
    assert state.accs_all_exps(["ConvNetW32"]) == reference["results"]["accs_all_exps"]


def test_checkpoint_mid_run_has_images_momentum_iteration(tmp_path, monkeypatch):
    interrupt_at(monkeypatch, 3)
    assert main(condense_args(tmp_path, 5)) == 130
    state = load_checkpoint(tmp_path / NAME / "checkpoint.pt")
    snap = state.pending[0]
    assert snap.iteration == 2 and snap.images.shape == snap.momentum.shape == (20, 1, 8, 8)
    assert snap.momentum.abs().sum() > 0 and state.finished == []
    raw = torch.load(tmp_path / NAME / "checkpoint.pt", weights_only=True)
    assert set(raw) == {"version", "config", "meta", "finished", "evaluations", "pending", "rng"}  # nothing twice


def test_a_run_cut_between_two_checkpoints_resumes_equal_to_the_uncut_one(tmp_path, monkeypatch, capsys):
    """--checkpoint_every 3, cut after iteration 5: the checkpoint holds iteration 3, and iterations 4-5
    are done again on resume, from the same seeds."""
    args = ["--checkpoint_every", "3", "--eval_iterations", "7"]
    assert main(condense_args(tmp_path / "whole", 7, *args)) == 0
    interrupt_at(monkeypatch, 5)
    assert main(condense_args(tmp_path / "cut", 7, *args)) == 130
    assert "(experiment 0, iteration 3) is kept intact" in capsys.readouterr().err
    assert checkpoint_iteration(tmp_path / "cut" / NAME / "checkpoint.pt") == 3
    monkeypatch.undo()
    torch.set_num_threads(1)
    assert main(condense_args(tmp_path / "cut", 7, *args, "--resume")) == 0
    assert torch.equal(final_images(tmp_path / "cut"), final_images(tmp_path / "whole"))


def test_both_resume_forms_take_the_same_settings_and_name_the_same_ignored_ones(tmp_path, monkeypatch, capsys):
    interrupt_at(monkeypatch, 2)
    assert main(condense_args(tmp_path / "a", 3)) == 130
    monkeypatch.undo()
    import shutil as sh
    sh.copytree(tmp_path / "a", tmp_path / "b")
    seen = []
    monkeypatch.setattr(gm_run.Run, "_run", lambda self, resume: seen.append(self) or {})
    extra = ["--num_eval", "4", "--lr_net", "0.5", "--device", "cpu", "--experiments", "batched"]
    capsys.readouterr()
    assert main(condense_args(tmp_path / "a", 3, "--resume", *extra)) == 0
    assert main(["condense", "--resume", str(tmp_path / "b" / NAME), *extra, "--quiet"]) == 0
    from gradmatch.config import resume_config
    configs = []
    for run in seen:
        state = load_checkpoint(run.files.checkpoint)
        config, ignored = resume_config(state.config, run.given)
        configs.append((config.replace(save_path="x"), ignored))
    assert configs[0] == configs[1]
    assert configs[0][1] == ["--num_eval 4 (saved: 1)", "--lr_net 0.5 (saved: default)"]
    assert configs[0][0].device == "cpu" and configs[0][0].experiments == "batched"  # where and how: taken
    assert configs[0][0].evaluation.num_eval == 1 and configs[0][0].condense.lr_net is None  # what: kept


# ---- damaged files ----------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0.0, 0.5, 0.98])
def test_truncated_checkpoint_is_detected_and_reported(tmp_path, monkeypatch, capsys, keep):
    interrupt_at(monkeypatch, 2)
    assert main(condense_args(tmp_path, 4)) == 130
    monkeypatch.undo()
    ckpt = tmp_path / NAME / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(GradmatchError, match="truncated or corrupt"):
        load_checkpoint(ckpt)
    capsys.readouterr()
    assert main(condense_args(tmp_path, 4, "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: checkpoint ")
    assert "truncated or corrupt" in err[0] and "--overwrite" in err[0]


def test_a_foreign_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_torch({"something": 1}, path)
    with pytest.raises(GradmatchError, match="not a gradmatch checkpoint"):
        load_checkpoint(path)
    save_torch({"version": CHECKPOINT_VERSION, "config": {}}, path)
    with pytest.raises(GradmatchError, match="incomplete"):
        load_checkpoint(path)
    for old in (1, 2):  # 1 held pickled objects, 2 a progress dict
        save_torch({"version": old, "config": {}}, path)
        with pytest.raises(GradmatchError, match="written by an older gradmatch .*--overwrite"):
            load_checkpoint(path)


def test_atomic_write_never_damages_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    atomic_write(path, b"old")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write(path, b"new and longer")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary left


# ---- refusing to overwrite --------------------------------------------------------------------------
def test_refuses_to_overwrite_a_finished_result(reference, tmp_path, capsys):
    shutil.copytree(reference["save"], tmp_path, dirs_exist_ok=True)
    pt = tmp_path / f"{NAME}.pt"
    before = pt.read_bytes()
    assert main(condense_args(tmp_path, ITERATIONS)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a finished result exists" in err[0] and "--overwrite" in err[0]
    assert pt.read_bytes() == before

    # told to: a fresh run of other length replaces it, and nothing of the old run stays behind
    (tmp_path / NAME / "grid_exp0_it00099.png").write_bytes(b"stale")
    assert main(condense_args(tmp_path, 2, "--overwrite")) == 0
    assert pt.read_bytes() != before
    grids = sorted(p.name for p in (tmp_path / NAME).glob("grid*.png"))
    assert grids == ["grid_exp0_it00002.png"]
    iters = [r["iteration"] for r in read_log(tmp_path / NAME / "log.jsonl") if r["event"] == "iteration"]
    assert iters == [1, 2]


def test_refuses_to_restart_an_unfinished_run(tmp_path, monkeypatch, capsys):
    interrupt_at(monkeypatch, 2)
    assert main(condense_args(tmp_path, 4)) == 130
    capsys.readouterr()
    assert main(condense_args(tmp_path, 4)) == 2
    err = capsys.readouterr().err
    assert "an unfinished run exists" in err and "--resume" in err


def test_nothing_to_resume(tmp_path, capsys):
    assert main(condense_args(tmp_path, 4, "--resume")) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["condense", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "nothing to resume: no checkpoint at" in capsys.readouterr().err


def test_a_second_process_on_the_same_run_is_refused(tmp_path, capsys):
    from gradmatch.config import RunConfig, apply
    from gradmatch.rundir import RunFiles

    config = apply(RunConfig(), {"dataset": "digits", "model": "ConvNetW32", "ipc": 2, "save_path": str(tmp_path)})
    files = RunFiles(config.run_dir)
    with files.locked():
        assert not (files.dir / ".lock").exists()  # the folder itself is locked: nothing a user deletes
        assert main(condense_args(tmp_path, 2)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(r"another gradmatch process \(pid \d+\) is running this run", err[0])
    assert not files.dir.exists()  # refused before writing anything: no empty folder left


# ---- the NaN guard ----------------------------------------------------------------------------------
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(nan_distance, "POISON", False)
    real_append = gm_run.append_log

    def append(path, record):  # the distance turns to NaN once iteration 3 is done
        real_append(path, record)
        if record.get("event") == "iteration" and record["iteration"] == 3:
            nan_distance.POISON = True

    monkeypatch.setattr(gm_run, "append_log", append)
    code = main(condense_args(tmp_path, 6, "--dis_metric", "tests.nan_distance:nan_when_poisoned"))
    line = one_error_line(capsys, (DEEP_ON_DIGITS,))
    assert code == 2
    assert "the matching loss became nan in iteration 4 of 6 (experiment 0)" in line
    assert "last good checkpoint (after iteration 3)" in line and "checkpoint.pt" in line
    name = f"{NAME}_nan_when_poisoned"  # a user's distance is named in the run's name
    state = load_checkpoint(tmp_path / name / "checkpoint.pt")
    assert state.pending[0].iteration == 3
    assert torch.isfinite(state.pending[0].images).all()
    assert not (tmp_path / f"{name}.pt").exists()


def test_nan_from_the_first_iteration(tmp_path, capsys):
    code = main(condense_args(tmp_path, 3, "--dis_metric", "tests.nan_distance:always_nan"))
    line = one_error_line(capsys, (DEEP_ON_DIGITS,))
    assert code == 2
    assert "became nan in iteration 1 of 3" in line and "no checkpoint was written" in line
    assert (tmp_path / f"{NAME}_always_nan" / "config.json").exists()
    assert not (tmp_path / f"{NAME}_always_nan" / "checkpoint.pt").exists()


def test_nan_gradient_with_finite_loss_never_reaches_a_checkpoint(tmp_path, capsys):
    # one matching step per iteration, so the NaN images are first seen by the runner's own check
    code = main(condense_args(tmp_path, 3, "--dis_metric", "tests.nan_distance:nan_gradient", "--outer_loop", "1"))
    line = one_error_line(capsys, (DEEP_ON_DIGITS,))
    assert code == 2
    assert "synthetic images became non-finite" in line and "iteration 1 of 3" in line
    assert (tmp_path / f"{NAME}_nan_gradient" / "config.json").exists()
    assert not (tmp_path / f"{NAME}_nan_gradient" / "checkpoint.pt").exists()




# ---- progress and the log ---------------------------------------------------------------------------
class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_shows_loss_and_rate_on_a_terminal(tmp_path, monkeypatch):
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    args = [a for a in condense_args(tmp_path, 3) if a != "--quiet"]
    assert main(args) == 0
    out = term.getvalue()
    assert "exp 0" in out and "3/3" in out
    assert re.search(r"loss=\d+\.\d{4}", out), out
    assert re.search(r"(it/s|s/it)", out), out

    quiet = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert main(condense_args(tmp_path / "q", 3)) == 0
    assert "it/s" not in quiet.getvalue() and "loss=" not in quiet.getvalue()


def test_log_has_a_line_per_iteration_and_per_evaluation(reference):
    lines = (reference["save"] / NAME / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    iters = [r for r in records if r["event"] == "iteration"]
    evals = [r for r in records if r["event"] == "eval"]
    assert [r["iteration"] for r in iters] == list(range(1, ITERATIONS + 1))
    assert all(isinstance(r["loss"], float) and r["seconds"] >= 0 for r in iters)
    assert [(r["iteration"], r["model"]) for r in evals] == [(4, "ConvNetW32"), (ITERATIONS, "ConvNetW32")]
    assert all(len(r["accuracies"]) == 1 and 0 <= r["mean"] <= 1 and r["seconds"] > 0 for r in evals)
    assert records[0] == {"event": "warning", "message": "ConvNetW32 has 3 pooling blocks, too many for 8x8 images "
                          "(its accuracy stays near chance); use --model ConvNetD1 or ConvNetD2"}
    assert records[1] == {"event": "plan", "engine": "fast", "together": 1, "stacked_training": False,
                          "capture": False, "notes": []}  # auto on a CPU
    assert records[2] == {"event": "experiments", "experiment": 0, "experiments": [0], "engine": "fast"}
    assert len(records) == ITERATIONS + 5


def test_read_log_dedupes_and_skips_torn_lines(tmp_path):
    log = tmp_path / "log.jsonl"
    for it, loss in [(1, 5.0), (2, 4.0), (2, 3.0), (3, 2.0)]:
        append_log(log, {"event": "iteration", "experiment": 0, "iteration": it, "loss": loss})
    with open(log, "a") as f:
        f.write('{"event": "iteration", "experi')  # a crash mid-line
    append_log(log, {"event": "eval", "experiment": 0, "iteration": 3, "model": "M", "mean": 0.5})
    records = read_log(log)
    assert [(r["event"], r["iteration"]) for r in records] == [
        ("iteration", 1), ("iteration", 2), ("iteration", 3), ("eval", 3)]
    assert records[1]["loss"] == 3.0  # the later copy wins


def test_run_names_keep_the_reference_pattern_and_tell_the_table_3_settings_apart():
    from gradmatch.config import CondenseConfig, RunConfig

    def name(**kw):
        return RunConfig(condense=CondenseConfig(scheme="multi-level", ipc=10, **kw)).name

    assert name() == "multi-level_CIFAR10_ConvNet_10ipc"  # Ours-M: the reference's own name
    assert name(dis_metric="ours") == name(dis_metric="dc") == "multi-level_CIFAR10_ConvNet_10ipc_dc"  # VICO's rule
    assert name(dis_metric="improved") == "multi-level_CIFAR10_ConvNet_10ipc_improved"  # Ours-MD
    assert name(dis_metric="improved", schedule="adaptive") == "multi-level_CIFAR10_ConvNet_10ipc_improved_adaptive"
    user = name(dis_metric="tests.user_distances:l1_rows", precision="bf16")
    assert user == "multi-level_CIFAR10_ConvNet_10ipc_l1_rows_bf16"
    assert len({name(), name(dis_metric="improved"), name(dis_metric="improved", schedule="adaptive")}) == 3
    prefixed = RunConfig(condense=CondenseConfig(scheme="multi-level", ipc=10), file_name_prefix="mine").name
    assert prefixed == "mine_CIFAR10_ConvNet_10ipc"  # the seed's --file_name_prefix


def test_every_file_a_run_writes_loads_with_weights_only(reference):
    files = list(reference["save"].rglob("*.pt"))
    assert {p.name for p in files} == {f"{NAME}.pt", "checkpoint.pt"}
    for path in files:
        torch.load(path, weights_only=True)  # raises for anything but tensors and plain data
