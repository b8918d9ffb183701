"""Every engine gives the same numbers as the plain loops.

* matching: each engine (``fast``, ``batched``) against the textbook per-class loop (``loop``): loss
  and image gradient, in float64 so that rounding does not hide a real difference, for every
  scheme, the built-in distances and the models of the issue;
* runtime pieces: the 2x2 pooling kernel (with its double backward), the class runner's modes;
* training: the static (CUDA-graph) step's CPU twin against torch.optim.SGD, batch by batch;
* evaluation: the stacked ensemble (``train_batched``) and the parallel mode against training the
  networks one by one with the same seeds.
Small shapes throughout: the whole file runs in well under a minute.
"""
import pytest
import torch
import torch.nn.functional as F

from gradmatch.condense import Condenser
from gradmatch.config import CondenseConfig
from gradmatch.condense import freeze_batchnorm
from gradmatch.synset import SyntheticSet
from gradmatch.data import Dataset
from gradmatch.errors import GradmatchError
from gradmatch.evaluate import evaluate, train_batched, train_net
from gradmatch.matching import matching_loss
from gradmatch.matching.distances import summed_distance
from gradmatch.matching.engines import ENGINES, needed_parameters
from gradmatch.matching.engines.fast import FastEngine
from gradmatch.runtime import AvgPool2x2, ClassRunner
from gradmatch.train import StaticStep, Trainer
from gradmatch.augment import make_augment
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


def test_batched_engine_falls_back_where_it_cannot_stack_and_says_so():
    real, syn = batches()
    uneven = (real[0][1:], real[1][1:])  # class 0 has one image fewer
    net = network("ConvNet")
    params = needed_parameters(net, "baseline")
    parts = [(uneven[0][uneven[1] == c], uneven[1][uneven[1] == c]) for c in range(K)]
    assert ENGINES["batched"].gradients(net, params, parts, target=True) is None
    with pytest.warns(UserWarning, match="unequal size"):
        loss, grad = loss_and_grad(net, uneven, syn, "intra-class", "baseline", "batched")
    loss_ref, grad_ref = loss_and_grad(net, uneven, syn, "intra-class", "baseline", "loop")
    assert_rel(loss, loss_ref, 1e-5)
    assert_rel(grad, grad_ref, 1e-3)


def test_condenser_names_the_engine_that_runs():
    g = torch.Generator().manual_seed(0)
    real = Dataset(images=torch.randn(40, 1, 12, 12, generator=g), labels=torch.arange(4).repeat_interleave(10),
                   classes=list("abcd"), mean=(0.0,), std=(1.0,), name="tiny")
    cpu = Condenser(real, CondenseConfig(ipc=1, model="ConvNetD1", batch_real=8), device="cpu")
    assert (cpu.engine, cpu.engine_note) == ("fast", None)  # auto on a CPU
    asked = Condenser(real, CondenseConfig(ipc=1, model="ConvNetD1", batch_real=8, matching="batched"), device="cpu")
    assert (asked.engine, asked.engine_note) == ("batched", None)
    with pytest.warns(UserWarning, match="layer norm"):
        ln = Condenser(real, CondenseConfig(ipc=1, model="ConvNetLN", batch_real=8, matching="batched"),
                       device="cpu")
    assert ln.engine == "fast" and "layer norm" in ln.engine_note
    small = Condenser(real, CondenseConfig(ipc=1, model="ConvNetD1", batch_real=16, matching="batched"),
                      device="cpu")
    assert small.engine == "fast" and "fewer than --batch_real 16" in small.engine_note


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
        CondenseConfig(precision="fp16").resolved()


@pytest.mark.parametrize("precision", ["bf16", "bf16-sim"])
@pytest.mark.parametrize("engine", ["loop", "fast", "batched"])
def test_bf16_targets_are_close_and_the_synthetic_side_stays_fp32(precision, engine):
    real, syn = batches(per_class=4, ipc=1)
    net = network("ConvNet")
    loss, grad = loss_and_grad(net, real, syn, "intra-class", "baseline", engine, precision=precision)
    loss_ref, grad_ref = loss_and_grad(net, real, syn, "intra-class", "baseline", engine)
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
    assert abs(loss.item() - loss_ref.item()) < 0.05 * loss_ref.item()
    # tiny batches are noisy: at 3x32x32 and 32 images per class the cosine is 0.998 for both
    assert F.cosine_similarity(grad.flatten(), grad_ref.flatten(), 0) > 0.8


