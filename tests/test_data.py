"""Dataset readers: tiny files in the real formats, written to tmp_path and read back exactly."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import struct
import tarfile
import threading

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from gradmatch.data import Dataset, list_datasets, load
from gradmatch.data import download as dl
from gradmatch.errors import GradmatchError

IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def pixels_back(ds: Dataset) -> torch.Tensor:
    """Undo the normalisation: the pixels scaled to [0, 1]."""
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    return ds.images * std + mean


def assert_pixels(ds: Dataset, uint8_nchw: np.ndarray) -> None:
    expected = torch.from_numpy(uint8_nchw.astype(np.float32) / 255)
    assert ds.images.dtype == torch.float32
    assert ds.images.shape == expected.shape
    torch.testing.assert_close(pixels_back(ds), expected, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------- IDX

def idx_bytes(array: np.ndarray) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx_split(folder, split, images, labels, gz=False):
    folder.mkdir(parents=True, exist_ok=True)
    for base, array in zip(IDX_FILES[split], (images, labels)):
        data = idx_bytes(array)
        if gz:
            (folder / (base + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / base).write_bytes(data)


def idx_sample(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.array([3, 1, 4, 1, 5][:n], dtype=np.uint8)


@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST"])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_reads_exact_pixels_and_labels(tmp_path, name, gz):
    images, labels = idx_sample()
    test_images, test_labels = idx_sample(3, seed=1)
    write_idx_split(tmp_path / name / "raw", "train", images, labels, gz)
    write_idx_split(tmp_path / name / "raw", "test", test_images, test_labels, gz)

    ds = load(name, tmp_path, "train")
    assert ds.name == name and len(ds) == 5 and ds.channel == 1 and ds.im_size == (28, 28)
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == labels.tolist()
    assert_pixels(ds, images[:, None])
    if name == "MNIST":
        assert ds.mean == (0.1307,) and ds.std == (0.3081,)
        assert ds.classes == [str(d) for d in range(10)]
    else:
        assert ds.mean == (0.2861,) and ds.std == (0.3530,)
        assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot" and ds.num_classes == 10

    test = load(name.lower(), str(tmp_path), "test")
    assert test.labels.tolist() == test_labels[:3].tolist()
    assert_pixels(test, test_images[:, None])


def test_idx_resize(tmp_path):
    images, labels = idx_sample()
    write_idx_split(tmp_path / "MNIST" / "raw", "train", images, labels)
    ds = load("MNIST", tmp_path, size=14)
    assert ds.images.shape == (5, 1, 14, 14) and ds.im_size == (14, 14)
    assert load("MNIST", tmp_path, size=(7, 10)).im_size == (7, 10)
    flat = np.full((5, 28, 28), 77, dtype=np.uint8)  # a constant image stays constant when resized
    write_idx_split(tmp_path / "MNIST" / "raw", "train", flat, labels)
    resized = pixels_back(load("MNIST", tmp_path, size=9))
    torch.testing.assert_close(resized, torch.full((5, 1, 9, 9), 77 / 255))


@pytest.mark.parametrize("cut", [3, 10, 100])
def test_idx_truncated_raises(tmp_path, cut):
    images, labels = idx_sample()
    folder = tmp_path / "MNIST" / "raw"
    write_idx_split(folder, "train", images, labels)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-cut] if cut != 10 else path.read_bytes()[:10])
    with pytest.raises(GradmatchError, match="truncated|corrupt") as err:
        load("MNIST", tmp_path)
    assert str(path) in str(err.value) and "re-download" in str(err.value)


def test_idx_truncated_gz_and_bad_magic_raise(tmp_path):
    images, labels = idx_sample()
    folder = tmp_path / "MNIST" / "raw"
    write_idx_split(folder, "train", images, labels, gz=True)
    gz_path = folder / "train-images-idx3-ubyte.gz"
    gz_path.write_bytes(gz_path.read_bytes()[:-40])
    with pytest.raises(GradmatchError, match="truncated or corrupt"):
        load("MNIST", tmp_path)

    write_idx_split(folder, "train", images, labels, gz=True)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))  # images as labels
    with pytest.raises(GradmatchError, match="magic number"):
        load("MNIST", tmp_path)


def test_idx_missing_names_expected_path(tmp_path):
    with pytest.raises(GradmatchError) as err:
        load("FashionMNIST", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte") in message
    assert "download" in message


# ------------------------------------------------------------------------------------------- CIFAR

def cifar_images(n, offset):
    """n images whose R, G and B planes hold distinct values, with a position ramp in each plane."""
    ramp = (np.arange(32 * 32).reshape(32, 32) % 50).astype(np.uint8)
    planes = np.stack([ramp + 0, ramp + 100, ramp + 200])  # R, G, B
    return np.stack([planes + (offset + i) % 5 for i in range(n)]).astype(np.uint8)  # N x 3 x 32 x 32


def dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root, per_batch=2, n_test=3):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    for b in range(1, 6):
        x = cifar_images(per_batch, offset=b * per_batch)
        y = [(b * per_batch + i) % 10 for i in range(per_batch)]
        dump(folder / f"data_batch_{b}", {"data": x.reshape(per_batch, -1), "labels": y,
                                          "batch_label": f"training batch {b} of 5", "filenames": []})
        images.append(x)
        labels += y
    test = cifar_images(n_test, offset=50)
    dump(folder / "test_batch", {"data": test.reshape(n_test, -1), "labels": [9, 8, 7][:n_test]})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    dump(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": 2})
    return np.concatenate(images), labels, test


def test_cifar10_planes_and_labels(tmp_path):
    images, labels, test = write_cifar10(tmp_path)
    ds = load("CIFAR10", tmp_path, "train")
    assert len(ds) == 10 and ds.channel == 3 and ds.im_size == (32, 32)
    assert ds.classes[0] == "airplane" and ds.classes[9] == "truck"
    assert ds.labels.tolist() == labels
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2470, 0.2435, 0.2616)
    assert_pixels(ds, images)
    back = pixels_back(ds) * 255
    assert back[:, 0].max() < 60 and back[:, 1].min() > 99 and back[:, 2].min() > 199  # R, G, B order
    assert abs(float(back[0, 0, 1, 3]) - (32 + 3) % 50 - 2) < 1e-3  # row-major: row 1, column 3

    ts = load("CIFAR10", tmp_path, "test")
    assert ts.labels.tolist() == [9, 8, 7]
    assert_pixels(ts, test)


def test_cifar100(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train, test = cifar_images(4, 0), cifar_images(2, 7)
    names = [f"class{i:02d}" for i in range(100)]
    dump(folder / "train", {"data": train.reshape(4, -1), "fine_labels": [0, 99, 42, 7],
                            "coarse_labels": [0, 1, 2, 3]})
    dump(folder / "test", {"data": test.reshape(2, -1), "fine_labels": [5, 6], "coarse_labels": [1, 1]})
    dump(folder / "meta", {"fine_label_names": names, "coarse_label_names": [str(i) for i in range(20)]})
    ds = load("CIFAR100", tmp_path)
    assert ds.num_classes == 100 and ds.classes == names and ds.labels.tolist() == [0, 99, 42, 7]
    assert ds.mean == (0.5071, 0.4867, 0.4408) and ds.std == (0.2675, 0.2565, 0.2761)
    assert_pixels(ds, train)
    ts = load("cifar100", tmp_path, "test")
    assert ts.labels.tolist() == [5, 6]
    assert_pixels(ts, test)


def test_cifar_corrupt_and_missing(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(GradmatchError, match="truncated or corrupt") as err:
        load("CIFAR10", tmp_path)
    assert str(batch) in str(err.value)
    batch.unlink()
    with pytest.raises(GradmatchError, match="expected .*data_batch_3.*download") as err:
        load("CIFAR10", tmp_path)
    assert str(batch) in str(err.value) and "cifar-10-batches-py/" in str(err.value)


# -------------------------------------------------------------------------------------------- SVHN

def write_svhn(path, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # 1..10, 10 meaning digit 0
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"X": x, "y": y})
    return x, y


@pytest.mark.parametrize("sub", ["", "SVHN"])
def test_svhn_transpose_and_label_10_is_0(tmp_path, sub):
    x, _ = write_svhn(tmp_path / sub / "train_32x32.mat", 12, seed=0)
    write_svhn(tmp_path / sub / "test_32x32.mat", 4, seed=1)
    ds = load("SVHN", tmp_path)
    assert len(ds) == 12 and ds.channel == 3 and ds.im_size == (32, 32) and ds.classes[0] == "0"
    assert ds.labels.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    assert_pixels(ds, x.transpose(3, 2, 0, 1))
    assert abs(float(pixels_back(ds)[5, 2, 7, 3]) - x[7, 3, 2, 5] / 255) < 1e-5  # [n,c,h,w] == X[h,w,c,n]
    assert ds.mean == (0.4377, 0.4438, 0.4728) and ds.std == (0.1980, 0.2010, 0.1970)
    assert len(load("SVHN", tmp_path, "test")) == 4


def test_svhn_corrupt(tmp_path):
    (tmp_path / "train_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, not really" + bytes(200))
    with pytest.raises(GradmatchError, match="truncated or corrupt"):
        load("SVHN", tmp_path)


# ------------------------------------------------------------------------------------------ folder

def save_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def test_folder_gray_without_split_folders(tmp_path):
    rng = np.random.default_rng(0)
    pics = {("cat", "a.png"): rng.integers(0, 256, (6, 5)), ("cat", "b.png"): rng.integers(0, 256, (6, 5)),
            ("ant", "x.png"): rng.integers(0, 256, (6, 5))}
    for (cls, name), arr in pics.items():
        save_png(tmp_path / cls / name, arr)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = load("folder", tmp_path)
    assert ds.name == "folder" and ds.classes == ["ant", "cat"] and ds.labels.tolist() == [0, 1, 1]
    assert ds.channel == 1 and ds.im_size == (6, 5)
    order = [("ant", "x.png"), ("cat", "a.png"), ("cat", "b.png")]
    assert_pixels(ds, np.stack([pics[k] for k in order])[:, None].astype(np.uint8))
    torch.testing.assert_close(ds.images.mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(ds.images.std(correction=0), torch.tensor(1.0), atol=1e-4, rtol=0)
    test = load(str(tmp_path), split="test")  # an existing directory is read as a folder dataset
    assert torch.equal(test.images, ds.images) and test.mean == ds.mean


def test_folder_rgb_with_split_folders(tmp_path):
    rng = np.random.default_rng(1)
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("b_dog", "a_cat"):
            for i in range(n):
                save_png(tmp_path / split / cls / f"{i}.png", rng.integers(0, 256, (4, 4, 3)))
    save_png(tmp_path / "train" / "a_cat" / "gray.png", rng.integers(0, 256, (4, 4)))  # gray among colour
    train, test = load("folder", tmp_path, "train"), load("FOLDER", tmp_path, "test")
    assert train.channel == test.channel == 3 and train.classes == test.classes == ["a_cat", "b_dog"]
    assert len(train) == 7 and len(test) == 4 and test.labels.tolist() == [0, 0, 1, 1]
    assert test.mean == train.mean and test.std == train.std  # test uses the training statistics
    per_channel = train.images.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_channel.std(1, correction=0), torch.ones(3), atol=1e-4, rtol=0)
    expected = np.asarray(Image.open(tmp_path / "test" / "b_dog" / "1.png")).transpose(2, 0, 1)
    torch.testing.assert_close(pixels_back(test)[3], torch.from_numpy(expected / 255).float(),
                               atol=1e-5, rtol=0)


def test_folder_gray_train_makes_colour_test_gray(tmp_path):
    save_png(tmp_path / "train" / "a" / "1.png", np.full((4, 4), 10))
    save_png(tmp_path / "test" / "a" / "1.png", np.full((4, 4, 3), [255, 0, 0]))
    test = load("folder", tmp_path, "test")
    assert test.channel == 1
    torch.testing.assert_close(pixels_back(test) * 255, torch.full((1, 1, 4, 4), 76.0), atol=1e-3, rtol=0)


def test_folder_mixed_sizes(tmp_path):
    save_png(tmp_path / "a" / "1.png", np.full((10, 8), 200))
    save_png(tmp_path / "a" / "2.png", np.full((5, 5), 100))
    save_png(tmp_path / "b" / "1.jpg", np.full((7, 9, 3), 30))  # also colour and jpg
    ds = load("folder", tmp_path)
    assert ds.channel == 3 and ds.im_size == (10, 8)  # the first image's size
    ds = load("folder", tmp_path, size=(6, 4))
    assert ds.images.shape == (3, 3, 6, 4)
    means = pixels_back(ds).mean(dim=(1, 2, 3)) * 255
    torch.testing.assert_close(means, torch.tensor([200.0, 100.0, 30.0]), atol=2.0, rtol=0)


def test_folder_errors(tmp_path):
    with pytest.raises(GradmatchError, match="not a directory"):
        load("folder", tmp_path / "nope")
    with pytest.raises(GradmatchError, match="no class subfolders") as err:
        load("folder", tmp_path)
    assert str(tmp_path) in str(err.value)
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "readme.txt").write_text("hi")
    with pytest.raises(GradmatchError, match="no images"):
        load("folder", tmp_path)
    save_png(tmp_path / "cls" / "ok.png", np.zeros((3, 3)))
    bad = tmp_path / "cls" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(GradmatchError, match="cannot read image") as err:
        load("folder", tmp_path)
    assert str(bad) in str(err.value)


# ------------------------------------------------------------------------------------------ digits

def test_digits_splits_and_normalisation():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    train, test, everything = (load("digits", split=s) for s in ("train", "test", "all"))
    assert len(everything) == 1797 and len(train) + len(test) == 1797
    assert train.images.shape[1:] == (1, 8, 8) and train.num_classes == 10 and train.classes[3] == "3"
    torch.testing.assert_close(train.images.mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(train.images.std(correction=0), torch.tensor(1.0), atol=1e-4, rtol=0)
    assert test.mean == train.mean == everything.mean and test.std == train.std
    bunch = load_digits()
    x_train, _, y_train, y_test = train_test_split(bunch.images, bunch.target, test_size=0.25,
                                                   random_state=0, stratify=bunch.target)
    assert train.labels.tolist() == y_train.tolist() and test.labels.tolist() == y_test.tolist()
    torch.testing.assert_close(pixels_back(train)[:, 0], torch.from_numpy(x_train / 16).float(),
                               atol=1e-5, rtol=0)
    assert everything.labels.tolist() == bunch.target.tolist()


# ---------------------------------------------------------------------------------------- registry

def test_registry_names_and_errors(tmp_path):
    names = {"MNIST", "FashionMNIST", "SVHN", "CIFAR10", "CIFAR100", "digits", "folder"}
    assert set(list_datasets()) == names
    with pytest.raises(GradmatchError) as err:
        load("ImageNet", tmp_path)
    assert "ImageNet" in str(err.value)
    for name in list_datasets():
        assert name in str(err.value)
    with pytest.raises(GradmatchError, match="split 'all'"):
        load("MNIST", tmp_path, "all")
    with pytest.raises(GradmatchError, match="size"):
        load("digits", size=(0, 3))
    assert load("digits", size=4).im_size == (4, 4)
    assert "n=1347" in repr(load("Digits"))


# ---------------------------------------------------------------------------------------- download

@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serve the folder ``tmp_path/served`` on 127.0.0.1; yields (folder, base URL)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_idx(tmp_path, server, monkeypatch):
    served, base = server
    images, labels = idx_sample()
    write_idx_split(served, "train", images, labels, gz=True)
    table = [(base + f + ".gz", f + ".gz", md5(served / (f + ".gz"))) for f in IDX_FILES["train"]]
    monkeypatch.setitem(dl.RESOURCES, "MNIST", table)
    root = tmp_path / "data"
    ds = load("MNIST", root, download=True)
    assert ds.labels.tolist() == labels.tolist()
    assert_pixels(ds, images[:, None])
    assert sorted(os.listdir(root / "MNIST" / "raw")) == sorted(f + ".gz" for f in IDX_FILES["train"])


def test_download_bad_md5_leaves_no_file(tmp_path, server, monkeypatch):
    served, base = server
    (served / "test_32x32.mat").write_bytes(b"x" * 5000)
    monkeypatch.setitem(dl.RESOURCES, "SVHN", [(base + "test_32x32.mat", "test_32x32.mat", "0" * 32)])
    root = tmp_path / "data"
    with pytest.raises(GradmatchError, match="checksum mismatch"):
        load("SVHN", root, "test", download=True)
    assert os.listdir(root) == []  # neither the file nor a partial .part
    monkeypatch.setitem(dl.RESOURCES, "SVHN", [(base + "missing.mat", "test_32x32.mat", None)])
    with pytest.raises(GradmatchError, match="could not download"):
        load("SVHN", root, "test", download=True)
    assert os.listdir(root) == []


def test_download_cifar_tarball(tmp_path, server, monkeypatch):
    served, base = server
    staging = tmp_path / "staging"
    images, labels, _ = write_cifar10(staging)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    (served / "cifar-10-python.tar.gz").write_bytes(buffer.getvalue())
    checksum = hashlib.md5(buffer.getvalue()).hexdigest()
    monkeypatch.setitem(dl.RESOURCES, "CIFAR10", [(base + "cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
                                                   checksum)])
    root = tmp_path / "data"
    ds = load("CIFAR10", root, download=True)
    assert ds.labels.tolist() == labels
    assert_pixels(ds, images)
    assert sorted(os.listdir(root)) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]  # no temp folders
