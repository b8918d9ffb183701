"""Issue 11: every bad input ends in one line (exit code 2, no traceback) and loses nothing.

Each case asserts the exit code, the one line on stderr, and what is on disk afterwards."""
from __future__ import annotations

import dataclasses

import os

import pytest
import torch

from gradmatch.cli import main
from gradmatch.config import CondenseConfig, RunConfig, apply
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
    config = apply(RunConfig(), {"model": "ConvNetD1", "iterations": 2, "dataset": "digits",
                                 "save_path": str(tmp_path), "num_exp": 1, "num_eval": 1})
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


# ---- classes 4-6: bad values refused before any work, in one line naming the flag ------------------
@pytest.mark.parametrize("flags, words", [
    (["--lr_img=-1"], "--lr_img must be a positive number"),
    (["--lr_net=-1"], "--lr_net must be a positive number"),
    (["--device", "bogus"], "--device bogus is not a device"),
    (["--dis_metric", "math:sqrt"], "--dis_metric math:sqrt: calling it on two (3, 4) gradient row matrices failed"),
    (["--dis_metric", "os:system"], "--dis_metric os:system: calling it on two (3, 4) gradient row matrices failed"),
    (["--dis_metric", "tests.user_distances:returns_float"], "returned float; a distance must return a scalar"),
    (["--dis_metric", "tests.user_distances:returns_rows"], "returned a tensor of shape (3,)"),
    (["--outer_loop", "-1"], "--outer_loop must be at least 1, got -1"),
    (["--inner_loop", "-5"], "--inner_loop must be at least 0, got -5"),
    (["--epoch_eval_train", "0"], "--epoch_eval_train must be at least 1, got 0"),
    (["--eval_iterations", "50,60"], "none is within 0 to --Iteration 10"),
    (["--Iteration", "-1"], "--Iteration must be at least 0, got -1"),  # the flag as typed, not 'iterations'
    (["--method", "DSB"], "unknown method (--method) 'DSB'"),
    (["--dsa", "--dsa_strategy", "color_warp"], "unknown DSA augmentation 'warp'"),
    (["--dataset", "digits", "--eval_mode", "M"], "--eval_mode: LeNet, VGG11, ResNet18 cannot take 8x8 images"),
    (["--dataset", "digits", "--model", "LeNet", "--eval_mode", "MLP"], "--model: LeNet cannot take 8x8"),
])
def test_bad_values_are_refused_before_any_work(flags, words, tmp_path, capsys):
    save = tmp_path / "out"
    code = main(["condense", "--save_path", str(save), "--Iteration", "10", "--quiet", *flags])
    line = one_error_line(capsys)
    assert code == 2 and words in line, line
    assert not save.exists() or list(save.iterdir()) == []  # nothing written


