"""Every engine gives the same numbers as the plain loops.

* matching: each engine (``fast``, ``batched``) against the textbook per-class loop (``loop``): loss
  and image gradient, in float64 so that rounding does not hide a real difference, for every
  scheme, the built-in distances and the models of the issue;
* runtime pieces: the 2x2 pooling kernel (with its double backward), the class runner's modes;
* evaluation: every method (stacked, sequential, parallel) gives the same accuracies.
(The trainer itself is tested in tests/test_train.py.)
Small shapes throughout: the whole file runs in well under a minute.
"""
import pytest
import torch
import torch.nn.functional as F

from gradmatch.condense import Condensation
from gradmatch.config import CondenseConfig
from gradmatch.condense import freeze_batchnorm
from gradmatch.synset import SyntheticSet
from gradmatch.data import Dataset
from gradmatch.errors import GradmatchError
from gradmatch.distributed import SINGLE
from gradmatch.evaluate import evaluate
from gradmatch.matching import matching_loss
from gradmatch.matching.distances import summed_distance
from gradmatch.matching import needed_parameters
from gradmatch.matching.engines import ENGINES, choose_engine
from gradmatch.matching.engines.fast import FastEngine
from gradmatch.models.stack import Networks
from gradmatch.plan import make_plan
from gradmatch.runtime import AvgPool2x2, ClassRunner
from gradmatch.models import create_model

K = 3


def batches(shape=(1, 8, 8), per_class=6, ipc=2, k=K, seed=0, dtype=None, shuffled=False):
    g = torch.Generator().manual_seed(seed)
    real_x = torch.randn(k * per_class, *shape, generator=g, dtype=dtype)
    real_y = torch.arange(k).repeat_interleave(per_class)
    syn_x = torch.randn(k * ipc, *shape, generator=g, dtype=dtype)
    syn_y = torch.arange(k).repeat_interleave(ipc)
    if shuffled:
        p, q = torch.randperm(len(real_y), generator=g), torch.randperm(len(syn_y), generator=g)
        real_x, real_y, syn_x, syn_y = real_x[p], real_y[p], syn_x[q], syn_y[q]
    return (real_x, real_y), (syn_x.requires_grad_(True), syn_y)


def network(model, shape=(1, 8, 8), seed=1, real=None):
    torch.manual_seed(seed)
    net = create_model(model, shape[0], K, shape[1:])
    if model.endswith("BN"):
        freeze_batchnorm(net, real)  # as the condensation loop does: statistics fixed
    return net


def loss_and_grad(net, real, syn, scheme, metric, engine, **kw):
    loss = matching_loss(net, real, syn, scheme, metric, engine=engine, **kw)
    (grad,) = torch.autograd.grad(loss, syn[0])
    return loss.detach(), grad


def assert_rel(a, b, rel):
    scale = b.abs().max().clamp_min(1e-30)
    assert float((a - b).abs().max() / scale) <= rel, (a, b)