def test_the_worker_mode_does_not_change_the_numbers():
    real, syn = batches(per_class=8)
    net = network("ConvNet")
    params = needed_parameters(net, "improved")
    results = []
    for mode in (1, 2):
        parts = [(syn[0][syn[1] == c], syn[1][syn[1] == c]) for c in range(K)]
        runner = ClassRunner(workers=2)
        runner.forced = mode
        grads = FastEngine(runner).gradients(net, params, parts, target=False)
        (image_grad,) = torch.autograd.grad(sum(g.sum() for g in grads), syn[0])
        results.append((grads, image_grad))
    assert all(torch.equal(a, b) for a, b in zip(results[0][0], results[1][0]))
    assert torch.equal(results[0][1], results[1][1])


def test_large_targets_are_taken_in_chunks_with_the_same_mean_gradient(float64):
    net = network("ConvNet")
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(600, 1, 8, 8, generator=g), torch.randint(0, K, (600,), generator=g)
    params = needed_parameters(net, "baseline")
    chunked = ENGINES["fast"].gradients(net, params, [(x, y)], target=True)
    whole = ENGINES["loop"].gradients(net, params, [(x, y)], target=True)
    for a, b in zip(chunked, whole):
        assert_rel(a, b, 1e-12)


def test_runner_tries_both_modes_then_keeps_the_faster():
    runner = ClassRunner(workers=2, explore_every=4)
    for _ in range(6):
        assert runner.map(lambda v: v * v, [1, 2, 3, 4, 5], key=("k",)) == [1, 4, 9, 16, 25]
    assert set(runner._seconds[("k",)]) == {1, 2}


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
        condenser = Condenser(real, cfg, device="cpu")
        for state in condenser.steps():
            images = state.images
        runs[method] = images.detach()
    torch.testing.assert_close(runs[engine], runs["loop"], rtol=1e-4, atol=1e-5)


# ---- training: the static (CUDA-graph) step's twin ---------------------------------------------
@pytest.mark.parametrize("model,weight_decay", [("ConvNet", 0.0), ("ConvNetBN", 5e-4), ("MLP", 5e-4)])
def test_static_step_equals_torch_sgd_batch_by_batch(float64, model, weight_decay):
    images, labels = tiny_set(ipc=4)
    nets = []
    for _ in range(2):
        torch.manual_seed(3)
        nets.append(create_model(model, 1, K, (8, 8)))
    plain, static = (Trainer(nets[0], 0.05, 0.9, weight_decay, graph=False),
                     Trainer(nets[1], 0.05, 0.9, weight_decay, graph=True))
    gens = [torch.Generator().manual_seed(1) for _ in range(2)]
    for epoch in range(6):
        if epoch == 3:  # DC's evaluation: lr x0.1 with a fresh optimiser (zero momentum)
            plain.set_lr(0.005)
            static.set_lr(0.005)
        plain.epoch(images, labels, 64, gens[0])
        static.epoch(images, labels, 64, gens[1])
    assert isinstance(static.static, StaticStep) and plain.static is None
    for (name, p), q in zip(nets[0].named_parameters(), nets[1].parameters()):
        torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-14, msg=name)
    for b, c in zip(nets[0].buffers(), nets[1].buffers()):  # batch-norm running statistics too
        torch.testing.assert_close(c, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("batch", [64, 5])  # the set in one batch; 12 images in batches of 5, 5 and 2
def test_static_epoch_equals_torch_sgd_with_several_batches(float64, batch):
    images, labels = tiny_set(ipc=4)
    nets = []
    for _ in range(2):
        torch.manual_seed(5)
        nets.append(create_model("ConvNet", 1, K, (8, 8)))
    plain, static = Trainer(nets[0], 0.05, 0.5, graph=False), Trainer(nets[1], 0.05, 0.5, graph=True)
    gens = [torch.Generator().manual_seed(3) for _ in range(2)]
    for _ in range(4):
        plain.epoch(images, labels, batch, gens[0])
        static.epoch(images, labels, batch, gens[1])
    assert static.static is not None and static.static.batch_size == batch
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-14)


def test_the_static_step_is_not_used_where_it_cannot_apply():
    images, labels = tiny_set(ipc=4)
    net = create_model("ConvNet", 1, K, (8, 8))
    trainer = Trainer(net, 0.05, 0.9, graph=True)
    trainer.epoch(images, labels, 64, torch.Generator().manual_seed(0), augment=lambda x: x.flip(3))
    assert trainer.static is None  # augmentation draws on the host every batch: no fixed graph
    assert Trainer(net, 0.05, 0.9).graph is None  # default: capture on CUDA only


