"""Condensing a user's own data from where it lives, through the CLI as a user runs it: Hugging Face
datasets (a save_to_disk folder, parquet files), arrays and torch datasets from Python, a folder with
its held-out test split, a network of one's own, and a set exported back to a datasets folder and
condensed again.  The data is made here; nothing is downloaded."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import gradmatch
from gradmatch import data
from gradmatch.cli import main
from gradmatch.data import load
from tests.conftest import one_error_line

CLASSES = ["ant", "bee", "cow"]
TINY = ["--model", "tests.user_networks:small", "--ipc", "2", "--batch_real", "4", "--Iteration", "2",
        "--num_exp", "1", "--num_eval", "2", "--epoch_eval_train", "2", "--quiet"]


@pytest.fixture
def hf(tmp_path, monkeypatch):
    """The datasets library with its cache under tmp_path (never the user's ~/.cache)."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return datasets


def table(datasets, n_per_class=6, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_class)
    images = rng.integers(0, 256, (len(labels), 8, 8, 3), dtype=np.uint8)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    table = datasets.Dataset.from_dict({"image": list(images), "label": labels.tolist()}, features=features)
    return table, images, labels


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet"])
def test_an_hf_dataset_is_condensed_and_evaluated_through_the_cli(tmp_path, hf, capsys, layout):
    train, images, labels = table(hf)
    test, test_images, test_labels = table(hf, 2, seed=1)
    splits = hf.DatasetDict({"train": train, "test": test})
    source = tmp_path / "source"
    if layout == "save_to_disk":
        splits.save_to_disk(str(source))
    else:
        source.mkdir()
        for name, part in splits.items():
            part.to_parquet(str(source / f"{name}.parquet"))
    spec = f"hf:{source}"
    real = load(spec)  # the images, labels and class names of the source
    assert real.classes == CLASSES and real.labels.tolist() == labels.tolist()
    pixels = (real.images * torch.tensor(real.std).view(1, -1, 1, 1) + torch.tensor(real.mean).view(1, -1, 1, 1))
    np.testing.assert_allclose((pixels * 255).round().permute(0, 2, 3, 1).numpy(), images, atol=0.01)
    out = tmp_path / "out"
    assert main(["condense", "--dataset", spec, *TINY, "--save_path", str(out)]) == 0
    result = json.loads((out / "intra-class_source_small_2ipc.json").read_text())
    assert result["summary"]["tests.user_networks:small"]["n"] == 2
    pt = out / "intra-class_source_small_2ipc.pt"
    saved = gradmatch.load_synthetic(pt)
    assert saved.classes == CLASSES and saved.dataset == spec and saved.images.shape == (6, 3, 8, 8)
    capsys.readouterr()
    assert main(["evaluate", str(pt), "--model", "tests.user_networks:small", "--num_eval", "2",
                 "--epoch_eval_train", "2"]) == 0  # the set names its dataset: the hf: test split
    assert capsys.readouterr().out.startswith("Evaluate 2 random tests.user_networks:small")


def test_a_folder_without_a_test_split_is_tested_on_held_out_images_and_says_so(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in CLASSES:
        for i in range(10):
            (tmp_path / "imgs" / c).mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / c / f"{i}.png")
    args = ["condense", "--dataset", str(tmp_path / "imgs"), *TINY, "--save_path", str(tmp_path / "out")]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("20% of its images") == 1 or err.count("held out") == 1, err
    train, test = load(str(tmp_path / "imgs")), load(str(tmp_path / "imgs"), split="test")
    assert len(train) == 24 and len(test) == 6 and test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    flat = {bytes(x.numpy().tobytes()) for x in train.images}
    assert not any(bytes(x.numpy().tobytes()) in flat for x in test.images)  # disjoint
    assert torch.equal(load(str(tmp_path / "imgs"), split="test").images, test.images)  # the same every run
    log = (tmp_path / "out" / "intra-class_imgs_small_2ipc" / "log.jsonl").read_text()
    assert "held out" in log or "20%" in log  # said in the run's log too
    assert main([*args[:-2], "--save_path", str(tmp_path / "all"), "--test_fraction", "0"]) == 0
    assert "condensed from" in capsys.readouterr().err  # testing on the training images is named


def test_arrays_and_a_torch_dataset_condense_from_python():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 8, 8, 1), dtype=np.uint8)  # NHWC uint8
    labels = np.repeat(np.arange(3), 10)
    real = data.from_tensors(images, labels, classes=CLASSES)
    syn = gradmatch.condense(real, ipc=2, model="ConvNetD1", batch_real=4, iterations=1, device="cpu")
    assert syn.classes == CLASSES and syn.images.shape == (6, 1, 8, 8)
    loader = torch.utils.data.DataLoader(syn.to_torch(), batch_size=4)
    x, y = next(iter(loader))
    assert x.shape == (4, 1, 8, 8) and y.dtype == torch.int64
    pairs = torch.utils.data.TensorDataset(torch.rand(12, 1, 8, 8), torch.arange(12) % 3)
    again = gradmatch.condense(data.from_torch(pairs), ipc=1, model="ConvNetD1", batch_real=4, iterations=1,
                               device="cpu")
    assert again.images.shape == (3, 1, 8, 8)
    with pytest.raises(gradmatch.GradmatchError, match="condense: real must be a gradmatch.data.Dataset .* got"
                                                       " TensorDataset"):
        gradmatch.condense(pairs, ipc=1)


