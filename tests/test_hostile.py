"""A hostile user's inputs that used to end in a traceback, a misleading line or a silently wrong result,
by class of failure.  Each case ends in one line (``GradmatchError`` from Python, ``error:`` and exit 2
from the CLI) naming what was wrong, or, where the input is allowed, in the right result; what is on
disk afterwards is checked where a file is involved."""
from __future__ import annotations

import dataclasses

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import gradmatch
from gradmatch import data
from gradmatch.cli import main
from gradmatch.config import CondenseConfig, EvalConfig, RunConfig
from gradmatch.data import DataConfig
from gradmatch.protocols import Protocol
from gradmatch.errors import GradmatchError
from gradmatch.matching import gradient_distance, matching_loss
from gradmatch.results import load_synthetic
from gradmatch.run import Run
from gradmatch.runstate import load_checkpoint
from gradmatch.synset import SyntheticSet
from tests.conftest import one_error_line

TINY = ["--dataset", "digits", "--model", "ConvNetD1", "--ipc", "1", "--batch_real", "8", "--num_exp", "1",
        "--num_eval", "1", "--epoch_eval_train", "1", "--Iteration", "2", "--checkpoint_every", "1", "--quiet"]
NAME = "intra-class_digits_ConvNetD1_1ipc"


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", split="train"), data.load("digits", split="test")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny run (its save_path); tests copy it before damaging it."""
    root = tmp_path_factory.mktemp("run")
    assert main(["condense", *TINY, "--save_path", str(root)]) == 0
    return root


def copy_run(finished_run, to: Path) -> Path:
    shutil.copytree(finished_run, to)
    return to / NAME


def one_line(err) -> str:
    message = str(err.value)
    assert message and "\n" not in message and "\r" not in message, message
    return message


# ---- class 1: a setting given as None (or out of its range) passed the checks and failed deep inside -------
NONE_SETTINGS = [
    (CondenseConfig, {"seed": None}, "--seed takes a whole number from -2**63 to 2**63 - 1 (64 bits), got None"),
    (CondenseConfig, {"lr_img": "fast"}, "--lr_img must be a positive number, got 'fast'"),
    (CondenseConfig, {"iterations": None}, "--Iteration takes a whole number, got None"),
    (CondenseConfig, {"batch_real": None}, "--batch_real takes a whole number, got None"),
    (CondenseConfig, {"dsa": None}, "--dsa takes true or false, got None"),
    (CondenseConfig, {"seed": 2**70}, "--seed takes a whole number from -2**63 to 2**63 - 1"),
    (EvalConfig, {"eval_mode": None}, "--eval_mode takes a non-empty name, got None"),
    (EvalConfig, {"num_eval": "3"}, "--num_eval takes a whole number, got '3'"),
    (RunConfig, {"num_exp": None}, "--num_exp takes a whole number, got None"),
    (RunConfig, {"save_path": None}, "--save_path takes a non-empty name, got None"),
    (DataConfig, {"dataset": None}, "--dataset takes a non-empty name, got None"),
    (RunConfig, {"checkpoint_every": None}, "--checkpoint_every takes a whole number, got None"),
    (RunConfig, {"eval_iterations": 100}, "--eval_iterations takes a list of whole numbers, got 100"),
    (DataConfig, {"dataset": ""}, "--dataset takes a non-empty name, got ''"),
    (RunConfig, {"save_path": "a\0b"}, "holds a NUL character"),
    (RunConfig, {"file_name_prefix": "x" * 300}, "longer than file names may be (255 bytes)"),
]


@pytest.mark.parametrize("cls, change, words", NONE_SETTINGS,
                         ids=[f"{c.__name__}-{k}={v!r}"[:40] for c, d, _ in NONE_SETTINGS for k, v in d.items()])
def test_a_setting_of_the_wrong_kind_is_refused_where_settings_are_checked(cls, change, words):
    parts = {"data": DataConfig(**{"dataset": "digits", **(change if cls is DataConfig else {})})}
    if cls is EvalConfig:
        parts["evaluation"] = EvalConfig(**change)
    elif cls is CondenseConfig:
        parts["condense"] = CondenseConfig(**change)
    config = RunConfig(**parts, **(change if cls is RunConfig else {}))
    with pytest.raises(GradmatchError) as err:
        config.validate()
    assert words in one_line(err)


