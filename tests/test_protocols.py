"""Named evaluation protocols (dc, dsa, dcbench, idc, ddranking, mtt), other tools' set layouts, DD-Ranking's
scores on fractions, and the DD-Ranking export; each against an independent computation or a file read back."""
from __future__ import annotations

import dataclasses
import json
import math
import sys

import numpy as np
import pytest
import torch

import gradmatch
from gradmatch import data
from gradmatch.augment.bench import cutmix
from gradmatch.cli import main
from gradmatch.evaluate import protocol_space
from gradmatch.protocols import PROTOCOLS
from gradmatch.results import reference_payload, save_torch
from gradmatch.scores import label_robust_scores
from gradmatch.sets import DDRANKING, decode, in_space
from tests.conftest import one_error_line
from tests.test_data import write_cifar10

EVAL = sys.modules["gradmatch.evaluate"]


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", split="train"), data.load("digits", split="test")


@pytest.fixture(scope="module")
def saved(digits, tmp_path_factory):
    """A digits set of 2 images per class (random real: no condensation needed to test an evaluation)."""
    path = tmp_path_factory.mktemp("set") / "set.pt"
    save_torch(reference_payload([gradmatch.random_real_subset(digits[0], 2, seed=1)], {}), path)
    return str(path)


def evaluate_json(tmp_path, capsys, *flags):
    out = tmp_path / "out.json"
    assert main(["evaluate", *flags, "--model", "ConvNetD1", "--json", str(out)]) == 0, capsys.readouterr().err
    return json.loads(out.read_text()), capsys.readouterr()


