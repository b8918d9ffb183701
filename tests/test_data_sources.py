"""Data sources beyond the official readers, and the safety of those readers: CIFAR pickles that would
run code, symlinked class folders, the shared Dataset check, held-out test splits, arrays and torch
datasets, and Hugging Face datasets. Every test makes its own tiny data in the real formats."""

from __future__ import annotations

import dataclasses

import os
import pickle
import struct

import numpy as np
import pytest
import torch

from gradmatch.data import load
from gradmatch.errors import GradmatchError, scope
from tests.test_data import assert_pixels, cifar_images, pixels_back, save_png, write_cifar10

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ------------------------------------------------------------------------------- CIFAR: no code runs

class RunsCommand:
    """Pickles as a call to os.system: what a hostile data_batch_1 would hold."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class Evaluates:
    def __reduce__(self):
        return eval, ("__import__('os').getcwd()",)


@pytest.mark.parametrize("payload", ["data", "whole", "meta", "eval"])
def test_hostile_cifar_pickle_is_refused_unrun(tmp_path, payload):
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    marker = tmp_path / "MARKER"
    hostile = RunsCommand(f"touch {marker}")
    target = folder / ("batches.meta" if payload == "meta" else "data_batch_1")
    obj = {"data": hostile, "labels": [0]} if payload == "data" else hostile
    if payload == "meta":
        obj = {"label_names": hostile}
    if payload == "eval":
        obj = {"data": Evaluates(), "labels": [0]}
    with open(target, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    with pytest.raises(GradmatchError) as err:
        load("CIFAR10", tmp_path)
    message = str(err.value)
    assert not marker.exists()  # nothing ran
    assert str(target) in message and "not an official file" in message and "\n" not in message
    assert (".eval" if payload == "eval" else ".system") in message  # names what it asked for
    assert "re-download" in message


def test_object_arrays_and_other_codecs_are_refused(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    with open(batch, "wb") as f:
        pickle.dump({"data": np.array([1, "x"], dtype=object), "labels": [0]}, f, protocol=2)
    with pytest.raises(GradmatchError, match="object array"):
        load("CIFAR10", tmp_path)
    # a protocol-2 pickle asking _codecs.encode for a codec other than latin-1
    body = b"\x80\x02}(X\x04\x00\x00\x00datac_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86Ru."
    batch.write_bytes(body)
    with pytest.raises(GradmatchError, match="encoding 'zlib'"):
        load("CIFAR10", tmp_path)


def py2_string(raw: bytes) -> bytes:
    """Python 2's str in a protocol-2 pickle (SHORT_BINSTRING or BINSTRING)."""
    return (b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<i", len(raw))) + raw


def py2_value(value) -> bytes:
    if isinstance(value, np.ndarray):  # what numpy under Python 2 wrote: numpy.core, dtype by reduce
        shape = b"(" + b"".join(b"J" + struct.pack("<i", d) for d in value.shape) + b"t"
        dtype = (b"cnumpy\ndtype\n" + py2_string(b"u1") + b"K\x00K\x01\x87R(K\x03" + py2_string(b"|")
                 + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
        return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + py2_string(b"b")
                + b"\x87R(K\x01" + shape + dtype + b"\x89" + py2_string(value.astype(np.uint8).tobytes()) + b"tb")
    if isinstance(value, list):
        return b"](" + b"".join(py2_value(v) for v in value) + b"e"
    if isinstance(value, int):
        return b"J" + struct.pack("<i", value)
    return py2_string(value.encode("latin1"))


def py2_pickle(obj: dict) -> bytes:
    """The bytes Python 2's cPickle (protocol 2) wrote for the official files' dicts."""
    return b"\x80\x02}(" + b"".join(py2_string(k.encode()) + py2_value(v) for k, v in obj.items()) + b"u."


def test_python2_layout_of_the_official_files_reads(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    images, labels = [], []
    for b in range(1, 6):
        x, y = cifar_images(2, offset=b), [b, (b * 3) % 10]
        (folder / f"data_batch_{b}").write_bytes(py2_pickle({
            "batch_label": f"training batch {b} of 5", "data": x.reshape(2, -1), "labels": y,
            "filenames": [f"img_{b}_0.png", f"img_{b}_1.png"]}))
        images.append(x)
        labels += y
    test = cifar_images(3, offset=9)
    (folder / "test_batch").write_bytes(py2_pickle({"data": test.reshape(3, -1), "labels": [4, 5, 6]}))
    (folder / "batches.meta").write_bytes(py2_pickle({"label_names": CIFAR_NAMES, "num_vis": 3072}))
    assert pickle.loads((folder / "test_batch").read_bytes(), encoding="latin1")["labels"] == [4, 5, 6]
    ds = load("CIFAR10", tmp_path)
    assert ds.classes == CIFAR_NAMES and ds.labels.tolist() == labels
    assert_pixels(ds, np.concatenate(images))
    ts = load("CIFAR10", tmp_path, "test")
    assert ts.labels.tolist() == [4, 5, 6]
    assert_pixels(ts, test)


def test_bytes_keys_and_names_read_like_str(tmp_path):
    """Python 3 protocol 2 with bytes keys and names (what encoding="bytes" gives back from the originals)."""
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train = cifar_images(3, 1)
    for name, x, y in (("train", train, [3, 1, 4]), ("test", cifar_images(1, 2), [2])):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x.reshape(len(x), -1), b"fine_labels": y, b"coarse_labels": [0] * len(y)}, f,
                        protocol=2)
    names = [f"c{i}".encode() for i in range(100)]
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": names, b"coarse_label_names": [b"x"] * 20}, f, protocol=2)
    ds = load("CIFAR100", tmp_path)
    assert ds.classes[:3] == ["c0", "c1", "c2"] and ds.labels.tolist() == [3, 1, 4]
    assert_pixels(ds, train)


