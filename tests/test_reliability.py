"""What a hostile user hands gradmatch, by class (the issue "Nothing a user hands gradmatch is trusted
unchecked"): every case ends in one line (GradmatchError from Python, `error:` and exit 2 from the CLI),
no traceback, and what is on disk afterwards is checked.  Files (checkpoints, saved sets, exports,
data files) have their own tests (test_bad_input, test_saved_sets, test_export, test_data_*)."""
from __future__ import annotations

import dataclasses

import errno
import os
import sys

import pytest
import torch

import gradmatch
import gradmatch.run as gm_run
from gradmatch import data
from gradmatch.cli import main
from gradmatch.config import CondenseConfig
from gradmatch.errors import GradmatchError
from gradmatch.synset import SyntheticSet
from tests.conftest import DEEP_ON_DIGITS, TINY_DIGITS, TINY_DIGITS_NAME, one_error_line


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", split="train"), data.load("digits", split="test")


def a_set(train, **change) -> SyntheticSet:
    return dataclasses.replace(gradmatch.random_real_subset(train, 2, seed=0), **change)


# ---- class 2: the Python API checks its arguments and data, with the CLI's checks ----------------------
CONDENSE_CASES = [
    ({"real": None}, "condense: real must be a gradmatch.data.Dataset"),
    ({"real": {"images": 1}}, "got dict"),
    ({"bogus": 1}, "condense: unknown setting bogus"),
    ({"scheme": 5}, "--scheme takes a non-empty name"),
    ({"seed": "abc"}, "--seed takes a whole number"),
    ({"dis_metric": 42}, "--dis_metric takes a distance name"),
    ({"iterations": 1.5}, "--Iteration takes a whole number, got 1.5"),
    ({"ipc": 0}, "--ipc must be at least 1"),
    ({"ipc": True}, "--ipc takes a whole number"),
    ({"lr_img": float("nan")}, "--lr_img must be a positive number"),
    ({"model": "ResNet99"}, "unknown model 'ResNet99'"),
    ({"config": "x"}, "condense: config must be a gradmatch.CondenseConfig"),
    ({"experiment": -1}, "condense: experiment must be at least 0, got -1"),
    ({"images": torch.zeros(30, 1, 8, 8, dtype=torch.float64)}, "images are a float64 tensor"),
    ({"images": torch.zeros(30, 1, 8, 8, dtype=torch.uint8)}, "images are a uint8 tensor"),
    ({"images": torch.zeros(30, 8, 8)}, "images have shape (30, 8, 8); expected a float32 tensor N x C x H x W"),
    ({"images": torch.full((30, 1, 8, 8), float("nan"))}, "non-finite"),
    ({"labels": torch.arange(30).float()}, "labels"),
    ({"labels": torch.zeros(30, 2, dtype=torch.long)}, "labels"),
    ({"labels": -torch.ones(30, dtype=torch.long)}, "labels"),
    ({"labels": torch.zeros(20, dtype=torch.long)}, "labels"),
    ({"labels": torch.full((30,), 7, dtype=torch.long)}, "labels"),
]