def test_condense_with_a_none_seed_is_one_line_not_a_type_error(digits):
    with pytest.raises(GradmatchError) as err:
        gradmatch.condense(digits[0], ipc=1, model="ConvNetD1", iterations=1, batch_real=8, seed=None)
    assert "--seed takes a whole number from -2**63 to 2**63 - 1 (64 bits), got None" in one_line(err)


@pytest.mark.parametrize("call, words", [
    (lambda real: gradmatch.condense(real, experiment=2**70, ipc=1, model="ConvNetD1", iterations=0),
     "condense: experiment must be at most 9223372036854775807"),
    (lambda real: gradmatch.condense_experiments(real, [2**64], ipc=1, model="ConvNetD1", iterations=0),
     "condense_experiments: experiments must be at most 9223372036854775807"),
    (lambda real: gradmatch.random_real_subset(real, 1, seed=2**64), "random_real_subset: seed takes a whole number"),
    (lambda real: gradmatch.Protocol(seed=2**63).validate(), "protocol seed takes a whole number from -2**63"),
    (lambda real: data.split(real, 0.2, seed=2**64), "split: seed takes a whole number from -2**63"),
], ids=["condense-experiment", "experiments", "random_real_subset", "protocol", "split"])
def test_a_seed_that_would_wrap_onto_another_is_refused(digits, call, words):
    """2**70 used to give the draws of seed (or experiment) 0, unsaid; split(seed=-1) a numpy traceback."""
    with pytest.raises(GradmatchError) as err:
        call(digits[0])
    assert words in one_line(err)


def test_a_negative_seed_is_one_rule_everywhere(digits):
    """One rule for a seed (signed 64-bit): split and condense take -1 alike; -1 is not 1's split."""
    train, test = data.split(digits[0], 0.2, seed=-1)
    other, _ = data.split(digits[0], 0.2, seed=1)
    assert len(train) + len(test) == len(digits[0]) and not torch.equal(train.images, other.images)
    syn = gradmatch.condense(digits[0], ipc=1, model="ConvNetD1", iterations=0, seed=-1)
    assert syn.config["seed"] == -1


# ---- class 2: constructors said a Python TypeError ------------------------------------------------------
@pytest.mark.parametrize("make, words", [
    (lambda: CondenseConfig(bogus=1), "condense: unknown setting bogus; it takes ipc, model"),
    (lambda: EvalConfig(bogus=1), "evaluation: unknown setting bogus"),
    (lambda: RunConfig(bogus=1), "run: unknown setting bogus"),
    (lambda: Protocol(bogus=1), "protocol: unknown setting bogus; it takes name, models, num_eval"),
    (lambda: SyntheticSet(images=torch.zeros(1, 1, 2, 2)), "SyntheticSet: missing labels, classes, mean, std"),
    (lambda: gradmatch.create_model("ConvNet", 1, 10, 32, bogus=1), "create_model: ConvNet does not take bogus="),
], ids=["CondenseConfig", "EvalConfig", "RunConfig", "Protocol", "SyntheticSet", "create_model"])
def test_an_unknown_or_missing_argument_is_one_line(make, words):
    with pytest.raises(GradmatchError) as err:
        make()
    assert words in one_line(err)


def test_run_refuses_what_is_not_a_run_config():
    for config in (None, {"dataset": "digits"}):
        with pytest.raises(GradmatchError) as err:
            Run(config).start()
        assert "Run: config must be a gradmatch.RunConfig" in one_line(err)