# ------------------------------------------------------------------------------ symlinked class folders

def test_symlinked_folders_are_skipped_and_said_once(tmp_path, capsys):
    root = tmp_path / "imgs"
    for cls, value in (("a", 10), ("b", 200)):
        save_png(root / cls / "1.png", np.full((4, 4), value))
    save_png(tmp_path / "outside" / "far.png", np.full((4, 4), 50))
    os.symlink(root / "a", root / "c")  # a class folder that is a link
    os.symlink(tmp_path / "outside", root / "b" / "out")  # a folder inside a class that is a link
    with scope():  # a command or a run: each warning said once
        train = load(str(root), split="train")
        test = load(str(root), split="test")
    assert train.classes == test.classes == ["a", "b"] and train.labels.tolist() == [0, 1]
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: folder: skipped 2 symlinked folder(s)")
    assert str(root / "c") in lines[0] and str(root / "b" / "out") in lines[0]


# ------------------------------------------------------------------------------- held-out test split

def make_folder(root, counts: dict[str, int]) -> dict[int, str]:
    """One 4 x 4 grey PNG per image, each a constant, unique value: {value: class}."""
    owner, value = {}, 1
    for cls, n in counts.items():
        for i in range(n):
            save_png(root / cls / f"{i:02d}.png", np.full((4, 4), value))
            owner[value] = cls
            value += 3
    return owner


def values_of(ds) -> list[int]:
    return [int(round(v)) for v in (pixels_back(ds).mean(dim=(1, 2, 3)) * 255).tolist()]


def test_folder_without_splits_holds_out_a_fixed_stratified_part(tmp_path):
    owner = make_folder(tmp_path, {"a": 10, "b": 5, "c": 3, "d": 2, "e": 1})
    train, test = load(str(tmp_path)), load(str(tmp_path), split="test")
    seen_train, seen_test = values_of(train), values_of(test)
    assert not set(seen_train) & set(seen_test) and sorted(seen_train + seen_test) == sorted(owner)
    held = {cls: sum(owner[v] == cls for v in seen_test) for cls in "abcde"}
    assert held == {"a": 2, "b": 1, "c": 1, "d": 0, "e": 0}  # round(n * 0.2), every class keeps one
    assert [train.classes[i] for i in train.labels] == [owner[v] for v in seen_train]  # labels follow
    assert [test.classes[i] for i in test.labels] == [owner[v] for v in seen_test]
    assert seen_train == sorted(seen_train)  # original order kept
    expected_note = (f"folder {tmp_path} has no test split: 20% of each class's images (4 of 21, stratified, "
                     f"fixed seed) are held out for testing")
    assert train.note == test.note == expected_note
    train_pixels = np.array(seen_train) / 255  # mean/std from the training part only
    assert train.mean[0] == pytest.approx(train_pixels.mean(), abs=1e-5)
    assert train.std[0] == pytest.approx(train_pixels.std(), abs=1e-5)
    assert test.mean == train.mean and test.std == train.std

    np.random.seed(123)
    torch.manual_seed(123)  # the global RNGs do not move the split
    again = load(str(tmp_path), split="test")
    assert values_of(again) == seen_test


def test_test_fraction_zero_half_and_too_small(tmp_path):
    owner = make_folder(tmp_path, {"a": 6, "b": 4})
    half = load(str(tmp_path), split="test", test_fraction=0.5)
    assert sorted(owner[v] for v in values_of(half)) == ["a"] * 3 + ["b"] * 2
    for fraction in (0, 0.0):
        train, test = (load(str(tmp_path), split=s, test_fraction=fraction) for s in ("train", "test"))
        assert values_of(train) == values_of(test) == sorted(owner)
        assert "test_fraction is 0" in train.note and "accuracy is measured on the images the set is condensed from" \
            in train.note and train.note == test.note
    small = tmp_path / "small"
    make_folder(small, {"a": 2, "b": 1})  # round(2 * 0.2) = 0: nothing can be held out
    test = load(str(small), split="test")
    assert len(test) == 3 and "no class has enough images to hold 20% out" in test.note
    assert "the test images are the training images" in test.note


@pytest.mark.parametrize("bad", [1, 1.5, -0.1, "0.2", True, float("nan")])
def test_test_fraction_out_of_range_is_refused(tmp_path, bad):
    make_folder(tmp_path, {"a": 3, "b": 3})
    with pytest.raises(GradmatchError, match=r"test_fraction takes a number from 0 to below 1"):
        load(str(tmp_path), test_fraction=bad)