def test_gradmatch_protocols_lists_every_protocol_with_its_settings(capsys):
    assert main(["protocols"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["dc", "dsa", "dcbench", "idc", "ddranking", "mtt"]
    idc = next(line for line in lines if line.startswith("idc:"))
    assert "batch_size 64" in idc and "milestones (0.6666666666666666, 0.8333333333333334)" in idc
    assert "gamma 0.2" in idc and "cutmix 0.5" in idc and "report best_and_last" in idc
    ddr = next(line for line in lines if line.startswith("ddranking:"))
    assert "lr_grid (0.001, 0.005, 0.01, 0.05, 0.1)" in ddr and "test_every 10" in ddr and "report best" in ddr


def test_ddranking_chooses_a_rate_from_the_grid_and_reports_the_best_of_every_10_epochs(saved, tmp_path, capsys,
                                                                                         monkeypatch):
    seen = []  # every test check's accuracies, in order: (rate, accuracies)
    real = EVAL.accuracies
    monkeypatch.setattr(EVAL, "accuracies", lambda nets, *a: seen.append(real(nets, *a)) or seen[-1])
    report, out = evaluate_json(tmp_path, capsys, saved, "--protocol", "ddranking", "--epoch_eval_train", "30",
                                "--num_eval", "1")
    grid = PROTOCOLS["ddranking"].lr_grid
    assert report["protocol"] == "ddranking" and report["which"] == "best of every 10 epochs"
    assert report["epochs"] == 30 and report["lr"][0] in grid and len(seen) == 3 * len(grid)  # 3 checks per rate
    best_per_rate = [max(c[0] for c in seen[3 * i:3 * i + 3]) for i in range(len(grid))]
    assert report["accuracies"] == [max(best_per_rate)]
    assert report["lr"] == [grid[best_per_rate.index(max(best_per_rate))]]
    assert report["last"] == [seen[3 * best_per_rate.index(max(best_per_rate)) + 2][0]]
    assert "(protocol ddranking: best of every 10 epochs, 30 epochs, lr" in out.out


def test_a_given_rate_replaces_the_grid_and_is_said(saved, tmp_path, capsys):
    report, out = evaluate_json(tmp_path, capsys, saved, "--protocol", "ddranking", "--epoch_eval_train", "10",
                                "--num_eval", "1", "--lr_net", "0.05")
    assert report["lr"] == [0.05] and "--lr_net 0.05 (its lr: None)" in out.out
    assert "--epoch_eval_train 10 (its epochs: 1000)" in out.out


def test_scores_are_fractions_that_satisfy_the_formula(saved, tmp_path, capsys):
    report, out = evaluate_json(tmp_path, capsys, saved, "--protocol", "dc", "--epoch_eval_train", "5",
                                "--num_eval", "2", "--scores", "--full_accuracy", "97.5")
    full, syn, rnd = 97.5, report["mean"], report["random_mean"]
    assert report["full_accuracy"] == full and report["lrs_units"] == "fractions"
    assert report["hlr"] == pytest.approx((full - syn) / 100) and report["ior"] == pytest.approx((syn - rnd) / 100)
    alpha = 0.5 * report["ior"] - 0.5 * report["hlr"]
    assert report["lrs"] == pytest.approx((math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1)))
    assert report["random"][0]["protocol"] == "dc" and report["random"][0]["epochs"] == 5  # the same protocol
    assert "DD-Ranking's scores (fractions): HLR" in out.out


def test_lrs_on_percentage_points_hits_the_floor_that_fractions_avoid():
    """DD-Ranking 0.2.0 computes LRS on percentage points: DC's CIFAR-10 ipc-1 row (84.8 full, 28.3 syn, 14.4
    random) lands on the floor -e^-1 / (e - e^-1), as does any method far below the full data."""
    points = label_robust_scores(84.8, 28.3, 14.4, "points")
    fractions = label_robust_scores(84.8, 28.3, 14.4)
    floor = -math.exp(-1) / (math.e - math.exp(-1))
    assert points["lrs"] == pytest.approx(floor, abs=1e-6) and points["hlr"] == pytest.approx(56.5)
    assert label_robust_scores(84.8, 20.0, 14.4, "points")["lrs"] == pytest.approx(floor, abs=1e-6)
    assert fractions["lrs"] == pytest.approx(0.18732, abs=1e-5) and fractions["hlr"] == pytest.approx(0.565)


def test_export_ddranking_is_class_major_normalised_as_ddranking_and_evaluates_back(tmp_path, capsys):
    write_cifar10(tmp_path / "data", per_batch=4)
    train = data.load("CIFAR10", tmp_path / "data", "train")
    syn = gradmatch.random_real_subset(train, 2, seed=0)
    shuffled = torch.randperm(len(syn.labels), generator=torch.Generator().manual_seed(0))  # not class-major
    syn = dataclasses.replace(syn, images=syn.images[shuffled], labels=syn.labels[shuffled], lr=0.02)
    save_torch(reference_payload([syn], {}), tmp_path / "set.pt")
    assert main(["export", str(tmp_path / "set.pt"), "--to", str(tmp_path / "ddr"), "--format", "ddranking"]) == 0
    images, labels = torch.load(tmp_path / "ddr" / "images.pt"), torch.load(tmp_path / "ddr" / "labels.pt")
    assert labels.tolist() == sorted(labels.tolist())
    assert float(torch.load(tmp_path / "ddr" / "lr.pt")) == pytest.approx(0.02)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in DDRANKING["CIFAR10"])
    ours_mean, ours_std = (torch.tensor(v).view(1, 3, 1, 1) for v in (syn.mean, syn.std))
    order = torch.sort(syn.labels, stable=True).indices
    torch.testing.assert_close(images * std + mean, syn.images[order] * ours_std + ours_mean, atol=1e-5, rtol=0)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "ddr"), "--data_path", str(tmp_path / "data"), "--protocol", "dc",
                 "--epoch_eval_train", "2", "--num_eval", "1"]) == 0  # dataset and classes from its metadata
    captured = capsys.readouterr()
    assert "Evaluate 1 random ConvNet" in captured.out and "lr 0.02" not in captured.out  # dc trains at 0.01


def test_an_idc_data_pt_evaluates_under_idc_with_its_multi_formation(digits, tmp_path, capsys):
    train, _ = digits
    subset = gradmatch.random_real_subset(train, 2, seed=0)
    pixels = subset.images * torch.tensor(subset.std).view(1, -1, 1, 1) + torch.tensor(subset.mean).view(1, -1, 1, 1)
    torch.save([pixels, subset.labels], tmp_path / "data.pt")  # IDC: [images in [0, 1], labels], class-major
    report, out = evaluate_json(tmp_path, capsys, str(tmp_path / "data.pt"), "--dataset", "digits", "--protocol",
                                "idc", "--factor", "2", "--epoch_eval_train", "8", "--num_eval", "1")
    assert "read as IDC's data.pt (20 images, stored as pixels)" in out.err
    assert report["which"] == "best and last of 4 checks" and report["epochs"] == 8 and report["lr"] == [0.01]
    # the decoding, computed here: each 8x8 image's four 4x4 quadrants, each upsampled back to 8x8
    decoded = decode(dataclasses.replace(subset, images=pixels), 2, "pixels")
    assert len(decoded.labels) == 80 and decoded.labels.tolist() == sorted(decoded.labels.tolist())
    first = torch.nn.functional.interpolate(pixels[:2, :, :4, 4:], size=(8, 8), mode="bilinear")
    torch.testing.assert_close(decoded.images[2:4], first)  # class 0, crop (0, 1), both its images