# ---- class 3: a name of user code that importlib refuses with another error than ImportError --------------
@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    """Modules that fail while imported (an exception; exit()) and one that leaves a mark when imported."""
    (tmp_path / "hostile_raises.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "hostile_exits.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "hostile_marks.py").write_text(
        f"open({str(tmp_path / 'imported')!r}, 'w').close()\n"
        "def dist(syn, real):\n    return (syn - real).abs().sum()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("hostile_raises", "hostile_exits", "hostile_marks"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("flag, value, words", [
    ("--model", ":x", "--model ':x' is not package.module:function"),
    ("--model", ".relative:x", "--model '.relative:x' is not package.module:function"),
    ("--dis_metric", ":", "--dis_metric ':' is not package.module:function"),
    ("--dis_metric", ".relative:x", "is not package.module:function"),
    ("--model", "hostile_raises:x", "importing module 'hostile_raises' failed (RuntimeError: boom at import)"),
    ("--dis_metric", "hostile_exits:x", "importing module 'hostile_exits' failed (SystemExit: 3)"),
])
def test_a_user_code_name_that_cannot_be_imported_is_one_line(user_modules, tmp_path, capsys, flag, value, words):
    assert main(["condense", *TINY, flag, value, "--save_path", str(tmp_path / "out")]) == 2
    assert words in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_a_distance_that_does_not_depend_on_the_images_is_refused(digits):
    """A constant distance used to run and return the initial noise unchanged, unsaid."""
    with pytest.raises(GradmatchError) as err:
        gradmatch.condense(digits[0], ipc=1, model="ConvNetD1", iterations=1, batch_real=8,
                           dis_metric=lambda syn, real: torch.tensor(1.0))
    assert "does not depend on its syn_rows" in one_line(err)


def test_plotting_a_checkpoint_imports_none_of_the_code_it_names(user_modules, finished_run, tmp_path, capsys):
    """Reading a file must not run code: a checkpoint whose settings name a module is plotted without
    importing it (resuming it imports it, by design)."""
    run = copy_run(finished_run, tmp_path / "copy")
    (run.parent / f"{NAME}.pt").unlink()
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["config"]["condense"]["dis_metric"] = "hostile_marks:dist"
    state["config"]["evaluation"]["eval_mode"] = "hostile_marks:dist"
    for record in state["evaluations"]:
        record["model"] = "hostile_marks:dist"
    torch.save(state, run / "checkpoint.pt")
    assert main(["plot", str(run)]) == 0
    assert (run / "grid.png").is_file() and not (user_modules / "imported").exists()
    assert load_checkpoint(run / "checkpoint.pt", code=False).config.condense.dis_metric == "hostile_marks:dist"


# ---- class 4: the pure pieces of the Python API checked nothing -----------------------------------------
@pytest.fixture(scope="module")
def batches(digits):
    train = digits[0]
    net = gradmatch.create_model("ConvNetD1", 1, 10, (8, 8))
    syn = gradmatch.random_real_subset(train, 2)
    return net, (train.images[:60], train.labels[:60]), (syn.images.clone().requires_grad_(), syn.labels)


MATCHING_CASES = [
    (lambda net, real, syn: matching_loss(None, real, syn), "net must be a torch.nn.Module"),
    (lambda net, real, syn: matching_loss(net, None, syn), "real must be an (images, labels) pair of tensors"),
    (lambda net, real, syn: matching_loss(net, (*real, real[1]), syn), "real must be an (images, labels) pair"),
    (lambda net, real, syn: matching_loss(net, (real[0], real[1].float()), syn), "real labels are a float32 tensor"),
    (lambda net, real, syn: matching_loss(net, (real[0].double(), real[1]), syn), "real images are a float64 tensor"),
    (lambda net, real, syn: matching_loss(net, (real[0], real[1][:5]), syn),
     "real labels have shape (5,) for 60 images"),
    (lambda net, real, syn: matching_loss(net, (real[0][:, :, :4, :4], real[1]), syn), "real images are (1, 4, 4)"),
    (lambda net, real, syn: matching_loss(net, (real[0][real[1] < 5], real[1][real[1] < 5]), syn),
     "the real batch has no images of classes [5, 6, 7, 8, 9]"),
    (lambda net, real, syn: matching_loss(net, (real[0], real[1] + 10), (syn[0], syn[1] + 10)),
     "the network fails on these batches"),
    (lambda net, real, syn: matching_loss(net, real, syn, scheme="interleaved", iteration="a"),
     "matching_loss: iteration takes a whole number"),
    (lambda net, real, syn: matching_loss(net, real, syn, precision="fp8"),
     "unknown precision (matching_loss: precision) 'fp8'"),
    (lambda net, real, syn: gradient_distance(None, None), "gw_syn must be a non-empty list of float gradient"),
    (lambda net, real, syn: gradient_distance([], []), "gw_syn must be a non-empty list"),
    (lambda net, real, syn: gradient_distance([torch.ones(3, 4)], [torch.ones(3, 5)]), "gradient 0 is (3, 4)"),
    (lambda net, real, syn: gradient_distance([torch.ones(3, 4), torch.ones(2, 2)], [torch.ones(3, 4)]),
     "2 synthetic and 1 real gradients"),
    (lambda net, real, syn: gradient_distance([torch.ones(3, 4, dtype=torch.long)], [torch.ones(3, 4)]),
     "float gradient tensors"),
]