MODELS = ["ConvNet", "ConvNetBN", "ConvNetLN", "MLP", "LeNet"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("scheme", ["intra-class", "multi-level", "inter-class"])
def test_fast_engine_equals_per_class_loop(float64, model, scheme):
    shape = (3, 16, 16) if model == "LeNet" else (1, 8, 8)  # LeNet's two 5x5 convs need 16x16
    real, syn = batches(shape)
    net = network(model, shape, real=real[0])
    for metric in ("baseline", "improved", "mse", "cos"):
        loss, grad = loss_and_grad(net, real, syn, scheme, metric, "fast")
        loss_ref, grad_ref = loss_and_grad(net, real, syn, scheme, metric, "loop")
        assert_rel(loss, loss_ref, 1e-5)
        assert_rel(grad, grad_ref, 1e-5)
        assert float((loss - loss_ref).abs() / loss_ref.abs()) < 1e-10  # float64: rounding only


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("scheme", ["intra-class", "multi-level"])
def test_batched_engine_equals_the_loop(float64, model, scheme):
    shape = (3, 16, 16) if model == "LeNet" else (1, 8, 8)
    real, syn = batches(shape, shuffled=True)
    net = network(model, shape, real=real[0])

    def user(a, b):
        return (a - b).abs().sum()

    for metric in ("baseline", "improved", "mse", "cos", user):
        loss, grad = loss_and_grad(net, real, syn, scheme, metric, "batched")
        loss_ref, grad_ref = loss_and_grad(net, real, syn, scheme, metric, "loop")
        assert_rel(loss, loss_ref, 1e-10)
        assert_rel(grad, grad_ref, 1e-9)


def test_batched_engine_falls_back_where_it_cannot_stack_and_says_so(capsys):
    real, syn = batches()
    uneven = (real[0][1:], real[1][1:])  # class 0 has one image fewer
    net = network("ConvNet")
    assert choose_engine("batched", net, "cpu") == ("batched", None)
    engine, note = choose_engine("batched", net, "cpu", "batches of unequal size")
    assert engine == "fast" and "cannot serve batches of unequal size" in note
    loss, grad = loss_and_grad(net, uneven, syn, "intra-class", "baseline", "batched")
    assert capsys.readouterr().err.count("warning: matching engine 'batched' cannot serve batches of unequal") == 1
    loss_ref, grad_ref = loss_and_grad(net, uneven, syn, "intra-class", "baseline", "loop")
    assert_rel(loss, loss_ref, 1e-5)
    assert_rel(grad, grad_ref, 1e-3)


def test_the_plan_names_the_engine_that_runs():
    g = torch.Generator().manual_seed(0)
    real = Dataset(images=torch.randn(40, 1, 12, 12, generator=g), labels=torch.arange(4).repeat_interleave(10),
                   classes=list("abcd"), mean=(0.0,), std=(1.0,), name="tiny")

    def plan(**kw):
        cfg = CondenseConfig(**{"ipc": 1, "model": "ConvNetD1", **kw}).resolved(real)
        return make_plan(cfg, real, torch.device("cpu"), SINGLE)

    assert (plan(batch_real=8).engine, plan(batch_real=8).notes) == ("fast", ())  # auto on a CPU
    assert (plan(batch_real=8, matching="batched").engine, plan(batch_real=8, matching="batched").notes) == (
        "batched", ())
    ln = plan(model="ConvNetLN", batch_real=8, matching="batched")
    assert ln.engine == "fast" and "layer norm" in ln.notes[0]
    small = plan(batch_real=16, matching="batched")
    assert small.engine == "fast" and "fewer than --batch_real 16 images (the smallest has 10)" in small.notes[0]
    assert plan(batch_real=16, matching="batched", scheme="inter-class").engine == "batched"  # mixed batches
    bn = plan(model="ConvNetBN", batch_real=8, matching="batched")
    assert bn.engine == "batched" and len(bn.notes) == 1  # frozen batch norm: served, and how is said
    assert "ConvNetBN has batch norm: every matching step sets its statistics from 16 real images" in bn.notes[0]


def test_fast_path_in_float32_is_close_to_the_loop():
    real, syn = batches()
    net = network("ConvNet")
    loss, grad = loss_and_grad(net, real, syn, "multi-level", "improved", "fast")
    loss_ref, grad_ref = loss_and_grad(net, real, syn, "multi-level", "improved", "loop")
    assert_rel(loss, loss_ref, 1e-5)
    assert_rel(grad, grad_ref, 1e-3)


def test_fast_path_with_unsorted_labels_a_user_distance_and_a_non_leaf_image_tensor(float64):
    real, syn = batches(shuffled=True)
    net = network("ConvNet")
    leaf = syn[0].detach().clone().requires_grad_(True)
    pick = torch.tensor([4, 0, 2, 5, 1, 3])

    def user(a, b):  # a per-tensor distance on rows, as a user passes one
        return ((a - b) ** 2).sum(-1).sqrt().sum()

    for scheme in ("intra-class", "multi-level", "inter-class"):
        # a non-leaf image tensor, as the inter-class scheme's state.images[pick]
        got = matching_loss(net, real, ((leaf * 1.0)[pick], syn[1][pick]), scheme, user, engine="fast")
        (g_got,) = torch.autograd.grad(got, leaf)
        ref = matching_loss(net, real, ((leaf * 1.0)[pick], syn[1][pick]), scheme, user, engine="loop")
        (g_ref,) = torch.autograd.grad(ref, leaf)
        assert_rel(got.detach(), ref.detach(), 1e-10)
        assert_rel(g_got, g_ref, 1e-8)


def test_the_loss_under_no_grad_is_the_same_value():
    real, syn = batches()
    net = network("ConvNet")
    loss = matching_loss(net, real, syn, "intra-class", engine="fast")
    with torch.no_grad():  # gradients are what is matched, even under no_grad
        value = matching_loss(net, real, syn, "intra-class", engine="fast")
    assert value.item() == pytest.approx(loss.item(), rel=1e-6)


def test_unknown_method_and_precision_are_named():
    real, syn = batches()
    net = network("ConvNet")
    with pytest.raises(GradmatchError, match="loop"):
        matching_loss(net, real, syn, engine="vectorised")
    with pytest.raises(GradmatchError, match="bf16"):
        matching_loss(net, real, syn, precision="fp8")
    with pytest.raises(GradmatchError, match="precision"):
        CondenseConfig(precision="fp16").validate()


@pytest.mark.parametrize("precision", ["bf16", "bf16-sim"])
@pytest.mark.parametrize("engine", ["loop", "fast", "batched"])
def test_bf16_targets_are_close_and_the_synthetic_side_stays_fp32(precision, engine):
    real, syn = batches(per_class=4, ipc=1)
    net = network("ConvNet")
    loss, grad = loss_and_grad(net, real, syn, "intra-class", "baseline", engine, precision=precision)
    loss_ref, grad_ref = loss_and_grad(net, real, syn, "intra-class", "baseline", engine)
    assert torch.isfinite(grad).all()
    assert loss.item() != loss_ref.item()  # the targets really were computed in bf16 (rounded) ...
    assert abs(loss.item() - loss_ref.item()) < 0.05 * loss_ref.item()  # ... and stay close
    # tiny batches are noisy: at 3x32x32 and 32 images per class the cosine is 0.998 for both
    assert F.cosine_similarity(grad.flatten(), grad_ref.flatten(), 0) > 0.8
    names = [n for n, _ in needed_parameters(net, "baseline")]
    parts = [[(x[y == c], y[y == c]) for c in range(K)] for x, y in (real, (syn[0].detach(), syn[1]))]
    run = ENGINES[engine].gradients
    for target, batches_ in ((True, parts[0]), (False, parts[1])):
        low = run(Networks.wrap(net), names, [batches_], target=target, precision=precision)
        full = run(Networks.wrap(net), names, [batches_], target=target, precision="fp32")
        same = all(torch.equal(a, b) for a, b in zip(low, full))
        assert same != target  # the targets in bf16, the synthetic side in fp32 to the bit


def test_the_worker_mode_does_not_change_the_numbers():
    real, syn = batches(per_class=8)
    net = network("ConvNet")
    names = [n for n, _ in needed_parameters(net, "improved")]
    results = []
    for mode in (1, 2):
        parts = [(syn[0][syn[1] == c], syn[1][syn[1] == c]) for c in range(K)]
        runner = ClassRunner(workers=2)
        runner.forced = mode
        grads = FastEngine(runner).gradients(Networks.wrap(net), names, [parts], target=False)
        (image_grad,) = torch.autograd.grad(sum(g.sum() for g in grads), syn[0])
        results.append((grads, image_grad))
    assert all(torch.equal(a, b) for a, b in zip(results[0][0], results[1][0]))
    assert torch.equal(results[0][1], results[1][1])


def test_large_targets_are_taken_in_chunks_with_the_same_mean_gradient(float64):
    net = network("ConvNet")
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(600, 1, 8, 8, generator=g), torch.randint(0, K, (600,), generator=g)
    names = [n for n, _ in needed_parameters(net, "baseline")]
    chunked = ENGINES["fast"].gradients(Networks.wrap(net), names, [[(x, y)]], target=True)
    whole = ENGINES["loop"].gradients(Networks.wrap(net), names, [[(x, y)]], target=True)
    for a, b in zip(chunked, whole):
        assert a.shape[:2] == (1, 1)
        assert_rel(a, b, 1e-12)


@pytest.mark.parametrize("slow_mode", [1, 2])
def test_runner_tries_both_modes_then_keeps_the_faster(slow_mode):
    """Jobs that take 20 ms when run in this thread (mode 1) or on the pool (mode 2), the other mode
    instant: after trying both, the runner runs every job of a call in the faster one."""
    import threading
    import time

    def job(v):
        on_pool = threading.current_thread().name.startswith("gradmatch")
        if (2 if on_pool else 1) == slow_mode:
            time.sleep(0.02)
        return v * v

    runner = ClassRunner(workers=2, explore_every=100)
    for _ in range(4):
        assert runner.map(job, [1, 2, 3, 4, 5], key=("k",)) == [1, 4, 9, 16, 25]
    assert set(runner._seconds[("k",)]) == {1, 2}
    fast = 2 if slow_mode == 1 else 1
    assert runner.choose(("k",), 5) == (fast, 0)  # the faster, and nothing more to try this call


def test_pool_kernel_matches_avg_pool_with_its_double_backward(float64):
    x = torch.randn(2, 3, 6, 8, requires_grad=True)
    torch.testing.assert_close(AvgPool2x2.apply(x), F.avg_pool2d(x, 2))
    assert torch.autograd.gradcheck(AvgPool2x2.apply, (x,))
    assert torch.autograd.gradgradcheck(AvgPool2x2.apply, (x,))


def test_summed_distance_is_the_sum_of_per_class_distances(float64):
    from gradmatch.matching.distances import gradient_distance

    g = torch.Generator().manual_seed(5)
    shapes = [(4, 3, 3, 3), (4,), (5, 4)]
    syn = [[torch.randn(s, generator=g) for s in shapes] for _ in range(3)]
    real = [[torch.randn(s, generator=g) for s in shapes] for _ in range(3)]
    for metric in ("baseline", "improved", "dc", "mse", "cos"):
        expected = sum(gradient_distance(s, r, metric) for s, r in zip(syn, real))
        stacked = summed_distance([torch.stack(t) for t in zip(*syn)], [torch.stack(t) for t in zip(*real)], metric)
        torch.testing.assert_close(stacked, expected)


@pytest.mark.parametrize("engine", ["fast", "batched"])
def test_condensation_with_each_engine_follows_the_loop(engine):
    g = torch.Generator().manual_seed(0)
    real = Dataset(images=torch.randn(40, 1, 12, 12, generator=g), labels=torch.arange(4).repeat_interleave(10),
                   classes=list("abcd"), mean=(0.0,), std=(1.0,), name="tiny")
    runs = {}
    for method in (engine, "loop"):
        cfg = CondenseConfig(ipc=2, model="ConvNetD1", scheme="multi-level", dis_metric="improved", iterations=2,
                             batch_real=8, batch_train=4, matching=method)
        for (state,) in Condensation(real, cfg, device="cpu").steps():
            images = state.images
        runs[method] = images.detach()
    torch.testing.assert_close(runs[engine], runs["loop"], rtol=1e-4, atol=1e-5)


# ---- evaluation ---------------------------------------------------------------------------------
def tiny_set(shape=(1, 8, 8), ipc=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(K * ipc, *shape, generator=g)
    return images, torch.arange(K).repeat_interleave(ipc)


def test_every_evaluation_method_gives_the_same_accuracies():
    images, labels = tiny_set()
    syn = SyntheticSet(images=images, labels=labels, classes=list("abc"), mean=(0,), std=(1,),
                       dataset="tiny")
    g = torch.Generator().manual_seed(9)
    test = Dataset(images=torch.randn(60, 1, 8, 8, generator=g), labels=torch.randint(0, K, (60,), generator=g),
                   classes=list("abc"), mean=(0,), std=(1,), name="tiny")
    got = {m: evaluate(syn, "MLP", test, num_eval=3, epochs=3, batch_size=4, method=m, device="cpu").accuracies
           for m in ("sequential", "parallel", "batched", "auto")}
    assert len(set(got["sequential"])) > 1  # three different networks
    assert got["parallel"] == got["sequential"] == got["auto"]
    assert got["batched"] == pytest.approx(got["sequential"], abs=1 / 60 + 1e-9)  # rounding may flip one image
    with pytest.raises(GradmatchError, match="batched"):
        evaluate(syn, "MLP", test, num_eval=1, epochs=1, method="stacked", device="cpu")
