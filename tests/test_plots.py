"""`gradmatch plot RUN_DIR`: PNG files that Pillow opens, of the documented sizes, showing what they
should (de-normalised images, one row per class, curves of loss and accuracy)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gradmatch.cli import main
from gradmatch.synset import SyntheticSet
from gradmatch.plots import (
    CURVES_SIZE,
    DPI,
    image_grid,
    labelled_grid_size,
    plot_run,
    save_curves,
    save_image_grid,
)
from gradmatch.results import append_log, reference_payload, save_torch

NAME = "intra-class_digits_ConvNetW32_2ipc"


def png(path) -> Image.Image:
    with Image.open(path) as im:
        im.verify()  # a complete, valid PNG
    im = Image.open(path)
    assert im.format == "PNG"
    return im


def figure_pixels(size_inches) -> tuple:
    return round(size_inches[0] * DPI), round(size_inches[1] * DPI)


def constant_set(classes, ipc, channels=1, size=8, mean=0.3, std=0.4) -> SyntheticSet:
    """Every image of class c is the constant grey level c / (K - 1) once de-normalised."""
    k = len(classes)
    levels = torch.arange(k, dtype=torch.float32).repeat_interleave(ipc) / max(k - 1, 1)
    images = levels.view(-1, 1, 1, 1).expand(-1, channels, size, size).clone()
    images = (images - mean) / std
    return SyntheticSet(images=images, labels=torch.arange(k).repeat_interleave(ipc), classes=list(classes),
                        mean=(mean,) * channels, std=(std,) * channels, dataset="toy")


def test_image_grid_is_denormalised_one_row_per_class():
    syn = constant_set([str(c) for c in range(5)], ipc=3)
    grid = image_grid(syn)
    zoom, cell = 4, 8 * 4 + 2  # 8x8 images upscaled to 32 pixels, 2 pixels apart
    assert grid.shape == (5 * cell + 2, 3 * cell + 2, 1) and grid.dtype == np.uint8
    for c in range(5):
        for i in range(3):
            y, x = 2 + c * cell, 2 + i * cell
            block = grid[y:y + 8 * zoom, x:x + 8 * zoom, 0]
            assert np.all(block == round(255 * c / 4)), (c, i)
    assert np.all(grid[0, :, 0] == 128) and np.all(grid[:, 0, 0] == 128)  # grey separators


def test_image_grid_clamps_to_0_1():
    syn = constant_set(["a", "b"], ipc=1)
    syn.images[0] = -100.0
    syn.images[1] = 100.0
    grid = image_grid(syn)
    assert grid[2:34, 2:34].max() == 0 and grid[36:68, 2:34].min() == 255


def test_bare_grid_png_has_the_grid_size(tmp_path):
    syn = constant_set(["a", "b", "c"], ipc=2, channels=3, size=32)
    path = save_image_grid(syn, tmp_path / "g.png")
    im = png(path)
    assert im.size == (2 * 34 + 2, 3 * 34 + 2) and im.mode == "RGB"


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    torch.set_num_threads(1)
    save = tmp_path_factory.mktemp("digits")
    assert main(["condense", "--dataset", "digits", "--model", "ConvNetW32", "--ipc", "2", "--Iteration", "4",
                 "--batch_real", "16", "--num_exp", "1", "--num_eval", "1", "--epoch_eval_train", "2",
                 "--checkpoint_every", "1", "--inner_loop", "5", "--eval_iterations", "2,4", "--quiet",
                 "--save_path", str(save)]) == 0
    return save / NAME


def test_gradmatch_plot_writes_pngs_of_the_right_size(digits_run, capsys):
    capsys.readouterr()
    assert main(["plot", str(digits_run)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(digits_run / "curves.png"), str(digits_run / "grid.png")]

    curves = png(digits_run / "curves.png")
    assert curves.size == figure_pixels(CURVES_SIZE) == (1000, 400)
    grid = png(digits_run / "grid.png")
    assert labelled_grid_size(constant_set([str(c) for c in range(10)], 2)) == (4.0, 6.5)
    assert grid.size == (400, 650)
    for im in (curves, grid):  # something is drawn: not one flat colour
        assert np.asarray(im.convert("L")).std() > 10

    for it in (2, 4):  # the bare grid at each evaluation point: 10 rows of 2 images, 8x8 shown at 32x32
        bare = png(digits_run / f"grid_exp0_it{it:05d}.png")
        assert bare.size == (2 * 34 + 2, 10 * 34 + 2) and bare.mode == "L"


def test_plot_of_an_unfinished_run_uses_its_checkpoint(digits_run, tmp_path):
    import shutil

    run = tmp_path / NAME
    shutil.copytree(digits_run, run)  # the run folder without its final .pt: as if still running
    written = plot_run(run)
    assert [p.name for p in written] == ["curves.png", "grid.png"]
    assert png(run / "grid.png").size == (400, 650)


def test_plot_of_a_colour_run_with_several_experiments(tmp_path):
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    sets = [constant_set(classes, ipc=3, channels=3, size=32, mean=0.5, std=0.25) for _ in range(2)]
    run = tmp_path / "intra-class_CIFAR10_ConvNet_3ipc"
    run.mkdir()
    save_torch(reference_payload(sets, {"ConvNet": [0.3, 0.32]}), tmp_path / f"{run.name}.pt")
    (run / "config.json").write_text(json.dumps({"condense": {"iterations": 120}}))
    for exp in range(2):
        for it in range(1, 121):  # long enough for the running mean
            append_log(run / "log.jsonl", {"event": "iteration", "experiment": exp, "iteration": it,
                                           "loss": 50.0 / it + exp})
        for it in (60, 120):
            append_log(run / "log.jsonl", {"event": "eval", "experiment": exp, "iteration": it, "model": "ConvNet",
                                           "accuracies": [0.2, 0.3], "mean": 0.25 + it / 1000, "std": 0.05})
    written = [p.name for p in plot_run(run)]
    assert written == ["curves.png", "grid_exp0.png", "grid_exp1.png", "grid.png"]
    assert png(run / "curves.png").size == (1000, 400)
    expected = figure_pixels(labelled_grid_size(sets[0]))
    for name in written[1:]:
        im = png(run / name)
        assert im.size == expected
        assert im.mode in ("RGB", "RGBA")


def test_curves_from_an_empty_log_draw_nothing(tmp_path):
    (tmp_path / "log.jsonl").write_text("")
    assert save_curves(tmp_path / "log.jsonl", tmp_path / "curves.png") is None
    assert not (tmp_path / "curves.png").exists()


def test_plot_errors_are_one_line(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: run folder not found: {tmp_path / 'missing'}"]
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty")]) == 2
    assert "holds no log.jsonl, checkpoint or result" in capsys.readouterr().err
