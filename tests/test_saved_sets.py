"""A saved set's .pt is checked key by key where it is read (``load_synthetic``), a set built in Python
by ``SyntheticSet.validate``, and ``load_torch`` tells a foreign or corrupt file from one that needs code.

Each refusal asserts the exit code, the one line naming the key, and (for export) that nothing was
written."""
from __future__ import annotations

import dataclasses
import io
import os
import pickle

import pytest
import torch

from gradmatch.cli import main
from gradmatch.errors import GradmatchError
from gradmatch.results import NeedsCode, load_synthetic, load_torch, reference_payload, save_torch
from gradmatch.synset import SyntheticSet
from tests.conftest import one_error_line

LABELS = torch.arange(10).repeat_interleave(2)


def good_set(channels: int = 1) -> SyntheticSet:
    g = torch.Generator().manual_seed(0)
    return SyntheticSet(images=torch.randn(20, channels, 8, 8, generator=g), labels=LABELS.clone(),
                        classes=[f"c{i}" for i in range(10)], mean=(0.5,) * channels, std=(0.25,) * channels,
                        dataset="digits", config={"ipc": 2})


def payload_with(**changes) -> dict:
    payload = reference_payload([good_set()], {"MLP": [0.5]})
    for key, value in changes.items():
        if key in ("images", "labels"):
            payload["data"][0][0 if key == "images" else 1] = value
        elif value is DELETE:
            del payload[key]
        else:
            payload[key] = value
    return payload


DELETE = object()

# (key, value, words in the one line): each a malformed key of a saved set
MALFORMED = [
    ("mean", "abc", "'mean' is 'abc'; expected one finite number per channel (1 for 1-channel images)"),
    ("mean", 5, "'mean' is 5; expected one finite number per channel"),
    ("mean", (0.5, 0.5), "'mean' is (0.5, 0.5); expected one finite number per channel (1 for 1-channel images)"),
    ("mean", (float("nan"),), "'mean' is (nan,); expected one finite number"),
    ("mean", (True,), "'mean' is (True,)"),
    ("std", (0.0,), "'std' is (0.0,); expected one finite positive number per channel"),
    ("std", (), "'std' is (); expected one finite positive number per channel (1 for 1-channel images)"),
    ("classes", 5, "'classes' is 5; expected a list of class names (str), in label order"),
    ("classes", list(range(10)), "'classes' is [0, 1, 2, 3, 4, 5, ...] (it holds 0, a int); expected a list of class "
     "names (str)"),
    ("classes", ["a", "b"], "'classes' names 2 classes but the labels go up to 9; expected at least 10 names"),
    ("classes", ["a", "b", "a", *"cdefghi"], "'classes' names 'a' more than once; expected one distinct name per "
     "class"),
    ("config", "x", "'config' is 'x'; expected a dict of the settings"),
    ("config", {(1, 2): 3}, "'config' cannot be written as JSON"),
    ("dataset", 5, "'dataset' is 5; expected the dataset's name (str)"),
    ("format_version", "abc", "'format_version' is 'abc'; expected a whole number >= 1"),
    ("format_version", 0, "'format_version' is 0; expected a whole number >= 1"),
    ("ipc", "x", "'ipc' is 'x'; expected the number of images per class"),
    ("ipc", True, "'ipc' is True"),
    ("gradmatch_version", 3, "'gradmatch_version' is 3"),
    ("accs_all_exps", [0.5], "'accs_all_exps' is [0.5]; expected a dict"),
    ("images", torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8),
     "data[0] images are a uint8 tensor of shape (20, 1, 8, 8); expected a float32 tensor N x C x H x W"),
    ("images", torch.zeros(20, 8, 8), "data[0] images have shape (20, 8, 8); expected a float32 tensor N x C x H x W"),
    ("images", torch.zeros(20, 0, 8, 8), "data[0] images have shape (20, 0, 8, 8)"),
    ("images", torch.full((20, 1, 8, 8), float("inf")), "data[0] images hold non-finite (nan or inf) values in 20"),
    ("labels", LABELS.float(), "data[0] labels are a float32 tensor of shape (20,); expected integer class"),
    ("labels", LABELS > 4, "data[0] labels are a bool tensor"),
    ("labels", LABELS - 1, "data[0] labels include -1; expected class indices 0, 1, ..."),
    ("labels", LABELS.view(10, 2), "data[0] labels have shape (10, 2) for 20 images"),
]


