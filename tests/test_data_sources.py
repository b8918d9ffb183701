"""Data sources beyond the official readers, and the safety of those readers: CIFAR pickles that would
run code, symlinked class folders, the shared Dataset check, held-out test splits, arrays and torch
datasets, and Hugging Face datasets. Every test makes its own tiny data in the real formats."""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest

from gradmatch.data import load
from gradmatch.errors import GradmatchError
from tests.test_data import assert_pixels, cifar_images, write_cifar10

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