@pytest.mark.parametrize("name, words", [
    ("tests.user_networks:wrong_shape", "returns (2, 11) for a batch of 2 images; it must return (2, 10)"),
    ("tests.user_networks:not_a_module", "returned int; it must return a torch.nn.Module"),
    ("tests.user_networks:frozen", "has no parameters that take gradients"),
    ("tests.user_networks:missing", "has no function 'missing'"),
    ("no_such_package.nets:small", "cannot import module 'no_such_package.nets'"),
])
def test_a_network_of_ones_own_that_cannot_work_is_refused_in_one_line(tmp_path, capsys, name, words):
    args = ["condense", "--dataset", "digits", "--model", name, "--Iteration", "1", "--save_path", str(tmp_path)]
    assert main(args) == 2
    assert words in one_error_line(capsys)
    assert not any(tmp_path.iterdir())  # refused before any work


def test_a_network_of_ones_own_with_batch_norm_runs_and_says_how(tmp_path, capsys):
    args = ["condense", "--dataset", "digits", *TINY, "--model", "tests.user_networks:with_batchnorm",
            "--save_path", str(tmp_path)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("has batch norm: every matching step sets its statistics") == 1


def test_a_set_exported_as_a_datasets_folder_condenses_again(tmp_path, capsys):
    pytest.importorskip("datasets")
    assert main(["condense", "--dataset", "digits", *TINY, "--save_path", str(tmp_path / "first")]) == 0
    pt = tmp_path / "first" / "intra-class_digits_small_2ipc.pt"
    assert main(["export", str(pt), "--to", str(tmp_path / "hf"), "--format", "hf"]) == 0
    import datasets

    back = datasets.load_from_disk(str(tmp_path / "hf"))
    syn = gradmatch.load_synthetic(pt)
    assert back.features["label"].names == syn.classes and back["label"] == syn.labels.tolist()
    exported = load(f"hf:{tmp_path / 'hf'}", test_fraction=0)  # 20 images: test on them (said)
    assert exported.classes == syn.classes and exported.labels.tolist() == syn.labels.tolist()
    again = gradmatch.condense(exported, ipc=1, model="tests.user_networks:small", batch_real=2, iterations=1,
                               device="cpu")
    assert again.images.shape == (10, 1, 8, 8) and again.classes == syn.classes