@pytest.mark.parametrize("key, value, words", MALFORMED, ids=[f"{k}={v!r}"[:40] for k, v, _ in MALFORMED])
@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_a_malformed_key_is_refused_in_one_line_naming_it(tmp_path, capsys, key, value, words, command):
    save_torch(payload_with(**{key: value}), tmp_path / "set.pt")
    if command == "evaluate":
        argv = ["evaluate", str(tmp_path / "set.pt"), "--dataset", "digits", "--model", "MLP", "--num_eval", "1",
                "--epoch_eval_train", "1"]
    else:
        argv = ["export", str(tmp_path / "set.pt"), "--to", str(tmp_path / "out")]
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert words in line, line
    # the fix: a metadata key can be mended or dropped, a broken experiment avoided
    assert ("fix or delete" in line) if key not in ("images", "labels") else ("use another --experiment" in line)
    assert not (tmp_path / "out").exists()


def test_a_newer_format_is_refused_before_its_keys_are_judged(tmp_path):
    """A newer layout may use keys otherwise: 'upgrade gradmatch', not a complaint about them."""
    save_torch(payload_with(format_version=2, mean="a newer layout"), tmp_path / "new.pt")
    with pytest.raises(GradmatchError, match="is a set of format 2 .*upgrade gradmatch"):
        load_synthetic(tmp_path / "new.pt")