def test_cutmix_targets_are_mixed_by_the_pasted_area():
    gen = torch.Generator().manual_seed(3)
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 8, 8).clone()
    mixed, targets = cutmix(1.0, 4)(x, torch.arange(4), gen)
    for i in range(4):
        kept = float((mixed[i] == x[i]).float().mean())  # the share of image i left in place
        assert targets[i, i] == pytest.approx(kept) and float(targets[i].sum()) == pytest.approx(1.0)
    unmixed, hard = cutmix(0.0, 4)(x, torch.arange(4), gen)
    assert torch.equal(unmixed, x) and torch.equal(hard, torch.eye(4))


def test_zca_space_is_whitening_fitted_on_the_unnormalised_training_pixels(digits):
    train, test = digits
    into = protocol_space(PROTOCOLS["mtt"], train)
    pixels = lambda d: (d.images * d.std[0] + d.mean[0]).flatten(1).double()  # noqa: E731
    x = pixels(train)
    mean = x.mean(0, keepdim=True)
    cov = (x - mean).T @ (x - mean) / (len(x) - 1)
    s, u = torch.linalg.eigh(cov)
    whiten = u @ torch.diag(1 / torch.sqrt(s + 0.1)) @ u.T  # ZCA, eps 0.1
    expected = (pixels(test) - mean) @ whiten
    got = into(test)
    torch.testing.assert_close(got.images.flatten(1).double(), expected, atol=1e-4, rtol=1e-4)
    assert got.mean == (0.0,) and got.std == (1.0,)


def test_mtt_needs_the_sets_rate_and_an_mtt_folder_needs_to_say_its_space(saved, tmp_path, capsys):
    assert main(["evaluate", saved, "--model", "ConvNetD1", "--protocol", "mtt"]) == 2
    assert "trains at the set's own learning rate, which this set does not carry; pass --lr_net" in \
        one_error_line(capsys)
    folder = tmp_path / "mtt"
    folder.mkdir()
    torch.save(torch.zeros(20, 1, 8, 8), folder / "images_best.pt")
    torch.save(torch.arange(10).repeat_interleave(2), folder / "labels_best.pt")
    assert main(["evaluate", str(folder), "--dataset", "digits", "--model", "ConvNetD1"]) == 2
    assert "pass --stored_as zca (a --zca run) or --stored_as ddranking" in one_error_line(capsys)
    assert main(["evaluate", str(folder), "--dataset", "digits", "--model", "ConvNetD1", "--stored_as", "zca"]) == 2
    assert "is stored in ZCA space; evaluate it with --protocol mtt" in one_error_line(capsys, ("MTT's layout",))


def test_cifar100_sets_of_ddranking_are_renormalised_from_cifar10s_constants(capsys):
    syn = gradmatch.SyntheticSet(images=torch.zeros(2, 3, 4, 4), labels=torch.tensor([0, 1]), classes=["a", "b"],
                                 mean=(0.0,) * 3, std=(1.0,) * 3)
    got = in_space(syn, "ddranking", "CIFAR100")
    assert (got.mean, got.std) == DDRANKING["CIFAR10"]
    assert "CIFAR-100 set normalised with CIFAR-10's constants" in capsys.readouterr().err


@pytest.mark.parametrize("augment", ["autoaug", "randaug", "cifar_aug", "imagenet_aug"])
def test_dcbench_augmentations_draw_from_the_run_and_change_the_batch(augment):
    from gradmatch.augment import make_augment

    x = torch.rand(6, 3, 32, 32)
    space = ((0.5,) * 3, (0.25,) * 3, (32, 32))
    out = [make_augment(augment, torch.Generator().manual_seed(s), space)(x) for s in (0, 0, 1)]
    assert torch.equal(out[0], out[1])  # seeded by the run's generator, not the global stream
    assert out[0].shape == x.shape and np.isfinite(out[0].numpy()).all()


def test_dcbench_with_an_augmentation_is_said_and_runs(saved, tmp_path, capsys):
    report, out = evaluate_json(tmp_path, capsys, saved, "--protocol", "dcbench", "--augment", "idc",
                                "--epoch_eval_train", "3", "--num_eval", "2")
    assert report["protocol"] == "dcbench" and report["networks"] == 2 and report["epochs"] == 3
    assert "--augment idc (its augment: none)" in out.out