@pytest.mark.parametrize("case, words", CONDENSE_CASES, ids=[w[:40] for _, w in CONDENSE_CASES])
def test_condense_refuses_bad_arguments_in_one_line(case, words):
    g = torch.Generator().manual_seed(0)
    real = data.Dataset(images=torch.randn(30, 1, 8, 8, generator=g), labels=torch.arange(3).repeat_interleave(10),
                        classes=["a", "b", "c"], mean=(0.0,), std=(1.0,), name="toy")
    case = dict(case)
    real = dataclasses.replace(real, **{key: case.pop(key) for key in ("images", "labels") if key in case})
    real = case.pop("real", real)
    kwargs = {"ipc": 1, "model": "ConvNetD1", "iterations": 1, "batch_real": 4, "device": "cpu", **case}
    with pytest.raises(GradmatchError) as info:
        gradmatch.condense(real, **kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("experiments", [0, -2, 2.5, [0, 0], [-1], "abc", True])
def test_condense_experiments_refuses_bad_numbers(digits, experiments):
    with pytest.raises(GradmatchError, match="condense_experiments: experiments (must be|takes a whole number)"):
        gradmatch.condense_experiments(digits[0], experiments, ipc=1, model="ConvNetD1", iterations=0)


def labels_out_of_range(train):
    return a_set(train, labels=torch.full((20,), 12))


EVALUATE_CASES = [
    (lambda t: (a_set(t), "ConvNetD1", {"num_eval": 0}), "protocol num_eval must be at least 1, got 0"),
    (lambda t: (a_set(t), "ConvNetD1", {"batch_size": 0}), "protocol batch_size must be at least 1"),
    (lambda t: (a_set(t), "ConvNetD1", {"lr": -1}), "protocol lr must be a positive number"),
    (lambda t: (a_set(t), "ConvNetD1", {"epochs": -1}), "protocol epochs must be at least 1"),
    (lambda t: (a_set(t), "ConvNetD1", {"augment": "bogus"}), "unknown augmentation 'bogus'"),
    (lambda t: (a_set(t), "ConvNetD1", {"method": "fast"}), "unknown evaluation method"),
    (lambda t: (a_set(t), "ConvNetD1", {"colour": 1}), "protocol: unknown setting colour"),
    (lambda t: (a_set(t), "Nope", {}), "unknown model 'Nope'"),
    (lambda t: ({"images": 1}, "ConvNetD1", {}), "the set must be a gradmatch SyntheticSet"),
    (lambda t: (a_set(t, images=a_set(t).images.half()), "ConvNetD1", {}), "images"),
    (lambda t: (a_set(t, labels=list(range(20))), "ConvNetD1", {}), "labels"),
    (lambda t: (labels_out_of_range(t), "ConvNetD1", {}), "labels"),
    (lambda t: (a_set(t, mean=(0.1, 0.2)), "ConvNetD1", {}), "mean"),
]


@pytest.mark.parametrize("make, words", EVALUATE_CASES, ids=[w[:40] for _, w in EVALUATE_CASES])
def test_evaluate_refuses_bad_arguments_in_one_line(digits, make, words):
    train, test = digits
    syn, model, kwargs = make(train)
    with pytest.raises(GradmatchError) as info:
        gradmatch.evaluate(syn, model, test, device="cpu", **kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_the_cli_and_python_share_each_check(digits, tmp_path, capsys):
    """The same value refused from both, with the same words: the checks live in one place."""
    with pytest.raises(GradmatchError) as python:
        gradmatch.condense(digits[0], ipc=2, model="ConvNetD1", outer_loop=0)
    assert main(["condense", "--dataset", "digits", "--outer_loop", "0", "--save_path", str(tmp_path)]) == 2
    assert str(python.value) in one_error_line(capsys)


# ---- class 7: values that would do nothing or mean something else --------------------------------------
def saved_set(tmp_path, train, ipc=2) -> str:
    from gradmatch.results import reference_payload, save_torch

    path = tmp_path / "set.pt"
    save_torch(reference_payload([gradmatch.random_real_subset(train, ipc, seed=1)], {}), path)
    return str(path)


def test_evaluate_refuses_zero_epochs_and_a_bad_baseline_before_any_work(digits, tmp_path, capsys, monkeypatch):
    path = saved_set(tmp_path, digits[0])
    trained = []
    monkeypatch.setattr(sys.modules["gradmatch.evaluate"], "_evaluate_model", lambda *a, **k: trained.append(1))
    for flags, words in ((["--epoch_eval_train", "0"], "--epoch_eval_train must be at least 1"),
                         (["--baseline", "bogus"], "unknown baseline (--baseline) 'bogus'")):
        assert main(["evaluate", path, "--model", "ConvNetD1", *flags]) == 2
        assert words in one_error_line(capsys)
    assert capsys.readouterr().out == ""  # nothing evaluated first


def test_a_baseline_larger_than_a_class_says_what_it_holds(tmp_path, capsys):
    """A set of 140 per class of digits, whose classes have 131 to 137 training images: the random real subset
    cannot hold as many, and says so instead of "140 per class"."""
    from gradmatch.results import reference_payload, save_torch

    train = data.load("digits")
    path = str(tmp_path / "set.pt")
    syn = SyntheticSet(images=torch.zeros(1400, 1, 8, 8), labels=torch.arange(10).repeat_interleave(140),
                       classes=train.classes, mean=train.mean, std=train.std, dataset="digits")
    save_torch(reference_payload([syn], {}), path)
    assert main(["evaluate", path, "--model", "MLP", "--num_eval", "1", "--epoch_eval_train", "1",
                 "--baseline", "random"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    counts = torch.bincount(train.labels)
    assert last.startswith(f"random real subset ({int(counts.min())} to {int(counts.max())} per class: some classes "
                           "hold fewer than 140)")


def test_a_set_in_dc_s_layout_is_evaluated_with_a_word(digits, tmp_path, capsys):
    images = gradmatch.random_real_subset(digits[0], 1).images
    torch.save({"data": [[images, torch.arange(10)]], "accs_all_exps": {}}, tmp_path / "dc.pt")
    assert main(["evaluate", str(tmp_path / "dc.pt"), "--dataset", "digits", "--model", "MLP", "--num_eval", "1",
                 "--epoch_eval_train", "1"]) == 0
    err = capsys.readouterr().err
    assert err.count("names no dataset, classes or normalisation (DC's layout)") == 1


def test_a_warning_is_said_once_per_command(tmp_path, capsys):
    assert main(["condense", *TINY_DIGITS, "--model", "ConvNetD1", "--lr_img", "0", "--Iteration", "1",
                 "--save_path", str(tmp_path)]) == 0
    assert capsys.readouterr().err.count("warning: --lr_img 0") == 1


# ---- classes 8 and 9: read-only and vanished folders, advice that works ---------------------------------
def tiny(save, iterations=3, *extra):
    return ["condense", *TINY_DIGITS, "--Iteration", str(iterations), "--save_path", str(save), *extra]


def test_plot_on_a_read_only_disk_is_one_line(tmp_path, capsys, monkeypatch):
    assert main(tiny(tmp_path, 1)) == 0
    import gradmatch.results as results

    def read_only(path, data):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(results, "atomic_write", read_only)
    monkeypatch.setattr("gradmatch.plots.atomic_write", read_only)
    capsys.readouterr()
    assert main(["plot", str(tmp_path / TINY_DIGITS_NAME)]) == 2
    assert "cannot write the pictures into" in one_error_line(capsys)


def test_a_rerun_into_a_finished_run_on_a_read_only_disk_names_the_result(tmp_path, capsys, monkeypatch):
    assert main(tiny(tmp_path, 1)) == 0
    capsys.readouterr()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("pathlib.Path.mkdir", read_only)
    monkeypatch.setattr(os, "open", read_only)
    assert main(tiny(tmp_path, 1)) == 2
    line = one_error_line(capsys)
    assert "a finished result exists" in line and ".lock" not in line


def test_a_run_folder_removed_mid_run_is_said_as_gone(tmp_path, capsys, monkeypatch):
    import shutil

    real_append = gm_run.append_log

    def append(path, record):
        real_append(path, record)
        if record.get("event") == "iteration" and record["iteration"] == 2:
            shutil.rmtree(tmp_path / TINY_DIGITS_NAME)

    monkeypatch.setattr(gm_run, "append_log", append)
    assert main(tiny(tmp_path, 4)) == 2
    line = one_error_line(capsys, (DEEP_ON_DIGITS,))
    assert "is gone (removed while the run went on)" in line and "kept intact" not in line


def test_ctrl_c_before_the_first_checkpoint_says_to_start_again_and_that_works(tmp_path, capsys, monkeypatch):
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gm_run.Condensation, "update", stop)
    assert main(tiny(tmp_path, 2)) == 130
    err = capsys.readouterr().err
    assert "interrupted before the first checkpoint; nothing was kept: run the same command again" in err
    assert "--resume" not in err
    monkeypatch.undo()
    torch.set_num_threads(1)
    assert main(tiny(tmp_path, 2)) == 0  # as told: the same command again


def test_ctrl_c_during_evaluate_says_only_that(digits, tmp_path, capsys, monkeypatch):
    path = saved_set(tmp_path, digits[0])

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sys.modules["gradmatch.evaluate"], "fit", stop)  # the package's `evaluate` is the function
    assert main(["evaluate", path, "--model", "ConvNetD1"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_condense_config_checks_alike_from_python_and_the_cli():
    with pytest.raises(GradmatchError, match="--dsa_strategy is given without --dsa"):
        CondenseConfig(dsa_strategy="flip").validate()