# ---- evaluation ---------------------------------------------------------------------------------
def tiny_set(shape=(1, 8, 8), ipc=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(K * ipc, *shape, generator=g)
    return images, torch.arange(K).repeat_interleave(ipc)


@pytest.mark.parametrize("epochs", [1, 5])
def test_evaluation_training_is_the_seeds_evaluate_synset(float64, epochs):
    """The seed's loop, written again: SGD(momentum 0.9, weight decay 5e-4), MultiStepLR at
    epochs // 2 (momentum kept), ``epochs`` shuffled passes."""
    images, labels = tiny_set(ipc=3)
    nets = []
    for _ in range(2):
        torch.manual_seed(11)
        nets.append(create_model("ConvNet", 1, K, (8, 8)))
    train_net(nets[0], images, labels, epochs, 0.05, 4, None, torch.Generator().manual_seed(2))
    net, gen = nets[1], torch.Generator().manual_seed(2)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[epochs // 2], gamma=0.1)
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(images), generator=gen)
        for start in range(0, len(images), 4):
            idx = order[start:start + 4]
            loss = F.cross_entropy(net(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    for p, q in zip(nets[0].parameters(), net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("model", ["ConvNet", "MLP", "LeNet", "ConvNetLN"])
def test_batched_training_equals_one_by_one(float64, model):
    shape = (3, 16, 16) if model == "LeNet" else (1, 8, 8)
    images, labels = tiny_set(shape)
    alone, together, gens_a, gens_b = [], [], [], []
    for k in range(3):
        for nets, gens in ((alone, gens_a), (together, gens_b)):
            torch.manual_seed(100 + k)  # each network its own initialisation
            nets.append(create_model(model, *shape[:1], K, shape[1:]))
            gens.append(torch.Generator().manual_seed(k))  # and its own shuffling
    # 4 epochs in batches of 4 of 9 images: uneven last batches, the lr drop and its fresh momentum
    for net, gen in zip(alone, gens_a):
        train_net(net, images, labels, 4, 0.05, 4, None, gen)
    train_batched(together, images, labels, 4, 0.05, 4, [None] * 3, gens_b)
    for a, b in zip(alone, together):
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-12, msg=name)
    assert not torch.equal(alone[0].classifier.weight, alone[1].classifier.weight)


def test_batched_training_with_augmentation_draws_each_networks_own_stream():  # float32: augment's dtype
    images, labels = tiny_set(shape=(1, 12, 12))
    alone, together = [], []
    for nets in (alone, together):
        for k in range(2):
            torch.manual_seed(7 + k)
            nets.append(create_model("ConvNetD1", 1, K, (12, 12)))
    gens_a = [torch.Generator().manual_seed(k) for k in range(2)]
    gens_b = [torch.Generator().manual_seed(k) for k in range(2)]
    for net, gen in zip(alone, gens_a):
        train_net(net, images, labels, 2, 0.05, 5, make_augment("crop_scale_rotate", gen), gen)
    train_batched(together, images, labels, 2, 0.05, 5, [make_augment("crop_scale_rotate", g) for g in gens_b],
                  gens_b)
    for a, b in zip(alone, together):
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)


def test_every_evaluation_method_gives_the_same_accuracies():
    images, labels = tiny_set()
    syn = SyntheticSet(images=images, labels=labels, classes=list("abc"), mean=(0,), std=(1,),
                       dataset="tiny")
    g = torch.Generator().manual_seed(9)
    test = Dataset(images=torch.randn(60, 1, 8, 8, generator=g), labels=torch.randint(0, K, (60,), generator=g),
                   classes=list("abc"), mean=(0,), std=(1,), name="tiny")
    got = {m: evaluate(syn, "MLP", test, num_eval=3, epochs=3, batch_size=4, method=m, device="cpu").accuracies
           for m in ("sequential", "parallel", "batched", "auto")}
    assert got["parallel"] == got["sequential"] == got["auto"]
    assert got["batched"] == pytest.approx(got["sequential"], abs=1 / 60 + 1e-9)  # rounding may flip one image
    with pytest.raises(GradmatchError, match="batched"):
        evaluate(syn, "MLP", test, num_eval=1, epochs=1, method="stacked", device="cpu")
