"""Issue 11: every bad input ends in one line (exit code 2, no traceback) and loses nothing.

Each case asserts the exit code, the one line on stderr, and what is on disk afterwards."""
from __future__ import annotations

import os

import pytest
import torch

from gradmatch.cli import main
from gradmatch.config import CondenseConfig, RunConfig
from gradmatch.results import save_json
from tests.conftest import one_error_line


# ---- class 1: files that would run code when read ---------------------------------------------------
class MakesADirectory:
    """Unpickling this calls os.mkdir(path): what a file "that runs code when read" does."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def booby_trap(file, victim) -> None:
    torch.save({"data": [[torch.zeros(2, 1, 8, 8), torch.tensor([0, 1])]], "version": 2,
                "trap": MakesADirectory(victim)}, file)


def test_the_trap_would_fire_without_weights_only(tmp_path):
    """The planted object really runs code when read without weights_only (else the tests below prove
    nothing)."""
    booby_trap(tmp_path / "t.pt", tmp_path / "victim")
    torch.load(tmp_path / "t.pt", weights_only=False)
    assert (tmp_path / "victim").is_dir()


def files_in(folder) -> dict:
    """name -> bytes of every file but the run's lock (which a resume takes and leaves, empty)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != ".lock"}


def run_dir_with(tmp_path, checkpoint_writer):
    config = RunConfig(condense=CondenseConfig(model="ConvNetD1", iterations=2), dataset="digits",
                       save_path=str(tmp_path), num_exp=1, num_eval=1)
    run_dir = config.run_dir
    run_dir.mkdir(parents=True)
    save_json(config.to_dict(), run_dir / "config.json")
    checkpoint_writer(run_dir / "checkpoint.pt")
    return run_dir


@pytest.mark.parametrize("command", ["evaluate", "resume", "plot", "plot_final"])
def test_a_file_that_runs_code_when_read_is_refused_in_one_line(tmp_path, capsys, command):
    victim = tmp_path / "victim"
    run_dir = run_dir_with(tmp_path, lambda p: booby_trap(p, victim))
    if command == "evaluate":
        booby_trap(tmp_path / "set.pt", victim)
        argv = ["evaluate", str(tmp_path / "set.pt"), "--dataset", "digits", "--num_eval", "1"]
    elif command == "resume":
        argv = ["condense", "--resume", str(run_dir), "--quiet"]
    elif command == "plot":
        argv = ["plot", str(run_dir)]
    else:  # the run's final .pt is the trap
        booby_trap(tmp_path / f"{run_dir.name}.pt", victim)
        argv = ["plot", str(run_dir)]
    before = files_in(run_dir)
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert "holds Python objects other than tensors and plain data" in line
    assert "weights_only" in line and "no code runs when reading" in line
    assert not victim.exists()
    assert files_in(run_dir) == before  # nothing written, nothing removed


def test_an_old_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    run_dir = run_dir_with(tmp_path, lambda p: torch.save({"version": 1, "config": {}}, p))
    assert main(["condense", "--resume", str(run_dir), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert "written by an older gradmatch" in line and "--overwrite" in line
    assert (run_dir / "checkpoint.pt").is_file()


def test_dc_s_own_files_are_read(tmp_path, capsys):
    """DC saves {'data': [[images, labels], ...], 'accs_all_exps': {...}}: plain tensors and lists."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(20, 1, 8, 8, generator=g)
    torch.save({"data": [[images, torch.arange(10).repeat_interleave(2)]], "accs_all_exps": {"ConvNet": []}},
               tmp_path / "res_DC_digits_ConvNet_2ipc.pt")
    assert main(["evaluate", str(tmp_path / "res_DC_digits_ConvNet_2ipc.pt"), "--dataset", "digits",
                 "--model", "ConvNetD1", "--num_eval", "1", "--epoch_eval_train", "1"]) == 0
    assert "Evaluate 1 random ConvNetD1" in capsys.readouterr().out