def test_dc_s_own_layout_reads_with_defaults(tmp_path):
    """DC saves only 'data' and 'accs_all_exps': names 0..K-1, mean 0, std 1; any integer labels."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(20, 3, 4, 4, generator=g, dtype=torch.float64)
    for dtype in (torch.int64, torch.int32, torch.uint8):
        torch.save({"data": [[images, LABELS.to(dtype)]], "accs_all_exps": {"ConvNet": [0.1]}}, tmp_path / "dc.pt")
        syn = load_synthetic(tmp_path / "dc.pt")
        assert syn.classes == [str(c) for c in range(10)] and syn.labels.dtype == torch.int64
        assert torch.equal(syn.labels, LABELS) and syn.images.dtype == torch.float32
        assert torch.equal(syn.images, images.float())
        assert syn.mean == (0.0,) * 3 and syn.std == (1.0,) * 3 and syn.dataset == "" and syn.config == {}


def test_a_well_formed_set_reads_back_as_saved(tmp_path):
    syn = dataclasses.replace(good_set(3), mean=[0.1, 0.2, 0.3], std=torch.tensor([0.4, 0.5, 0.6]))  # any numbers
    save_torch(reference_payload([syn, good_set(3)], {}), tmp_path / "set.pt")
    back = load_synthetic(tmp_path / "set.pt", 0)
    assert torch.equal(back.images, syn.images) and torch.equal(back.labels, syn.labels)
    assert back.classes == syn.classes and back.dataset == "digits" and back.config == {"ipc": 2}
    assert back.mean == pytest.approx((0.1, 0.2, 0.3)) and back.std == pytest.approx((0.4, 0.5, 0.6))
    assert all(type(v) is float for v in (*back.mean, *back.std))
    with pytest.raises(GradmatchError, match="has 2 experiments; --experiment 2 is out of range"):
        load_synthetic(tmp_path / "set.pt", 2)


# ---- SyntheticSet.checked: the same checks for a set built in Python ---------------------------------
@pytest.mark.parametrize("key, value, words", [(k, v, w) for k, v, w in MALFORMED
                                               if k in ("images", "labels", "classes", "mean", "std",
                                                        "dataset", "config")],
                         ids=[f"{k}={v!r}"[:40] for k, v, _ in MALFORMED
                              if k in ("images", "labels", "classes", "mean", "std", "dataset", "config")])
def test_validate_refuses_a_hand_built_set_naming_the_attribute(key, value, words):
    syn = dataclasses.replace(good_set(), **{key: value})
    with pytest.raises(GradmatchError) as err:
        syn.checked()
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"SyntheticSet: {key} ")
    # the same words as for a file, less the file's key quoting and data[e]
    assert words.replace(f"'{key}'", key).replace("data[0] ", "") in message
    assert "fix or delete" not in message  # no file to edit


def test_checked_passes_a_good_set_unchanged_and_makes_its_labels_int64():
    syn = good_set(3)
    before = syn.images.clone()
    back = dataclasses.replace(syn, labels=syn.labels.int()).checked()
    assert back.images is syn.images and torch.equal(back.images, before) and back.labels.dtype == torch.int64
    with pytest.raises(GradmatchError, match="images are a float64 tensor .* convert with .to.torch.float32."):
        dataclasses.replace(syn, images=syn.images.double()).checked()  # the networks' dtype, one rule


def test_to_torch_feeds_a_training_loop():
    syn = good_set(3)
    syn.images.requires_grad_(True)  # as condensation leaves them
    syn = dataclasses.replace(syn, labels=syn.labels.int())
    ds = syn.to_torch()
    assert isinstance(ds, torch.utils.data.TensorDataset) and len(ds) == 20
    loader = torch.utils.data.DataLoader(ds, batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(0))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    seen_images, seen_labels = [], []
    for images, labels in loader:
        loss = torch.nn.functional.cross_entropy(net(images), labels)  # labels must be int64 for this
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen_images.append(images)
        seen_labels.append(labels)
    images, labels = torch.cat(seen_images), torch.cat(seen_labels)
    assert not images.requires_grad and labels.dtype == torch.int64
    # every pair came through once, unchanged (the normalised images as stored)
    pairs = sorted((int(lbl), img.flatten().tolist()) for img, lbl in zip(images, labels))
    expected = sorted((int(lbl), img.flatten().tolist()) for img, lbl in zip(syn.images.detach(), syn.labels))
    assert pairs == expected


# ---- load_torch: foreign or corrupt, or needing code ---------------------------------------------------
class MakesADirectory:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def torch_bytes(obj, **kwargs) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def foreign_files():
    g = torch.Generator().manual_seed(0)
    whole = torch_bytes({"data": [[torch.zeros(2, 1, 8, 8), torch.tensor([0, 1])]]})
    legacy = torch_bytes({"data": [[torch.zeros(2, 1, 8, 8), torch.tensor([0, 1])]]},
                         _use_new_zipfile_serialization=False)
    rand = [bytes(torch.randint(0, 256, (4000,), generator=g, dtype=torch.uint8).tolist()) for _ in range(3)]
    return {
        "random": rand[0],
        "random_from_a_pickle_opcode": b"\x80\x02" + rand[1],  # starts like a protocol-2 pickle
        "random_from_a_global_opcode": b"cos\nsystem\n" + rand[2],  # a GLOBAL, then garbage
        "random_zip_magic": b"PK\x03\x04" + rand[1],
        "empty": b"",
        "text": b"hello world\n",
        "truncated": whole[: len(whole) // 2],
        "truncated_legacy": legacy[:100],
        "plain_pickle": pickle.dumps({"data": [1, 2]}, protocol=4),  # no objects: torch cannot read it
    }


@pytest.mark.parametrize("name", list(foreign_files()))
def test_a_foreign_or_corrupt_file_says_so_not_that_it_needs_code(tmp_path, name):
    path = tmp_path / "set.pt"
    path.write_bytes(foreign_files()[name])
    with pytest.raises(GradmatchError) as err:
        load_synthetic(path)
    message = str(err.value)
    assert not isinstance(err.value, NeedsCode) and "\n" not in message
    assert "is not a torch file or corrupt" in message and "Python objects" not in message


@pytest.mark.parametrize("layout", ["zip", "legacy", "plain_pickle"])
def test_a_pickle_that_would_run_code_says_it_needs_code(tmp_path, layout, capsys):
    victim = tmp_path / "victim"
    obj = {"data": [[torch.zeros(2, 1, 8, 8), torch.tensor([0, 1])]], "trap": MakesADirectory(victim)}
    if layout == "plain_pickle":
        blob = pickle.dumps(obj, protocol=2)
    else:
        blob = torch_bytes(obj, _use_new_zipfile_serialization=layout == "zip")
    (tmp_path / "set.pt").write_bytes(blob)
    assert main(["export", str(tmp_path / "set.pt"), "--to", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert "holds Python objects other than tensors and plain data" in line and "weights_only" in line
    assert not victim.exists() and not (tmp_path / "out").exists()
    with pytest.raises(NeedsCode):
        load_torch(tmp_path / "set.pt")
    # the same objects without the trap read fine in either torch layout
    if layout != "plain_pickle":
        del obj["trap"]
        (tmp_path / "ok.pt").write_bytes(torch_bytes(obj, _use_new_zipfile_serialization=layout == "zip"))
        assert torch.equal(load_torch(tmp_path / "ok.pt")["data"][0][1], torch.tensor([0, 1]))


def test_a_folder_or_an_unreadable_file_is_named_as_such(tmp_path, monkeypatch):
    with pytest.raises(GradmatchError, match="is a folder; give the file"):
        load_torch(tmp_path, "synthetic-set file")
    save_torch({"data": []}, tmp_path / "set.pt")

    def denied(*args, **kwargs):  # as root, chmod cannot deny a read: refuse it here instead
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr("gradmatch.results.open", denied, raising=False)
    with pytest.raises(GradmatchError, match=r"set.pt cannot be read: Permission denied; make it readable"):
        load_torch(tmp_path / "set.pt", "synthetic-set file")
