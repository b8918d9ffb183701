"""Self-describing sets: the .pt's metadata (read with weights_only=True), `gradmatch export` to PNG
folders that the `folder` dataset reads back (names bounded, links never followed, nothing half-written
on a full or read-only disk) or to a Hugging Face `datasets` folder, and the normalisation check of
`gradmatch evaluate`."""
from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gradmatch import data
from gradmatch.cli import main
from gradmatch.synset import SyntheticSet
from gradmatch.errors import GradmatchError
from gradmatch.export import export, folder_names, to_uint8
from gradmatch.results import SET_FORMAT_VERSION, load_synthetic, reference_payload, save_torch
from tests.conftest import one_error_line

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
    err = one_error_line(capsys, warned=("has no test split",))  # the folder's few images: said, then refused
    train = data.load("digits", split="train")
    assert "normalised with mean" in err and "(digits)" in err
    assert f"{train.mean[0]:.4f}" in err and "the test set folder with mean" in err
    assert main(args) == 0  # its own dataset: evaluated
    assert capsys.readouterr().out.startswith("Evaluate 1 random ConvNetW32")


# ---- hardening: names, links, file-system errors, nothing half-written ---------------------------------
def saved_set(tmp_path, classes, channels=1, name="set.pt", seed=0, per_class=2) -> Path:
    """A hand-made set of ``per_class`` images per class, saved as gradmatch saves one."""
    g = torch.Generator().manual_seed(seed)
    k = len(classes)
    syn = SyntheticSet(images=torch.randn(k * per_class, channels, 5, 4, generator=g),
                       labels=torch.arange(k).repeat_interleave(per_class), classes=list(classes),
                       mean=(0.5,) * channels, std=(0.25,) * channels, dataset="mine")
    save_torch(reference_payload([syn, syn], {}), tmp_path / name)
    return tmp_path / name


