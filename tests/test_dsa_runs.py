"""DSA in the condensation loop, the inner training and the evaluation: every scheme and engine,
the flags, the run name, repeatability and an exact resume.  Tiny digits runs."""
from __future__ import annotations

import json
import sys

import pytest
import torch

import gradmatch.run as gm_run
from gradmatch.augment import dsa
from gradmatch.cli import main
from gradmatch.condense import Condensation
from gradmatch.config import CondenseConfig
from gradmatch.synset import SyntheticSet
from gradmatch.data import Dataset
from gradmatch.evaluate import evaluate
from tests.conftest import one_error_line

K = 3


def tiny_real(seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset(images=torch.randn(K * 12, 1, 12, 12, generator=g), labels=torch.arange(K).repeat_interleave(12),
                   classes=list("abc"), mean=(0.0,), std=(1.0,), name="tiny")


def condensed(real, iterations=2, **kw) -> torch.Tensor:
    cfg = CondenseConfig(ipc=2, model="ConvNetD1", iterations=iterations, batch_real=8, batch_train=4,
                         inner_loop=2, outer_loop=2, **kw)
    *_, (final,) = Condensation(real, cfg, device="cpu").steps()
    return final.images.detach()


@pytest.mark.parametrize("scheme", ["intra-class", "inter-class", "interleaved", "multi-level"])
def test_dsa_changes_the_images_and_repeats_exactly(scheme):
    real = tiny_real()
    with_dsa = condensed(real, scheme=scheme, dsa=True, dis_metric="improved")
    assert torch.equal(with_dsa, condensed(real, scheme=scheme, dsa=True, dis_metric="improved"))
    assert not torch.allclose(with_dsa, condensed(real, scheme=scheme, dis_metric="improved"))
    assert torch.isfinite(with_dsa).all()


@pytest.mark.parametrize("engine", ["fast", "batched"])
def test_every_engine_sees_the_same_augmented_batches(float64, engine):  # float32 rounding grows through DSA
    real = tiny_real()
    ref = condensed(real, scheme="multi-level", dsa=True, matching="loop", schedule="adaptive")
    got = condensed(real, scheme="multi-level", dsa=True, matching=engine, schedule="adaptive")
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_the_matching_step_augments_each_class_pair_alike(monkeypatch):
    """The loop hands real and synthetic batches to dsa.siamese with class labels as groups."""
    seen = []
    real_siamese = dsa.siamese

    def spy(real_x, syn_x, strategy, gen, real_groups, syn_groups, groups):
        seen.append((real_groups.clone(), syn_groups.clone(), groups, strategy))
        return real_siamese(real_x, syn_x, strategy, gen, real_groups, syn_groups, groups=groups)

    monkeypatch.setattr(dsa, "siamese", spy)
    condensed(tiny_real(), iterations=1, dsa=True, dsa_strategy="flip_crop")
    assert len(seen) == 2  # two outer steps
    real_groups, syn_groups, groups, strategy = seen[0]
    assert torch.equal(real_groups, torch.arange(K).repeat_interleave(8))
    assert torch.equal(syn_groups, torch.arange(K).repeat_interleave(2))
    assert (groups, strategy) == (K, "flip_crop")


def test_dsa_evaluation_trains_every_network_on_augmented_batches(monkeypatch):
    g = torch.Generator().manual_seed(3)
    syn = SyntheticSet(images=torch.randn(K * 2, 1, 8, 8, generator=g), labels=torch.arange(K).repeat_interleave(2),
                       classes=list("abc"), mean=(0.0,), std=(1.0,), dataset="tiny")
    test = Dataset(images=torch.randn(30, 1, 8, 8, generator=g), labels=torch.arange(K).repeat(10),
                   classes=list("abc"), mean=(0.0,), std=(1.0,), name="tiny")
    calls = []
    real_batch = dsa.augment_batch

    def counted(x, strategy, gen):
        calls.append(strategy)
        return real_batch(x, strategy, gen)

    monkeypatch.setattr(dsa, "augment_batch", counted)
    first = evaluate(syn, "MLP", test, num_eval=2, epochs=3, augment="dsa", device="cpu").accuracies
    assert calls == [dsa.STRATEGY] * 2 * 3  # every epoch of every network (one batch each)
    assert first == evaluate(syn, "MLP", test, num_eval=2, epochs=3, augment="dsa", device="cpu").accuracies
    calls.clear()
    evaluate(syn, "MLP", test, num_eval=1, epochs=2, augment="dsa:flip", device="cpu")
    assert calls == ["flip"] * 2


TINY = ["--dataset", "digits", "--model", "ConvNetD1", "--ipc", "2", "--batch_real", "16", "--num_exp", "1",
        "--num_eval", "1", "--epoch_eval_train", "2", "--checkpoint_every", "1", "--inner_loop", "3", "--quiet",
        "--scheme", "multi-level"]
NAME = "multi-level_digits_ConvNetD1_2ipc_dsa"


def test_method_dsa_turns_dsa_on_and_names_the_run(tmp_path):
    assert main(["condense", *TINY, "--method", "DSA", "--Iteration", "1", "--save_path", str(tmp_path)]) == 0
    results = json.loads((tmp_path / f"{NAME}.json").read_text())
    assert results["config"]["condense"]["dsa"] is True
    assert results["config"]["condense"]["dsa_strategy"] == dsa.STRATEGY


def test_bad_dsa_strategy_is_one_line(tmp_path, capsys):
    assert main(["condense", *TINY, "--dsa", "--dsa_strategy", "color_warp", "--save_path", str(tmp_path)]) == 2
    assert "warp" in one_error_line(capsys)
    assert main(["condense", *TINY, "--method", "DSB", "--save_path", str(tmp_path)]) == 2
    assert "DSA" in one_error_line(capsys)


def test_resume_with_dsa_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = ["condense", *TINY, "--dsa", "--Iteration", "4"]
    assert main([*args, "--save_path", str(whole)]) == 0
    real_append = gm_run.append_log

    def stop_after_two(path, record):
        real_append(path, record)
        if record.get("event") == "iteration" and record["iteration"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(gm_run, "append_log", stop_after_two)
    assert main([*args, "--save_path", str(cut)]) == 130
    monkeypatch.setattr(gm_run, "append_log", real_append)
    assert main([*args, "--save_path", str(cut), "--resume"]) == 0
    a, b = (torch.load(d / f"{NAME}.pt", weights_only=True)["data"][0][0] for d in (whole, cut))
    assert torch.equal(a, b)


def test_evaluate_with_dsa_trains_the_set_and_its_baseline_alike(tmp_path, capsys, monkeypatch):
    """`gradmatch evaluate SET.pt --dsa --baseline random`: every network, of the set and of the random
    real subset, trains with DSA for as many epochs (one protocol object for both)."""
    gm_evaluate = sys.modules["gradmatch.evaluate"]  # the package's `evaluate` is the function
    assert main(["condense", *TINY, "--Iteration", "1", "--save_path", str(tmp_path)]) == 0
    pt = tmp_path / "multi-level_digits_ConvNetD1_2ipc.pt"
    trained = []
    real_fit = gm_evaluate.fit

    def spy(trainer, images, labels, epochs, batch_size, generators, augments=None, lr_at=None, **rest):
        trained.append((len(images), epochs, len(generators), tuple(a is not None for a in augments), lr_at(0)))
        real_fit(trainer, images, labels, 2, batch_size, generators, augments=augments, lr_at=lr_at, **rest)

    monkeypatch.setattr(gm_evaluate, "fit", spy)
    calls = []
    real_batch = dsa.augment_batch
    monkeypatch.setattr(dsa, "augment_batch", lambda x, strategy, gen: calls.append(strategy) or real_batch(x, strategy,
                                                                                                            gen))
    capsys.readouterr()
    assert main(["evaluate", str(pt), "--model", "ConvNetD1", "--num_eval", "2", "--dsa", "--dsa_strategy",
                 "flip_crop", "--baseline", "random"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Evaluate 2 random ConvNetD1") and out[1].startswith("random real subset (2 per class)")
    assert len(trained) == 4  # two networks of the set, two of the baseline, one at a time on this CPU
    assert {t[1:] for t in trained} == {(1000, 1, (True,), 0.01)}  # DSA's 1000 epochs, augmented, same lr
    assert {t[0] for t in trained} == {20}  # both 2 images per class of digits' 10 classes
    assert calls and set(calls) == {"flip_crop"}
    assert main(["evaluate", str(pt), "--model", "ConvNetD1", "--dsa", "--dsa_strategy", "zoom"]) == 2
    assert "zoom" in one_error_line(capsys)