def test_split_layout_and_official_splits_ignore_test_fraction_in_one_warning(tmp_path, capsys):
    for split in ("train", "test"):
        save_png(tmp_path / split / "a" / "1.png", np.full((3, 3), 9))
    ds = load(str(tmp_path), split="test", test_fraction=0.3)
    assert len(ds) == 1 and ds.note is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has its own test split" in err and "test_fraction ignored" in err
    assert load("digits", test_fraction=0.25, image_column="img").note is None
    err = capsys.readouterr().err
    assert err == ("warning: digits has its own test split: test_fraction ignored\n"
                   "warning: digits is not an hf: dataset: image_column ignored\n")


def test_split_of_a_dataset(tmp_path):
    from gradmatch.data import Dataset, split

    labels = torch.arange(4).repeat_interleave(torch.tensor([10, 10, 5, 1]))
    pixels = torch.arange(26, dtype=torch.float32).view(26, 1, 1, 1).expand(26, 2, 2, 2) / 26
    ds = Dataset(images=(pixels - 0.5) / 0.25, labels=labels, classes=["w", "x", "y", "z"], mean=(0.5, 0.5),
                 std=(0.25, 0.25), name="toy")
    train, test = split(ds, 0.2, seed=3)
    ids = [[int(round(float(v) * 26)) for v in pixels_back(part)[:, 0, 0, 0]] for part in (train, test)]
    assert sorted(ids[0] + ids[1]) == list(range(26)) and not set(ids[0]) & set(ids[1])
    assert [int(labels[i]) for i in ids[1]] == [0, 0, 1, 1, 2]  # 2 + 2 + 1 + 0 held out, in order
    assert train.labels.tolist() == [int(labels[i]) for i in ids[0]]
    assert train.mean[0] == pytest.approx(np.mean(ids[0]) / 26, abs=1e-6)  # the training part's stats
    assert train.std[0] == pytest.approx(np.std(ids[0]) / 26, abs=1e-6)
    assert test.mean == train.mean and train.note == test.note
    assert train.note == "toy: 20% of each class's images (5 of 26, stratified, seed 3) are held out for testing"
    again, _ = split(ds, 0.2, seed=3)
    other, _ = split(ds, 0.2, seed=4)
    assert torch.equal(again.labels, train.labels) and torch.equal(again.images, train.images)
    assert not torch.equal(other.images, train.images)  # another seed, another split
    same_train, same_test = split(ds, 0)
    assert torch.equal(same_train.images, same_test.images) and len(same_test) == 26
    assert "accuracy is measured on the images the set is condensed from" in same_test.note
    with pytest.raises(GradmatchError, match="split: dataset must be a gradmatch.data.Dataset"):
        split({"images": pixels}, 0.2)


# --------------------------------------------------------------------------------- the Dataset check

def good_dataset(**change):
    from gradmatch.data import Dataset

    fields = dict(images=torch.zeros(4, 3, 5, 5), labels=torch.tensor([0, 1, 2, 1]), classes=["a", "b", "c"],
                  mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2), name="toy")
    fields.update(change)
    return Dataset(**fields)


@pytest.mark.parametrize("change,words", [
    (dict(images=torch.zeros(4, 3, 5, 5, dtype=torch.float64)), "images are a float64 tensor of shape (4, 3, 5, 5); "
     "expected a float32 tensor N x C x H x W"),
    (dict(images=torch.zeros(4, 5, 5)), "images have shape (4, 5, 5)"),
    (dict(images=torch.zeros(0, 3, 5, 5), labels=torch.zeros(0, dtype=torch.int64)), "every size at least 1"),
    (dict(images=np.zeros((4, 3, 5, 5), np.float32)), "images are a float32 array of shape (4, 3, 5, 5)"),
    (dict(images=torch.zeros(4, 3, 5, 5).index_fill_(0, torch.tensor([1, 3]), float("nan"))),
     "non-finite (nan or inf) values in 2 image(s)"),
    (dict(labels=torch.tensor([0, 1, 2, 1]).float()), "labels are a float32 tensor of shape (4,); expected integer"),
    (dict(labels=torch.tensor([0, 1, 2])), "labels have shape (3,) for 4 images"),
    (dict(labels=torch.tensor([[0, 1, 2, 1]])), "labels have shape (1, 4) for 4 images"),
    (dict(labels=torch.tensor([0, 1, 3, 1])), "labels go up to 3 but there are 3 classes"),
    (dict(labels=torch.tensor([0, -1, 2, 1])), "labels include -1"),
    (dict(classes="abc"), "classes is 'abc'; expected a list of class names (str)"),
    (dict(classes=["a", 1, "c"]), "classes is ['a', 1, 'c'] (it holds 1, a int)"),
    (dict(classes=[]), "classes is empty; expected a list of class names"),
    (dict(classes=["a", "b", "a"]), "classes names 'a' more than once"),
    (dict(mean=(0.5, 0.5)), "mean is (0.5, 0.5); expected one finite number per channel (3 for 3-channel images)"),
    (dict(mean=(0.5, float("nan"), 0.5)), "mean is (0.5, nan, 0.5); expected one finite number per channel"),
    (dict(std=(0.2, 0.0, 0.2)), "std is (0.2, 0.0, 0.2); expected one finite positive number per channel"),
    (dict(std="0.2"), "std is '0.2'; expected one finite positive number per channel"),
])
def test_check_dataset_refuses_each_fault_in_one_line(change, words):
    from gradmatch.data import check_dataset

    with pytest.raises(GradmatchError) as err:
        check_dataset(good_dataset(**change), "condense: real")
    message = str(err.value)
    assert message.startswith("condense: real ") and words in message and "\n" not in message