@pytest.mark.parametrize("call, words", MATCHING_CASES, ids=[w[:40] for _, w in MATCHING_CASES])
def test_the_pure_functions_refuse_bad_arguments_in_one_line(batches, call, words):
    with pytest.raises(GradmatchError) as err:
        call(*batches)
    assert words in one_line(err)


def test_the_pure_functions_still_compute(batches):
    net, real, syn = batches
    loss = matching_loss(net, real, syn, scheme="multi-level", metric="improved")
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad
    assert float(gradient_distance([torch.ones(3, 4)], [torch.zeros(3, 4)], "mse")) == 12.0


# ---- class 5: evaluate scored a set against test data it does not fit, or crashed ---------------------------
def a_set(train, **change) -> SyntheticSet:
    return dataclasses.replace(gradmatch.random_real_subset(train, 2, seed=0), **change)


@pytest.mark.parametrize("change, words", [
    ({"images": None, "labels": None}, None),  # replaced below: a set of 5 classes
    ({"mean": (0.5,), "std": (0.2,)}, "was normalised with mean (0.5000) std (0.2000)"),
], ids=["fewer-classes", "other-normalisation"])
def test_evaluate_refuses_a_set_that_does_not_fit_the_test_data(digits, change, words):
    """Both used to be scored silently: a 5-class network on 10-class test data, shifted pixels."""
    train, test = digits
    if words is None:
        syn = a_set(train)
        keep = syn.labels < 5
        syn = a_set(train, images=syn.images[keep], labels=syn.labels[keep], classes=syn.classes[:5])
        words = "the synthetic set has 5 classes but the test data digits has 10"
    else:
        syn = a_set(train, **change)
    with pytest.raises(GradmatchError) as err:
        gradmatch.evaluate(syn, "ConvNetD1", test, num_eval=1, epochs=1)
    assert words in one_line(err)


def test_evaluate_without_test_data_is_one_line(digits):
    with pytest.raises(GradmatchError) as err:
        gradmatch.evaluate(a_set(digits[0]), "ConvNetD1", None, num_eval=1, epochs=1)
    assert "evaluate: test must be a gradmatch.data.Dataset" in one_line(err)


def test_evaluate_trains_on_labels_of_any_integer_dtype_it_accepts(digits):
    """int8 labels pass the set's check; the loss used to refuse them with a RuntimeError."""
    train, test = digits
    wide = gradmatch.evaluate(a_set(train), "ConvNetD1", test, num_eval=1, epochs=1)
    narrow = gradmatch.evaluate(a_set(train, labels=a_set(train).labels.to(torch.int8)), "ConvNetD1", test,
                                num_eval=1, epochs=1)
    assert narrow.accuracies == wide.accuracies


@pytest.mark.parametrize("args, words", [
    ((None, 1), "random_real_subset: real must be a gradmatch.data.Dataset"),
    (("train", 0), "random_real_subset: ipc must be at least 1, got 0"),
    (("train", 1.0), "random_real_subset: ipc takes a whole number, got 1.0"),
    (("train", 1, None), "random_real_subset: seed takes a whole number"),
])
def test_random_real_subset_checks_its_arguments(digits, args, words):
    args = tuple(digits[0] if a == "train" else a for a in args)
    with pytest.raises(GradmatchError) as err:
        gradmatch.random_real_subset(*args)
    assert words in one_line(err)