def tree(folder: Path) -> dict:
    """relative path -> bytes (files) or 'dir' / 'link -> target' of everything under ``folder``."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = f"link -> {os.readlink(p)}" if p.is_symlink() else "dir" if p.is_dir() else p.read_bytes()
    return out


def test_long_and_unicode_class_names_become_bounded_distinct_folders(tmp_path):
    classes = ["a" * 300, "a" * 299 + "b", "猫" * 100, "猫" * 100 + "x", "Cat", "cat"]
    names = folder_names(classes)
    assert all(len(n.encode()) <= 255 for n in names)  # bytes, not characters: 猫 is 3 bytes
    assert len(set(n.casefold() for n in names)) == len(names) and sorted(names) == names
    assert names[2] == "2_" + "猫" * 84 and names[4] == "4_Cat"  # cut between characters, label order kept
    assert folder_names(["Cat", "cat"]) == ["0_Cat", "1_cat"]  # one folder on macOS and Windows otherwise
    assert folder_names(["metadata.json", "z"]) == ["0_metadata.json", "1_z"]  # not the metadata's name
    assert folder_names(["", "test", ".git"]) == ["0", "1_test", "2_.git"]
    export(saved_set(tmp_path, classes), tmp_path / "png")
    back = data.load(str(tmp_path / "png"), split="train")
    assert back.classes == names and torch.equal(back.labels, torch.arange(6).repeat_interleave(2))


def test_overwrite_never_writes_through_a_link_planted_in_to(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    path = saved_set(tmp_path, ["cat", "dog"])
    out = tmp_path / "png"
    export(path, out)
    (out / "cat").rename(tmp_path / "old_cat")
    (out / "cat").symlink_to(outside)  # a class folder that leads outside --to
    (out / "dog" / "000.png").unlink()
    (out / "dog" / "000.png").symlink_to(outside / "keep.txt")  # a file that does
    (out / "metadata.json").unlink()
    (out / "metadata.json").symlink_to(outside / "keep.txt")
    before = tree(outside)
    meta = export(path, out, overwrite=True)
    assert tree(outside) == before  # nothing written, nothing removed there
    assert not any(p.is_symlink() for p in out.rglob("*"))  # the links are gone, not followed
    assert sorted(p.name for p in (out / "cat").iterdir()) == ["000.png", "001.png"]
    assert json.loads((out / "metadata.json").read_text())["files"] == meta["files"]
    assert sorted(p.name for p in out.iterdir()) == ["cat", "dog", "metadata.json"]  # no staging left


def test_a_to_that_is_a_link_is_the_folder_it_points_to(tmp_path, capsys):
    path = saved_set(tmp_path, ["cat", "dog"])
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert main(["export", str(path), "--to", str(tmp_path / "link")]) == 0
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "cat" / "000.png").is_file()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    capsys.readouterr()
    assert main(["export", str(path), "--to", str(tmp_path / "dangling")]) == 2
    line = one_error_line(capsys)
    assert "is a link to" in line and "which is not a folder" in line and not (tmp_path / "nowhere").exists()


def failing_after(calls: int, error: BaseException, real):
    """``real`` that works ``calls`` times, then (half-)writes and raises ``error``, as a disk that fills
    up mid-export does."""
    count = {"n": 0}

    def wrapped(self, target, *args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            torn = Path(target) / "data-00000-of-00001.arrow" if Path(target).is_dir() else Path(target)
            torn.write_bytes(b"half a file")  # which must not survive
            raise error
        return real(self, target, *args, **kwargs)
    return wrapped


@pytest.mark.parametrize("earlier", [True, False])
def test_a_full_disk_mid_export_leaves_nothing_and_the_earlier_export_intact(tmp_path, monkeypatch, capsys, earlier):
    from PIL import Image

    path = saved_set(tmp_path, ["cat", "dog", "emu"])
    out = tmp_path / "new" / "png"
    if earlier:
        export(path, out, experiment=0)
    before = tree(tmp_path)
    monkeypatch.setattr(Image.Image, "save", failing_after(3, OSError(errno.ENOSPC, "No space left on device"),
                                                           Image.Image.save))
    code = main(["export", str(path), "--to", str(out), "--overwrite"])
    line = one_error_line(capsys)
    assert code == 2 and f"cannot write the export to {out}: No space left on device" in line
    assert "nothing was written" in line and "free some space" in line
    assert ("an earlier export there is intact" in line) == earlier
    assert tree(tmp_path) == before  # byte for byte; no staging folder, and no --to made for nothing


def test_a_read_only_to_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    path = saved_set(tmp_path, ["cat", "dog"])
    out = tmp_path / "png"
    export(path, out, experiment=0)
    before = tree(tmp_path)
    if os.geteuid() == 0:  # root writes through chmod: make every new folder fail as a read-only mount does
        def read_only(target, *args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system", str(target))
        monkeypatch.setattr(os, "mkdir", read_only)
    else:
        out.chmod(0o555)
        tmp_path.chmod(0o555)
    for to in (out, tmp_path / "new"):
        assert main(["export", str(path), "--to", str(to), "--overwrite"]) == 2
        line = one_error_line(capsys)
        assert f"cannot write the export to {to}: " in line and ("Read-only" in line or "Permission" in line)
        assert "choose a --to you can write to" in line
    monkeypatch.undo()
    tmp_path.chmod(0o755)
    out.chmod(0o755)
    assert tree(tmp_path) == before


def test_a_failure_while_swapping_in_is_undone(tmp_path, monkeypatch, capsys):
    """The last step renames entries into --to; if one rename fails, the earlier export is put back."""
    path = saved_set(tmp_path, ["cat", "dog", "emu"])
    out = tmp_path / "png"
    export(path, out, experiment=0)
    (out / "notes.txt").write_text("keep me")
    before = tree(out)
    real, count = os.rename, {"n": 0}

    def flaky(src, dst):
        count["n"] += 1
        if count["n"] == 6:  # after the old entries went aside and two new ones came in
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)
    monkeypatch.setattr(os, "rename", flaky)
    assert main(["export", str(path), "--to", str(out), "--overwrite", "--experiment", "1"]) == 2
    assert "Input/output error" in one_error_line(capsys)
    assert count["n"] > 6 and tree(out) == before


def test_an_interrupt_mid_export_leaves_nothing(tmp_path, monkeypatch):
    from PIL import Image

    path = saved_set(tmp_path, ["cat", "dog"])
    monkeypatch.setattr(Image.Image, "save", failing_after(1, KeyboardInterrupt(), Image.Image.save))
    with pytest.raises(KeyboardInterrupt):
        export(path, tmp_path / "png")
    assert not (tmp_path / "png").exists()


def test_overwrite_keeps_what_is_not_an_export_and_says_so(tmp_path, capsys):
    path = saved_set(tmp_path, ["cat", "dog"])
    out = tmp_path / "png"
    export(path, out)
    (out / "notes").mkdir()
    (out / ".hidden").write_text("x")
    assert main(["export", str(path), "--to", str(out), "--overwrite"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: {out} also holds notes, which the folder dataset would read too"]
    assert sorted(p.name for p in out.iterdir()) == [".hidden", "cat", "dog", "metadata.json", "notes"]


# ---- --format hf ---------------------------------------------------------------------------------------
def test_hf_export_reads_back_with_load_from_disk(tmp_path, condensed, capsys):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "hf"
    assert main(["export", str(condensed), "--to", str(out), "--experiment", "0", "--format", "hf"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"wrote 20 images of 10 classes to {out} (experiment 0;")
    assert captured.err == ""  # no progress bars
    back = datasets.load_from_disk(str(out))
    syn = load_synthetic(condensed, 0)
    assert back.features["label"].names == syn.classes and back["label"][:] == syn.labels.tolist()
    pixels = np.stack([np.array(image) for image in back["image"]])
    assert pixels.dtype == np.uint8 and np.array_equal(pixels, to_uint8(syn)[..., 0])  # grey: H x W
    info = json.loads(back.info.description)
    payload = torch.load(condensed, weights_only=True)
    for key in ("dataset", "ipc", "config", "gradmatch_version"):
        assert info[key] == payload[key], key
    assert info["mean"] == list(payload["mean"]) and info["std"] == list(payload["std"])
    assert info["source"] == str(condensed.resolve()) and info["experiment"] == 0 and info["export_format"] == "hf"
    meta = json.loads((out / "metadata.json").read_text())
    assert len(meta["files"]) == 20 and meta["files"][3] == {"file": "data-00000-of-00001.arrow", "row": 3,
                                                              "label": 1}


def test_hf_export_of_rgb_images_and_replacing_a_png_export(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    path = saved_set(tmp_path, ["zebra", "apple", "train"], channels=3)
    out = tmp_path / "out"
    export(path, out)  # a png export first
    assert main(["export", str(path), "--to", str(out), "--format", "hf"]) == 2
    assert "not empty; pass --overwrite" in one_error_line(capsys)
    meta = export(path, out, overwrite=True, format="hf")
    assert sorted(p.name for p in out.iterdir()) == sorted([*meta["written"], "metadata.json"])
    assert meta["written"] == ["data-00000-of-00001.arrow", "dataset_info.json", "state.json"]
    back = datasets.load_from_disk(str(out))
    syn = load_synthetic(path)
    assert back.features["label"].names == ["zebra", "apple", "train"] and back["label"][:] == syn.labels.tolist()
    assert np.array_equal(np.stack([np.array(image) for image in back["image"]]), to_uint8(syn))
    assert {image.mode for image in back["image"]} == {"RGB"}
    export(path, out, overwrite=True)  # and back to png: the dataset's files go
    assert sorted(p.name for p in out.iterdir()) == ["0_zebra", "1_apple", "2_train", "metadata.json"]


def test_hf_export_leaves_nothing_when_the_disk_fills(tmp_path, monkeypatch, capsys):
    datasets = pytest.importorskip("datasets")
    path = saved_set(tmp_path, ["cat", "dog"])
    out = tmp_path / "hf"
    export(path, out, format="hf", experiment=0)
    before = tree(tmp_path)
    full = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(datasets.Dataset, "save_to_disk", failing_after(0, full, datasets.Dataset.save_to_disk))
    assert main(["export", str(path), "--to", str(out), "--format", "hf", "--overwrite"]) == 2
    assert "No space left on device" in one_error_line(capsys)
    assert tree(tmp_path) == before
    assert datasets.load_from_disk(str(out))["label"][:] == [0, 0, 1, 1]  # the earlier export still reads


def test_hf_export_without_datasets_says_what_to_install(tmp_path, monkeypatch, capsys):
    path = saved_set(tmp_path, ["cat", "dog"])
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed: import fails
    assert main(["export", str(path), "--to", str(tmp_path / "hf"), "--format", "hf"]) == 2
    assert "pip install gradmatch[hf]" in one_error_line(capsys)
    assert not (tmp_path / "hf").exists()
    assert main(["export", str(path), "--to", str(tmp_path / "x"), "--format", "tiff"]) == 2
    assert "unknown export format (--format) 'tiff'; choose one of: png, hf" in one_error_line(capsys)