def test_check_dataset_names_what_it_got_instead():
    from gradmatch.data import check_dataset

    good = good_dataset()
    assert check_dataset(good) is good
    huge = good_dataset(images=torch.full((4, 3, 5, 5), 3e38))  # finite, though their sum overflows
    assert check_dataset(huge) is huge
    cases = [({"images": 1}, "got dict"), (torch.zeros(2, 3, 4, 4), "got Tensor (images: wrap them"),
             (torch.utils.data.TensorDataset(torch.zeros(2)), "got TensorDataset (a torch dataset: wrap it with "
                                                              "gradmatch.data.from_torch)")]
    for obj, words in cases:
        with pytest.raises(GradmatchError) as err:
            check_dataset(obj, "condense: real")
        assert str(err.value).startswith("condense: real must be a gradmatch.data.Dataset (from gradmatch.data.load, "
                                         "from_tensors or from_torch); ") and words in str(err.value)


def test_load_checks_what_a_reader_returns(monkeypatch):
    from gradmatch.data import registry

    source = registry._SOURCES["digits"]

    def off_by_one(root, split, download, size):
        ds = source.reader(root, split, download, size)
        ds.labels.add_(1)  # labels 1..10 for 10 classes
        return ds

    monkeypatch.setitem(registry._SOURCES, "digits", dataclasses.replace(source, reader=off_by_one))
    with pytest.raises(GradmatchError, match=r"^digits train labels go up to 10 but there are 10 classes"):
        load("digits")


# ----------------------------------------------------------------------------- arrays and torch datasets

REF = np.random.default_rng(5).integers(0, 256, (6, 3, 4, 5), dtype=np.uint8)  # N C H W, built by hand
REF_LABELS = [2, 0, 1, 2, 0, 1]


def layouts():
    """The same images in every accepted layout and dtype: (images, what they should read back as)."""
    unit = REF / 255.0
    grey = REF[:, :1]
    deep = (REF.astype(np.uint16) * 257)  # 16-bit with the same [0, 1] values
    cases = {
        "uint8 NCHW": (REF, unit), "uint8 NHWC": (REF.transpose(0, 2, 3, 1), unit),
        "float32 NCHW": (unit.astype(np.float32), unit), "float64 NHWC": (unit.transpose(0, 2, 3, 1), unit),
        "float16 NCHW": (unit.astype(np.float16), unit.astype(np.float16).astype(float)),
        "uint16 NHWC": (deep.transpose(0, 2, 3, 1), unit),
        "grey NHW": (grey[:, 0], grey / 255.0), "grey NCHW": (grey, grey / 255.0),
        "grey NHWC": (grey.transpose(0, 2, 3, 1), grey / 255.0),
    }
    for key in list(cases):
        array, expected = cases[key]
        cases["torch " + key] = (torch.from_numpy(np.ascontiguousarray(array)), expected)
    return cases


@pytest.mark.parametrize("case", sorted(layouts()))
def test_from_tensors_every_layout_and_dtype(case):
    from gradmatch.data import from_tensors

    images, expected = layouts()[case]
    before = images.clone() if isinstance(images, torch.Tensor) else images.copy()
    ds = from_tensors(images, REF_LABELS, classes=["cat", "dog", "emu"])
    assert ds.name == "tensors" and ds.classes == ["cat", "dog", "emu"] and ds.labels.tolist() == REF_LABELS
    assert ds.images.dtype == torch.float32 and ds.labels.dtype == torch.int64
    torch.testing.assert_close(pixels_back(ds).double(), torch.from_numpy(expected).double(), atol=1e-6, rtol=0)
    flat = expected.transpose(1, 0, 2, 3).reshape(expected.shape[1], -1)  # stats from the data itself
    np.testing.assert_allclose(ds.mean, flat.mean(1), atol=1e-6)
    np.testing.assert_allclose(ds.std, flat.std(1), atol=1e-6)
    assert (images == before).all()  # the caller's array is not changed