def test_a_dc_layout_set_takes_the_classes_of_the_dataset(tmp_path, capsys):
    """DC's files name no classes: its labels are the dataset's classes (all of them, as the networks'
    outputs), and labels beyond them are refused."""
    torch.save({"data": [[torch.zeros(12, 1, 8, 8), torch.arange(12)]]}, tmp_path / "dc.pt")
    assert main(["evaluate", str(tmp_path / "dc.pt"), "--dataset", "digits", "--model", "ConvNetD1",
                 "--num_eval", "1", "--epoch_eval_train", "1"]) == 2
    line = one_error_line(capsys, warned=("read as DC's layout", "names no dataset"))
    assert "labels up to 11, beyond the 10 classes of digits" in line


# ---- class 6: data given from Python ----------------------------------------------------------------------
class Raises(torch.utils.data.Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, index):
        raise KeyError("no such row")


class NegativeLength(torch.utils.data.Dataset):
    def __len__(self):
        return -1

    def __getitem__(self, index):
        return torch.zeros(1, 2, 2), 0


DATA_CASES = [
    (lambda: data.load("digits", None), "--data_path takes a non-empty name, got None"),
    (lambda: data.load(None), "--dataset takes a non-empty name, got None"),
    (lambda: data.from_tensors(torch.zeros(4, 1, 2, 2).to_sparse(), [0, 1, 0, 1]), "images are a sparse_coo tensor"),
    (lambda: data.from_tensors(torch.zeros(4, 1, 2, 2, device="meta"), [0, 1, 0, 1]), "images are a meta"),
    (lambda: data.from_tensors(np.zeros((4, 1, 2, 2), np.uint8), np.array([0, 1, 0, 10**9])),
     "labels go up to 1000000000 for 4 images"),
    (lambda: data.from_tensors(np.zeros((4, 1, 2, 2), np.uint8), np.array([0, 1, 0, 2.0**70])),
     "labels are a float64 tensor of shape (4,); expected integer class indices"),
    (lambda: data.from_torch(Raises()), "reading item 0 of the dataset failed (KeyError: 'no such row')"),
    (lambda: data.from_torch(NegativeLength()), "the dataset must be map-style"),
]


@pytest.mark.parametrize("call, words", DATA_CASES, ids=[w[:40] for _, w in DATA_CASES])
def test_data_from_python_is_refused_in_one_line(call, words):
    with pytest.raises(GradmatchError) as err:
        call()
    assert words in one_line(err)


def test_a_folder_given_as_a_path_object_still_loads(tmp_path):
    from PIL import Image
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.new("L", (4, 4), 60 * i).save(tmp_path / c / f"{i}.png")
    assert data.load(tmp_path, split="train").classes == ["a", "b"]