def test_the_fit_check_names_the_models_that_fit(tmp_path, capsys):
    assert main(["condense", "--dataset", "digits", "--eval_mode", "M", "--save_path", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert line.endswith("those that fit: MLP, ConvNet, AlexNet") and "VGG11" in line.split(";")[0]


def test_no_cuda_is_said_in_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["condense", "--device", "cuda", "--save_path", str(tmp_path)]) == 2
    assert "CUDA is not available" in one_error_line(capsys)
    assert main(["evaluate", str(tmp_path / "x.pt"), "--device", "cuda"]) == 2
    assert "CUDA is not available" in one_error_line(capsys)


def test_lr_img_zero_is_allowed_with_a_warning(capsys):
    CondenseConfig(lr_img=0.0).validate()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: --lr_img 0")


# ---- evaluate on bad files and values ---------------------------------------------------------------
def dc_file(path, images, labels, **extra):
    torch.save({"data": [[images, labels]] if images is not None else extra.pop("data"),
                "accs_all_exps": {}, **extra}, path)
    return str(path)


@pytest.mark.parametrize("case, words", [
    ("counts", "data[0] labels have shape (19,) for 20 images; expected one label per image"),
    ("not_a_pair", "is not an [images, labels] pair"),
    ("nan", "data[0] images hold non-finite (nan or inf) values in 1 image(s)"),
    ("num_eval", "--num_eval must be at least 1, got 0"),
    ("device", "--device bogus is not a device"),
])
def test_evaluate_refuses_bad_files_and_values(case, words, tmp_path, capsys):
    images, labels = torch.zeros(20, 1, 8, 8), torch.arange(10).repeat_interleave(2)
    extra = []
    if case == "counts":
        path = dc_file(tmp_path / "s.pt", images, labels[:19])
    elif case == "not_a_pair":
        path = dc_file(tmp_path / "s.pt", None, None, data=[[images, labels, labels]])
    elif case == "nan":
        images[3, 0, 2, 2] = float("nan")
        path = dc_file(tmp_path / "s.pt", images, labels)
    else:
        path = dc_file(tmp_path / "s.pt", images, labels)
        extra = ["--num_eval", "0"] if case == "num_eval" else ["--device", "bogus"]
    assert main(["evaluate", path, "--dataset", "digits", "--model", "MLP", *extra]) == 2
    assert words in one_error_line(capsys)


def test_python_evaluate_refuses_a_set_of_another_shape():
    from gradmatch import data, evaluate
    from gradmatch.synset import SyntheticSet
    from gradmatch.errors import GradmatchError

    test = data.load("digits", split="test")
    syn = SyntheticSet(images=torch.zeros(10, 3, 8, 8), labels=torch.arange(10), classes=test.classes,
                       mean=(0.0,) * 3, std=(1.0,) * 3, dataset="digits")
    with pytest.raises(GradmatchError, match=r"the synthetic set are \(3, 8, 8\) but the test images are \(1, 8, 8\)"):
        evaluate(syn, "MLP", test, num_eval=1, epochs=1)


# ---- a damaged checkpoint is refused in one line, whatever is damaged --------------------------------
def cut_run(tmp_path, experiments=2):
    """A run cut (Ctrl-C) in its first iteration of two experiments advanced together."""
    import gradmatch.run as gm_run

    args = tiny(tmp_path, 4, "--num_exp", str(experiments), "--experiments", "batched", "--model", "ConvNetD1")
    real_append = gm_run.append_log

    def append(path, record):
        real_append(path, record)
        if record.get("event") == "iteration" and record["iteration"] == 2:
            raise KeyboardInterrupt

    gm_run.append_log = append
    try:
        assert main(args) == 130
    finally:
        gm_run.append_log = real_append
    return args, tmp_path / "intra-class_digits_ConvNetD1_2ipc" / "checkpoint.pt"


DAMAGE = {
    "iteration far ahead": (lambda c: c["pending"][1].update(iteration=999), "pending[1].iteration is 999"),
    "negative iteration": (lambda c: c["pending"][1].update(iteration=-3), "pending[1].iteration is -3"),
    "fractional iteration": (lambda c: c["pending"][0].update(iteration=4.5), "pending[0].iteration is 4.5"),
    "momentum a dict": (lambda c: c["pending"][0].update(momentum={}),
     "pending[0].momentum are {}; expected a float32 tensor"),
    "images a list": (lambda c: c["pending"][0].update(images=[1, 2, 3]),
     "pending[0].images are [1, 2, 3]; expected a float32 tensor"),
    "images of another shape": (lambda c: c["pending"][0].update(images=torch.zeros(3, 1, 8, 8)),
                                "pending[0].images is (3, 1, 8, 8), not the run's images (20, 1, 8, 8)"),
    "nan images": (lambda c: c["pending"][0]["images"].fill_(float("nan")), "pending[0].images hold non-finite"),
    "a state of a finished experiment": (lambda c: c["pending"].update({7: c["pending"][0]}),
                                         "pending[7] is not an unfinished experiment"),
    "no next experiment": (lambda c: c["pending"].pop(0), "pending lacks experiment 0"),
    "config a string": (lambda c: c.update(config="x"), "its config: run settings must be a JSON object, got str"),
    "unknown setting": (lambda c: c["config"].update(colour="red"), "has unknown run settings colour"),
    "a bad setting": (lambda c: c["config"]["condense"].update(ipc=0), "--ipc must be at least 1"),
    "classes a number": (lambda c: c["meta"].update(classes=5), "meta.classes is 5; expected a list of class names"),
    "mean of two channels": (lambda c: c["meta"].update(mean=[0.1, 0.2]), "meta.std is"),
    "version a string": (lambda c: c.update(version="abc"), "version is 'abc', not a number"),
    "newer version": (lambda c: c.update(version=99), "written by a newer gradmatch"),
    "evaluations damaged": (lambda c: c.update(evaluations=[{"experiment": 0}]),
     "evaluations[0] is not an evaluation record"),
    "random states damaged": (lambda c: c["rng"].update(numpy={"kind": 1}), "rng holds damaged random states"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_refused_in_one_line(tmp_path, capsys, damage):
    args, path = cut_run(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    change, words = DAMAGE[damage]
    change(checkpoint)
    torch.save(checkpoint, path)
    before = path.read_bytes()
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    line = one_error_line(capsys)
    assert words in line and "--overwrite" in line, line
    assert path.read_bytes() == before  # nothing written over it


def test_an_undamaged_cut_checkpoint_resumes(tmp_path, capsys):
    args, path = cut_run(tmp_path)
    assert main([*args, "--resume"]) == 0


# ---- class 2: image folders never follow a folder symlink ------------------------------------------
def png(path, value):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4), value).save(path)


def test_folder_dataset_skips_folder_symlinks_but_reads_linked_images(tmp_path):
    from gradmatch import data

    root = tmp_path / "imgs"
    png(root / "a" / "1.png", 10)
    png(root / "b" / "1.png", 200)
    png(tmp_path / "outside" / "far.png", 50)
    os.symlink("..", root / "a" / "loop")          # back up into the tree: would repeat it forever
    os.symlink(".", root / "a" / "again")          # itself
    os.symlink(tmp_path / "outside", root / "b" / "out")  # out of the tree
    os.symlink(root / "a", root / "c")             # a class folder that is a link
    os.symlink(root / "a" / "1.png", root / "b" / "linked.png")  # a link to an image: read
    ds = data.load(str(root), split="train")
    assert ds.classes == ["a", "b"]
    assert ds.labels.tolist() == [0, 1, 1]


def test_folder_dataset_with_one_class_is_refused(tmp_path, capsys):
    png(tmp_path / "imgs" / "only" / "1.png", 10)
    assert main(["condense", "--dataset", str(tmp_path / "imgs"), "--save_path", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys, warned=("has no test split",))
    assert "folder has one class (only)" in line and "2 or more classes" in line


# ---- class 6: messages that name the real cause ---------------------------------------------------
def test_a_class_without_images_is_named_as_such():
    from gradmatch.data import Dataset
    from gradmatch.errors import GradmatchError

    real = Dataset(images=torch.zeros(4, 1, 8, 8), labels=torch.tensor([0, 0, 2, 2]), classes=["a", "b", "c"],
                   mean=(0.0,), std=(1.0,), name="toy")
    with pytest.raises(GradmatchError, match="class 'b' has no training images") as info:
        CondenseConfig().resolved(real)
    assert "--ipc 0" not in str(info.value)


def test_non_finite_real_data_is_said_at_load(monkeypatch, tmp_path, capsys):
    from gradmatch.data import registry

    source = registry._SOURCES["digits"]

    def poisoned(root, split, download, size):
        ds = source.reader(root, split, download, size)
        ds.images[5, 0, 0, 0] = float("nan")
        return ds

    monkeypatch.setitem(registry._SOURCES, "digits", dataclasses.replace(source, reader=poisoned))
    assert main(["condense", "--dataset", "digits", "--model", "ConvNetD1", "--save_path", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert "hold non-finite (nan or inf) values in 1 image(s)" in line and "--lr_img" not in line


def test_missing_files_say_pass_download_for_the_cli_and_python(tmp_path, capsys):
    assert main(["condense", "--dataset", "CIFAR10", "--data_path", str(tmp_path), "--save_path",
                 str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert "pass --download (download=True from Python)" in line


# ---- class 3 and 4: runs that fail part way keep what they had --------------------------------------
from tests.conftest import DEEP_ON_DIGITS, TINY_DIGITS, TINY_DIGITS_NAME  # noqa: E402


def tiny(save, iterations=3, *extra):
    return ["condense", *TINY_DIGITS, "--Iteration", str(iterations), "--save_path", str(save), *extra]


def test_a_full_disk_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    import errno

    from gradmatch import results
    from gradmatch.runstate import load_checkpoint

    real_replace, saves = os.replace, []

    def replace(src, dst):
        if str(dst).endswith("checkpoint.pt"):
            saves.append(dst)
            if len(saves) == 3:
                raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(results.os, "replace", replace)
    assert main(tiny(tmp_path, 5, "--eval_iterations", "5")) == 2
    line = one_error_line(capsys, (DEEP_ON_DIGITS,))
    ckpt = tmp_path / TINY_DIGITS_NAME / "checkpoint.pt"
    assert f"cannot write {ckpt} (No space left on device)" in line
    assert "last good checkpoint (experiment 0, iteration 2) is kept intact" in line
    assert load_checkpoint(ckpt).pending[0].iteration == 2
    assert not list(ckpt.parent.glob(".*.tmp"))


def test_a_save_path_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    assert main(tiny(tmp_path / "file")) == 2
    assert "cannot create the run folder" in one_error_line(capsys)
    assert (tmp_path / "file").read_text() == "mine"


def test_an_evaluation_error_keeps_the_finished_images(tmp_path, capsys, monkeypatch):
    import gradmatch.run as gm_run
    from gradmatch.errors import GradmatchError
    from gradmatch.runstate import load_checkpoint

    def broken(*args, **kwargs):
        raise GradmatchError("evaluation failed")

    monkeypatch.setattr(gm_run, "evaluate_set", broken)
    assert main(tiny(tmp_path, 3)) == 2
    assert "evaluation failed" in one_error_line(capsys, (DEEP_ON_DIGITS,))
    state = load_checkpoint(tmp_path / TINY_DIGITS_NAME / "checkpoint.pt").pending[0]
    assert state.iteration == 3 and torch.isfinite(state.images).all()


def test_overwrite_keeps_the_old_results_until_the_new_ones_are_written(tmp_path, capsys, monkeypatch):
    import gradmatch.run as gm_run

    assert main(tiny(tmp_path, 2)) == 0
    pt, js = tmp_path / f"{TINY_DIGITS_NAME}.pt", tmp_path / f"{TINY_DIGITS_NAME}.json"
    old = pt.read_bytes(), js.read_bytes()
    real_append = gm_run.append_log

    def append(path, record):  # the new run is stopped (Ctrl-C) in its second iteration
        real_append(path, record)
        if record.get("event") == "iteration" and record["iteration"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(gm_run, "append_log", append)
    assert main(tiny(tmp_path, 3, "--overwrite")) == 130
    assert (pt.read_bytes(), js.read_bytes()) == old
    monkeypatch.undo()
    torch.set_num_threads(1)
    assert main(tiny(tmp_path, 3, "--resume")) == 0
    assert pt.read_bytes() != old[0]


def test_half_written_results_suggest_resume_and_resume_names_ignored_flags(tmp_path, capsys):
    assert main(tiny(tmp_path, 2)) == 0
    run_dir, js = tmp_path / TINY_DIGITS_NAME, tmp_path / f"{TINY_DIGITS_NAME}.json"
    js.unlink()  # as a kill between writing the .pt and the .json leaves it
    capsys.readouterr()
    assert main(tiny(tmp_path, 2)) == 2
    line = one_error_line(capsys)
    assert "half written" in line and "pass --resume" in line and "--overwrite" not in line
    assert main(["condense", "--resume", str(run_dir), "--Iteration", "9", "--ipc", "3", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "ignoring --Iteration 9 (saved: 2), --ipc 3 (saved: 2)" in err
    assert js.is_file()
    # plot SAVE_PATH: the one run there
    assert main(["plot", str(tmp_path)]) == 0
    assert (run_dir / "grid.png").is_file()


def test_plot_of_a_folder_with_several_runs_lists_them(tmp_path, capsys):
    for name in ("run_a", "run_b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    assert main(["plot", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert "holds 2 runs" in line and "run_a" in line and "run_b" in line