def test_from_tensors_given_stats_classes_by_default_and_explicit_layout():
    from gradmatch.data import from_tensors, split

    ds = from_tensors(torch.from_numpy(REF), torch.tensor(REF_LABELS), mean=(0.5, 0.4, 0.3), std=[0.2, 0.25, 0.3],
                      name="mine")
    assert ds.mean == (0.5, 0.4, 0.3) and ds.std == (0.2, 0.25, 0.3) and ds.name == "mine"
    assert ds.classes == ["0", "1", "2"] and ds.note is None
    expected = (REF / 255.0 - np.array([0.5, 0.4, 0.3]).reshape(1, 3, 1, 1)) / np.array([0.2, 0.25, 0.3]).reshape(
        1, 3, 1, 1)
    np.testing.assert_allclose(ds.images.numpy(), expected, atol=1e-5)
    two = np.random.default_rng(1).integers(0, 256, (4, 6, 7, 2), dtype=np.uint8)  # 2 channels: say the layout
    ds = from_tensors(two, [0, 1, 0, 1], layout="NHWC")
    assert ds.channel == 2 and ds.im_size == (6, 7)
    np.testing.assert_allclose(pixels_back(ds).numpy(), two.transpose(0, 3, 1, 2) / 255, atol=1e-6)
    with pytest.raises(GradmatchError, match=r"labels are a float64 tensor .*; expected integer class indices"):
        from_tensors(REF, np.array([0.0, 1.0, 2.0, 0.0, 1.0, 2.0]))  # one rule for labels: integers (.long())
    train, test = split(from_tensors(REF, REF_LABELS), 0.5)  # 2 images a class: 1 held out of each
    assert sorted(test.labels.tolist()) == [0, 1, 2] and sorted(train.labels.tolist()) == [0, 1, 2]
    assert test.note.startswith("tensors: 50% of each class's images (3 of 6, stratified, seed 0)")


@pytest.mark.parametrize("images,labels,kwargs,words", [
    ([[1, 2]], REF_LABELS, {}, "images must be a numpy array or a torch tensor; got list"),
    (REF[None], REF_LABELS, {}, "images must be 4-D"),
    (np.zeros((6, 5, 6, 7), np.uint8), REF_LABELS, {}, 'cannot tell the channel axis of images of shape (6, 5, 6, 7)'),
    (REF, REF_LABELS, {"layout": "CHW"}, "layout 'CHW'; choose one of: NCHW, NHWC, auto"),
    (REF / 1.0, REF_LABELS, {}, "images are floats in [0, 255]; float images must be pixels in [0, 1]"),
    (np.full((6, 3, 4, 5), np.nan, np.float32), REF_LABELS, {}, "nan or inf"),
    (REF.astype(np.int64), REF_LABELS, {}, "images are int64; pass uint8"),
    (REF > 3, REF_LABELS, {}, "images are bool"),
    (REF[:0], [], {}, "hold no pixels"),
    (REF, [2, 0, -1, 2, 0, 1], {}, "labels include -1"),
    (REF, [2, 0, 1.5, 2, 0, 1], {}, "labels are a float64 tensor of shape (6,); expected integer class indices"),
    (REF, np.array(REF_LABELS)[:, None], {}, "labels have shape (6, 1) for 6 images; expected one label per image"),
    (REF, REF_LABELS[:5], {}, "labels have shape (5,) for 6 images"),
    (REF, ["a", "b", "c", "a", "b", "c"], {}, "labels must be integers 0..K-1; got <U1"),
    (REF, [True] * 6, {}, "got bool"),
    (REF, REF_LABELS, {"classes": ["a", "b"]}, "classes names 2 classes but the labels go up to 2"),
    (REF, REF_LABELS, {"classes": [0, 1, 2]}, "classes is [0, 1, 2] (it holds 0, a int)"),
    (REF, REF_LABELS, {"classes": ["a", "b", "a"]}, "classes names 'a' more than once"),
    (REF, REF_LABELS, {"mean": (0.5, 0.5)}, "mean is (0.5, 0.5); expected one finite number per channel (3 for"),
    (REF, REF_LABELS, {"std": (0.5, 0, 0.5)}, "std is (0.5, 0, 0.5); expected one finite positive number"),
    (REF, REF_LABELS, {"name": 3}, "name takes a non-empty name, got 3"),
])
def test_from_tensors_refuses_bad_input_in_one_line(images, labels, kwargs, words):
    from gradmatch.data import from_tensors

    with pytest.raises(GradmatchError) as err:
        from_tensors(images, labels, **kwargs)
    assert "from_tensors: " in str(err.value) and words in str(err.value) and "\n" not in str(err.value)


