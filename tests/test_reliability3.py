"""Issue #25, "Reliability, third round": each class of what still failed, as its smallest reproduction.
Every refusal is one line (GradmatchError from Python; `error:` and exit 2 from the CLI) naming what was
wrong and the fix; what is read back, and what is (not) on disk afterwards, is checked."""
from __future__ import annotations

import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import gradmatch
import gradmatch.run as gm_run
from gradmatch import data
from gradmatch.cli import main
from gradmatch.errors import GradmatchError
from gradmatch.results import append_log
from tests.conftest import TINY_DIGITS, TINY_DIGITS_NAME, one_error_line
from tests.test_data import assert_pixels, cifar_images, dump, pixels_back, save_png, write_cifar10

CODE = Path(gradmatch.__file__).resolve().parents[1]  # the gradmatch under test (a subprocess runs it too)
RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]  # numpy's array reconstructor, as pickles name it


def cifar_batch(root) -> Path:
    return Path(root) / "cifar-10-batches-py" / "data_batch_1"


def batch_with(root, data, labels) -> Path:
    """A CIFAR-10 folder whose data_batch_1 holds ``data`` and ``labels`` (the rest official: its labels are
    2 and 3, so with those every class keeps its images)."""
    write_cifar10(root)
    dump(cifar_batch(root), {"data": data, "labels": labels, "batch_label": "training batch 1 of 5"})
    return cifar_batch(root)


def refused(fn, *args, **kwargs) -> str:
    with pytest.raises(GradmatchError) as err:
        fn(*args, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


TINY_CIFAR = ["--model", "ConvNetD1", "--ipc", "1", "--Iteration", "1", "--num_exp", "1", "--num_eval", "1",
              "--epoch_eval_train", "1", "--batch_real", "4", "--quiet"]


# ---- class 1: silent corruption ------------------------------------------------------------------------
class Refills(torch.utils.data.Dataset):
    """A map-style dataset that refills and returns one uint8 tensor (as a preallocated buffer does)."""

    def __init__(self):
        self.buffer = torch.zeros(1, 4, 4, dtype=torch.uint8)

    def __len__(self):
        return 3

    def __getitem__(self, index):
        self.buffer.fill_(10 * (index + 1))
        return self.buffer, index


def test_from_torch_keeps_each_item_of_a_dataset_that_reuses_one_tensor():
    ds = data.from_torch(Refills())
    expected = np.stack([np.full((1, 4, 4), 10 * (i + 1), dtype=np.uint8) for i in range(3)])
    assert_pixels(ds, expected)  # not three copies of the last item
    assert ds.labels.tolist() == [0, 1, 2]


def test_cifar_float_pixels_are_refused_not_cast_to_uint8(tmp_path, capsys):
    batch = batch_with(tmp_path, cifar_images(2, 0).reshape(2, -1) / 255.0, [2, 3])  # a CIFAR re-saved in [0, 1]
    args = ["condense", "--dataset", "CIFAR10", "--data_path", str(tmp_path), *TINY_CIFAR,
            "--save_path", str(tmp_path / "out")]
    assert main(args) == 2
    line = one_error_line(capsys)
    assert str(batch) in line and "holds float64 pixels (0..0.98), not uint8" in line and "re-save" in line
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]  # nothing written


def test_cifar_float_labels_are_refused_not_truncated(tmp_path):
    batch = batch_with(tmp_path, cifar_images(2, 0).reshape(2, -1), [3.7, 2])
    message = refused(data.load, "CIFAR10", tmp_path)
    assert str(batch) in message and "the label 3.7 (a float)" in message and "integer class indices" in message


class Uninitialised:
    """Pickles as numpy's _reconstruct of a 2,000 x 3072 uint8 array with no state: no pixel in the file."""

    def __reduce__(self):
        return RECONSTRUCT, (np.ndarray, (2000, 3072), b"B")


class CalledDirectly:
    def __reduce__(self):
        return np.ndarray, ((2000, 3072), "u1")


class TooFewBytes:
    """A reconstructed array whose state declares 2,000 x 3072 pixels and holds 10 bytes."""

    def __reduce__(self):
        return RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (2000, 3072), np.dtype("u1"), False, b"\0" * 10)