def test_a_resize_that_cannot_fit_in_memory_is_one_line(monkeypatch, tmp_path, capsys):
    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")
    monkeypatch.setattr("gradmatch.data.dataset.F.interpolate", no_memory)
    assert main(["condense", *TINY, "--size", "100000", "--save_path", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert "not enough memory for 1347 images of 1x100000x100000" in line and "choose a smaller --size" in line


def test_any_allocation_that_fails_is_one_line_from_the_cli(monkeypatch, tmp_path, capsys):
    def no_memory(*args, **kwargs):
        raise MemoryError()
    monkeypatch.setattr("gradmatch.run.check_models_fit", no_memory)
    assert main(["condense", *TINY, "--save_path", str(tmp_path)]) == 2
    assert "error: not enough memory for this command; lower the sizes" in one_error_line(capsys)


def test_a_model_too_large_for_memory_is_not_called_too_small_for_its_images(monkeypatch):
    """The size probe read an allocation failure as "images too small" and then failed in its search."""
    from gradmatch.models import layers

    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 4608000000 bytes")
    monkeypatch.setattr(layers.torch, "zeros", no_memory)
    with pytest.raises(GradmatchError) as err:
        gradmatch.create_model("ConvNet", 3, 10, 32)
    message = one_line(err)
    assert "not enough memory for ConvNet for 3x32x32 images" in message and "too small" not in message


# ---- class 7: saved sets and checkpoints with tensors no check had foreseen ------------------------------
SET_CASES = [
    ({"data": [[torch.zeros(2, 1, 8, 8).to_sparse(), torch.tensor([0, 1])]]}, "images are a sparse_coo tensor"),
    ({"data": [[torch.zeros(2, 1, 8, 8), torch.tensor([0, 1], dtype=torch.uint64)]]}, "labels are a uint64 tensor"),
    ({"data": [[torch.zeros(2, 1, 8, 8), torch.tensor([0, 10**10])]]}, "labels go up to 10000000000 for 2 images"),
    ({"data": [[torch.zeros(2, 1, 8, 8), torch.tensor([0, 1])]], "ipc": 7}, "'ipc' is 7; expected 1, as data[0] holds"),
]


@pytest.mark.parametrize("payload, words", SET_CASES, ids=["sparse", "uint64", "huge-labels", "ipc"])
@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_a_saved_set_with_odd_tensors_is_refused_in_one_line(tmp_path, capsys, payload, words, command):
    torch.save(payload, tmp_path / "set.pt")
    argv = (["evaluate", str(tmp_path / "set.pt"), "--dataset", "digits", "--model", "ConvNetD1", "--num_eval", "1"]
            if command == "evaluate" else ["export", str(tmp_path / "set.pt"), "--to", str(tmp_path / "out")])
    assert main(argv) == 2
    assert words in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["plot", "resume"])
def test_a_checkpoint_with_a_sparse_tensor_is_refused_in_one_line(finished_run, tmp_path, capsys, command):
    run = copy_run(finished_run, tmp_path / "copy")
    (run.parent / f"{NAME}.pt").unlink()
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["finished"] = [state["finished"][0].to_sparse()]
    torch.save(state, run / "checkpoint.pt")
    before = (run / "checkpoint.pt").read_bytes()
    argv = ["plot", str(run)] if command == "plot" else ["condense", *TINY, "--resume", str(run)]
    assert main(argv) == 2
    assert "finished[0] are a sparse_coo tensor; expected a float32 tensor" in one_error_line(capsys)
    assert (run / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("kind, words", [
    ("loop", "is a symbolic link that loops back to itself"),
    ("dangling", "is a symbolic link to /nonexistent/set.pt, which does not exist"),
    ("fifo", "is not a regular file (a device, pipe or socket)"),
])
def test_a_path_that_is_no_file_says_what_it_is_not_not_found(tmp_path, kind, words):
    path = tmp_path / "set.pt"
    if kind == "loop":
        os.symlink(tmp_path / "other.pt", path)
        os.symlink(path, tmp_path / "other.pt")
    elif kind == "dangling":
        os.symlink("/nonexistent/set.pt", path)
    else:
        os.mkfifo(path)
    with pytest.raises(GradmatchError) as err:
        load_synthetic(path)
    assert words in one_line(err) and "not found" not in str(err.value)


def test_export_to_a_looping_link_is_one_line(finished_run, tmp_path, capsys):
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    assert main(["export", str(finished_run / f"{NAME}.pt"), "--to", str(tmp_path / "a")]) == 2
    line = one_error_line(capsys)
    assert "is a symbolic link that loops back to itself" in line or "which is not a folder" in line  # Python >= 3.13


# ---- class 8: plot of a damaged log or config ----------------------------------------------------------
LOGS = {
    "binary": os.urandom(64) + b"\n",
    "not-utf8": b'{"event": "iteration", "experiment": 0, "iteration": 1, "loss": 1.0}\n\xe9\xe9\n',
    "types": b'{"event": "iteration", "experiment": "a", "iteration": 1, "loss": 1.0}\n',
    "missing-keys": b'{"event": "iteration", "loss": 1.0}\n{"event": "eval"}\n',
    "eval-values": b'{"event": "eval", "experiment": 0, "iteration": 1, "model": "x", "mean": "a", "std": null}\n',
    "list-model": b'{"event": "eval", "experiment": 0, "iteration": 1, "model": ["x"], "mean": 0.5, "std": 0.1}\n',
}


@pytest.mark.parametrize("damage", list(LOGS))
def test_plot_draws_what_a_damaged_log_still_holds(finished_run, tmp_path, capsys, damage):
    run = copy_run(finished_run, tmp_path / "copy")
    good = (run / "log.jsonl").read_bytes()
    (run / "log.jsonl").write_bytes(good + LOGS[damage])
    (run / "config.json").write_bytes(b'{"condense": {"iterations": 1e400}}')
    assert main(["plot", str(run)]) == 0
    assert (run / "curves.png").stat().st_size > 0 and (run / "grid.png").stat().st_size > 0
    assert "Traceback" not in capsys.readouterr().err


# ---- class 9: the one line: values with line breaks, names the file system cannot hold ---------------------
def test_an_error_quoting_a_name_with_a_line_break_stays_one_line(tmp_path, capsys):
    from PIL import Image
    for c in ("a", "b\nc"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8), 40 * i).save(tmp_path / "imgs" / c / f"{i}.png")
    assert main(["condense", "--dataset", str(tmp_path / "imgs"), "--model", "ConvNetD1", "--ipc", "9",
                 "--num_exp", "1", "--quiet", "--save_path", str(tmp_path / "out")]) == 2
    assert "ipc 9 is more than class 'a' has" in one_error_line(capsys, warned=("no test split",))
    assert str(GradmatchError("x\ny\r\nz")) == "x\\ny\\nz"


@pytest.mark.parametrize("flags, words", [
    (["--file_name_prefix", "a\0b"], "--file_name_prefix 'a\\x00b' holds a NUL character"),
    (["--file_name_prefix", "p" * 300], "longer than file names may be (255 bytes)"),
    (["--dataset", ""], "--dataset takes a non-empty name, got ''"),
], ids=["nul", "long", "empty-dataset"])
def test_names_no_file_system_holds_are_refused_before_any_work(tmp_path, capsys, flags, words):
    """A NUL or a too-long name used to end in a ValueError or OSError traceback; an empty --dataset read
    the current folder as an image folder and blamed one of its subfolders."""
    assert main(["condense", *TINY, *flags, "--save_path", str(tmp_path / "out")]) == 2
    assert words in one_error_line(capsys)
    assert not (tmp_path / "out").exists()



# ---- class 10: values within Python's range but beyond the arithmetic's, and a resize blamed on the data -----
@pytest.mark.parametrize("call, words", [
    (lambda: CondenseConfig(lr_img=1e308).validate(), "--lr_img 1e+308 is beyond float32's range"),
    (lambda: CondenseConfig(lr_net=1e39).validate(), "--lr_net 1e+39 is beyond float32's range"),
    (lambda: Protocol(lr=1e308).validate(), "protocol lr 1e+308 is beyond float32's range"),
], ids=["lr_img", "lr_net", "protocol"])
def test_a_learning_rate_beyond_float32_is_refused(call, words):
    """--lr_img 1e308 passed as finite and ended in torch's "cannot be converted to type float" traceback."""
    with pytest.raises(GradmatchError) as err:
        call()
    assert words in one_line(err)


def test_evaluate_with_a_size_the_set_was_not_made_at_names_the_size(finished_run, capsys):
    """The resize also changes the statistics: the line used to blame the normalisation and advise the same
    --dataset."""
    assert main(["evaluate", str(finished_run / f"{NAME}.pt"), "--size", "16", "--model", "ConvNetD1"]) == 2
    line = one_error_line(capsys)
    assert "digits test images resized by --size 16,16 are (1, 16, 16)" in line and "normalised" not in line


def test_plot_of_a_path_with_a_nul_names_it(capsys):
    assert main(["plot", "/tmp/a\0b"]) == 2
    assert "run folder '/tmp/a\\x00b' holds a NUL character" in one_error_line(capsys)


def test_resume_of_a_checkpoint_whose_settings_were_edited_does_not_only_blame_a_rename(finished_run, tmp_path,
                                                                                          capsys):
    run = copy_run(finished_run, tmp_path / "copy")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["config"]["condense"]["model"] = "ConvNetD2"
    for record in state["evaluations"]:  # consistent with the edited settings: only the name is off
        record["model"] = "ConvNetD2"
    torch.save(state, run / "checkpoint.pt")
    assert main(["condense", *TINY, "--resume", str(run)]) == 2
    line = one_error_line(capsys)
    assert "holds the run intra-class_digits_ConvNetD2_1ipc (by the settings in its checkpoint)" in line
    assert "renamed or its checkpoint edited" in line