class MapStyle(torch.utils.data.Dataset):
    """A map-style dataset as users write them: items made on access."""

    def __init__(self, items, classes=None):
        self.items = items
        if classes is not None:
            self.classes = classes

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def test_from_torch_tensors_and_pil_images():
    from PIL import Image

    from gradmatch.data import from_torch

    float_items = [(torch.from_numpy(REF[i] / 255.0).float(), torch.tensor(REF_LABELS[i])) for i in range(6)]
    ds = from_torch(MapStyle(float_items, classes=["cat", "dog", "emu"]))
    assert ds.classes == ["cat", "dog", "emu"] and ds.name == "MapStyle" and ds.labels.tolist() == REF_LABELS
    torch.testing.assert_close(pixels_back(ds), torch.from_numpy(REF / 255.0).float(), atol=1e-6, rtol=0)

    uint8_items = [(torch.from_numpy(REF[i]), np.int64(REF_LABELS[i])) for i in range(6)]
    ds = from_torch(MapStyle(uint8_items), name="bytes")
    assert ds.classes == ["0", "1", "2"] and ds.name == "bytes"
    torch.testing.assert_close(pixels_back(ds), torch.from_numpy(REF / 255.0).float(), atol=1e-6, rtol=0)

    pil = [(Image.fromarray(REF[i].transpose(1, 2, 0)), REF_LABELS[i]) for i in range(5)]
    pil.append((Image.fromarray(REF[5, 0]), REF_LABELS[5]))  # one grey image among colour: repeated
    ds = from_torch(MapStyle(pil))
    expected = REF / 255.0
    expected[5] = expected[5, :1]
    torch.testing.assert_close(pixels_back(ds), torch.from_numpy(expected).float(), atol=1e-6, rtol=0)
    deep = [(Image.fromarray(REF[i, 0].astype(np.uint16) * 257), 0) for i in range(2)]  # 16-bit PIL images
    torch.testing.assert_close(pixels_back(from_torch(MapStyle(deep)))[:, 0],
                               torch.from_numpy(REF[:2, 0] / 255.0).float(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("items,words", [
    ([], "the dataset is empty"),
    ([(torch.zeros(3, 4, 4),)], "item 0 is tuple of 1; the dataset must give (image, label) pairs"),
    ([(["a", "list"], 0)], "item 0's image is a list"),
    ([(torch.zeros(3, 4, 4), 0), (torch.zeros(3, 5, 4), 1)], "item 0's image is 4x4 but item 1's is 5x4"),
    ([(torch.zeros(3, 4, 4), 0), (torch.zeros(2, 4, 4), 1)], "item 1: cannot tell the channel axis of images of "
     "shape (2, 4, 4)"),
    ([(torch.full((3, 4, 4), 2.0), 0)], "item 0's image values are floats in [2, 2]"),
    ([(torch.zeros(3, 4, 4), "cat")], "item 0's label is str 'cat'"),
    ([(torch.zeros(3, 4, 4), 0.5)], "item 0's label is float 0.5"),
    ([(torch.zeros(1, 3, 4, 4), 0)], "item 0's image has shape (1, 3, 4, 4)"),
])
def test_from_torch_refuses_bad_items_in_one_line(items, words):
    from gradmatch.data import from_torch

    with pytest.raises(GradmatchError) as err:
        from_torch(MapStyle(items))
    assert str(err.value).startswith("from_torch: ") and words in str(err.value) and "\n" not in str(err.value)


def test_from_torch_refuses_an_iterable_dataset():
    from gradmatch.data import from_torch

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield torch.zeros(3, 4, 4), 0

    with pytest.raises(GradmatchError, match="must be map-style .* got Stream .*use from_tensors"):
        from_torch(Stream())


# ----------------------------------------------------------------------------- Hugging Face datasets

HF_CLASSES = ["ant", "bee", "cow"]


@pytest.fixture
def hf(tmp_path, monkeypatch):
    """The datasets library with its cache under tmp_path (never the user's ~/.cache)."""
    datasets = pytest.importorskip("datasets")
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", cache / "downloads")
    monkeypatch.setattr(datasets.config, "EXTRACTED_DATASETS_PATH", cache / "downloads" / "extracted")
    return datasets


def toy(counts=(4, 3, 3), size=(8, 8), seed=0, channels=3):
    """Images (N x H x W x C uint8) and labels of a small classification set."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    shape = (len(labels), *size) + ((channels,) if channels > 1 else ())
    return rng.integers(0, 256, shape, dtype=np.uint8), labels


def hf_table(datasets, images, labels, **columns):
    """A datasets.Dataset with an Image column "image" and a ClassLabel column "label" (plus ``columns``:
    name -> (values, feature))."""
    features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=HF_CLASSES)}
    data = {"image": list(images), "label": [int(v) for v in labels]}
    for name, (values, feature) in columns.items():
        features[name], data[name] = feature, values
    return datasets.Dataset.from_dict(data, features=datasets.Features(features))


def nchw(images):
    return images.transpose(0, 3, 1, 2) if images.ndim == 4 else images[:, None]


def check_hf(ds, images, labels, name):
    assert ds.name == name and ds.classes == HF_CLASSES and ds.labels.tolist() == list(labels)
    assert_pixels(ds, nchw(images))


def test_hf_save_to_disk_and_parquet_folders_read_back_exactly(tmp_path, hf):
    train_images, train_labels = toy()
    test_images, test_labels = toy((1, 2, 2), seed=1)
    splits = hf.DatasetDict({"train": hf_table(hf, train_images, train_labels),
                             "test": hf_table(hf, test_images, test_labels)})
    splits.save_to_disk(str(tmp_path / "disk"))
    (tmp_path / "pq").mkdir()
    for split, part in splits.items():
        part.to_parquet(str(tmp_path / "pq" / f"{split}.parquet"))
    flat = nchw(train_images).transpose(1, 0, 2, 3).reshape(3, -1) / 255  # stats of the training images
    for folder in ("disk", "pq"):
        spec = f"hf:{tmp_path / folder}"
        train, test = load(spec), load(spec, split="test")
        check_hf(train, train_images, train_labels, spec)
        check_hf(test, test_images, test_labels, spec)
        assert train.note is None and test.note is None  # the dataset's own test split
        np.testing.assert_allclose(train.mean, flat.mean(1), atol=1e-5)
        np.testing.assert_allclose(train.std, flat.std(1), atol=1e-5)
        assert test.mean == train.mean and test.std == train.std
    one = load(f"hf:{tmp_path / 'pq' / 'test.parquet'}")  # one parquet file: its rows are "train"
    check_hf(one, test_images, test_labels, f"hf:{tmp_path / 'pq' / 'test.parquet'}")


def test_hf_without_a_test_split_holds_out_part_of_train(tmp_path, hf, capsys):
    images, labels = toy((10, 5, 2))
    hf_table(hf, images, labels).save_to_disk(str(tmp_path / "plain"))  # a Dataset, not a DatasetDict
    spec = f"hf:{tmp_path / 'plain'}"
    train, test = load(spec), load(spec, split="test")
    assert len(train) + len(test) == 17 and test.labels.tolist() == [0, 0, 1]  # 2 + 1 + 0 held out
    pixels = torch.cat([pixels_back(train), pixels_back(test)]) * 255
    assert sorted(map(tuple, pixels.round().flatten(1).tolist())) == sorted(
        map(tuple, nchw(images).reshape(17, -1).astype(float).tolist()))  # disjoint, together all images
    assert train.note == test.note == (f"{spec} has no test split: 20% of each class's images (3 of 17, "
                                       f"stratified, fixed seed) are held out for testing")
    everything = load(spec, split="test", test_fraction=0)
    check_hf(everything, images, labels, spec)
    assert "accuracy is measured on the images the set is condensed from" in everything.note

    hf.DatasetDict({"train": hf_table(hf, images, labels), "validation": hf_table(hf, images[:3], labels[:3])}
                   ).save_to_disk(str(tmp_path / "val"))
    spec = f"hf:{tmp_path / 'val'}"
    capsys.readouterr()  # the test's own save_to_disk progress bars
    val = load(spec, split="test", test_fraction=0.3)
    check_hf(val, images[:3], labels[:3], spec)
    assert val.note == f"{spec} has no test split: its validation split is used for testing"
    # reading is quiet (no progress bars, no library logs): only the one warning
    assert capsys.readouterr().err == f"warning: {spec} has its own validation split: test_fraction ignored\n"


def put_in_hub_cache(cache, repo, data_files):
    """Leave ``repo`` in the cache as datasets does after downloading it from the hub:
    <cache>/<user>___<name>/<config>/<version>/<hash>/<name>-<split>.arrow and dataset_info.json."""
    import shutil

    from datasets.packaged_modules.parquet.parquet import Parquet

    name = repo.split("/")[-1]
    builder = Parquet(cache_dir=str(cache.parent / "build"), dataset_name=name, hash="0123abcd",
                      data_files=data_files)
    builder.download_and_prepare()
    target = cache / repo.replace("/", "___") / "default" / "0.0.0" / "0123abcd"
    target.parent.mkdir(parents=True)
    shutil.move(builder.cache_dir, target)


def test_hf_hub_name_reads_from_the_cache_offline(tmp_path, hf, monkeypatch):
    images, labels = toy()
    hf_table(hf, images, labels).to_parquet(str(tmp_path / "train.parquet"))
    put_in_hub_cache(hf.config.HF_DATASETS_CACHE, "someone/toy", {"train": str(tmp_path / "train.parquet")})
    calls = []
    real = hf.load_dataset

    def spy(*args, **kwargs):
        calls.append(hf.config.HF_HUB_OFFLINE)
        return real(*args, **kwargs)

    monkeypatch.setattr(hf, "load_dataset", spy)
    before = hf.config.HF_HUB_OFFLINE
    ds = load("hf:someone/toy", split="test")  # the hub copy has no test split: part held out
    assert calls == [True] and hf.config.HF_HUB_OFFLINE == before  # offline during the call only
    assert ds.name == "hf:someone/toy" and ds.classes == HF_CLASSES and "held out" in ds.note
    with pytest.raises(GradmatchError) as err:
        load("hf:someone/missing")
    message = str(err.value)
    assert message.startswith("hf:someone/missing is not in the local Hugging Face cache")
    assert "pass --download (download=True from Python)" in message and "\n" not in message
    assert calls == [True, True]


def test_hf_download_goes_through_the_library_online(hf, monkeypatch):
    calls = []

    def refuse(*args, **kwargs):
        calls.append((args, hf.config.HF_HUB_OFFLINE))
        raise ConnectionError("Couldn't reach 'someone/new' on the Hub\nsecond line")

    monkeypatch.setattr(hf.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf, "load_dataset", refuse)
    with pytest.raises(GradmatchError) as err:
        load("hf:someone/new", download=True)
    assert calls == [(("someone/new",), False)]  # the library's own client, not offline
    assert str(err.value) == ("hf:someone/new: the datasets library could not fetch it (ConnectionError: Couldn't "
                              "reach 'someone/new' on the Hub)")


def test_hf_without_the_library_says_how_to_install(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(GradmatchError) as err:
        load(f"hf:{tmp_path}")
    assert "pip install gradmatch[hf]" in str(err.value) and "\n" not in str(err.value)


def test_hf_columns_found_or_named(tmp_path, hf):
    images, labels = toy()
    names = [HF_CLASSES[v] for v in labels]
    other = np.ascontiguousarray(images[::-1])
    table = hf_table(hf, images, labels, thumb=(list(other), hf.Image()),
                     kind=(names, hf.Value("string")), number=([int(v) for v in labels], hf.Value("int64")),
                     coarse=([0] * len(labels), hf.ClassLabel(names=["animal"])))
    table.save_to_disk(str(tmp_path / "cols"))
    spec = f"hf:{tmp_path / 'cols'}"
    with pytest.raises(GradmatchError) as err:
        load(spec)
    assert "has 2 Image columns (image, thumb); pass image_column=NAME" in str(err.value)
    with pytest.raises(GradmatchError) as err:
        load(spec, image_column="image")
    assert "has 2 ClassLabel columns (label, coarse); pass label_column=NAME" in str(err.value)
    ds = load(spec, image_column="thumb", label_column="label", test_fraction=0)
    check_hf(ds, other, labels, spec)
    by_name = load(spec, image_column="image", label_column="kind", test_fraction=0)  # strings: sorted classes
    check_hf(by_name, images, labels, spec)
    by_number = load(spec, image_column="image", label_column="number", test_fraction=0)
    assert by_number.classes == ["0", "1", "2"] and by_number.labels.tolist() == labels.tolist()
    for option, value, words in (("label_column", "nope", "has no column 'nope' (label_column); its columns: "
                                                          "image (Image), label (ClassLabel), thumb (Image)"),
                                 ("label_column", "thumb", "column 'thumb' holds Image; labels must be"),
                                 ("image_column", "kind", "column 'kind' holds string, not images")):
        with pytest.raises(GradmatchError) as err:
            load(spec, **{"image_column": "image", option: value})
        assert words in str(err.value) and "\n" not in str(err.value)


def test_hf_refusals_in_one_line(tmp_path, hf):
    images, labels = toy()
    plain = hf.Dataset.from_dict({"pixels": [[1, 2]] * 3, "label": [0, 1, 0]})
    plain.save_to_disk(str(tmp_path / "noimage"))
    names = hf.Dataset.from_dict({"image": list(images), "kind": [HF_CLASSES[v] for v in labels]},
                                 features=hf.Features({"image": hf.Image(), "kind": hf.Value("string")}))
    names.save_to_disk(str(tmp_path / "strings"))
    mixed = hf.Dataset.from_dict({"image": [images[0], images[1, :6, :5]], "label": [0, 1]},
                                 features=hf.Features({"image": hf.Image(), "label": hf.ClassLabel(names=["a", "b"])}))
    mixed.save_to_disk(str(tmp_path / "mixed"))
    unlabelled = hf.DatasetDict({"train": hf_table(hf, images, labels), "test": hf_table(hf, images[:2], [-1, -1])})
    unlabelled.save_to_disk(str(tmp_path / "unlabelled"))
    hf.DatasetDict({"train": hf_table(hf, images, labels), "test": hf_table(hf, images[:0], labels[:0])}
                   ).save_to_disk(str(tmp_path / "emptytest"))
    cases = [
        ("noimage", {}, "has no Image column; its columns: pixels (List), label (int64); cast one"),
        ("strings", {}, "has no ClassLabel column; its columns: image (Image), kind (string); pass label_column=NAME"),
        ("mixed", {}, "images differ in size (8x8 (1), 6x5 (1)); pass --size H,W"),
        ("unlabelled", {"split": "test"}, "test: 2 rows have label -1 (unlabelled"),
        ("emptytest", {"split": "test"}, ": the datasets library cannot read it (IndexError: "),  # its own failure
        ("nothing/here/at/all", {}, "no such file or folder"),
    ]
    for folder, kwargs, words in cases:
        spec = f"hf:{tmp_path / folder}"
        with pytest.raises(GradmatchError) as err:
            load(spec, **kwargs)
        assert str(err.value).startswith(spec) and words in str(err.value) and "\n" not in str(err.value), folder
    resized = load(f"hf:{tmp_path / 'mixed'}", size=(4, 4), test_fraction=0)
    assert resized.images.shape == (2, 3, 4, 4)
    with pytest.raises(GradmatchError, match="hf: needs a dataset after it"):
        load("hf:")
    with pytest.raises(GradmatchError, match="or hf:NAME for a Hugging Face dataset"):
        load("no-such-dataset")


def test_hf_grey_and_16bit_images(tmp_path, hf):
    grey, labels = toy(channels=1)
    deep = grey.astype(np.uint16) * 257 + 3  # 16-bit values the 8-bit ones cannot hold
    for name, images, scale in (("grey", grey, 255), ("deep", deep, 65535)):
        hf_table(hf, list(images), labels).save_to_disk(str(tmp_path / name))
        ds = load(f"hf:{tmp_path / name}", test_fraction=0)
        assert ds.channel == 1 and ds.labels.tolist() == labels.tolist()
        torch.testing.assert_close(pixels_back(ds), torch.from_numpy(images[:, None] / scale).float(), atol=1e-6,
                                   rtol=0)