@pytest.mark.parametrize("array, words", [
    (Uninitialised(), "an array without its values"),
    (CalledDirectly(), "numpy.ndarray called directly"),
    (TooFewBytes(), "holds 10 bytes of values, not the 6144000 its shape needs"),
])
def test_cifar_data_without_its_pixels_in_the_file_is_refused(tmp_path, array, words):
    batch = batch_with(tmp_path, array, [0] * 2000)
    message = refused(data.load, "CIFAR10", tmp_path)
    assert str(batch) in message and words in message and "re-download" in message


def test_cifar_labels_as_numpy_integers_are_read(tmp_path):
    """What re-pickling the official files with numpy 2 writes: numpy.int64 scalars in the label lists (built
    by multiarray.scalar from their bytes: data, no code), or an integer array."""
    images, labels, _ = write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    for b in range(1, 6):
        part = pickle.loads((folder / f"data_batch_{b}").read_bytes(), encoding="latin1")
        as_numpy = [np.int64(v) for v in part["labels"]] if b % 2 else np.asarray(part["labels"], dtype=np.int32)
        dump(folder / f"data_batch_{b}", {**part, "labels": as_numpy})
    assert b"multiarray\nscalar" in (folder / "data_batch_1").read_bytes()
    ds = data.load("CIFAR10", tmp_path)
    assert ds.labels.tolist() == labels
    assert_pixels(ds, images)


# ---- class 2: a user's network that passes the start-up check and fails later --------------------------
def refused_network(tmp_path, capsys, name) -> str:
    args = ["condense", "--dataset", "digits", "--model", f"tests.user_networks:{name}", "--ipc", "1",
            "--Iteration", "1", "--num_exp", "1", "--num_eval", "1", "--epoch_eval_train", "1", "--batch_real", "4",
            "--quiet", "--save_path", str(tmp_path)]
    assert main(args) == 2
    line = one_error_line(capsys)
    assert f"--model tests.user_networks:{name}" in line
    assert not any(tmp_path.iterdir())  # refused before any work
    return line


@pytest.mark.parametrize("name, words", [
    ("unused_parameter", "its parameter(s) spare.weight, spare.bias take no gradient"),
    ("float64", "has float64 parameters (0.weight, 0.bias, 1.weight, 1.bias and 2 more) but the data are float32: "
                "build it in float32 (torch's default dtype)"),
    ("only_1d", "has only 1-D parameters (scale, shift): nothing a layer-wise distance"),
    ("inplace_first_relu", "changes the images it is given (an in-place first operation, such as "
                           "nn.ReLU(inplace=True)"),
    ("batch_of_two", "fails on a batch of 3 images of 1x8x8 (RuntimeError: "),
    ("nan_scores", "gives non-finite scores on a batch of random images"),
    ("exits", "called sys.exit(0); it must return a torch.nn.Module"),
])
def test_a_network_that_would_fail_later_is_refused_before_any_work(tmp_path, capsys, name, words):
    line = refused_network(tmp_path, capsys, name)
    assert words in line, line
    if name == "batch_of_two":
        assert "it takes a batch of 2 but must take a batch of any size" in line


def test_a_builder_that_changes_folder_does_not_move_where_gradmatch_writes(tmp_path, monkeypatch, capsys):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setenv("USER_NETWORK_FOLDER", str(elsewhere))
    name = "tests.user_networks:changes_folder"
    assert main(["condense", "--dataset", "digits", "--model", name, "--ipc", "1", "--Iteration", "1",
                 "--num_exp", "1", "--num_eval", "1", "--epoch_eval_train", "1", "--batch_real", "4", "--quiet",
                 "--save_path", "out"]) == 0
    assert (here / "out" / "intra-class_digits_changes_folder_1ipc.pt").is_file()
    assert not any(elsewhere.iterdir())  # nothing written where the builder went
    assert Path.cwd() == here
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "changed the working folder" in line]
    assert len(warned) == 1 and warned[0].startswith(f"warning: --model {name} changed the working folder (to "
                                                     f"{elsewhere})"), err
    assert str(here) in warned[0]


