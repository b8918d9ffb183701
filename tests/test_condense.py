"""The condensation loop, evaluation and the CLI on real (bundled) digits."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gradmatch import condense, data, evaluate, random_real_subset
from gradmatch.augment import augment, strategy_for
from gradmatch.cli import main
from gradmatch.condense import Condensation, freeze_batchnorm
from gradmatch.config import CondenseConfig
from gradmatch.errors import GradmatchError
from gradmatch.config import eval_pool
from gradmatch.matching import matching_loss
from gradmatch.models import create_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", split="train"), data.load("digits", split="test")


def test_batchnorm_statistics_are_set_from_real_images_then_frozen_during_matching():
    torch.manual_seed(0)
    net = create_model("ConvNetBN", 3, 2, (16, 16))
    bn = net.features[1]
    real = torch.randn(8, 3, 16, 16) * 2 + 1
    with torch.no_grad():
        conv_out = net.features[0](real)
    freeze_batchnorm(net, real)
    # one train-mode pass with momentum 0.1 from the fresh statistics (0 mean, 1 variance)
    torch.testing.assert_close(bn.running_mean, 0.1 * conv_out.mean((0, 2, 3)))
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * conv_out.var((0, 2, 3), unbiased=True))
    assert not bn.training
    frozen = [m.running_mean.clone() for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    syn = torch.randn(4, 3, 16, 16, requires_grad=True)
    loss = matching_loss(net, (real, torch.tensor([0] * 4 + [1] * 4)), (syn, torch.tensor([0, 0, 1, 1])))
    loss.backward()
    after = [m.running_mean for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(frozen, after))
    assert syn.grad is not None and syn.grad.abs().sum() > 0


def test_same_seed_same_images_bit_for_bit_and_other_seed_differs(digits):
    train, _ = digits
    settings = dict(ipc=2, model="ConvNetD1", scheme="multi-level", dis_metric="improved", schedule="adaptive",
                    iterations=2, batch_real=16, device="cpu")
    a = condense(train, seed=3, **settings)
    b = condense(train, seed=3, **settings)
    c = condense(train, seed=4, **settings)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
    assert a.labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert a.config["schedule"] == "adaptive" and a.config["outer_loop"] == 2


def test_real_init_starts_from_real_images_of_each_class(digits):
    train, _ = digits
    c = Condensation(train, CondenseConfig(ipc=3, model="ConvNetD1", init="real"), device="cpu")
    state = c.initial_state(0)
    for i, image in enumerate(state.images.detach()):
        matches = (train.images == image).flatten(1).all(1)
        assert matches.any() and int(train.labels[matches][0]) == i // 3


def test_ipc_larger_than_a_class_is_refused(digits):
    train, _ = digits
    smallest = int(torch.bincount(train.labels).min())
    with pytest.raises(GradmatchError, match=f"choose --ipc {smallest} or less"):
        CondenseConfig(ipc=smallest + 1).resolved(train)


@pytest.mark.parametrize("ipc, iterations", [(1, 20), (10, 4)])
def test_multilevel_improved_beats_random_real_subset_on_digits(digits, ipc, iterations):
    """The method's point, on real data in well under a minute: a condensed set beats as many random
    real images.  ConvNetD1 (one block: an 8x8 digit leaves a 4x4 map, as ConvNet's three blocks do
    for 32x32)."""
    train, test = digits
    syn = condense(train, ipc=ipc, model="ConvNetD1", scheme="multi-level", dis_metric="improved",
                   schedule="adaptive", iterations=iterations, init="real", batch_real=64, seed=0, device="cpu")
    ours = evaluate(syn, "ConvNetD1", test, num_eval=5, epochs=100, seed=1, device="cpu")
    rand = evaluate(random_real_subset(train, ipc, seed=0), "ConvNetD1", test, num_eval=5, epochs=100, seed=1,
                    device="cpu")
    assert len(ours.accuracies) == 5
    assert ours.mean > rand.mean + 0.01, (ours.line(), rand.line())


def test_eval_pools():
    assert eval_pool("S", "ResNet18BN_AP") == ["ResNet18"]
    assert eval_pool("S", "VGG11BN") == ["VGG11"]
    assert eval_pool("S", "ConvNet") == ["ConvNet"]
    assert eval_pool("M", "ConvNet") == ["MLP", "ConvNet", "LeNet", "AlexNet", "VGG11", "ResNet18"]
    assert eval_pool("N", "ConvNet")[1] == "ConvNetBN"
    assert eval_pool("LeNet,MLP", "ConvNet") == ["LeNet", "MLP"]


def test_augmentation_rules_and_ops():
    assert strategy_for("MNIST", "ConvNet") == "crop_scale_rotate"
    assert strategy_for("CIFAR10", "ConvNetBN") == "crop_noise"
    assert strategy_for("CIFAR10", "ConvNet") is None
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(64, 3, 16, 16)
    crop = augment(images, ("crop",), gen)
    # a crop is an integer shift: every image's centre 8x8 block appears in the original
    for a, b in zip(crop[:8], images[:8]):
        found = any(torch.allclose(a[:, 4:12, 4:12], b[:, 4 + dy:12 + dy, 4 + dx:12 + dx], atol=1e-5)
                    for dy in range(-4, 5) for dx in range(-4, 5))
        assert found
    noisy = augment(images, ("noise",), gen)
    assert 0 < (noisy - images).abs().max() < 0.01
    assert augment(images, ("crop", "scale", "rotate"), gen).shape == images.shape


# ---- the CLI: one clear line and exit code 2 for every bad value ------------------------------
@pytest.mark.parametrize("flags, words", [
    (["--scheme", "cross"], "unknown scheme 'cross'"),
    (["--dis_metric", "euclid"], "unknown distance"),
    (["--dis_metric", "tests.user_distances:nope"], "has no function 'nope'"),
    (["--model", "ResNet99"], "unknown model"),
    (["--dataset", "ImageNet"], "unknown dataset"),
    (["--dataset", "digits", "--ipc", "1000"], "choose --ipc"),
    (["--dataset", "CIFAR10", "--data_path", "/nonexistent"], "cifar-10-batches-py"),
    (["--ipc", "ten"], "invalid int value"),
    (["--init", "zeros"], "unknown init"),
    (["--eval_method", "fast"], "unknown evaluation method"),
    (["--matching", "vectorised"], "unknown matching engine"),
])
def test_bad_flags_end_with_one_line_and_exit_code_2(flags, words, tmp_path, capsys):
    code = main(["condense", "--save_path", str(tmp_path), "--Iteration", "1", "--quiet", *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and words in err, err


def test_seed_script_writes_the_reference_pt_png_and_json(tmp_path):
    cmd = [sys.executable, str(REPO / "multi-level.py"), "--dataset", "digits", "--model", "ConvNetD1",
           "--ipc", "2", "--Iteration", "2", "--num_exp", "2", "--num_eval", "2", "--epoch_eval_train", "3",
           "--batch_real", "16", "--dis_metric", "improved", "--adaptive_step", "--save_path", str(tmp_path),
           "--quiet"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    name = "multi-level_digits_ConvNetD1_2ipc_improved_adaptive"
    payload = torch.load(tmp_path / f"{name}.pt", weights_only=True)
    assert len(payload["data"]) == 2
    images, labels = payload["data"][0]
    assert images.shape == (20, 1, 8, 8) and images.dtype == torch.float32
    assert labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert len(payload["accs_all_exps"]["ConvNetD1"]) == 4
    results = json.loads((tmp_path / f"{name}.json").read_text())
    summary = results["summary"]["ConvNetD1"]
    accs = torch.tensor(payload["accs_all_exps"]["ConvNetD1"], dtype=torch.float64)
    assert summary["mean"] == pytest.approx(float(accs.mean()))
    assert results["config"]["condense"]["dis_metric"] == "improved"
    assert list((tmp_path / name).glob("grid_exp*_it*.png"))
    assert "mean = " in out.stdout


def test_overfit_schedule_stops_when_the_held_real_loss_rises(digits, monkeypatch):
    train, _ = digits
    c = Condensation(train, CondenseConfig(ipc=2, model="ConvNetD1", schedule="overfit", batch_real=16), device="cpu")
    losses = iter([5.0, 4.0, 3.0, 3.5, 1.0, 0.5])
    epochs = []
    nets, trainer = c.networks(0)
    monkeypatch.setattr(trainer, "held_losses", lambda held: [next(losses)])
    monkeypatch.setattr(trainer, "epoch", lambda *a, **k: epochs.append(1))
    c.train_networks(trainer, [c.initial_state(0)], 0, [torch.Generator().manual_seed(0)])
    assert len(epochs) == 4  # the fourth epoch raised the held loss (3.0 -> 3.5): stop there


def test_gradmatch_models_and_demo_run_from_the_cli(capsys):
    from gradmatch.models import list_models

    assert main(["models"]) == 0
    assert capsys.readouterr().out.split() == list_models()
    torch.set_num_threads(2)  # the conftest fixture restores its own afterwards
    assert main(["demo", "--Iteration", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "condensed 10 images per class from noise" in out and "(1 iterations of multi-level" in out
    assert "synthetic set" in out and "random real subset" in out
    assert torch.get_num_threads() == 2  # the demo's single thread was its own, not the process's
