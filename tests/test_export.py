"""Self-describing sets: the .pt's metadata (read with weights_only=True), `gradmatch export` to PNG
folders that the `folder` dataset reads back, and the normalisation check of `gradmatch evaluate`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gradmatch import data
from gradmatch.cli import main
from gradmatch.synset import SyntheticSet
from gradmatch.errors import GradmatchError
from gradmatch.export import export, folder_names
from gradmatch.results import SET_FORMAT_VERSION, load_synthetic, reference_payload, save_torch

TINY = ["--dataset", "digits", "--model", "ConvNetW32", "--ipc", "2", "--batch_real", "16", "--num_exp", "2",
        "--num_eval", "1", "--epoch_eval_train", "2", "--inner_loop", "2", "--Iteration", "2", "--quiet"]
HALF_LEVEL = 0.5 / 255 + 1e-5  # 8-bit rounding, plus float error of the folder's own normalisation


@pytest.fixture(scope="module")
def condensed(tmp_path_factory) -> Path:
    """A real run's .pt: two experiments of 2 images per digit, 2 iterations."""
    torch.set_num_threads(1)
    save = tmp_path_factory.mktemp("run")
    assert main(["condense", *TINY, "--save_path", str(save)]) == 0
    return next(save.glob("*.pt"))


def pixels(ds) -> torch.Tensor:
    """Pixels in [0, 1] of a Dataset or SyntheticSet (undo its own normalisation)."""
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    return ds.images * std + mean


def test_the_saved_set_describes_itself_and_loads_weights_only(condensed):
    payload = torch.load(condensed, weights_only=True)  # tensors and plain data only
    assert len(payload["data"]) == 2 and set(payload["accs_all_exps"]) == {"ConvNetW32"}  # DC's layout kept
    train = data.load("digits", split="train")
    assert payload["format_version"] == SET_FORMAT_VERSION
    assert payload["dataset"] == "digits" and payload["classes"] == [str(d) for d in range(10)]
    assert payload["ipc"] == 2 and payload["gradmatch_version"]
    assert tuple(payload["mean"]) == train.mean and tuple(payload["std"]) == train.std
    assert payload["config"]["ipc"] == 2 and payload["config"]["model"] == "ConvNetW32"


def test_a_newer_format_is_refused_in_one_line(tmp_path, condensed):
    payload = torch.load(condensed, weights_only=True)
    payload["format_version"] = SET_FORMAT_VERSION + 1
    save_torch(payload, tmp_path / "new.pt")
    with pytest.raises(GradmatchError, match="upgrade gradmatch"):
        load_synthetic(tmp_path / "new.pt")


def test_export_reads_back_through_the_folder_dataset(tmp_path, condensed, capsys):
    out = tmp_path / "png"
    assert main(["export", str(condensed), "--to", str(out), "--experiment", "0"]) == 0
    assert "wrote 20 images of 10 classes" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [*[str(d) for d in range(10)], "metadata.json"]
    assert sorted(p.name for p in (out / "3").iterdir()) == ["000.png", "001.png"]
    syn = load_synthetic(condensed, 0)
    back = data.load(str(out), split="train")
    assert back.classes == syn.classes and torch.equal(back.labels, syn.labels)
    assert back.images.shape == syn.images.shape
    assert (pixels(back) - syn.denormalised()).abs().max() <= HALF_LEVEL
    # the other experiment is another set
    assert (syn.images - load_synthetic(condensed, 1).images).abs().max() > 0.1


def test_metadata_round_trip(tmp_path, condensed):
    export(condensed, tmp_path / "png")
    meta = json.loads((tmp_path / "png" / "metadata.json").read_text())
    payload = torch.load(condensed, weights_only=True)
    assert meta["experiment"] == 1  # the default, -1, is the last of two
    for key in ("dataset", "classes", "ipc", "config", "gradmatch_version"):
        assert meta[key] == payload[key], key
    assert tuple(meta["mean"]) == tuple(payload["mean"]) and tuple(meta["std"]) == tuple(payload["std"])
    assert meta["accs_all_exps"] == payload["accs_all_exps"]
    assert len(meta["files"]) == 20 and meta["files"][2] == {"file": "1/000.png", "label": 1}
    # the metadata renormalises the PNGs as the original set was normalised
    back = data.load(str(tmp_path / "png"), split="train")
    mean, std = torch.tensor(meta["mean"]).view(1, -1, 1, 1), torch.tensor(meta["std"]).view(1, -1, 1, 1)
    renormalised = (pixels(back) - mean) / std
    syn = load_synthetic(condensed)
    inside = (syn.denormalised() > 0) & (syn.denormalised() < 1)  # the clamped pixels cannot come back
    assert ((renormalised - syn.images).abs()[inside] <= HALF_LEVEL / min(meta["std"])).all()


def test_export_refuses_a_non_empty_folder_unless_overwrite(tmp_path, condensed, capsys):
    out = tmp_path / "png"
    export(condensed, out)
    assert main(["export", str(condensed), "--to", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty; pass --overwrite" in err
    (out / "3" / "extra.png").write_bytes(b"")  # gone with the old export's folders
    assert main(["export", str(condensed), "--to", str(out), "--experiment", "0", "--overwrite"]) == 0
    assert not (out / "3" / "extra.png").exists()
    assert json.loads((out / "metadata.json").read_text())["experiment"] == 0
    (tmp_path / "file").write_text("x")
    assert main(["export", str(condensed), "--to", str(tmp_path / "file")]) == 2
    assert main(["export", str(tmp_path / "missing.pt"), "--to", str(tmp_path / "new")]) == 2
    assert "not found" in capsys.readouterr().err


def test_class_names_that_would_not_sort_in_label_order_get_label_prefixes(tmp_path):
    classes = ["zebra", "apple", "train"]
    assert folder_names(classes) == ["0_zebra", "1_apple", "2_train"]
    assert folder_names(["a/b", "c"]) == ["0_a_b", "1_c"]
    assert folder_names(["cat", "dog"]) == ["cat", "dog"]
    g = torch.Generator().manual_seed(0)
    syn = SyntheticSet(images=torch.randn(6, 3, 5, 4, generator=g), labels=torch.tensor([0, 0, 1, 1, 2, 2]),
                       classes=classes, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), dataset="mine")
    save_torch(reference_payload([syn], {}), tmp_path / "rgb.pt")
    export(tmp_path / "rgb.pt", tmp_path / "png")
    back = data.load(str(tmp_path / "png"), split="train")
    assert back.classes == ["0_zebra", "1_apple", "2_train"] and torch.equal(back.labels, syn.labels)
    assert back.channel == 3 and back.im_size == (5, 4)
    assert (pixels(back) - syn.denormalised()).abs().max() <= HALF_LEVEL


def test_evaluate_refuses_a_set_normalised_otherwise(tmp_path, condensed, capsys):
    """The set's own PNGs as a folder dataset have other statistics than digits: one line naming both."""
    export(condensed, tmp_path / "png")
    args = ["evaluate", str(condensed), "--model", "ConvNetW32", "--num_eval", "1", "--epoch_eval_train", "1"]
    assert main([*args, "--dataset", str(tmp_path / "png")]) == 2
    err = capsys.readouterr().err
    train = data.load("digits", split="train")
    assert err.count("\n") == 1 and "normalised with mean" in err and "(digits)" in err
    assert f"{train.mean[0]:.4f}" in err and "the test set folder with mean" in err
    assert main(args) == 0  # its own dataset: evaluated
    assert capsys.readouterr().out.startswith("Evaluate 1 random ConvNetW32")