# ---- class 3: `gradmatch plot` draws names as plain text and what cannot be drawn is left out, said -----
def test_plot_draws_mathtext_names_as_text_and_leaves_out_values_it_cannot_draw(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "$\\bad{x^$"  # the folder's name is the dataset's, in the run's name and titles
    rng = np.random.default_rng(0)
    for cls in ("$x^2$", "a$b", "$x^$"):  # math, a lone dollar, broken math
        for i in range(5):
            save_png(folder / cls / f"{i}.png", rng.integers(0, 256, (8, 8, 3)))
    monkeypatch.chdir(tmp_path)
    assert main(["condense", "--dataset", folder.name, *TINY_CIFAR, "--save_path", "out"]) == 0
    run_dir = next(p for p in (tmp_path / "out").iterdir() if p.is_dir())
    append_log(run_dir / "log.jsonl", {"event": "iteration", "experiment": 0, "iteration": 2, "loss": 1e308})
    append_log(run_dir / "log.jsonl", {"event": "eval", "experiment": 0, "iteration": 1, "model": "ConvNetD1",
                                       "mean": -1e308, "std": 0.0})
    capsys.readouterr()
    assert main(["plot", str(run_dir)]) == 0
    out, err = capsys.readouterr()
    assert {Path(p).name for p in out.split()} == {"curves.png", "grid.png"}
    assert (run_dir / "curves.png").stat().st_size > 0 and (run_dir / "grid.png").stat().st_size > 0
    assert "Traceback" not in err and "2 record(s) hold values that cannot be drawn" in err


# ---- class 4: odd tensors in from_tensors / from_torch ------------------------------------------------
def test_float8_images_are_read():
    x = torch.rand(4, 3, 8, 8).to(torch.float8_e4m3fn)
    ds = data.from_tensors(x, torch.tensor([0, 1, 0, 1]), mean=(0.0,) * 3, std=(1.0,) * 3)
    torch.testing.assert_close(pixels_back(ds), x.float(), atol=1e-6, rtol=0)
    items = data.from_torch([(img, label) for img, label in zip(x, [0, 1, 0, 1])], mean=(0.0,) * 3, std=(1.0,) * 3)
    torch.testing.assert_close(pixels_back(items), x.float(), atol=1e-6, rtol=0)


class BrokenLength(torch.utils.data.Dataset):
    def __len__(self):
        raise RuntimeError("the index file is missing")

    def __getitem__(self, index):
        return torch.zeros(1, 4, 4), 0


@pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions")
def test_quantized_images_meta_labels_and_a_failing_len_end_in_one_line():
    x = torch.rand(4, 1, 8, 8)
    quantized = torch.quantize_per_tensor(x, 0.01, 0, torch.quint8)
    assert "quantized tensor" in refused(data.from_tensors, quantized, torch.tensor([0, 1, 0, 1]))
    assert ".dequantize()" in refused(data.from_tensors, quantized, torch.tensor([0, 1, 0, 1]))
    meta = torch.zeros(4, dtype=torch.long, device="meta")
    assert "labels are a meta (shapes without values) tensor" in refused(data.from_tensors, x, meta)
    message = refused(data.from_torch, BrokenLength())
    assert "a working __len__" in message and "RuntimeError: the index file is missing" in message


def test_an_ambiguous_channel_axis_is_refused_with_the_rule_it_applies():
    items = [(torch.rand(16, 16, 8), i % 2) for i in range(4)]  # H x W x C with C = 8
    message = refused(data.from_torch, items)
    assert "cannot tell the channel axis of images of shape (16, 16, 8)" in message
    assert "the rule: axis 0 if it has 1 or 3 entries, else axis 2" in message and "layout=\"NHWC\"" in message
    ds = data.from_torch(items, layout="NHWC")  # told, it reads them as 8-channel images
    assert ds.images.shape == (4, 8, 16, 16)
    torch.testing.assert_close(pixels_back(ds), torch.stack([x for x, _ in items]).permute(0, 3, 1, 2), atol=1e-5,
                               rtol=0)


# ---- class 5: a damaged checkpoint's evaluation records are checked against the run ---------------------
def cut_after_an_evaluation(tmp_path, monkeypatch):
    """A tiny digits run (evaluations at iterations 2 and 4) cut by Ctrl-C after iteration 3."""
    args = ["condense", *TINY_DIGITS, "--model", "ConvNetD1", "--Iteration", "4", "--eval_iterations", "2,4",
            "--save_path", str(tmp_path)]
    real_append = gm_run.append_log

    def append(path, record):
        real_append(path, record)
        if record.get("event") == "iteration" and record["iteration"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(gm_run, "append_log", append)
    assert main(args) == 130
    monkeypatch.setattr(gm_run, "append_log", real_append)
    path = tmp_path / TINY_DIGITS_NAME.replace("ConvNetW32", "ConvNetD1") / "checkpoint.pt"
    checkpoint = torch.load(path, weights_only=True)
    assert [(r["iteration"], r["model"]) for r in checkpoint["evaluations"]] == [(2, "ConvNetD1")]
    return args, path, checkpoint


def forged(c):
    c["evaluations"].append({**c["evaluations"][0], "iteration": 3, "accuracies": [0.99]})


def ahead(c):
    c["evaluations"].append({**c["evaluations"][0], "iteration": 4, "accuracies": [0.99]})


@pytest.mark.parametrize("damage, words", [
    (lambda c: c["evaluations"].append(dict(c["evaluations"][0])),
     "evaluations[1] repeats the evaluation of experiment 0 at iteration 2 on ConvNetD1"),
    (forged, "evaluations[1] is of experiment 0 at iteration 3, which the run's evaluation schedule (2, 4) has not "
             "reached"),
    (ahead, "evaluations[1] is of experiment 0 at iteration 4, which the run's evaluation schedule"),
    (lambda c: c["evaluations"][0].update(accuracies=[0.99, 0.99, 0.99]),
     "evaluations[0] does not hold the accuracies (0 to 1) of the run's 1 networks"),
    (lambda c: c["evaluations"][0].update(model="ResNet18"),
     "evaluations[0] is of model 'ResNet18', which the run does not evaluate"),
    (lambda c: c["pending"][0].update(images=c["pending"][0]["images"].to(torch.uint8)),
     "pending[0].images are a uint8 tensor of shape (20, 1, 8, 8); expected a float32 tensor"),
], ids=["duplicated", "forged", "ahead", "accuracies", "model", "integer images"])
def test_a_checkpoint_whose_evaluations_the_run_never_made_is_refused(tmp_path, monkeypatch, capsys, damage, words):
    args, path, checkpoint = cut_after_an_evaluation(tmp_path, monkeypatch)
    damage(checkpoint)
    torch.save(checkpoint, path)
    before = path.read_bytes()
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    line = one_error_line(capsys)
    assert words in line and "--overwrite" in line, line
    assert "not the run's images" not in line  # integer images: blamed on their dtype, not their shape
    assert path.read_bytes() == before


def test_the_undamaged_checkpoint_with_its_evaluation_resumes(tmp_path, monkeypatch):
    args, path, _ = cut_after_an_evaluation(tmp_path, monkeypatch)
    assert main([*args, "--resume"]) == 0


# ---- class 6: a live run is said first, by any spelling of its folder --------------------------------
def test_a_plain_start_beside_a_live_run_names_the_process(tmp_path, capsys):
    save = tmp_path / "save"
    args = ["condense", *TINY_DIGITS, "--model", "ConvNetD1", "--Iteration", "100000", "--save_path"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(CODE))
    proc = subprocess.Popen([sys.executable, "-m", "gradmatch.cli", *args, str(save)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_dir = save / TINY_DIGITS_NAME.replace("ConvNetW32", "ConvNetD1")
    os.symlink(save, tmp_path / "link")
    (tmp_path / "sub").mkdir()
    spellings = [str(save), str(tmp_path / "link"), f"{tmp_path}/sub/../save"]
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoint.pt").is_file():  # it has started, and left what a restart would see
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run wrote no checkpoint within 120 s"
            time.sleep(0.05)
        capsys.readouterr()
        for spelling in spellings:
            for extra in ([], ["--resume"], ["--overwrite"]):
                assert main([*args, spelling, *extra]) == 2
                line = one_error_line(capsys)
                assert f"another gradmatch process (pid {proc.pid}) is running this run" in line, (spelling, line)
                assert "unfinished run" not in line and "pass --resume" not in line
        assert proc.poll() is None  # the live run goes on untouched
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


# ---- class 7: a set records where its data came from and how it was split ------------------------------
def test_evaluate_from_another_folder_uses_the_sets_own_held_out_split(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    for cls in ("ant", "bee", "cow"):
        for i in range(10):
            save_png(tmp_path / "work" / "imgs" / cls / f"{i}.png", rng.integers(0, 256, (8, 8, 3)))
    monkeypatch.chdir(tmp_path / "work")
    assert main(["condense", "--dataset", "imgs", "--test_fraction", "0.3", *TINY_CIFAR, "--save_path", "out"]) == 0
    pt = tmp_path / "work" / "out" / "intra-class_imgs_ConvNetD1_1ipc.pt"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    protocol = ["--model", "ConvNetD1", "--num_eval", "2", "--epoch_eval_train", "3"]
    assert main(["evaluate", str(pt), *protocol]) == 0  # no --dataset: the set's own data and split
    own = capsys.readouterr().out
    assert own.startswith("Evaluate 2 random ConvNetD1, mean = ")
    assert main(["evaluate", str(pt), *protocol, "--dataset", str(tmp_path / "work" / "imgs"),
                 "--test_fraction", "0.3"]) == 0
    assert capsys.readouterr().out == own  # the same 9 held-out images, the same accuracies
    assert not any((tmp_path / "elsewhere").iterdir())


# ---- class 8: messages --------------------------------------------------------------------------------
def test_hf_size_error_speaks_the_command_line(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    images = [np.zeros((8, 8, 3), np.uint8), np.zeros((6, 5, 3), np.uint8)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    datasets.Dataset.from_dict({"image": images, "label": [0, 1]}, features=features).save_to_disk(
        str(tmp_path / "mixed"))
    capsys.readouterr()  # the library's progress bars while saving
    assert main(["condense", "--dataset", f"hf:{tmp_path / 'mixed'}", *TINY_CIFAR,
                 "--save_path", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert "images differ in size (8x8 (1), 6x5 (1)); pass --size H,W" in line


def test_a_parquet_file_the_library_cannot_read_is_one_line_and_nothing_else(tmp_path, capfd):
    pytest.importorskip("datasets")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1" + b"not a parquet file" + b"PAR1")
    assert main(["condense", "--dataset", f"hf:{tmp_path / 'bad.parquet'}", *TINY_CIFAR,
                 "--save_path", str(tmp_path / "out")]) == 2
    lines = capfd.readouterr().err.strip().splitlines()  # the file descriptor: a library's own log lines too
    assert len(lines) == 1 and lines[0].startswith("error: hf:") and "cannot read it (ArrowInvalid" in lines[0], lines


def test_reproduce_dry_run_prints_commands_a_shell_runs_as_given(tmp_path, capsys):
    folder = tmp_path / "my images"
    for cls in ("a", "b"):
        save_png(folder / cls / "0.png", np.zeros((8, 8)))
    assert main(["reproduce", "table2", "--dataset", str(folder), "--ipc", "1", "--test_fraction", "0.3",
                 "--size", "16", "--data_path", str(tmp_path / "my data"), "--save_path", str(tmp_path / "re sults"),
                 "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    commands = [line.split(":  ", 1)[1] for line in lines if "python " in line]
    assert len(commands) == 2
    for command in commands:
        argv = shlex.split(command)
        flags = dict(zip(argv[2::2], argv[3::2]))
        assert flags["--dataset"] == str(folder) and flags["--test_fraction"] == "0.3" and flags["--size"] == "16,16"
    paths = shlex.split(next(line for line in lines if "each row also gets" in line).split("gets ", 1)[1])
    assert paths[:2] == ["--data_path", str(tmp_path / "my data")]
    assert paths[3] == f"{tmp_path / 're sults'}/<row>"


def test_ctrl_c_during_a_reproduce_row_exits_130_and_says_how_to_go_on(tmp_path, monkeypatch, capsys):
    from gradmatch import reproduce as rp

    monkeypatch.setitem(rp.SCALES, "tiny", {"iterations": 4, "num_exp": 1, "num_eval": 1, "epoch_eval_train": 1})
    real_append = gm_run.append_log

    def append(path, record):
        real_append(path, record)
        if record.get("event") == "iteration" and record["iteration"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(gm_run, "append_log", append)
    assert main(["reproduce", "table2", "--dataset", "digits", "--ipc", "1", "--scale", "tiny", "--quiet",
                 "--save_path", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "after fixing it" not in err and "error:" not in err and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]  # after the row's heading: what was kept, what to run next
    assert last.startswith("interrupted") and "run the same command again" in last, err
